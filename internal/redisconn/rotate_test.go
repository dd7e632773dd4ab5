package redisconn

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
)

// rotate writes a password file the way a container secret is renewed: a
// new file renamed over the old one.
func rotate(t *testing.T, path, pw string) {
	t.Helper()
	replaceFile(t, path, []byte(pw+"\n"))
}

// replaceFile writes data to path the way a secret or a certificate is
// renewed: a new file renamed over the old one.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// An operator rotates a Redis password: the secret's file gets the new
// one, the user loses the old one and its connections are killed (a
// failover or a restart of Redis does the same). The client keeps working
// without a restart, and a file that is missing for a moment mid-renewal
// does not stop new connections either.
func TestPasswordFileRotatedWithoutRestart(t *testing.T) {
	ctx := context.Background()
	s := redistest.Start(t)
	c := redistest.StartCluster(t, 3, 0)
	for _, tc := range []struct {
		name    string
		url     string
		cluster bool
		admin   func(func(*redis.Client) error) error
	}{
		{"standalone", "redis://rot@" + s.Addr, false, func(f func(*redis.Client) error) error { return f(s.Client(t)) }},
		{"cluster", "redis://rot@" + c.Addrs[0], true, func(f func(*redis.Client) error) error {
			return c.Client(t).ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error { return f(n) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setPass := func(pw string) {
				t.Helper()
				err := tc.admin(func(a *redis.Client) error {
					if err := a.Do(ctx, "ACL", "SETUSER", "rot", "on", "resetpass", ">"+pw, "~*", "&*", "+@all").Err(); err != nil {
						return err
					}
					return a.Do(ctx, "CLIENT", "KILL", "USER", "rot").Err()
				})
				if err != nil && !strings.Contains(err.Error(), "No such user") {
					t.Fatal(err)
				}
			}
			setPass("old")
			file := filepath.Join(t.TempDir(), "pw")
			rotate(t, file, "old")
			client := open(t, tc.url, Options{Cluster: tc.cluster, PasswordFile: file})
			if err := client.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatalf("with the first password: %v", err)
			}

			rotate(t, file, "new")
			setPass("new")
			var last error
			if err := redistest.Wait(ctx, 10*time.Second, "a command with the rotated password", func() bool {
				last = client.Set(ctx, "k", "v2", 0).Err()
				return last == nil
			}); err != nil {
				t.Fatalf("%v; the last command's error: %v", err, last)
			}

			// Mid-renewal the file is gone for a moment: new connections
			// keep the password last read.
			if err := os.Remove(file); err != nil {
				t.Fatal(err)
			}
			setPass("new")
			redistest.Eventually(t, 10*time.Second, "a command while the file is missing", func() bool {
				return client.Set(ctx, "k", "v3", 0).Err() == nil
			})
		})
	}
}

// lockedBuffer is a log's output, written by the client's dials and read
// by the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// caBundle returns the PEM of the CAs' certificates, one after the other.
func caBundle(t *testing.T, cas ...*redistest.PKI) []byte {
	t.Helper()
	var b []byte
	for _, ca := range cas {
		pem, err := os.ReadFile(ca.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, pem...)
	}
	return b
}

// tlsAdmin is an operator's client of one TLS server: base's client
// certificate, and every CA of cas trusted, so that it reconnects whichever
// of them signed the server's certificate.
func tlsAdmin(t *testing.T, addr string, base *tls.Config, cas ...*redistest.PKI) *redis.Client {
	t.Helper()
	tc := base.Clone()
	tc.RootCAs = x509.NewCertPool()
	tc.RootCAs.AppendCertsFromPEM(caBundle(t, cas...))
	a := redis.NewClient(&redis.Options{Addr: addr, TLSConfig: tc})
	t.Cleanup(func() { a.Close() })
	return a
}

// serveCert switches a running redis-server to another certificate, as an
// operator renewing it does (new connections get it, open ones keep
// theirs), and kills its clients' connections (but the admin's), as a
// restart or a failover of Redis would.
func serveCert(t *testing.T, admin *redis.Client, cert, key string) {
	t.Helper()
	ctx := context.Background()
	if err := admin.Do(ctx, "CONFIG", "SET", "tls-cert-file", cert, "tls-key-file", key).Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.Do(ctx, "CLIENT", "KILL", "TYPE", "normal").Err(); err != nil {
		t.Fatal(err)
	}
}

// An operator moves Redis to certificates signed by a new CA, the usual
// way: the new CA is added to the CA file every client reads, then each
// server switches to its new certificate and its connections are dropped.
// A client started before the change reconnects without a restart; and a
// server certificate from a trusted CA but for another name is refused as
// before, whether the name is the server's address or --tls-server-name.
// A cluster's case, rotateClusterCA, runs on TestTLSClusterVerifiesEachNode's
// cluster.
func TestTLSCAFileRotatedWithoutRestart(t *testing.T) {
	ctx := context.Background()
	oldCA := redistest.NewPKI(t)
	s := redistest.StartTLS(t, oldCA)
	cert, key := oldCA.Issue(t, "routerd")
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	replaceFile(t, caFile, caBundle(t, oldCA))
	var logs lockedBuffer
	client := open(t, s.URL, Options{TLS: TLSFiles{CA: caFile, Cert: cert, Key: key}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err := client.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}

	newCA := redistest.NewPKI(t)
	replaceFile(t, caFile, caBundle(t, oldCA, newCA))
	admin := tlsAdmin(t, s.Addr, s.TLS, oldCA, newCA)
	srvCert, srvKey := newCA.Issue(t, "redis-server", "127.0.0.1")
	serveCert(t, admin, srvCert, srvKey)
	if err := client.Set(ctx, "k", "v2", 0).Err(); err != nil {
		t.Fatalf("the first command after the server's certificate moved to the new CA: %v", err)
	}

	// Caught half-written (the new CA cut short), then missing: new
	// connections keep the bundle last read whole, and the log says so
	// once.
	bundle := caBundle(t, oldCA, newCA)
	if err := os.WriteFile(caFile, bundle[:len(bundle)-100], 0o600); err != nil {
		t.Fatal(err)
	}
	serveCert(t, admin, srvCert, srvKey)
	if err := client.Set(ctx, "k", "v3", 0).Err(); err != nil {
		t.Fatalf("with the CA file half-written: %v", err)
	}
	if err := os.Remove(caFile); err != nil {
		t.Fatal(err)
	}
	serveCert(t, admin, srvCert, srvKey)
	if err := client.Set(ctx, "k", "v4", 0).Err(); err != nil {
		t.Fatalf("with the CA file missing: %v", err)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 || !strings.Contains(logs.String(), "cut short") {
		t.Errorf("%d warnings, want one that the file is cut short:\n%s", n, logs.String())
	}
	replaceFile(t, caFile, bundle)

	// Names are checked as strictly as before: under --tls-server-name
	// when given, and under the URL's host otherwise.
	named := open(t, s.URL+"?max_retries=-1", Options{TLS: TLSFiles{CA: caFile, Cert: cert, Key: key, ServerName: "other.example"}})
	if err := named.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "other.example") {
		t.Errorf("a certificate for 127.0.0.1 verified under other.example: %v", err)
	}
	otherCert, otherKey := newCA.Issue(t, "redis-server", "127.0.0.9")
	serveCert(t, admin, otherCert, otherKey)
	if err := client.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "not 127.0.0.1") {
		t.Errorf("a certificate for 127.0.0.9 taken for 127.0.0.1: %v", err)
	}
}

// rotateClusterCA is TestTLSCAFileRotatedWithoutRestart on a TLS cluster
// whose certificates oldCA signed: every node moves to a certificate of a
// new CA.
func rotateClusterCA(t *testing.T, oldCA *redistest.PKI, cl *redistest.Cluster) {
	ctx := context.Background()
	cert, key := oldCA.Issue(t, "routerd")
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	replaceFile(t, caFile, caBundle(t, oldCA))
	client := open(t, cl.URL(), Options{Cluster: true, TLS: TLSFiles{CA: caFile, Cert: cert, Key: key}})
	setAll := func(v string) error {
		for i := 0; i < 30; i++ { // keys on every master
			if err := client.Set(ctx, "key-"+strconv.Itoa(i), v, 0).Err(); err != nil {
				return err
			}
		}
		return nil
	}
	if err := setAll("v"); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}

	newCA := redistest.NewPKI(t)
	replaceFile(t, caFile, caBundle(t, oldCA, newCA))
	// The nodes verify one another on the cluster bus: they trust the
	// new CA before any of them presents a certificate it signed.
	nodeCA := filepath.Join(t.TempDir(), "nodes-ca.crt")
	replaceFile(t, nodeCA, caBundle(t, oldCA, newCA))
	admins := make([]*redis.Client, len(cl.Nodes))
	for i, n := range cl.Nodes {
		admins[i] = tlsAdmin(t, n.Addr, cl.TLS, oldCA, newCA)
		if err := admins[i].ConfigSet(ctx, "tls-ca-cert-file", nodeCA).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range cl.Nodes {
		host, _, _ := strings.Cut(n.Addr, ":")
		srvCert, srvKey := newCA.Issue(t, "node"+strconv.Itoa(i), host)
		serveCert(t, admins[i], srvCert, srvKey)
	}
	if err := setAll("v2"); err != nil {
		t.Fatalf("the first commands after every node's certificate moved to the new CA: %v", err)
	}

	// Each node is still verified under its own address. A node's
	// client does not retry: its first command after the kill may meet
	// the closed connection, the next one dials.
	otherCert, otherKey := newCA.Issue(t, "node0", "127.0.0.9")
	serveCert(t, admins[0], otherCert, otherKey)
	var last error
	if err := redistest.Wait(ctx, 10*time.Second, "node 0 refused", func() bool {
		last = client.(*redis.ClusterClient).ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			return m.Ping(ctx).Err()
		})
		return last != nil && strings.Contains(last.Error(), "not "+strings.Split(cl.Addrs[0], ":")[0])
	}); err != nil {
		t.Errorf("a node's certificate for 127.0.0.9 taken for %s: %v", cl.Addrs[0], last)
	}
}
