package subscriber

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/routerd/routerd/internal/faultproxy"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
)

// Starting and stopping with a cache Redis that does not answer.

// deliveryHook is a cache client hook that holds back the presence
// (names.DeliveryPlainKey) and the taking away of the clean mark
// (names.DeliveryKey) of service, as a link that drops those calls would:
// while failing, each fails with a connection error; while hanging, each
// waits until released (as go-redis waits for a reply, whatever its
// context says). It logs, in order, the calls to those keys that
// succeeded, and the first call after which the position key pos is in
// the cache (read through admin, without the hook).
type deliveryHook struct {
	service, pos string
	admin        *redis.Client

	mu       sync.Mutex
	failing  bool
	attempts int           // presence writes tried while failing
	hang     chan struct{} // non-nil: calls wait until it is closed
	log      []string      // "presence ok", "mark ok", "apply ok"
	applied  bool
}

func (h *deliveryHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *deliveryHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if w := h.touches(c); w == "presence" || w == "mark" {
				panic("a pipeline of the delivery keys: " + c.String())
			}
		}
		err := next(ctx, cmds)
		h.sawApply(ctx)
		return err
	}
}

// sawApply logs "apply ok" the first time the position is in the cache.
func (h *deliveryHook) sawApply(ctx context.Context) {
	if h.pos == "" {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.applied && h.admin.Exists(ctx, h.pos).Val() == 1 {
		h.applied = true
		h.log = append(h.log, "apply ok")
	}
}

func (h *deliveryHook) touches(cmd redis.Cmder) string {
	for _, a := range cmd.Args() {
		switch a {
		case names.DeliveryPlainKey(h.service):
			return "presence"
		case names.DeliveryKey(h.service):
			return "mark"
		}
	}
	return ""
}

func (h *deliveryHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		what := h.touches(cmd)
		if what == "presence" || what == "mark" {
			h.mu.Lock()
			failing, hang := h.failing, h.hang
			if failing && what == "presence" {
				h.attempts++
			}
			h.mu.Unlock()
			if hang != nil {
				<-hang
			}
			if failing {
				err := &net.OpError{Op: "read", Net: "tcp", Err: errors.New("injected: connection reset")}
				cmd.SetErr(err)
				return err
			}
		}
		err := next(ctx, cmd)
		if what != "" && err == nil {
			h.mu.Lock()
			h.log = append(h.log, what+" ok")
			h.mu.Unlock()
		}
		h.sawApply(ctx)
		return err
	}
}

func (h *deliveryHook) set(failing bool, hang chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failing, h.hang = failing, hang
}

func (h *deliveryHook) tries() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.attempts
}

func (h *deliveryHook) calls() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.log)
}

// inflightHook counts the calls of a client waiting for their reply.
type inflightHook struct{ n atomic.Int64 }

func (h *inflightHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *inflightHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		defer h.n.Add(-1)
		return next(ctx, cmd)
	}
}
func (h *inflightHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		defer h.n.Add(-1)
		return next(ctx, cmds)
	}
}

// runUntilCancelled runs s until the returned stop is called; stop fails
// the test unless Run returns within a generous bound.
func runUntilCancelled(t *testing.T, s *Subscriber) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Run did not return within 20 s of its cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// The presence is written beside the start, not before it: a cache Redis
// that does not answer it (the write hangs, as on a link that drops
// packets) does not keep the subscriber from subscribing, nor Run from
// returning once cancelled. Once it answers, the presence is recorded and
// the clean mark taken away.
func TestStartNotHeldByThePresence(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	bus := srv.Client(t)
	h := &deliveryHook{service: "profile-svc"}
	hang := make(chan struct{})
	h.set(false, hang)
	defer func() {
		select {
		case <-hang:
		default:
			close(hang)
		}
	}()
	cache := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer cache.Close()
	cache.AddHook(h)
	must(t, bus.Set(ctx, names.GenerationKey("invalidate"), "g1", 0).Err())
	must(t, bus.Set(ctx, names.DeliveryKey("profile-svc"), "clean", 0).Err())
	s, err := New(bus, Options{Service: "profile-svc", Matrix: testMatrixParsed(t), Cache: cache,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Handler: func(context.Context, Invalidation) error { return nil }})
	must(t, err)
	stop := runUntilCancelled(t, s)
	ch := names.Channel("invalidate", "acme", "active")
	redistest.Eventually(t, 10*time.Second, "subscribed while the presence write hangs", func() bool {
		n, err := bus.PubSubNumSub(ctx, ch).Result()
		return err == nil && n[ch] > 0
	})
	if s.Ready() {
		t.Error("ready before its presence is recorded")
	}
	close(hang)
	redistest.Eventually(t, 10*time.Second, "ready once the presence is recorded", s.Ready)
	if n, err := Undelivering(ctx, bus, "profile-svc"); err != nil || n != 1 {
		t.Errorf("%d (%v) subscribers without delivery, want 1", n, err)
	}
	if mark, err := bus.Get(ctx, names.DeliveryKey("profile-svc")).Result(); !errors.Is(err, redis.Nil) {
		t.Errorf("the clean mark is %q (%v), want it taken away", mark, err)
	}
	stop()
}

// Nothing is applied to the cache Redis before the subscriber's presence is
// recorded and the clean mark taken away, in that order: an agent with
// --deliver stopping meanwhile would leave the mark, or one starting would
// take it, while this one moves the positions past what the agent's
// process was given. Both writes are retried until they land.
func TestNothingAppliedBeforeThePresence(t *testing.T) {
	f := newBurst(t, 1, true, false)
	admin := redis.NewClient(&redis.Options{Addr: f.cache.Options().Addr})
	defer admin.Close()
	h := &deliveryHook{service: "svc", pos: names.PositionKey("t0", "svc", "active"), admin: admin}
	h.set(true, nil)
	must(t, f.cache.Set(f.ctx, names.DeliveryKey("svc"), "clean", 0).Err())
	f.cache.AddHook(h)
	f.cached(t, "t0", "user:1")
	f.publish(t, "t0", 1, "user:1")
	stop := runUntilCancelled(t, f.s)
	redistest.Eventually(t, 10*time.Second, "the presence write tried again", func() bool { return h.tries() >= 2 })
	if left := f.left(t, "t0", "user:1"); len(left) != 1 {
		t.Fatalf("user:1 invalidated while the presence could not be written: %v", h.calls())
	}
	if f.s.Ready() {
		t.Error("ready while the presence could not be written")
	}
	h.set(false, nil)
	redistest.Eventually(t, 10*time.Second, "user:1 invalidated once the presence is written", func() bool {
		return len(f.left(t, "t0", "user:1")) == 0
	})
	calls := h.calls()
	first := slices.Index(calls, "apply ok")
	if p, m := slices.Index(calls, "presence ok"), slices.Index(calls, "mark ok"); p < 0 || m < p || first < m {
		t.Errorf("calls %q: want the presence, then the mark taken away, then the first apply", calls)
	}
	if mark, err := f.cache.Get(f.ctx, names.DeliveryKey("svc")).Result(); !errors.Is(err, redis.Nil) {
		t.Errorf("the clean mark is %q (%v), want it taken away", mark, err)
	}
	if n, err := Undelivering(f.ctx, f.cache, "svc"); err != nil || n != 1 {
		t.Errorf("%d (%v) subscribers without delivery, want 1", n, err)
	}
	stop()
}

// Run returns soon after its cancel when the cache Redis stopped answering
// (a blackhole: connections open, nothing comes back) while the probe, the
// identity watch and the presence have calls on it, with a ReadTimeout far
// longer than that; what it started has ended once the client is closed.
func TestStopNotHeldByABlackholedCache(t *testing.T) {
	srv := redistest.Start(t)
	proxy := faultproxy.Start(t, srv.Addr)
	leaks := goleak.IgnoreCurrent()
	ctx := context.Background()
	bus := redis.NewClient(&redis.Options{Addr: srv.Addr})
	cache := redis.NewClient(&redis.Options{Addr: proxy.Addr(), ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	inflight := &inflightHook{}
	cache.AddHook(inflight)
	must(t, bus.Set(ctx, names.GenerationKey("invalidate"), "g1", 0).Err())
	s, err := New(bus, Options{Service: "profile-svc", Matrix: testMatrixParsed(t), Cache: cache,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Handler: func(context.Context, Invalidation) error { return nil }})
	must(t, err)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	redistest.Eventually(t, 10*time.Second, "ready", s.Ready)
	must(t, proxy.Blackhole())
	redistest.Eventually(t, 5*time.Second, "the probe and the identity watch waiting on the blackholed cache", func() bool { return inflight.n.Load() >= 2 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20 s of its cancel (the client's ReadTimeout is a minute)")
	}
	_ = cache.Close()
	_ = bus.Close()
	// The proxy's own listener goroutines run until its cleanup.
	goleak.VerifyNone(t, append(faultproxy.IgnoreLinks(), leaks, goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*Proxy).freeBlocker"))...)
}

// blackholeFixture is a subscriber of service svc on tag active of tenant
// t0 whose cache Redis is reached through a fault proxy (ReadTimeout 30 s:
// a call the proxy swallows waits that long), with a bus and a cache
// Redis of their own; admin reaches the cache directly.
type blackholeFixture struct {
	*burstFixture
	proxy *faultproxy.Proxy
	admin *tagstore.Store
	raw   *redis.Client // the cache, directly
}

func newBlackholeFixture(t *testing.T, opt Options) *blackholeFixture {
	t.Helper()
	m, err := matrix.Parse("m.yaml", []byte("version: 1\ntags:\n  active: {services: [svc]}\ndomains:\n  user: {tags: [active]}\nservices:\n  svc: {tenants: [t0]}\n"))
	must(t, err)
	busSrv, cacheSrv := redistest.Start(t), redistest.Start(t)
	f := &blackholeFixture{burstFixture: &burstFixture{ctx: context.Background(), bus: busSrv.Client(t), chains: map[string]string{}}}
	f.proxy = faultproxy.Start(t, cacheSrv.Addr)
	f.raw = cacheSrv.Client(t)
	f.admin, err = tagstore.New(f.raw, tagstore.Options{})
	must(t, err)
	f.cache = redis.NewClient(&redis.Options{Addr: f.proxy.Addr(), ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second})
	t.Cleanup(func() { _ = f.cache.Close() })
	f.sub = redis.NewClient(&redis.Options{Addr: busSrv.Addr})
	t.Cleanup(func() { _ = f.sub.Close() })
	opt.Service, opt.Matrix, opt.Cache = "svc", m, f.cache
	opt.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	f.s, err = New(f.sub, opt)
	must(t, err)
	must(t, f.bus.Set(f.ctx, names.GenerationKey("invalidate"), "g1", 0).Err())
	return f
}

// live publishes version v of t0's channel as the router does, PUBLISH
// included.
func (f *blackholeFixture) live(t *testing.T, v int64, keys ...string) {
	t.Helper()
	m := f.publish(t, "t0", v, keys...)
	must(t, f.bus.Publish(f.ctx, m.Channel, m.Payload).Err())
}

func (f *blackholeFixture) cachedKeys(t *testing.T, keys ...string) []string {
	t.Helper()
	var out []string
	for _, k := range keys {
		if _, err := f.admin.Get(f.ctx, "t0", k); err == nil {
			out = append(out, k)
		} else if !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
	}
	return out
}

// A cache Redis that does not answer at start (a blackhole) does not hold
// the bus subscription back: the start's reads of the cache (the leaving
// set, the interest the service last ran with) are retried beside it, and
// nothing is applied before they are done. Once the cache answers, a
// message published during the outage is applied and the subscriber
// becomes ready.
func TestStartNotHeldByABlackholedCache(t *testing.T) {
	f := newBlackholeFixture(t, Options{})
	leaks := goleak.IgnoreCurrent()
	must(t, f.admin.Set(f.ctx, "t0", "user:1", []byte("v"), time.Hour, "active"))
	must(t, f.proxy.Blackhole())
	stop := runUntilCancelled(t, f.s)
	ch := burstChannel("t0")
	// Well within the cache client's ReadTimeout (30 s): a start that
	// waits for the cache subscribes after it.
	redistest.Eventually(t, 10*time.Second, "subscribed while the cache is blackholed", func() bool {
		n, err := f.bus.PubSubNumSub(f.ctx, ch).Result()
		return err == nil && n[ch] > 0
	})
	f.live(t, 1, "user:1")
	if f.s.Ready() {
		t.Error("ready while the cache does not answer")
	}
	must(t, f.proxy.Heal())
	redistest.Eventually(t, 10*time.Second, "user:1 invalidated once the cache answers", func() bool { return len(f.cachedKeys(t, "user:1")) == 0 })
	redistest.Eventually(t, 10*time.Second, "ready once the cache answers", f.s.Ready)
	if rec, err := f.raw.Get(f.ctx, names.InterestKey("svc")).Result(); err != nil || rec != interestRecord(f.s.cur) {
		t.Errorf("the interest record is %q (%v): the start's work was not done", rec, err)
	}
	stop()
	_ = f.cache.Close()
	_ = f.sub.Close()
	goleak.VerifyNone(t, append(faultproxy.IgnoreLinks(), leaks, goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*Proxy).freeBlocker"))...)
}

// Run returns soon after its cancel when work merged under the local limit
// is queued and the cache Redis stopped answering (a blackhole; the
// client's ReadTimeout is 30 s): the last flush is not waited for. The
// queued work is not lost: the position stays at what was applied, and the
// next start replays the rest from the channel's history.
func TestStopNotHeldByQueuedWorkOnABlackholedCache(t *testing.T) {
	f := newBlackholeFixture(t, Options{ApplyRate: 1, ApplyBurst: 1, Coalesce: time.Hour})
	leaks := goleak.IgnoreCurrent()
	must(t, f.admin.Set(f.ctx, "t0", "user:1", []byte("v"), time.Hour, "active"))
	must(t, f.admin.Set(f.ctx, "t0", "user:2", []byte("v"), time.Hour, "active"))
	ctx, cancel := context.WithCancel(f.ctx)
	done := make(chan error, 1)
	go func() { done <- f.s.Run(ctx) }()
	redistest.Eventually(t, 10*time.Second, "ready", f.s.Ready)
	f.live(t, 1, "user:1")
	redistest.Eventually(t, 10*time.Second, "user:1 invalidated", func() bool { return len(f.cachedKeys(t, "user:1")) == 0 })
	f.live(t, 2, "user:2") // over the limit: queued for an hour
	redistest.Eventually(t, 10*time.Second, "version 2 queued", func() bool {
		var m dto.Metric
		return f.s.m.queuedTags.Write(&m) == nil && m.GetGauge().GetValue() == 1
	})
	must(t, f.proxy.Blackhole())
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5 s of its cancel with work queued (the client's ReadTimeout is 30 s)")
	}
	if p, _, err := f.admin.ReadPosition(f.ctx, "t0", "svc", "active"); err != nil || p.Version != 1 {
		t.Errorf("position %+v (%v) once stopped, want version 1: moved past what was applied", p, err)
	}
	// The flush left in flight fails with its client.
	_ = f.cache.Close()
	must(t, f.proxy.Heal())
	if left := f.cachedKeys(t, "user:2"); len(left) != 1 {
		t.Fatalf("user:2 invalidated by the flush left behind; the test shows no replay")
	}

	// The next start replays version 2.
	cache := redis.NewClient(&redis.Options{Addr: f.proxy.Addr()})
	defer cache.Close()
	opt := f.s.opt
	opt.Cache, opt.Registerer = cache, nil
	again, err := New(f.sub, opt)
	must(t, err)
	stop := runUntilCancelled(t, again)
	redistest.Eventually(t, 10*time.Second, "user:2 invalidated by the next start", func() bool { return len(f.cachedKeys(t, "user:2")) == 0 })
	redistest.Eventually(t, 10*time.Second, "ready again", again.Ready)
	if p, _, err := f.admin.ReadPosition(f.ctx, "t0", "svc", "active"); err != nil || p.Version != 2 {
		t.Errorf("position %+v (%v), want version 2", p, err)
	}
	stop()
	_ = cache.Close()
	_ = f.sub.Close()
	goleak.VerifyNone(t, append(faultproxy.IgnoreLinks(), leaks, goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*Proxy).freeBlocker"))...)
}
