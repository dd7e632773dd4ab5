package cli

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/faultproxy"
	"github.com/routerd/routerd/internal/redistest"
)

// inflight counts the cache calls under way.
type inflight struct{ n atomic.Int64 }

func (h *inflight) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *inflight) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		defer h.n.Add(-1)
		return next(ctx, cmd)
	}
}
func (h *inflight) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// holdMark returns once its context ends, whatever the cache Redis does: a
// call on a blackholed cache (go-redis waits out its ReadTimeout, a minute
// here, whatever the context) does not hold an agent's stop.
func TestHoldMarkNotHeldByABlackholedCache(t *testing.T) {
	srv := redistest.Start(t)
	proxy := faultproxy.Start(t, srv.Addr)
	cache := redis.NewClient(&redis.Options{Addr: proxy.Addr(), ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	t.Cleanup(func() { _ = cache.Close() })
	calls := &inflight{}
	cache.AddHook(calls)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := newAgentOut("-", &Env{Stdout: io.Discard}, cache, "svc", log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	a.taken.Store(true)
	must(t, proxy.Blackhole())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.holdMark(ctx) }()
	redistest.Eventually(t, 10*time.Second, "holdMark's call waiting on the blackholed cache", func() bool { return calls.n.Load() >= 1 })
	cancel()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("holdMark did not return within 20 s of its cancel (the client's ReadTimeout is a minute)")
	}
}

// stopped's calls on the cache Redis (the presence count, the mark) end at
// its deadline, whatever the cache does: a blackholed cache (go-redis
// waits out its ReadTimeout, a minute here) does not hold an agent's stop.
func TestStoppedNotHeldByABlackholedCache(t *testing.T) {
	srv := redistest.Start(t)
	proxy := faultproxy.Start(t, srv.Addr)
	cache := redis.NewClient(&redis.Options{Addr: proxy.Addr(), ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	t.Cleanup(func() { _ = cache.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := newAgentOut("-", &Env{Stdout: io.Discard}, cache, "svc", log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	a.taken.Store(true)
	defer func(w time.Duration) { stopWait = w }(stopWait)
	stopWait = 200 * time.Millisecond
	must(t, proxy.Blackhole())
	done := make(chan struct{})
	go func() { defer close(done); a.stopped() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("stopped did not return within 20 s, its deadline 200 ms (the client's ReadTimeout is a minute)")
	}
}
