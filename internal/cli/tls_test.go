package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/tagstore"
)

// waitReady waits for a daemon's /readyz over plain HTTP.
func waitReady(t *testing.T, addr string) {
	t.Helper()
	redistest.Eventually(t, 20*time.Second, addr+" ready", func() bool {
		code, _ := get(t, "http://"+addr+"/readyz")
		return code == 200
	})
}

// publishAndSeeInvalidated sets key under tag active in the cache, publishes
// a change of the user with args, and waits until the key is gone.
func publishAndSeeInvalidated(t *testing.T, store *tagstore.Store, key string, args ...string) {
	t.Helper()
	ctx := context.Background()
	must(t, store.Set(ctx, "acme", key, []byte("x"), 0, "active"))
	a := append([]string{"publish", "--tenant", "acme", "--domain", "user", "--keys", key}, args...)
	if code, out, errs := runCLI(t, a...); code != 0 {
		t.Fatalf("publish: exit %d\n%s%s", code, out, errs)
	}
	redistest.Eventually(t, 20*time.Second, key+" invalidated", func() bool {
		_, err := store.Get(ctx, "acme", key)
		return err != nil
	})
}

// The whole path over TLS with client certificates (tls-auth-clients yes)
// on a standalone bus and cache: serve with --tls-* flags, the agent with
// ROUTERD_TLS_* in its environment and the cache taking the bus's files,
// publish with flags. A client without a certificate, or without the CA,
// is refused with an error that says why.
func TestTLSWholePathStandalone(t *testing.T) {
	pki := redistest.NewPKI(t)
	bus, cache := redistest.StartTLS(t, pki), redistest.StartTLS(t, pki)
	cert, key := pki.Issue(t, "routerd")
	tlsArgs := []string{"--tls-ca", pki.CAFile, "--tls-cert", cert, "--tls-key", key}
	serveLog := daemon(t, nil, append([]string{"serve", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort}, tlsArgs...)...)
	env := map[string]string{"ROUTERD_TLS_CA": pki.CAFile, "ROUTERD_TLS_CERT": cert, "ROUTERD_TLS_KEY": key}
	_, agentLog := daemonEnv(t, nil, func(k string) string { return env[k] }, "agent", "--matrix", "../../matrix.yaml", "--redis", bus.URL,
		"--cache-redis", cache.URL, "--service", "search-svc", "--listen", anyPort, "--check-interval", "1h")
	serveAddr, agentAddr := listening(t, serveLog), listening(t, agentLog)
	waitReady(t, serveAddr)
	waitReady(t, agentAddr)
	store, err := tagstore.New(cache.Client(t), tagstore.Options{})
	must(t, err)
	publishAndSeeInvalidated(t, store, "user:1", append([]string{"--redis", bus.URL}, tlsArgs...)...)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no client certificate", []string{"--tls-ca", pki.CAFile}, "the server asks for a TLS client certificate and none is configured"},
		{"no CA", []string{"--tls-cert", cert, "--tls-key", key}, "certificate signed by unknown authority"},
		{"plain TCP", nil, ""},
	} {
		u := bus.URL
		if tc.args == nil {
			u = strings.Replace(u, "rediss://", "redis://", 1)
		}
		code, out, errs := runCLI(t, append([]string{"publish", "--redis", u, "--tenant", "acme", "--domain", "user", "--keys", "k"}, tc.args...)...)
		if code != 1 || !strings.Contains(errs, tc.want) {
			t.Errorf("publish with %s: exit %d, want 1 and %q\n%s%s", tc.name, code, tc.want, out, errs)
		}
	}
	// A URL that is not rediss:// with TLS files is a mistake, not plain TCP.
	code, _, errs := runCLI(t, append([]string{"publish", "--redis", strings.Replace(bus.URL, "rediss://", "redis://", 1),
		"--tenant", "acme", "--domain", "user"}, tlsArgs...)...)
	if code != 1 || !strings.Contains(errs, "is not rediss://") {
		t.Errorf("TLS files with a redis:// URL: exit %d %q", code, errs)
	}
}

// The whole path on a TLS cluster whose nodes each hold a certificate for
// their own address only (127.0.0.1, .2, .3): serve, agent and publish
// with --cluster verify every node under its own address. The agent's cache
// is signed by another CA and takes its own files (--cache-tls-*).
func TestTLSWholePathCluster(t *testing.T) {
	pki, cachePKI := redistest.NewPKI(t), redistest.NewPKI(t)
	cl := redistest.StartClusterTLS(t, pki, 3, 0)
	cache := redistest.StartTLS(t, cachePKI)
	cert, key := pki.Issue(t, "routerd")
	cacheCert, cacheKey := cachePKI.Issue(t, "agent")
	tlsArgs := []string{"--cluster", "--tls-ca", pki.CAFile, "--tls-cert", cert, "--tls-key", key}
	serveLog := daemon(t, nil, append([]string{"serve", "--matrix", "../../matrix.yaml", "--redis", cl.URL(), "--listen", anyPort}, tlsArgs...)...)
	agentLog := daemon(t, nil, append([]string{"agent", "--matrix", "../../matrix.yaml", "--redis", cl.URL(), "--service", "search-svc",
		"--listen", anyPort, "--check-interval", "1h",
		"--cache-redis", cache.URL, "--cache-tls-ca", cachePKI.CAFile, "--cache-tls-cert", cacheCert, "--cache-tls-key", cacheKey}, tlsArgs...)...)
	serveAddr, agentAddr := listening(t, serveLog), listening(t, agentLog)
	waitReady(t, serveAddr)
	waitReady(t, agentAddr)
	store, err := tagstore.New(cache.Client(t), tagstore.Options{})
	must(t, err)
	// Events on several partitions, so on several nodes.
	for _, k := range []string{"user:1", "user:2", "user:3", "user:4"} {
		publishAndSeeInvalidated(t, store, k, append([]string{"--redis", cl.URL()}, tlsArgs...)...)
	}
	code, _, errs := runCLI(t, "publish", "--redis", cl.URL(), "--cluster", "--tls-ca", pki.CAFile, "--tenant", "acme", "--domain", "user")
	if code != 1 || !strings.Contains(errs, "the server asks for a TLS client certificate") {
		t.Errorf("publish to the cluster without a client certificate: exit %d %q", code, errs)
	}
	// The bus's files do not open the cache, signed by another CA.
	code, _, errs = runCLI(t, "invalidate", "--redis", cache.URL, "--tenant", "acme", "--tag", "active",
		"--tls-ca", pki.CAFile, "--tls-cert", cert, "--tls-key", key)
	if code != 1 || !strings.Contains(errs, "certificate signed by unknown authority") {
		t.Errorf("the bus's CA for the cache: exit %d %q", code, errs)
	}
}
