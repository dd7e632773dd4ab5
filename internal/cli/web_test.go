package cli

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/routerd/routerd/internal/redistest"
)

func post(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "", nil)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// POST /-/reload changes what the router does, so, as in Prometheus, it is
// served only with --enable-lifecycle; without it the answer is 403 and
// names the flag.
func TestReloadNeedsEnableLifecycle(t *testing.T) {
	bus := redistest.Start(t)
	closedLog := daemon(t, nil, "serve", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	openLog := daemon(t, nil, "serve", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort, "--enable-lifecycle", "--consumer", "second")
	closed, open := listening(t, closedLog), listening(t, openLog)
	waitReady(t, closed)
	waitReady(t, open)
	if code, body := post(t, "http://"+closed+"/-/reload"); code != http.StatusForbidden || !strings.Contains(body, "--enable-lifecycle") {
		t.Errorf("POST /-/reload without --enable-lifecycle: %d %q, want 403 naming the flag", code, body)
	}
	if code, body := post(t, "http://"+open+"/-/reload"); code != http.StatusOK || body != "reloaded\n" {
		t.Errorf("POST /-/reload with --enable-lifecycle: %d %q", code, body)
	}
}

// --web-config-file (prometheus/exporter-toolkit) puts the HTTP endpoints
// of serve and agent behind TLS and basic auth: without credentials
// /metrics, /healthz and /-/reload answer 401, with them 200; plain HTTP
// gets no metrics.
func TestWebConfigFile(t *testing.T) {
	bus, cache := redistest.Start(t), redistest.Start(t)
	pki := redistest.NewPKI(t)
	cert, key := pki.Issue(t, "routerd-web", "127.0.0.1")
	hash, err := bcrypt.GenerateFromPassword([]byte("scrape-pw"), bcrypt.MinCost)
	must(t, err)
	dir := t.TempDir()
	webConfig := filepath.Join(dir, "web.yml")
	must(t, os.WriteFile(webConfig, []byte("tls_server_config:\n  cert_file: "+cert+"\n  key_file: "+key+
		"\nbasic_auth_users:\n  prometheus: "+string(hash)+"\n"), 0o600))
	serveLog := daemon(t, nil, "serve", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort,
		"--web-config-file", webConfig, "--enable-lifecycle")
	agentEnv := map[string]string{"ROUTERD_AGENT_WEB_CONFIG_FILE": webConfig}
	_, agentLog := daemonEnv(t, nil, func(k string) string { return agentEnv[k] }, "agent", "--matrix", "../../matrix.yaml",
		"--redis", bus.URL, "--cache-redis", cache.URL, "--service", "search-svc", "--listen", anyPort)
	serveAddr, agentAddr := listening(t, serveLog), listening(t, agentLog)

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}, Timeout: 10 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	do := func(method, url string, auth bool) int {
		req, err := http.NewRequest(method, url, nil)
		must(t, err)
		if auth {
			req.SetBasicAuth("prometheus", "scrape-pw")
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	for _, addr := range []string{serveAddr, agentAddr} {
		redistest.Eventually(t, 20*time.Second, addr+" ready over HTTPS", func() bool {
			return do("GET", "https://"+addr+"/readyz", true) == 200
		})
		for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
			if code := do("GET", "https://"+addr+path, false); code != http.StatusUnauthorized {
				t.Errorf("GET %s%s without credentials: %d, want 401", addr, path, code)
			}
			if code := do("GET", "https://"+addr+path, true); code != http.StatusOK {
				t.Errorf("GET %s%s with credentials: %d, want 200", addr, path, code)
			}
		}
		if code, _ := get(t, "http://"+addr+"/metrics"); code == http.StatusOK {
			t.Errorf("GET %s/metrics over plain HTTP: 200", addr)
		}
	}
	if code := do("POST", "https://"+serveAddr+"/-/reload", false); code != http.StatusUnauthorized {
		t.Errorf("POST /-/reload without credentials: %d, want 401", code)
	}
	if code := do("POST", "https://"+serveAddr+"/-/reload", true); code != http.StatusOK {
		t.Errorf("POST /-/reload with credentials: %d, want 200", code)
	}
	for name, log := range map[string]string{"serve": serveLog.String(), "agent": agentLog.String()} {
		if !strings.Contains(log, "TLS is enabled.") {
			t.Errorf("%s does not log that TLS is on:\n%s", name, log)
		}
	}
}

// A web configuration file that cannot be used stops serve and agent at
// start, naming the flag, before they connect to anything.
func TestBadWebConfigFile(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "web.yml")
	must(t, os.WriteFile(bad, []byte("tls_server_config:\n  cert_file: "+filepath.Join(dir, "missing.crt")+"\n  key_file: "+filepath.Join(dir, "missing.key")+"\n"), 0o600))
	for _, args := range [][]string{
		{"serve", "--matrix", "../../matrix.yaml", "--redis", "redis://127.0.0.1:1", "--web-config-file", bad},
		{"agent", "--matrix", "../../matrix.yaml", "--redis", "redis://127.0.0.1:1", "--cache-redis", "redis://127.0.0.1:1", "--service", "search-svc", "--web-config-file", bad},
		{"serve", "--matrix", "../../matrix.yaml", "--redis", "redis://127.0.0.1:1", "--web-config-file", filepath.Join(dir, "none.yml")},
	} {
		code, out, errs := runCLI(t, args...)
		if code != 1 || !strings.Contains(errs, "--web-config-file") {
			t.Errorf("%v: exit %d\n%s%s", args, code, out, errs)
		}
	}
}

// probe exits 0 on a 2xx /readyz and 1 with the body (the reason) on
// anything else: the health check of the distroless image.
func TestProbe(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready: cache Redis refuses", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	}))
	defer srv.Close()
	if code, out, errs := runCLI(t, "probe", srv.URL+"/readyz"); code != 0 || !strings.Contains(out, "200 OK: ready") {
		t.Errorf("probe of a ready endpoint: exit %d %q %q", code, out, errs)
	}
	ready.Store(false)
	if code, _, errs := runCLI(t, "probe", srv.URL+"/readyz"); code != 1 || !strings.Contains(errs, "503 Service Unavailable: not ready: cache Redis refuses") {
		t.Errorf("probe of an unready endpoint: exit %d %q", code, errs)
	}
	if code, _, errs := runCLI(t, "probe", "localhost:9464"); code != 2 || !strings.Contains(errs, "must start with http://") {
		t.Errorf("probe without a scheme: exit %d %q", code, errs)
	}
}
