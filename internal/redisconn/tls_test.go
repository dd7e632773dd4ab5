package redisconn

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
)

func open(t *testing.T, urls string, o Options) redis.UniversalClient {
	t.Helper()
	c, err := OpenWith(urls, o)
	if err != nil {
		t.Fatalf("OpenWith(%q): %v", urls, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A server that requires client certificates (tls-auth-clients yes) takes
// a client with the CA and a certificate of its own, and refuses one
// without a certificate, or without the CA, with an error that says so.
func TestTLSStandaloneClientCertificates(t *testing.T) {
	pki := redistest.NewPKI(t)
	s := redistest.StartTLS(t, pki)
	cert, key := pki.Issue(t, "routerd")
	ctx := context.Background()

	c := open(t, s.URL, Options{TLS: TLSFiles{CA: pki.CAFile, Cert: cert, Key: key}})
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("with CA and client certificate: %v", err)
	}

	// However the refusal reaches the client (an alert on the first read, a
	// reset or a broken pipe on the first write: the alert is lost then, and
	// the error can only say what may be missing), the error says what is
	// missing.
	// Several tries, since which form it takes is a race.
	for i := 0; i < 5; i++ {
		err := open(t, s.URL, Options{TLS: TLSFiles{CA: pki.CAFile}}).Ping(ctx).Err()
		if err == nil || !strings.Contains(err.Error(), "the server asks for a TLS client certificate and none is configured") &&
			!strings.Contains(err.Error(), "(the server closed the connection; if it asks for a TLS client certificate, none is configured") {
			t.Errorf("without a client certificate: %v, want it to say the server asked for one", err)
		}
	}
	err := open(t, s.URL, Options{TLS: TLSFiles{Cert: cert, Key: key}}).Ping(ctx).Err()
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("without the CA: %v, want an unknown authority", err)
	}
	// A certificate for another name fails, whatever the CA.
	err = open(t, s.URL, Options{TLS: TLSFiles{CA: pki.CAFile, Cert: cert, Key: key, ServerName: "other.example"}}).Ping(ctx).Err()
	if err == nil || !strings.Contains(err.Error(), "other.example") {
		t.Errorf("verified under another name: %v", err)
	}
}

// resetProxy forwards TCP connections to upstream and resets the client's
// side of them (SO_LINGER 0, then close: an RST) when told to.
type resetProxy struct {
	ln       net.Listener
	upstream string
	mu       sync.Mutex
	open     []*net.TCPConn
	// atFinished resets each new connection when its client sends for the
	// second time: in TLS 1.3 that is its Finished, the client's handshake
	// is over and the server's check of it is not, where a server that
	// wants the certificate the client did not give closes the connection.
	atFinished bool
}

func startResetProxy(t *testing.T, upstream string) *resetProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &resetProxy{ln: ln, upstream: upstream}
	t.Cleanup(func() { ln.Close(); p.resetOpen() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c.(*net.TCPConn))
		}
	}()
	return p
}

func (p *resetProxy) serve(c *net.TCPConn) {
	u, err := net.Dial("tcp", p.upstream)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.open = append(p.open, c)
	atFinished := p.atFinished
	p.mu.Unlock()
	go func() { _, _ = io.Copy(c, u); c.Close() }()
	buf := make([]byte, 64<<10)
	for sends := 1; ; sends++ {
		n, err := c.Read(buf)
		if err != nil || atFinished && sends == 2 {
			_ = c.SetLinger(0)
			c.Close()
			u.Close()
			return
		}
		if _, err := u.Write(buf[:n]); err != nil {
			c.Close()
			return
		}
	}
}

// resetOpen resets every connection open.
func (p *resetProxy) resetOpen() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.open {
		_ = c.SetLinger(0)
		c.Close()
	}
	p.open = nil
}

// The hint that a server may want a client certificate is for a connection
// the server has not answered yet: a reset of one that has answered (a
// load balancer, a firewall, a proxy dropping it) says nothing about
// certificates and keeps its bare error. A reset on a new connection whose
// handshake the client has finished, before any answer, keeps the hint.
func TestCertHintOnlyBeforeTheFirstAnswer(t *testing.T) {
	pki := redistest.NewPKI(t)
	s := redistest.StartTLS(t, pki, "--tls-auth-clients", "no")
	proxy := startResetProxy(t, s.Addr)
	ctx := context.Background()
	c := open(t, "rediss://"+proxy.ln.Addr().String()+"?max_retries=-1&pool_size=1", Options{TLS: TLSFiles{CA: pki.CAFile}})
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("a server that asks for no certificate: %v", err)
	}
	proxy.resetOpen()
	err := c.Ping(ctx).Err()
	if err == nil || !strings.Contains(err.Error(), "connection reset by peer") {
		t.Fatalf("the established connection reset: %v, want a reset", err)
	}
	if strings.Contains(err.Error(), "certificate") {
		t.Errorf("the reset of a connection the server had answered: %v, want no word of certificates", err)
	}

	proxy.mu.Lock()
	proxy.atFinished = true
	proxy.mu.Unlock()
	err = c.Ping(ctx).Err()
	if err == nil || !strings.Contains(err.Error(), "(the server closed the connection; if it asks for a TLS client certificate, none is configured") {
		t.Errorf("a new connection reset after its handshake, before any answer: %v, want the hint", err)
	}
}

// Every node of a TLS cluster is verified under its own address. Each
// node's certificate is valid for its own loopback address only
// (127.0.0.1, .2, .3): had the first seed's name been used for every node,
// the second and third would fail verification.
func TestTLSClusterVerifiesEachNode(t *testing.T) {
	pki := redistest.NewPKI(t)
	cl := redistest.StartClusterTLS(t, pki, 3, 0)
	cert, key := pki.Issue(t, "routerd")
	ctx := context.Background()
	for _, seeds := range []string{cl.URL(), "rediss://" + cl.Addrs[0]} {
		c := open(t, seeds, Options{Cluster: true, TLS: TLSFiles{CA: pki.CAFile, Cert: cert, Key: key}})
		// Keys on every master: each one's connection is verified.
		for i := 0; i < 30; i++ {
			if err := c.Set(ctx, fmt.Sprintf("key-%d", i), "v", 0).Err(); err != nil {
				t.Fatalf("seeds %s: SET key-%d: %v", seeds, i, err)
			}
		}
		var n atomic.Int32 // ForEachMaster calls back concurrently
		err := c.(*redis.ClusterClient).ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			n.Add(1)
			return m.Ping(ctx).Err()
		})
		if err != nil || n.Load() != 3 {
			t.Errorf("seeds %s: %d masters reached: %v", seeds, n.Load(), err)
		}
	}
	// A node is not trusted for a name it holds no certificate for.
	c := open(t, cl.URL(), Options{Cluster: true, TLS: TLSFiles{CA: pki.CAFile, Cert: cert, Key: key, ServerName: "127.0.0.9"}})
	if err := c.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "127.0.0.9") {
		t.Errorf("every node verified under a name none has: %v", err)
	}
	t.Run("CAFileRotatedWithoutRestart", func(t *testing.T) { rotateClusterCA(t, pki, cl) })
}

// skip_verify=true is taken (standalone and cluster) and logged as a warning.
func TestSkipVerifyWarns(t *testing.T) {
	for _, o := range []Options{{}, {Cluster: true}} {
		var logs bytes.Buffer
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c := open(t, "rediss://u:s3cret@127.0.0.1:1?skip_verify=true", o)
		var insecure bool
		if cc, ok := c.(*redis.ClusterClient); ok {
			insecure = cc.Options().TLSConfig.InsecureSkipVerify
		} else {
			insecure = c.(*redis.Client).Options().TLSConfig.InsecureSkipVerify
		}
		if !insecure || !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "not verified") {
			t.Errorf("cluster %v: skip_verify %v, log %q", o.Cluster, insecure, logs.String())
		}
		if strings.Contains(logs.String(), "s3cret") {
			t.Errorf("the warning shows the password: %s", logs.String())
		}
	}
}

func TestPasswordFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("pw", "s3cret\n")
	for _, cluster := range []bool{false, true} {
		c := open(t, "redis://routerd@127.0.0.1:1", Options{Cluster: cluster, PasswordFile: good})
		var user, pw string
		if cc, ok := c.(*redis.ClusterClient); ok {
			user, pw = cc.Options().Username, cc.Options().Password
		} else {
			user, pw = c.(*redis.Client).Options().Username, c.(*redis.Client).Options().Password
		}
		if user != "routerd" || pw != "s3cret" {
			t.Errorf("cluster %v: user %q password %q", cluster, user, pw)
		}
	}
	for _, tc := range []struct {
		url, file, want string
	}{
		{"redis://u:other@127.0.0.1:1", good, "has a password and a password file"},
		{"redis://127.0.0.1:1", write("empty", "\n"), "is empty"},
		{"redis://127.0.0.1:1", write("two", "a\nb\n"), "more than one line"},
		{"redis://127.0.0.1:1", filepath.Join(dir, "missing"), "no such file"},
	} {
		_, err := OpenWith(tc.url, Options{PasswordFile: tc.file})
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "other") {
			t.Errorf("%s with %s: %v, want %q", tc.url, tc.file, err, tc.want)
		}
	}
}

func TestTLSFilesRefused(t *testing.T) {
	pki := redistest.NewPKI(t)
	cert, key := pki.Issue(t, "c")
	notPEM := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		url   string
		files TLSFiles
		want  string
	}{
		{"redis://:s3cret@127.0.0.1:1", TLSFiles{CA: pki.CAFile}, "is not rediss://"},
		{"rediss://127.0.0.1:1", TLSFiles{Cert: cert}, "give both files or neither"},
		{"rediss://127.0.0.1:1", TLSFiles{Key: key}, "give both files or neither"},
		{"rediss://127.0.0.1:1", TLSFiles{Cert: key, Key: key}, "TLS client certificate"},
		{"rediss://127.0.0.1:1", TLSFiles{CA: notPEM}, "no PEM certificate"},
		{"rediss://127.0.0.1:1", TLSFiles{CA: notPEM + ".missing"}, "no such file"},
	} {
		for _, cluster := range []bool{false, true} {
			_, err := OpenWith(tc.url, Options{Cluster: cluster, TLS: tc.files})
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cret") {
				t.Errorf("%s %+v cluster %v: %v, want %q", tc.url, tc.files, cluster, err, tc.want)
			}
		}
	}
}

// A bad URL's error names the rule it breaks and never the password,
// whether or not the URL parses far enough to find one.
func TestBadURLsHidePasswords(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want string
	}{
		{"redis://u:s3cret@h:bad", "port"},
		{"redis://:s3cret@h:bad", "port"},
		{"redis://u:s3cret@h:1/x", "d"},
		{"u:s3cret@h:1", "scheme"},
		{"redis://u:s3%63ret@h:bad", "port"},
		{"redis://u:s3cret@h:1?pool_size=x", "pool_size"},
		{"http://u:s3cret@h:1", "scheme"},
		{"redis://u:s3cret@[::1", "']'"},
	} {
		for _, cluster := range []bool{false, true} {
			_, err := OpenWith(tc.url, Options{Cluster: cluster})
			if err == nil {
				t.Errorf("%q cluster %v: accepted", tc.url, cluster)
				continue
			}
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "s3%63ret") {
				t.Errorf("%q cluster %v: the password shows: %v", tc.url, cluster, err)
			}
			if !strings.Contains(err.Error(), tc.want) && !strings.Contains(err.Error(), "unexpected option") {
				t.Errorf("%q cluster %v: %v, want it to say %q", tc.url, cluster, err, tc.want)
			}
		}
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"redis://u:pw@h:1":         "redis://u:***@h:1",
		"rediss://:pw@h:1/2?x=1":   "rediss://:***@h:1/2?x=1",
		"redis://h:1":              "redis://h:1",
		"redis://pw@h:1":           "redis://***@h:1",
		"u:pw@h:1":                 "u:***@h:1",
		"redis://u:p@w@h:1":        "redis://u:***@h:1",
		"redis://u:pw@h:1?a=b@c":   "redis://u:***@c",
		"redis://u:pw@h:1,redis:h": "redis://u:***@h:1,redis:h",
	} {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// The value of a password= query parameter (a Sentinel URL's data servers'
// password; on any other URL an unknown option, still a password) is hidden
// as the user information's is.
func TestRedactQueryPasswords(t *testing.T) {
	for in, want := range map[string]string{
		"redis://h:1?master_name=m&password=pw":               "redis://h:1?master_name=m&password=***",
		"redis://:s@h:1?password=pw&x=1#f":                    "redis://:***@h:1?password=***&x=1#f",
		"redis://h:1?PASSWORD=pw&sentinel_password=spw":       "redis://h:1?PASSWORD=***&sentinel_password=***",
		"redis://h:1?pass%77ord=pw":                           "redis://h:1?pass%77ord=***",
		"redis://h:1?password=&x=password":                    "redis://h:1?password=&x=password",
		"redis://h:1?x=1,redis://h:2?password=pw,redis://h:3": "redis://h:1?x=1,redis://h:2?password=***",
	} {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzOpenHidesPassword: whatever the rest of the URL, an error from
// OpenWith and the redacted URL never hold the password.
func FuzzOpenHidesPassword(f *testing.F) {
	f.Add("redis://u:", "s3cret", "@h:bad")
	f.Add("rediss://:", "pa%2Fss", "@h:1/9?pool_size=x")
	f.Add("", "s3cretpw", "@[::1")
	f.Fuzz(func(t *testing.T, head, pw, tail string) {
		// The password must not stand elsewhere in the URL, quoted or not.
		if len(pw) < 6 || strings.ContainsAny(pw, "@:/?#,") || strings.Contains(fmt.Sprintf("%q %s", head+tail, head+tail), pw) {
			return
		}
		u := head + pw + tail
		if !strings.Contains(tail, "@") || !strings.HasSuffix(head, ":") || strings.Contains(head, "@") || strings.Contains(tail, ",") {
			return
		}
		if strings.Contains(redact(u), pw) {
			t.Errorf("redact(%q) = %q", u, redact(u))
		}
		for _, cluster := range []bool{false, true} {
			c, err := OpenWith(u, Options{Cluster: cluster})
			if err != nil {
				if strings.Contains(err.Error(), pw) {
					t.Errorf("OpenWith(%q): %v", u, err)
				}
				continue
			}
			c.Close()
		}
	})
}
