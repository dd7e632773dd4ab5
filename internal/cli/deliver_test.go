package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
)

// receiver is a service's HTTP endpoint for `agent --deliver`: it records
// the objects it accepts, and answers 500 to the requests whose numbers
// (from 1) are in fail.
type receiver struct {
	mu       sync.Mutex
	requests int
	fail     map[int]bool
	down     bool // answer 503 to everything
	got      []delivered
}

// delivered is one object as the process sees it.
type delivered struct {
	Reset       bool     `json:"reset"`
	Tenant      string   `json:"tenant"`
	Tag         string   `json:"tag"`
	Keys        []string `json:"keys"`
	WholeTag    bool     `json:"whole_tag"`
	Version     int64    `json:"version"`
	Epoch       string   `json:"epoch"`
	Event       string   `json:"event"`
	Traceparent string   `json:"traceparent"`
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if r.down || r.fail[r.requests] {
		http.Error(w, "not now", http.StatusInternalServerError)
		return
	}
	var d delivered
	if err := json.Unmarshal(body, &d); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.got = append(r.got, d)
}

func (r *receiver) objects() []delivered {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func (r *receiver) setDown(down bool) {
	r.mu.Lock()
	r.down = down
	r.mu.Unlock()
}

// agentRun is an agent run in-process that the test can stop (as a kill of
// the process would, its deferred work aside) and start again.
type agentRun struct {
	cancel context.CancelFunc
	done   chan int
	out    *syncBuffer
	errb   *syncBuffer
	addr   string
}

// deliverRig starts a bus with routerd serve on it, a cache Redis and a
// receiver of deliveries: what an agent with --deliver and a cache needs,
// and the arguments to start one with.
func deliverRig(t *testing.T) (bus, cache *redistest.Server, rcv *receiver, args []string) {
	t.Helper()
	bus, cache = redistest.Start(t), redistest.Start(t)
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	rcv = &receiver{}
	srv := httptest.NewServer(rcv)
	t.Cleanup(srv.Close)
	return bus, cache, rcv, []string{"--redis", bus.URL, "--cache-redis", cache.URL, "--deliver", srv.URL}
}

func startAgent(t *testing.T, args ...string) *agentRun {
	t.Helper()
	a := &agentRun{done: make(chan int, 1), out: &syncBuffer{}, errb: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	args = append([]string{"agent", "--listen", anyPort, "--matrix", "../../matrix.yaml", "--service", "search-svc"}, args...)
	go func() {
		a.done <- Main(ctx, args, Env{Stdout: a.out, Stderr: a.errb, Getenv: func(string) string { return "" }})
	}()
	t.Cleanup(func() { a.stop(t) })
	a.addr = listening(t, a.errb)
	return a
}

func (a *agentRun) stop(t *testing.T) {
	t.Helper()
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.cancel = nil
	select {
	case code := <-a.done:
		if code != 0 {
			t.Errorf("agent exited %d: %s", code, a.errb.String())
		}
	case <-time.After(20 * time.Second):
		t.Errorf("agent did not stop: %s", a.errb.String())
	}
}

// waitDelivered waits until the agent counts as delivered every object the
// receiver recorded: the receiver records one before it answers, and an
// agent stopped before it read the answer abandons that delivery (the
// next start delivers a reset), which is not the clean stop a test means.
func (a *agentRun) waitDelivered(t *testing.T, rcv *receiver) {
	t.Helper()
	redistest.Eventually(t, 10*time.Second, "the agent took the receiver's answers", func() bool {
		_, metrics := get(t, "http://"+a.addr+"/metrics")
		want := fmt.Sprintf(`subscriber_deliveries_total{outcome="delivered"} %d`, len(rcv.objects()))
		return strings.Contains(metrics, want+"\n")
	})
}

func (a *agentRun) waitReady(t *testing.T) {
	t.Helper()
	redistest.Eventually(t, 15*time.Second, "agent ready", func() bool {
		code, _ := get(t, "http://"+a.addr+"/readyz")
		return code == 200
	})
}

func publishKeys(t *testing.T, busURL, domain string, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if code, out, errs := runCLI(t, "publish", "--redis", busURL, "--tenant", "acme", "--domain", domain, "--keys", k); code != 0 {
			t.Fatalf("publish %s: %d %s %s", k, code, out, errs)
		}
	}
}

// checkOrder checks the invalidations received: per channel the versions
// follow each other with none repeated or skipped (a reset starts afresh), and
// every key wanted arrived (or its tag was invalidated whole).
func checkOrder(t *testing.T, got []delivered, want map[string][]string) {
	t.Helper()
	last := map[string]int64{}
	keys := map[string]map[string]bool{}
	whole := map[string]bool{}
	for i, d := range got {
		if d.Reset { // the process dropped everything: a replay may follow
			clear(last)
			continue
		}
		ch := d.Tenant + ":" + d.Tag
		if last[ch] != 0 && d.Version != last[ch]+1 {
			t.Errorf("object %d: %s version %d after %d (repeated, out of order or skipped)", i, ch, d.Version, last[ch])
		}
		last[ch] = d.Version
		if d.Epoch == "" || (len(d.Keys) == 0) != d.WholeTag {
			t.Errorf("object %d: %+v: an epoch, and exactly one of keys and whole_tag, are required", i, d)
		}
		if keys[ch] == nil {
			keys[ch] = map[string]bool{}
		}
		for _, k := range d.Keys {
			keys[ch][k] = true
		}
		whole[ch] = whole[ch] || d.WholeTag
	}
	for ch, ks := range want {
		for _, k := range ks {
			if !keys[ch][k] && !whole[ch] {
				t.Errorf("%s: key %s never delivered", ch, k)
			}
		}
	}
}

func hasKeys(r *receiver, ch string, n int) func() bool {
	return func() bool {
		seen := map[string]bool{}
		for _, d := range r.objects() {
			if d.Tenant+":"+d.Tag == ch {
				for _, k := range d.Keys {
					seen[k] = true
				}
			}
		}
		return len(seen) >= n
	}
}

// `agent --deliver URL` without a cache: a reset first, then every
// invalidation of every channel exactly once and in order per channel,
// though the process answers 500 three times in the middle.
func TestDeliverHTTPInOrderThroughFailures(t *testing.T) {
	bus := redistest.Start(t)
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	rcv := &receiver{fail: map[int]bool{4: true, 5: true, 6: true}} // after the reset and two invalidations
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	a := startAgent(t, "--redis", bus.URL, "--deliver", srv.URL+"/invalidate")
	a.waitReady(t)

	var users, products []string
	for i := range 10 {
		users = append(users, fmt.Sprintf("user:%d", i))
		products = append(products, fmt.Sprintf("product:%d", i))
	}
	for i := range 10 { // interleaved: the active channel carries both domains
		publishKeys(t, bus.URL, "user", users[i])
		publishKeys(t, bus.URL, "product", products[i])
	}
	redistest.Eventually(t, 15*time.Second, "every key delivered", func() bool {
		return hasKeys(rcv, "acme:active", 20)() && hasKeys(rcv, "acme:electronics", 10)()
	})
	got := rcv.objects()
	if len(got) == 0 || !got[0].Reset {
		t.Fatalf("the first object is not a reset: %+v", got)
	}
	for i, d := range got[1:] {
		if d.Reset {
			t.Errorf("object %d: a second reset", i+1)
		}
	}
	checkOrder(t, got, map[string][]string{"acme:active": append(users, products...), "acme:electronics": products})
	for _, d := range got[1:] {
		if d.Event == "" {
			t.Errorf("%+v: the message's event id is missing", d)
		}
	}
	_, metrics := get(t, "http://"+a.addr+"/metrics")
	for _, want := range []string{`subscriber_deliveries_total{outcome="retried"} 3`, `subscriber_deliveries_total{outcome="failed"} 0`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s:\n%s", want, grep(metrics, "subscriber_deliveries_total"))
		}
	}
	a.stop(t)
	if !strings.Contains(a.errb.String(), "routerd agent stopped") || !strings.Contains(a.errb.String(), "delivered=") {
		t.Errorf("no shutdown summary:\n%s", a.errb.String())
	}
}

// An agent without positions that is stopped and started again delivers a
// reset first: it cannot know what the process missed while it was down.
func TestDeliverRestartWithoutPositionsResetsFirst(t *testing.T) {
	bus := redistest.Start(t)
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	rcv := &receiver{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	a := startAgent(t, "--redis", bus.URL, "--deliver", srv.URL)
	a.waitReady(t)
	publishKeys(t, bus.URL, "user", "user:1")
	redistest.Eventually(t, 10*time.Second, "user:1 delivered", hasKeys(rcv, "acme:active", 1))
	a.stop(t)
	publishKeys(t, bus.URL, "user", "user:2") // missed: nobody listens
	before := len(rcv.objects())
	b := startAgent(t, "--redis", bus.URL, "--deliver", srv.URL)
	b.waitReady(t)
	publishKeys(t, bus.URL, "user", "user:3")
	redistest.Eventually(t, 10*time.Second, "user:3 delivered", hasKeys(rcv, "acme:active", 2))
	got := rcv.objects()[before:]
	if len(got) == 0 || !got[0].Reset {
		t.Fatalf("the restarted agent did not deliver a reset first: %+v", got)
	}
}

// With a cache Redis and --deliver: the cache's positions continue a run
// that stopped with everything delivered (what was missed while down is
// replayed, no reset); a run that stopped with a delivery not made leaves
// the cache's positions ahead of the process, and the next start delivers a
// reset first.
func TestDeliverWithCacheResetsOnlyAfterAnUncleanStop(t *testing.T) {
	bus, cache := redistest.Start(t), redistest.Start(t)
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	rcv := &receiver{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	args := []string{"--redis", bus.URL, "--cache-redis", cache.URL, "--deliver", srv.URL}

	a := startAgent(t, args...)
	a.waitReady(t)
	publishKeys(t, bus.URL, "user", "user:1")
	redistest.Eventually(t, 10*time.Second, "user:1 delivered", hasKeys(rcv, "acme:active", 1))
	a.waitDelivered(t, rcv)
	a.stop(t)
	if got := rcv.objects(); !got[0].Reset {
		t.Errorf("the first agent on a cache never marked clean did not reset first: %+v", got)
	}
	if v, _ := cache.Client(t).Get(context.Background(), names.DeliveryKey("search-svc")).Result(); v != "clean" {
		t.Fatalf("a clean stop left the delivery mark %q", v)
	}

	// An agent without --deliver on the cache moves its positions without
	// telling the process: it takes the clean mark away.
	plain := startAgent(t, "--redis", bus.URL, "--cache-redis", cache.URL)
	plain.waitReady(t)
	if n, _ := cache.Client(t).Exists(context.Background(), names.DeliveryKey("search-svc")).Result(); n != 0 {
		t.Error("an agent without --deliver left the clean mark")
	}
	plain.stop(t)
	must(t, cache.Client(t).Set(context.Background(), names.DeliveryKey("search-svc"), "clean", 0).Err()) // as the first agent left it

	// Clean stop: what was published meanwhile is replayed, without a reset.
	publishKeys(t, bus.URL, "user", "user:2")
	before := len(rcv.objects())
	b := startAgent(t, args...)
	b.waitReady(t)
	// A running agent leaves no mark: were it killed now, the next start
	// would deliver a reset.
	if v, _ := cache.Client(t).Get(context.Background(), names.DeliveryKey("search-svc")).Result(); v == lua.DeliveryClean {
		t.Error("the clean mark is still there while an agent runs")
	}
	redistest.Eventually(t, 10*time.Second, "user:2 replayed", hasKeys(rcv, "acme:active", 2))
	for _, d := range rcv.objects()[before:] {
		if d.Reset {
			t.Error("a reset after a clean stop")
		}
	}
	checkOrder(t, rcv.objects(), map[string][]string{"acme:active": {"user:1", "user:2"}})

	// The process stops answering; the agent stops with user:3 applied to
	// the cache (its position recorded there) but not delivered.
	rcv.setDown(true)
	publishKeys(t, bus.URL, "user", "user:3")
	redistest.Eventually(t, 10*time.Second, "user:3 tried", func() bool {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		return rcv.requests > len(rcv.got)
	})
	b.stop(t)
	if !strings.Contains(b.errb.String(), "the next start delivers a reset") {
		t.Errorf("the unclean stop is not logged:\n%s", b.errb.String())
	}
	srv.Close() // waits for a request of b still in flight: it is refused
	rcv.setDown(false)
	srv2 := httptest.NewServer(rcv)
	defer srv2.Close()
	args[len(args)-1] = srv2.URL
	before = len(rcv.objects())
	c := startAgent(t, args...)
	c.waitReady(t)
	got := rcv.objects()[before:]
	if len(got) == 0 || !got[0].Reset {
		t.Fatalf("after a stop with a delivery not made, the first object is not a reset: %+v", got)
	}
}

// `agent --deliver -` writes the objects as JSON lines on stdout, and
// nothing else there.
func TestDeliverJSONLines(t *testing.T) {
	bus := redistest.Start(t)
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	a := startAgent(t, "--redis", bus.URL, "--deliver", "-", "--summary-interval", "100ms")
	a.waitReady(t)
	publishKeys(t, bus.URL, "product", "product:1", "product:2")
	lines := func() []string { return strings.Split(strings.TrimSuffix(a.out.String(), "\n"), "\n") }
	redistest.Eventually(t, 10*time.Second, "both products on each channel", func() bool {
		return strings.Count(a.out.String(), "product:2") >= 2
	})
	var got []delivered
	for _, l := range lines() {
		var d delivered
		if err := json.Unmarshal([]byte(l), &d); err != nil {
			t.Fatalf("stdout line %q is not a JSON object: %v", l, err)
		}
		got = append(got, d)
	}
	if lines()[0] != `{"reset":true}` {
		t.Errorf("first line = %s, want {\"reset\":true}", lines()[0])
	}
	checkOrder(t, got, map[string][]string{"acme:active": {"product:1", "product:2"}, "acme:electronics": {"product:1", "product:2"}})
	redistest.Eventually(t, 10*time.Second, "a summary line of what was applied", func() bool {
		return strings.Contains(a.errb.String(), "msg=applied invalidations=")
	})
}

// The agent refuses to start with nowhere to put invalidations, and a bad
// --deliver target, naming the flag.
func TestAgentFlags(t *testing.T) {
	code, _, errs := runCLI(t, "agent", "--redis", "redis://127.0.0.1:1", "--service", "search-svc", "--matrix", "../../matrix.yaml")
	if code != 2 || !strings.Contains(errs, "--cache-redis, --deliver or both are required") {
		t.Errorf("agent without a cache or a target: %d %q", code, errs)
	}
	for shard, want := range map[string]string{"0/0": "k must be 1 to", "2/2": "i must be 0 to 1", "a/b": "i is not a number", "1": "want i/k"} {
		code, _, errs = runCLI(t, "agent", "--redis", "redis://127.0.0.1:1", "--service", "search-svc", "--matrix", "../../matrix.yaml", "--cache-redis", "redis://127.0.0.1:1", "--tenant-shard", shard)
		if code != 2 || !strings.Contains(errs, "--tenant-shard") || !strings.Contains(errs, want) {
			t.Errorf("agent --tenant-shard %s: exit %d %q, want 2 and %q", shard, code, errs, want)
		}
	}
	code, _, errs = runCLI(t, "agent", "--redis", "redis://127.0.0.1:1", "--service", "search-svc", "--matrix", "../../matrix.yaml", "--deliver", "localhost:8080")
	if code != 1 || !strings.Contains(errs, "want an http:// or https:// URL, or - for stdout") {
		t.Errorf("agent --deliver localhost:8080: %d %q", code, errs)
	}
}

// An agent killed (SIGKILL) while the process does not answer has applied
// the invalidation to the cache Redis, its position recorded there, but not
// delivered it: the restarted agent must deliver a reset first, and then
// go on in order.
func TestDeliverKilledAgentResetsFirst(t *testing.T) {
	bin := testbin.Routerd(t)
	bus, cache := redistest.Start(t), redistest.Start(t)
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	for _, withCache := range []bool{true, false} {
		// A process of its own each time: one agent per process
		// (docs/protocol.md). The agent of the last round, still running,
		// delivers this round's events too, and its retry of the one
		// published while the process was down could land after this
		// round's later versions.
		rcv := &receiver{}
		srv := httptest.NewServer(rcv)
		start := func() (*exec.Cmd, *syncBuffer) {
			args := []string{"agent", "--matrix", "../../matrix.yaml", "--service", "search-svc", "--listen", anyPort,
				"--redis", bus.URL, "--deliver", srv.URL}
			if withCache {
				args = append(args, "--cache-redis", cache.URL)
			}
			var logs syncBuffer
			cmd := exec.Command(bin, args...)
			cmd.Stdout, cmd.Stderr = &logs, &logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			addr := listening(t, &logs)
			redistest.Eventually(t, 15*time.Second, "agent ready", func() bool {
				code, _ := get(t, "http://"+addr+"/readyz")
				return code == 200
			})
			return cmd, &logs
		}
		a, logs := start()
		rcv.setDown(true)
		publishKeys(t, bus.URL, "user", "user:killed")
		redistest.Eventually(t, 10*time.Second, "the delivery tried", func() bool {
			return strings.Contains(logs.String(), "delivery failed; retrying")
		})
		if err := a.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		_ = a.Wait()
		srv.Close() // waits for a request of the killed agent still in flight: it is refused
		rcv.setDown(false)
		srv = httptest.NewServer(rcv)
		defer srv.Close()
		before := len(rcv.objects())
		b, _ := start()
		publishKeys(t, bus.URL, "user", "user:after")
		redistest.Eventually(t, 10*time.Second, "user:after delivered", func() bool {
			for _, d := range rcv.objects()[before:] {
				if slices.Contains(d.Keys, "user:after") {
					return true
				}
			}
			return false
		})
		got := rcv.objects()[before:]
		if len(got) == 0 || !got[0].Reset {
			t.Errorf("cache %v: after a kill, the first object is not a reset: %+v", withCache, got)
		}
		checkOrder(t, got, nil)
		_ = b.Process.Kill()
		_ = b.Wait()
	}
}

// A cache Redis that refuses the delivery mark (a key of another type, a
// missing ACL permission) stops the agent with the reason, rather than
// retrying for ever.
func TestDeliverMarkRefused(t *testing.T) {
	bus, cache := redistest.Start(t), redistest.Start(t)
	must(t, cache.Client(t).LPush(context.Background(), names.DeliveryKey("search-svc"), "x").Err())
	code, _, errs := runCLI(t, "agent", "--matrix", "../../matrix.yaml", "--service", "search-svc", "--listen", anyPort,
		"--redis", bus.URL, "--cache-redis", cache.URL, "--deliver", "http://127.0.0.1:1/")
	if code != 1 || !strings.Contains(errs, "taking the delivery mark routerd:delivery:search-svc from the cache Redis: WRONGTYPE") {
		t.Errorf("exit %d:\n%s", code, errs)
	}
}

// The agent talks to two Redis servers; when one refuses it (a wrong
// password, a missing permission), the position check's warning says which,
// so that the operator fixes the right URL.
func TestAgentNamesTheRedisThatRefuses(t *testing.T) {
	bus, cache := redistest.Start(t), redistest.Start(t)
	wrong := func(url string) string { return strings.Replace(url, "redis://", "redis://nobody:wrong@", 1) }
	for _, tc := range []struct {
		name, busURL, cacheURL, want string
	}{
		{"cache", bus.URL, wrong(cache.URL), "from the cache Redis: WRONGPASS"},
		{"bus", wrong(bus.URL), cache.URL, "from the bus Redis: WRONGPASS"},
	} {
		a := startAgent(t, "--redis", tc.busURL, "--cache-redis", tc.cacheURL)
		redistest.Eventually(t, 15*time.Second, "a position check warning naming the "+tc.name+" Redis", func() bool {
			line := grep(a.errb.String(), "position check failed")
			return strings.Contains(line, tc.want)
		})
		a.stop(t)
	}
}

// serveReady runs routerd serve and waits for its /readyz: an agent whose
// first check finds no bus generation (no router ever ran on the bus) takes
// each channel's first message as a whole tag (docs/protocol.md §5.2), so
// the delivery tests start it as a running system has it, after the router.
func serveReady(t *testing.T, args ...string) *syncBuffer {
	t.Helper()
	logs := daemon(t, nil, append([]string{"serve"}, args...)...)
	addr := listening(t, logs)
	redistest.Eventually(t, 15*time.Second, "routerd serve ready", func() bool {
		code, _ := get(t, "http://"+addr+"/readyz")
		return code == 200
	})
	return logs
}
