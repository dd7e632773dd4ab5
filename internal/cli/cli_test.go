package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/routerd/routerd/internal/faultproxy"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/tagstore"
)

func TestMain(m *testing.M) {
	// The health tests' fault proxies (toxiproxy) end their links'
	// goroutines a while after the links close: theirs are not checked.
	opts := append(faultproxy.IgnoreLinks(), goleak.Cleanup(func(code int) {
		if err := testbin.Cleanup(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(code)
	}))
	goleak.VerifyTestMain(m, opts...)
}

// syncBuffer is testbin.Buffer: written by a process or a logger while the test reads.
type syncBuffer = testbin.Buffer

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb syncBuffer
	code = Main(context.Background(), args, Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	return code, out.String(), errb.String()
}

func TestValidate(t *testing.T) {
	code, out, _ := runCLI(t, "validate", "../../matrix.yaml")
	if code != 0 || !strings.Contains(out, "ok: 2 domains, 2 tags, 2 services") {
		t.Errorf("validate good: %d %q", code, out)
	}
	code, _, errs := runCLI(t, "validate", "../../matrix/testdata/bad/references.yaml")
	lines := strings.Split(strings.TrimSpace(errs), "\n")
	if code != 1 || len(lines) != 4 || !strings.HasPrefix(lines[0], "../../matrix/testdata/bad/references.yaml:3:36: ") {
		t.Errorf("validate bad: %d %q", code, errs)
	}
}

func TestRoute(t *testing.T) {
	code, out, _ := runCLI(t, "route", "--matrix", "../../matrix.yaml", "--tenant", "acme", "--domain", "product")
	if code != 0 || !strings.Contains(out, "invalidate:acme:electronics  search-svc") || !strings.Contains(out, "20ms") {
		t.Errorf("route: %d\n%s", code, out)
	}
	// The global budget is one bucket on the bus, shared by every router
	// (docs/limits.md), not a budget of each.
	if !strings.Contains(out, "shared budget of all tenants (every routerd together): 10000/s, burst 20000") || strings.Contains(out, "per routerd") {
		t.Errorf("route does not say the global budget is shared by every router:\n%s", out)
	}
	code, out, _ = runCLI(t, "route", "--matrix", "../../matrix.yaml", "--tenant", "umbrella", "--domain", "product", "--json")
	if code != 0 || !strings.Contains(out, `"channel": "invalidate:umbrella:active"`) || strings.Contains(out, "electronics") {
		t.Errorf("route --json: %d\n%s", code, out)
	}
	code, _, errs := runCLI(t, "route", "--matrix", "../../matrix.yaml", "--tenant", "acme", "--domain", "order")
	if code != 1 || !strings.Contains(errs, `domain "order" is not in`) {
		t.Errorf("unknown domain: %d %q", code, errs)
	}
}

func TestMatrixDiff(t *testing.T) {
	code, out, _ := runCLI(t, "matrix", "diff", "../../matrix.yaml", "../../matrix/testdata/good/design.yaml")
	if code != 0 || !strings.Contains(out, "~ tenant budget 1000/s burst 2000 → none") {
		t.Errorf("matrix diff: %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "matrix", "diff", "../../matrix.yaml", "../../matrix.yaml")
	if code != 0 || !strings.Contains(out, "no change") {
		t.Errorf("matrix diff of a file with itself: %d %q", code, out)
	}
	if code, _, _ := runCLI(t, "matrix", "diff", "../../matrix.yaml", "../../matrix/testdata/bad/values.yaml"); code != 1 {
		t.Errorf("diff against a bad matrix: exit %d", code)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{}, {"frobnicate"}, {"route", "--tenant", "acme"}, {"publish", "--redis", "redis://x"}, {"validate"}, {"serve", "extra"},
	} {
		if code, _, _ := runCLI(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	code, _, errs := runCLI(t, "publish", "--redis", "redis://127.0.0.1:1", "--tenant", "a:b", "--domain", "user")
	if code != 1 || !strings.Contains(errs, "tenant") {
		t.Errorf("invalid tenant: %d %q", code, errs)
	}
	// --keys that names nothing is refused; only leaving it out means whole tags.
	for _, keys := range []string{"", " , "} {
		code, _, errs = runCLI(t, "publish", "--redis", "redis://127.0.0.1:1", "--tenant", "acme", "--domain", "user", "--keys", keys)
		if code != 1 || !strings.Contains(errs, "omit --keys to invalidate whole tags") {
			t.Errorf("--keys %q: %d %q", keys, code, errs)
		}
	}
}

func TestEnvironmentSuppliesURLs(t *testing.T) {
	var out, errb syncBuffer
	env := Env{Stdout: &out, Stderr: &errb, Getenv: func(k string) string {
		if k == "ROUTERD_MATRIX" {
			return "../../matrix.yaml"
		}
		return ""
	}}
	if code := Main(context.Background(), []string{"route", "--tenant", "acme", "--domain", "user"}, env); code != 0 {
		t.Errorf("route with ROUTERD_MATRIX: %d %s", code, errb.String())
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// daemon runs a long-lived command until the test ends and returns its stderr.
func daemon(t *testing.T, reload chan struct{}, args ...string) *syncBuffer {
	t.Helper()
	_, errb := daemonEnv(t, reload, func(string) string { return "" }, args...)
	return errb
}

// daemonEnv runs a long-lived command with an environment and returns its
// stdout and stderr.
func daemonEnv(t *testing.T, reload chan struct{}, getenv func(string) string, args ...string) (*syncBuffer, *syncBuffer) {
	t.Helper()
	var out, errb syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, args, Env{Stdout: &out, Stderr: &errb, Getenv: getenv, Reload: reload})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("%s exited %d: %s", args[0], code, errb.String())
			}
		case <-time.After(15 * time.Second):
			t.Errorf("%s did not stop", args[0])
		}
	})
	return &out, &errb
}

// anyPort makes a daemon listen on a port picked as it binds; listening
// reads it back from the daemon's log (testbin.AnyPort says why).
const anyPort = testbin.AnyPort

// listening waits for a daemon started with --listen anyPort to log the
// address it listens on and returns it.
func listening(t *testing.T, log *syncBuffer) string {
	t.Helper()
	return testbin.ListenAddr(t, log.String)
}

// The daemons end to end: serve and agent from the command line, an event
// from `routerd publish`, keys gone from the cache, `routerd tail` printing
// the message; then a bad matrix on SIGHUP is refused and a good one via
// POST /-/reload routes a new domain at once.
func TestServeAgentPublishTailReload(t *testing.T) {
	bus, cache := redistest.Start(t), redistest.Start(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "matrix.yaml")
	orig, err := os.ReadFile("../../matrix.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	reload := make(chan struct{}, 1)
	serveLog := daemon(t, reload, "serve", "--matrix", path, "--redis", bus.URL, "--listen", anyPort, "--enable-lifecycle")
	agentReload := make(chan struct{}, 1)
	// --matrix-poll 1h: the agent sees the file change through fsnotify.
	agentLog := daemon(t, agentReload, "agent", "--matrix", path, "--redis", bus.URL, "--cache-redis", cache.URL, "--service", "search-svc",
		"--listen", anyPort, "--check-interval", "1h", "--matrix-poll", "1h")
	serveAddr, agentAddr := listening(t, serveLog), listening(t, agentLog)
	for _, addr := range []string{serveAddr, agentAddr} {
		redistest.Eventually(t, 10*time.Second, addr+" ready", func() bool {
			code, _ := get(t, "http://"+addr+"/readyz")
			return code == 200
		})
	}
	var tailOut, tailErr syncBuffer
	tailCtx, stopTail := context.WithCancel(context.Background())
	tailDone := make(chan struct{})
	go func() {
		defer close(tailDone)
		Main(tailCtx, []string{"tail", "--redis", bus.URL, "--tenant", "acme", "--tag", "active"}, Env{Stdout: &tailOut, Stderr: &tailErr, Getenv: func(string) string { return "" }})
	}()
	defer func() { stopTail(); <-tailDone }()
	defer func() {
		if t.Failed() {
			t.Logf("tail stderr: %s", tailErr.String())
		}
	}()
	redistest.Eventually(t, 10*time.Second, "tail subscribed", func() bool {
		return strings.Contains(tailErr.String(), "tailing invalidate:acme:active") // printed once subscribed
	})

	store, err := tagstore.New(cache.Client(t), tagstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	gone := func(key string) func() bool {
		return func() bool { _, err := store.Get(ctx, "acme", key); return err != nil }
	}
	must(t, store.Set(ctx, "acme", "user:1", []byte("x"), 0, "active"))
	if code, out, errs := runCLI(t, "publish", "--redis", bus.URL, "--tenant", "acme", "--domain", "user", "--keys", "user:1"); code != 0 {
		t.Fatalf("publish: %d %s %s", code, out, errs)
	}
	redistest.Eventually(t, 10*time.Second, "user:1 invalidated", gone("user:1"))
	redistest.Eventually(t, 10*time.Second, "tail printed the message", func() bool {
		return strings.Contains(tailOut.String(), `"version":1,"tenant":"acme","tag":"active","keys":["user:1"]`)
	})
	_, metrics := get(t, "http://"+agentAddr+"/metrics")
	if !strings.Contains(metrics, `cache_invalidation_keys_total{status="SUCCESS",tag="active"} 1`) {
		t.Errorf("agent metrics lack the invalidation:\n%s", grep(metrics, "cache_invalidation_keys_total"))
	}

	// A bad matrix on SIGHUP is refused by both daemons; the running one
	// keeps routing.
	must(t, os.WriteFile(path, []byte("version: 1\ntags: {x: {services: [ghost]}}\n"), 0o644))
	reload <- struct{}{}
	agentReload <- struct{}{}
	redistest.Eventually(t, 10*time.Second, "refusal logged", func() bool {
		return strings.Contains(serveLog.String(), `undefined service \"ghost\"`)
	})
	_, metrics = get(t, "http://"+serveAddr+"/metrics")
	if !strings.Contains(metrics, "routerd_matrix_last_reload_successful 0") {
		t.Errorf("reload failure not exported:\n%s", grep(metrics, "routerd_matrix"))
	}
	redistest.Eventually(t, 10*time.Second, "the agent's refusal exported", func() bool {
		_, metrics := get(t, "http://"+agentAddr+"/metrics")
		return strings.Contains(metrics, "subscriber_matrix_last_reload_successful 0")
	})
	must(t, store.Set(ctx, "acme", "user:2", []byte("x"), 0, "active"))
	runCLI(t, "publish", "--redis", bus.URL, "--tenant", "acme", "--domain", "user", "--keys", "user:2")
	redistest.Eventually(t, 10*time.Second, "user:2 invalidated under the old matrix", gone("user:2"))

	// A good matrix with a new domain and tag via POST /-/reload routes at
	// once, and the running agent, watching the file, subscribes to the tag.
	good := strings.Replace(string(orig), "  user:    {tags: [active]}", "  user:    {tags: [active]}\n  account: {tags: [accounts]}", 1)
	good = strings.Replace(good, "  active:      {services: [profile-svc, search-svc]}", "  active:      {services: [profile-svc, search-svc]}\n  accounts:    {services: [search-svc]}", 1)
	must(t, os.WriteFile(path, []byte(good), 0o644))
	resp, err := http.Post("http://"+serveAddr+"/-/reload", "", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST /-/reload: %v %v", resp, err)
	}
	resp.Body.Close()
	redistest.Eventually(t, 10*time.Second, "the agent subscribed to the new tag", func() bool {
		n, _ := bus.Client(t).PubSubNumSub(ctx, "invalidate:acme:accounts").Result()
		return n["invalidate:acme:accounts"] == 1
	})
	must(t, store.Set(ctx, "acme", "account:1", []byte("x"), 0, "accounts"))
	must(t, store.Set(ctx, "acme", "account:2", []byte("x"), 0, "accounts"))
	runCLI(t, "publish", "--redis", bus.URL, "--tenant", "acme", "--domain", "account", "--keys", "account:1")
	redistest.Eventually(t, 10*time.Second, "account:1 invalidated under the new matrix", gone("account:1"))
	if gone("account:2")() {
		t.Error("account:2 deleted: the new tag was not applied key by key")
	}

	code, out, _ := runCLI(t, "invalidate", "--redis", cache.URL, "--tenant", "acme", "--tag", "active")
	if code != 0 || !strings.HasPrefix(out, "EMPTY_TAG_SET") {
		t.Errorf("invalidate: %d %q", code, out)
	}
	must(t, store.Set(ctx, "acme", "gone", []byte("x"), 0, "active"))
	must(t, store.Set(ctx, "acme", "kept", []byte("x"), 0, "active"))
	must(t, cache.Client(t).Del(ctx, "{tenant:acme}:gone").Err()) // as if expired
	code, out, _ = runCLI(t, "compact", "--redis", cache.URL, "--tenant", "acme", "--tag", "active")
	if code != 0 || !strings.HasPrefix(out, "1 member whose key no longer exists removed") {
		t.Errorf("compact: %d %q", code, out)
	}
}

// doctor fails on a Redis that can evict tag sets and passes a sound one.
func TestDoctor(t *testing.T) {
	lru := redistest.Start(t, "--maxmemory-policy", "allkeys-lru")
	code, out, _ := runCLI(t, "doctor", "--redis", lru.URL)
	if code != 1 || !strings.Contains(out, "FAIL  eviction") || !strings.Contains(out, "allkeys-lru") {
		t.Errorf("doctor on allkeys-lru: exit %d\n%s", code, out)
	}
	sound := redistest.Start(t, "--maxmemory-policy", "noeviction")
	store, err := tagstore.New(sound.Client(t), tagstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A tag's size counts its plain values and those registered by ref
	// (kept in a set of their own) together, as the guard does.
	for i := 0; i < 450; i++ {
		if i%3 == 0 {
			_, err := store.SetRefs(context.Background(), "acme", "k"+strconv.Itoa(i), []byte("v"), 0, []string{"big"}, []tagstore.Ref{{Domain: "user", Entity: strconv.Itoa(i)}})
			must(t, err)
			continue
		}
		must(t, store.Set(context.Background(), "acme", "k"+strconv.Itoa(i), []byte("v"), 0, "big"))
	}
	code, out, _ = runCLI(t, "doctor", "--redis", sound.URL, "--cardinality-guard", "500")
	if code != 0 || !strings.Contains(out, "ok    version") || !strings.Contains(out, "{tenant:acme}:tag:big (450)") {
		t.Errorf("doctor on a sound Redis: exit %d\n%s", code, out)
	}
	// Without an append-only file, a bus loses acknowledged ingress entries
	// on a restart: a warning with the setting; with it, nothing to say.
	if !strings.Contains(out, "appendonly yes") {
		t.Errorf("doctor on a Redis without persistence does not say so:\n%s", out)
	}
	must(t, sound.Client(t).ConfigSet(context.Background(), "appendonly", "yes").Err())
	code, out, _ = runCLI(t, "doctor", "--redis", sound.URL, "--cardinality-guard", "500")
	if code != 0 || !strings.Contains(out, "append-only file on") {
		t.Errorf("doctor on a Redis with persistence: exit %d\n%s", code, out)
	}
	if strings.Contains(out, "a reference set expires") {
		t.Errorf("doctor warns of evicted reference sets under noeviction:\n%s", out)
	}

	// With entity references in use, a volatile-* policy may evict a
	// reference set (it expires with its values) before its values: a
	// warning naming the fix.
	must(t, sound.Client(t).ConfigSet(context.Background(), "maxmemory-policy", "volatile-lru").Err())
	code, out, _ = runCLI(t, "doctor", "--redis", sound.URL, "--cardinality-guard", "500")
	if code != 0 || !strings.Contains(out, "warn  eviction") || !strings.Contains(out, "a reference set expires") || !strings.Contains(out, "noeviction") {
		t.Errorf("doctor on volatile-lru with references: exit %d\n%s", code, out)
	}
}

// doctor reports, with the fix, streams under the ingress prefix that no
// router reads, under the prefix it is given.
func TestDoctorReportsUnreadIngressStreams(t *testing.T) {
	bus := redistest.Start(t, "--maxmemory-policy", "noeviction")
	c := bus.Client(t)
	ctx := context.Background()
	for _, prefix := range []string{"invalidate", "app"} {
		must(t, c.Set(ctx, prefix+":ingress:partitions", 2, 0).Err())
		for p := 0; p < 2; p++ {
			must(t, c.XGroupCreateMkStream(ctx, prefix+":ingress:{"+strconv.Itoa(p)+"}", "routerd", "0").Err())
		}
	}
	event := []any{"event", `{"tenant":"acme","domain":"user"}`}
	must(t, c.XAdd(ctx, &redis.XAddArgs{Stream: "invalidate:ingress:7", Values: event}).Err())
	must(t, c.XAdd(ctx, &redis.XAddArgs{Stream: "app:ingress:{x}", Values: event}).Err())

	code, out, _ := runCLI(t, "doctor", "--redis", bus.URL)
	if code != 1 || !strings.Contains(out, "FAIL  ingress") || !strings.Contains(out, "invalidate:ingress:7") ||
		!strings.Contains(out, "invalidate:ingress:{7}") || strings.Contains(out, "app:ingress") {
		t.Errorf("doctor with an unbraced partition: exit %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "doctor", "--redis", bus.URL, "--prefix", "app")
	if code != 1 || !strings.Contains(out, "app:ingress:{x}") || strings.Contains(out, "invalidate:ingress:7") {
		t.Errorf("doctor --prefix app with a malformed partition: exit %d\n%s", code, out)
	}
	must(t, c.Del(ctx, "invalidate:ingress:7").Err())
	if code, out, _ = runCLI(t, "doctor", "--redis", bus.URL); code != 0 {
		t.Errorf("doctor once the stream is gone: exit %d\n%s", code, out)
	}
}

// doctor says so when it cannot read the partition count (a user without
// GET, as the router's; a value that is not a count), instead of reporting
// "0 partitions" as if the count were zero, and still checks the partition
// streams it found.
func TestDoctorSaysWhenThePartitionCountIsUnreadable(t *testing.T) {
	bus := redistest.Start(t, "--maxmemory-policy", "noeviction")
	c := bus.Client(t)
	ctx := context.Background()
	for p := 0; p < 2; p++ {
		must(t, c.XGroupCreateMkStream(ctx, "invalidate:ingress:{"+strconv.Itoa(p)+"}", "routerd", "0").Err())
	}
	must(t, c.Set(ctx, "invalidate:ingress:partitions", "two", 0).Err())
	code, out, _ := runCLI(t, "doctor", "--redis", bus.URL)
	if code != 0 || !strings.Contains(out, "warn  ingress") || !strings.Contains(out, "cannot read invalidate:ingress:partitions") ||
		!strings.Contains(out, "2 partition streams") || strings.Contains(out, "0 partitions") {
		t.Errorf("doctor with a partition count that is not a number: exit %d\n%s", code, out)
	}
	must(t, c.Set(ctx, "invalidate:ingress:partitions", 2, 0).Err())
	must(t, c.Do(ctx, "ACL", "SETUSER", "noget", "on", ">pw", "~*", "&*", "+@all", "-get").Err())
	noGet := strings.Replace(bus.URL, "redis://", "redis://noget:pw@", 1)
	code, out, _ = runCLI(t, "doctor", "--redis", noGet)
	if code != 0 || !strings.Contains(out, "cannot read invalidate:ingress:partitions") || !strings.Contains(out, "NOPERM") ||
		strings.Contains(out, "0 partitions") {
		t.Errorf("doctor as a user without GET: exit %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "doctor", "--redis", bus.URL)
	if code != 0 || !strings.Contains(out, "ok    ingress") || !strings.Contains(out, "2 partitions (2 streams)") {
		t.Errorf("doctor with a readable count: exit %d\n%s", code, out)
	}
}

// doctor reports the bus's pattern subscriptions and their cost: none is
// ok, and a client's patterns are a warning that names the count.
func TestDoctorReportsPatternSubscriptions(t *testing.T) {
	bus := redistest.Start(t, "--maxmemory-policy", "noeviction")
	code, out, _ := runCLI(t, "doctor", "--redis", bus.URL)
	if code != 0 || !strings.Contains(out, "ok    pubsub") || !strings.Contains(out, "no pattern subscription") {
		t.Errorf("doctor on a bus without patterns: exit %d\n%s", code, out)
	}
	ctx := context.Background()
	ps := bus.Client(t).PSubscribe(ctx, "invalidate:*:a", "invalidate:*:b", "other:*")
	defer ps.Close()
	for i := 0; i < 3; i++ {
		if _, err := ps.Receive(ctx); err != nil { // the three psubscribe confirmations
			t.Fatal(err)
		}
	}
	code, out, _ = runCLI(t, "doctor", "--redis", bus.URL)
	if code != 0 || !strings.Contains(out, "warn  pubsub") || !strings.Contains(out, "3 pattern subscriptions") ||
		!strings.Contains(out, "every PUBLISH") || !strings.Contains(out, "held by 1 client (") || !strings.Contains(out, "psub=3") {
		t.Errorf("doctor on a bus with three patterns: exit %d\n%s", code, out)
	}
}

// One trace runs from the publishing service through routerd to the
// subscriber: the console exporter of each prints spans of the same trace id.
func TestOneTraceAcrossServices(t *testing.T) {
	bus, cache := redistest.Start(t), redistest.Start(t)
	console := func(k string) string {
		if k == "OTEL_TRACES_EXPORTER" {
			return "console"
		}
		return ""
	}
	serveOut, serveLog := daemonEnv(t, nil, console, "serve", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	// The router ready first, as in a system that runs: an agent whose
	// first check finds no bus generation (no router ever ran) takes the
	// first message of a channel as a whole tag, which carries no trace.
	serveAddr := listening(t, serveLog)
	redistest.Eventually(t, 10*time.Second, "router ready", func() bool {
		code, _ := get(t, "http://"+serveAddr+"/readyz")
		return code == 200
	})
	agentOut, agentLog := daemonEnv(t, nil, console, "agent", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--cache-redis", cache.URL,
		"--service", "search-svc", "--listen", anyPort)
	agentAddr := listening(t, agentLog)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", agentLog.String())
		}
	})
	redistest.Eventually(t, 10*time.Second, "agent ready", func() bool {
		code, _ := get(t, "http://"+agentAddr+"/readyz")
		return code == 200
	})
	var out syncBuffer
	code := Main(context.Background(), []string{"publish", "--redis", bus.URL, "--tenant", "acme", "--domain", "product", "--keys", "product:1"},
		Env{Stdout: &out, Stderr: io.Discard, Getenv: console})
	if code != 0 {
		t.Fatalf("publish exited %d", code)
	}
	m := regexp.MustCompile(`"TraceID":\s*"([0-9a-f]{32})"`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no span printed by publish:\n%s", out.String())
	}
	traceID := m[1]
	redistest.Eventually(t, 10*time.Second, "the agent's invalidate spans in the publisher's trace", func() bool {
		return strings.Count(agentOut.String(), traceID) >= 2 // one span per channel: electronics and active
	})
	for name, b := range map[string]*syncBuffer{"publish": &out, "serve": serveOut, "agent": agentOut} {
		if !strings.Contains(b.String(), traceID) {
			t.Errorf("%s printed no span of trace %s", name, traceID)
		}
	}
	for _, want := range []string{`"Name":"route"`, `"Name":"channel publish"`, `"Key":"cache.tag"`} {
		if !strings.Contains(serveOut.String(), want) {
			t.Errorf("serve spans lack %s", want)
		}
	}
	for _, want := range []string{`"Name":"invalidate"`, `{"Key":"cache.operation","Value":{"Type":"STRING","Value":"bulk_invalidate"}}`, `"Key":"cache.tag"`} {
		if !strings.Contains(agentOut.String(), want) {
			t.Errorf("agent spans lack %s", want)
		}
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
