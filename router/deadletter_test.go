package router

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// A router whose Redis user was made by an older routerd acl (no key
// pattern for <prefix>:deadletter:invalid) still dead-letters a malformed
// entry and acknowledges it: into <prefix>:deadletter, with a warning,
// rather than leaving it pending for ever.
func TestMalformedDeadLetterWithAnOlderRouterUser(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	m := runMatrix(t)
	routerUser(t, c, m, "old", "~"+names.InvalidDeadLetterStream(m.Prefix))
	old := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "old", Password: "pw"})
	t.Cleanup(func() { _ = old.Close() })

	r, err := New(old, m, Options{Block: 100 * time.Millisecond, ClaimInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, "{"}}).Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the malformed entry dead-lettered and acknowledged", func() bool {
		g, err := c.XInfoGroups(ctx, stream).Result()
		return c.XLen(ctx, names.DeadLetterStream(m.Prefix)).Val() == 1 && err == nil && len(g) == 1 && g[0].Pending == 0 && g[0].Lag == 0
	})
	d := c.XRange(ctx, names.DeadLetterStream(m.Prefix), "-", "+").Val()[0]
	if d.Values["reason"] != ReasonMalformed {
		t.Errorf("dead letter %v: want malformed", d.Values)
	}
}
