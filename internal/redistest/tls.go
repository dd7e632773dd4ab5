package redistest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// PKI is a certificate authority made for one test: an ECDSA CA, and the
// certificates it signs for servers and clients, as PEM files in Dir.
type PKI struct {
	Dir    string
	CAFile string         // the CA certificate, PEM
	Pool   *x509.CertPool // the CA, for tls.Config.RootCAs
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	serial int64
}

// NewPKI makes a CA in a temporary directory.
func NewPKI(tb testing.TB) *PKI {
	tb.Helper()
	p := &PKI{Dir: tb.TempDir()}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "routerd test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	if p.ca, err = x509.ParseCertificate(der); err != nil {
		tb.Fatal(err)
	}
	p.caKey, p.serial = key, 1
	p.CAFile = filepath.Join(p.Dir, "ca.crt")
	if err := writePEM(p.CAFile, "CERTIFICATE", der); err != nil {
		tb.Fatal(err)
	}
	p.Pool = x509.NewCertPool()
	p.Pool.AddCert(p.ca)
	return p
}

// Issue writes a certificate signed by the CA for name, valid for server
// and client authentication at the given IP addresses, and its key; it
// returns the two files.
func (p *PKI) Issue(tb testing.TB, name string, ips ...string) (certFile, keyFile string) {
	tb.Helper()
	certFile, keyFile, err := p.issue(name, ips...)
	if err != nil {
		tb.Fatal(err)
	}
	return certFile, keyFile
}

func (p *PKI) issue(name string, ips ...string) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile = filepath.Join(p.Dir, fmt.Sprintf("%s-%d.crt", name, p.serial))
	keyFile = filepath.Join(p.Dir, fmt.Sprintf("%s-%d.key", name, p.serial))
	if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
		return "", "", err
	}
	return certFile, keyFile, writePEM(keyFile, "EC PRIVATE KEY", keyDER)
}

// ClientConfig returns a client TLS configuration that trusts the CA and
// presents a client certificate of its own. Each server is verified under
// the address it is dialled at.
func (p *PKI) ClientConfig(tb testing.TB) *tls.Config {
	tb.Helper()
	certFile, keyFile := p.Issue(tb, "test-client")
	return p.clientConfig(certFile, keyFile, tb)
}

func (p *PKI) clientConfig(certFile, keyFile string, tb testing.TB) *tls.Config {
	kp, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		tb.Fatal(err)
	}
	return &tls.Config{RootCAs: p.Pool, Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// tlsFiles are a TLS server's files.
type tlsFiles struct{ cert, key, ca string }

// args listen with TLS only on port and require a client certificate
// signed by the CA.
func (f *tlsFiles) args(port string) []string {
	return []string{"--port", "0", "--tls-port", port, "--tls-cert-file", f.cert, "--tls-key-file", f.key,
		"--tls-ca-cert-file", f.ca, "--tls-auth-clients", "yes"}
}

// StartTLS runs a standalone redis-server that speaks TLS only and
// requires a client certificate signed by p (tls-auth-clients yes). Its
// certificate is valid for 127.0.0.1; URL is rediss://127.0.0.1:port and
// Client connects with a client certificate of p.
func StartTLS(tb testing.TB, p *PKI, args ...string) *Server {
	tb.Helper()
	Binary(tb)
	cert, key := p.Issue(tb, "redis-server", "127.0.0.1")
	s, err := launchTLS(tb.TempDir(), "127.0.0.1", &tlsFiles{cert, key, p.CAFile}, p.ClientConfig(tb), args)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

func launchTLS(dir, host string, f *tlsFiles, client *tls.Config, args []string) (*Server, error) {
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePortOn(host)
		if err != nil {
			return nil, err
		}
		s := &Server{Addr: net.JoinHostPort(host, strconv.Itoa(port)), Dir: dir, args: args, tlsf: f, TLS: client}
		s.URL = "rediss://" + s.Addr
		if lastErr = s.start(); lastErr == nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("could not start redis-server with TLS: %v", lastErr)
}

func freePortOn(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartClusterTLS is StartCluster over TLS with client certificates: the
// cluster bus and replication use TLS too, and node i listens on its own
// loopback address 127.0.0.(i+1) with a certificate valid for that address
// only, so a client that verified every node under the first seed's name
// would fail on the others. URL is the rediss:// seed list, TLS the client
// configuration.
func StartClusterTLS(tb testing.TB, p *PKI, masters, replicas int) *Cluster {
	tb.Helper()
	Binary(tb)
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		tb.Fatalf("redis-cli is not installed: run `apt-get install -y redis-tools`")
	}
	clientCert, clientKey := p.Issue(tb, "test-client")
	c := &Cluster{TLS: p.clientConfig(clientCert, clientKey, tb)}
	tb.Cleanup(c.Stop)
	dir := tb.TempDir()
	for i := 0; i < masters*(1+replicas); i++ {
		host := "127.0.0." + strconv.Itoa(i+1)
		cert, key := p.Issue(tb, "node"+strconv.Itoa(i), host)
		s, err := launchTLS(dir, host, &tlsFiles{cert, key, p.CAFile}, c.TLS, []string{
			// Outgoing cluster bus connections from the node's own address,
			// or the others would record it as 127.0.0.1.
			"--bind-source-addr", host, "--tls-cluster", "yes", "--tls-replication", "yes",
			"--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
			"--cluster-config-file", fmt.Sprintf("nodes-%d-%d.conf", os.Getpid(), prefixSeq.Add(1))})
		if err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		c.Nodes = append(c.Nodes, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}
	args := append([]string{"--tls", "--cacert", p.CAFile, "--cert", clientCert, "--key", clientKey, "--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		tb.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !c.ready(replicas) {
		if time.Now().After(deadline) {
			tb.Fatalf("redistest: no cluster_state:ok on every node and every replica in sync within 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c
}
