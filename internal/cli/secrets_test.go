package cli

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/tagstore"
)

// runCLIEnv runs a command in-process with an environment and returns its
// exit code and stdout and stderr together.
func runCLIEnv(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	var out, errb syncBuffer
	code := Main(context.Background(), args, Env{Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }})
	return code, out.String() + errb.String()
}

// A password in a URL, given on the command line or in the environment,
// appears nowhere in what a command prints: not in the usage text (where a
// flag's default from the environment used to be printed), not in the
// error of a URL that does not parse (where net/url quotes the whole URL).
func TestPasswordsNeverPrinted(t *testing.T) {
	const secret = "s3cretPW"
	withEnv := map[string]string{
		"ROUTERD_REDIS_URL":       "redis://u:" + secret + "@127.0.0.1:1",
		"ROUTERD_CACHE_REDIS_URL": "redis://u:" + secret + "@127.0.0.1:2",
		"ROUTERD_DELIVER":         "https://u:" + secret + "@127.0.0.1:3/hook",
		"ROUTERD_MATRIX":          "../../matrix.yaml",
	}
	badEnv := map[string]string{
		"ROUTERD_REDIS_URL":       "redis://u:" + secret + "@127.0.0.1:bad",
		"ROUTERD_CACHE_REDIS_URL": "redis://:" + secret + "@127.0.0.1:bad",
		"ROUTERD_MATRIX":          "../../matrix.yaml",
	}
	bad := []string{
		"redis://u:" + secret + "@h:bad",
		"redis://:" + secret + "@h:bad",
		"redis://u:" + secret + "@h:1/x",
		"u:" + secret + "@h:1",
		"redis://u:" + secret + "@[::1",
		"redis://u:" + secret + "@h:1?no_such_option=1",
		"rediss://u:" + secret + "@h:1,redis://u:other@h:2",
		// Sentinel URLs: the data servers' password is password= in the query.
		"redis://h:1?master_name=m&password=" + secret + "&no_such_option=1",
		"redis://h:1?master_name=m&password=" + secret + "&route_randomly=true",
		"redis://:" + secret + "@h:1?master_name=m,redis://h:2",
		"rediss://h:1?master_name=&password=" + secret,
	}
	args := map[string][]string{
		"serve":      {"--listen", "127.0.0.1:0"},
		"agent":      {"--service", "search-svc", "--listen", "127.0.0.1:0"},
		"publish":    {"--tenant", "acme", "--domain", "user"},
		"tail":       {"--tenant", "acme", "--tag", "active"},
		"invalidate": {"--tenant", "acme", "--tag", "active"},
		"compact":    {"--tenant", "acme", "--tag", "active"},
		"doctor":     {},
	}
	check := func(what, out string) {
		t.Helper()
		if strings.Contains(out, secret) {
			t.Errorf("%s printed the password:\n%s", what, out)
		}
	}
	_, out := runCLIEnv(t, withEnv, "-h")
	check("routerd -h", out)
	for cmd, extra := range args {
		// Usage text, asked for and after a usage error, with the URLs in
		// the environment.
		code, out := runCLIEnv(t, withEnv, cmd, "-h")
		check(cmd+" -h", out)
		if code != 0 || !strings.Contains(out, "ROUTERD_REDIS_URL") && !strings.Contains(out, "ROUTERD_CACHE_REDIS_URL") {
			t.Errorf("%s -h: exit %d\n%s", cmd, code, out)
		}
		_, out = runCLIEnv(t, withEnv, cmd, "--no-such-flag")
		check(cmd+" --no-such-flag", out)
		_, out = runCLIEnv(t, withEnv, cmd, "extra-argument")
		check(cmd+" extra-argument", out)

		// URLs that do not parse, in the environment and on the command line.
		code, out = runCLIEnv(t, badEnv, append([]string{cmd}, extra...)...)
		check(cmd+" with a bad URL in the environment", out)
		if code != 1 || !strings.Contains(out, "port") {
			t.Errorf("%s with a bad URL in the environment: exit %d, want the port named\n%s", cmd, code, out)
		}
		for _, u := range bad {
			a := append([]string{cmd, "--redis", u}, extra...)
			if cmd == "agent" {
				a = append(a, "--cache-redis", u, "--matrix", "../../matrix.yaml")
			}
			if cmd == "serve" {
				a = append(a, "--matrix", "../../matrix.yaml")
			}
			code, out := runCLIEnv(t, nil, a...)
			check(cmd+" --redis "+u, out)
			if code != 1 || !strings.Contains(out, "redis URL") {
				t.Errorf("%s --redis %s: exit %d\n%s", cmd, u, code, out)
			}
		}
	}
}

// A password reaches none of what the daemons and commands print while
// they work: logs, doctor's report, metrics, traces (the console exporter),
// the deliver target's errors. The bus's password comes from the URL, the
// cache's from a file (--cache-redis-password-file), as a container secret
// would.
func TestPasswordsStayOutOfLogsMetricsAndTraces(t *testing.T) {
	const busPW, cachePW, hookPW = "busS3cretPW", "cacheS3cretPW", "hookS3cretPW"
	ctx := context.Background()
	bus, cache := redistest.Start(t), redistest.Start(t)
	must(t, bus.Client(t).ConfigSet(ctx, "requirepass", busPW).Err())
	must(t, cache.Client(t).ConfigSet(ctx, "requirepass", cachePW).Err())
	pwFile := filepath.Join(t.TempDir(), "cache-password")
	must(t, os.WriteFile(pwFile, []byte(cachePW+"\n"), 0o600))
	busURL := "redis://default:" + busPW + "@" + bus.Addr
	console := func(k string) string {
		if k == "OTEL_TRACES_EXPORTER" {
			return "console"
		}
		return ""
	}
	serveOut, serveErr := daemonEnv(t, nil, console, "serve", "--matrix", "../../matrix.yaml", "--redis", busURL, "--listen", anyPort, "--log-level", "debug")
	// A deliver target that refuses its first request: the error is logged.
	var calls atomic.Int64
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if calls.Add(1) == 1 {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(hook.Close)
	agentOut, agentErr := daemonEnv(t, nil, console, "agent", "--matrix", "../../matrix.yaml", "--redis", busURL,
		"--cache-redis", "redis://"+cache.Addr, "--cache-redis-password-file", pwFile,
		"--deliver", strings.Replace(hook.URL, "http://", "http://u:"+hookPW+"@", 1)+"/hook",
		"--service", "search-svc", "--listen", anyPort, "--log-level", "debug")
	defer func() {
		if t.Failed() {
			t.Logf("serve:\n%s\nagent:\n%s", serveErr.String(), agentErr.String())
		}
	}()
	serveAddr, agentAddr := listening(t, serveErr), listening(t, agentErr)
	waitReady(t, serveAddr)
	waitReady(t, agentAddr)
	cacheClient := redis.NewClient(&redis.Options{Addr: cache.Addr, Password: cachePW})
	t.Cleanup(func() { cacheClient.Close() })
	store, err := tagstore.New(cacheClient, tagstore.Options{})
	must(t, err)
	must(t, store.Set(ctx, "acme", "user:1", []byte("x"), 0, "active"))
	var pubOut syncBuffer
	if code := Main(ctx, []string{"publish", "--redis", busURL, "--tenant", "acme", "--domain", "user", "--keys", "user:1"},
		Env{Stdout: &pubOut, Stderr: &pubOut, Getenv: console}); code != 0 {
		t.Fatalf("publish: exit %d\n%s", code, pubOut.String())
	}
	redistest.Eventually(t, 20*time.Second, "user:1 invalidated", func() bool {
		_, err := store.Get(ctx, "acme", "user:1")
		return err != nil
	})
	redistest.Eventually(t, 20*time.Second, "the refused delivery logged", func() bool {
		return strings.Contains(agentErr.String(), "503")
	})
	_, serveMetrics := get(t, "http://"+serveAddr+"/metrics")
	_, agentMetrics := get(t, "http://"+agentAddr+"/metrics")
	code, doctorOut := runCLIEnv(t, nil, "doctor", "--redis", busURL)
	if code == 2 {
		t.Errorf("doctor: usage error\n%s", doctorOut)
	}
	_, wrongPW := runCLIEnv(t, nil, "publish", "--redis", "redis://default:wrong"+busPW+"@"+bus.Addr, "--tenant", "acme", "--domain", "user")
	for name, out := range map[string]string{
		"serve stdout (traces)": serveOut.String(), "serve stderr (logs)": serveErr.String(),
		"agent stdout (traces)": agentOut.String(), "agent stderr (logs)": agentErr.String(),
		"publish": pubOut.String(), "serve metrics": serveMetrics, "agent metrics": agentMetrics,
		"doctor": doctorOut, "publish with a wrong password": wrongPW,
	} {
		for _, pw := range []string{busPW, cachePW, hookPW} {
			if strings.Contains(out, pw) {
				t.Errorf("%s shows a password:\n%s", name, grep(out, pw))
			}
		}
	}
	if !strings.Contains(agentOut.String(), "TraceID") || !strings.Contains(doctorOut, "version") {
		t.Errorf("nothing to look at: traces %d bytes, doctor %q", len(agentOut.String()), doctorOut)
	}
}
