package router

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// A router silent on the re-drive stream for DeadAfter is not alive to
// hand re-driven entries over to: the hand-over (XCLAIM to it) starts its
// idle time again, and the others, taking it for dead after DeadAfter,
// claimed its entries and handed them back to it, every DeadAfter, for
// ever, while it was alive by ClaimIdle.
func TestLiveConsumersAreThoseSilentLessThanDeadAfter(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	r, err := New(c, m, Options{Consumer: "me", DeadAfter: time.Second, ClaimIdle: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.XGroupCreateMkStream(ctx, r.redrive, "routerd", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, "XGROUP", "CREATECONSUMER", r.redrive, "routerd", "dead").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the consumer silent for DeadAfter", func() bool {
		cs, err := c.XInfoConsumers(ctx, r.redrive, "routerd").Result()
		return err == nil && len(cs) == 1 && cs[0].Idle >= r.opt.DeadAfter
	})
	if alive := r.liveConsumers(ctx); alive["dead"] {
		t.Errorf("a consumer silent for DeadAfter is alive to hand entries over to: %v", alive)
	}
}

// failClaimOf fails the claims of the entries of one consumer.
type failClaimOf struct{ of string }

func (failClaimOf) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h failClaimOf) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.fails(cmd) {
			return cmd.Err()
		}
		return next(ctx, cmd)
	}
}

func (h failClaimOf) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			if h.fails(cmd) {
				for _, c := range cmds {
					c.SetErr(cmd.Err())
				}
				return cmd.Err()
			}
		}
		return next(ctx, cmds)
	}
}

// fails sets an error on cmd when it is a claim of h.of's entries.
func (h failClaimOf) fails(cmd redis.Cmder) bool {
	args := cmd.Args()
	if n := len(args); (cmd.Name() == "evalsha" || cmd.Name() == "eval") && n > 0 && args[n-1] == h.of {
		cmd.SetErr(errors.New("ERR the claim of " + h.of + " failed"))
		return true
	}
	return false
}

// A failed claim of a silent router's entries does not skip the claim of
// the entries pending for ClaimIdle: those the failing claim was for
// among them.
func TestClaimAfterClaimIdleWhenTheClaimOfASilentRouterFails(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	stream := readBy(t, c, m, "dead")
	rc := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
	t.Cleanup(func() { _ = rc.Close() })
	rc.AddHook(failClaimOf{"dead"})
	r, err := New(rc, m, Options{Consumer: "me", DeadAfter: time.Second, ClaimIdle: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r.streams = []string{stream}
	redistest.Eventually(t, 10*time.Second, "the entry pending for ClaimIdle", func() bool {
		p, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "routerd", Idle: r.opt.ClaimIdle, Start: "-", End: "+", Count: 1}).Result()
		return err == nil && len(p) == 1
	})
	// Found silent (on two listings, silence), so the claim tries its
	// entries first.
	redistest.Eventually(t, 10*time.Second, "the other router found silent", func() bool {
		silent, err := r.silentRouters(ctx, stream)
		return err == nil && len(silent) == 1
	})
	_ = r.claim(ctx, stream)
	p, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "routerd", Start: "-", End: "+", Count: 10, Consumer: "dead"}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 0 {
		t.Errorf("after a claim round %d entries pending for ClaimIdle are still the silent router's: its failed claim skipped the claim after ClaimIdle", len(p))
	}
}

// holdAcks blocks the acknowledgements until released, and counts the
// touches sent once counting is on.
type holdAcks struct {
	blocked chan struct{} // closed at the first acknowledgement
	once    sync.Once
	release chan struct{}
	count   atomic.Bool
	touches atomic.Int64
}

func (*holdAcks) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (*holdAcks) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h *holdAcks) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			switch {
			case cmd.Name() == "xack":
				h.once.Do(func() { close(h.blocked) })
				select {
				case <-h.release:
				case <-ctx.Done():
				}
			case cmd.Name() == "xreadgroup" && slices.Contains(cmd.Args(), any(touchID)) && h.count.Load():
				h.touches.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

// A stopping router touches its consumers until the batch in hand is
// finished (it may take ShutdownTimeout, longer than DeadAfter): the others
// do not take it for dead and route its entries a second time. Then the
// touches stop with Run.
func TestTouchesWhileTheLastBatchFinishes(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	h := &holdAcks{blocked: make(chan struct{}), release: make(chan struct{})}
	rc := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
	t.Cleanup(func() { _ = rc.Close() })
	rc.AddHook(h)
	r, err := New(rc, m, Options{Consumer: "me", DeadAfter: time.Second, ShutdownTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	leaks := goleak.IgnoreCurrent()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	redistest.Eventually(t, 20*time.Second, "the router ready", r.ready.Load)
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["k"]}`}}).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.blocked:
	case <-time.After(20 * time.Second):
		t.Fatal("the batch was never acknowledged")
	}
	h.count.Store(true)
	cancel()
	redistest.Eventually(t, 20*time.Second, "touches while the last batch finishes", func() bool { return h.touches.Load() >= 2 })
	close(h.release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run did not return")
	}
	goleak.VerifyNone(t, leaks)
}

// A DeadAfter shorter than the touches allow (five of them: a live router
// would look dead between two), or a negative one, is refused by New with
// an error naming it; a ClaimIdle that short does not pull DeadAfter below
// that.
func TestNewRefusesADeadAfterTooShort(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer c.Close()
	for _, opt := range []Options{{DeadAfter: 4}, {DeadAfter: -time.Second}, {DeadAfter: minDeadAfter - time.Millisecond}} {
		_, err := New(c, runMatrix(t), opt)
		if err == nil || !strings.Contains(err.Error(), "DeadAfter") {
			t.Errorf("New with DeadAfter %v, ClaimIdle %v: %v, want an error naming DeadAfter", opt.DeadAfter, opt.ClaimIdle, err)
		}
	}
	r, err := New(c, runMatrix(t), Options{ClaimIdle: time.Microsecond})
	if err != nil || r.opt.DeadAfter != minDeadAfter {
		t.Errorf("New with ClaimIdle 1µs: DeadAfter %v, %v; want %v", r.opt.DeadAfter, err, minDeadAfter)
	}
}
