package subscriber

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
)

// A subscriber with a cache Redis takes the clean mark of an agent with
// --deliver away when it starts, and is counted among the subscribers that
// do not deliver while it runs, not after; the agent's own (Delivers) is
// not.
func TestPresenceWhileRunning(t *testing.T) {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer c.Close()
	ctx := context.Background()
	must(t, c.Set(ctx, names.GenerationKey("invalidate"), "g1", 0).Err())
	for _, delivers := range []bool{false, true} {
		must(t, c.Set(ctx, names.DeliveryKey("profile-svc"), "clean", 0).Err())
		s, err := New(c, Options{Service: "profile-svc", Matrix: testMatrixParsed(t), Cache: c, Delivers: delivers,
			Handler: func(context.Context, Invalidation) error { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- s.Run(rctx) }()
		redistest.Eventually(t, 10*time.Second, "ready", s.Ready)
		n, err := Undelivering(ctx, c, "profile-svc")
		mark, _ := c.Get(ctx, names.DeliveryKey("profile-svc")).Result()
		if want := map[bool]int{false: 1, true: 0}[delivers]; err != nil || n != want {
			t.Errorf("delivers %v: %d (%v) subscribers without delivery while running, want %d", delivers, n, err, want)
		}
		if want := map[bool]string{false: "", true: "clean"}[delivers]; mark != want {
			t.Errorf("delivers %v: the clean mark is %q while running, want %q", delivers, mark, want)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if n, err := Undelivering(ctx, c, "profile-svc"); err != nil || n != 0 {
			t.Errorf("delivers %v: %d (%v) subscribers without delivery once stopped, want 0", delivers, n, err)
		}
	}
}

// A subscriber's presence counts for an agent with --deliver whatever the
// two hosts' clocks say: its expiry is judged on the cache Redis's clock
// only. A writer whose clock runs a minute behind (the agent's a minute
// ahead) had its live presence counted as expired: the agent marked the
// cache clean, and its next start skipped the reset.
func TestPresenceCountsWhateverTheWritersClock(t *testing.T) {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer c.Close()
	ctx := context.Background()
	must(t, c.Set(ctx, names.GenerationKey("invalidate"), "g1", 0).Err())
	s, err := New(c, Options{Service: "profile-svc", Matrix: testMatrixParsed(t), Cache: c,
		Handler: func(context.Context, Invalidation) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	s.clock = func() time.Time { return time.Now().Add(-time.Minute) }
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(rctx) }()
	redistest.Eventually(t, 10*time.Second, "ready", s.Ready)
	if n, err := Undelivering(ctx, c, "profile-svc"); err != nil || n != 1 {
		members, _ := c.SMembers(ctx, names.DeliveryPlainKey("profile-svc")).Result()
		t.Errorf("%d (%v) subscribers without delivery while one runs with its clock a minute behind, want 1 (members %q)", n, err, members)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
