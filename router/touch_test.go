package router

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// A router's touch keeps its consumer known alive and does nothing else:
// an entry pending for it keeps its idle time and delivery count (so the
// claim after ClaimIdle still finds one that went astray), and no new entry
// is delivered (the largest stream id in XREADGROUP means ">": a touch
// with it took a new entry that nobody then routed).
func TestTouchDeliversNothingAndChangesNoEntry(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	if err := c.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err(); err != nil {
		t.Fatal(err)
	}
	r, err := New(c, m, Options{Consumer: "me", DeadAfter: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r.streams = []string{stream}
	for range 2 {
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["k"]}`}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// One entry pending for the router, one not yet delivered.
	if err := c.Do(ctx, "XREADGROUP", "GROUP", "routerd", "me", "COUNT", 1, "STREAMS", stream, ">").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the consumer idle", func() bool {
		cs, err := c.XInfoConsumers(ctx, stream, "routerd").Result()
		return err == nil && len(cs) == 1 && cs[0].Idle >= 50*time.Millisecond
	})
	before, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "routerd", Start: "-", End: "+", Count: 10}).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Idle again: at most the time since the touch began (Redis counts in
	// whole milliseconds), whatever the machine's load; without the touch
	// it would be 50ms more.
	touched := time.Now()
	r.touch(ctx, true)
	cs, err := c.XInfoConsumers(ctx, stream, "routerd").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].Idle > time.Since(touched)+time.Millisecond || cs[0].Pending != 1 {
		t.Errorf("after a touch the group's consumers are %+v, want me with 1 pending and idle again", cs)
	}
	after, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "routerd", Start: "-", End: "+", Count: 10}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 1 || after[0].ID != before[0].ID || after[0].RetryCount != before[0].RetryCount || after[0].Idle < before[0].Idle {
		t.Errorf("pending before the touch %+v, after %+v: the touch changed an entry", before, after)
	}
	g, err := c.XInfoGroups(ctx, stream).Result()
	if err != nil {
		t.Fatal(err)
	}
	if g[0].Lag != 1 {
		t.Errorf("the group's lag after a touch is %d, want 1: the touch delivered a new entry", g[0].Lag)
	}
}

// Every router touches its consumers at the same pace (touchEvery), so a
// DeadAfter too short for five touches is refused by name, and one above
// ClaimIdle comes down to it.
func TestDeadAfterBounds(t *testing.T) {
	m := runMatrix(t)
	c := redis.NewClient(&redis.Options{})
	defer c.Close()
	_, err := New(c, m, Options{DeadAfter: 500 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "DeadAfter must be at least 1s") {
		t.Errorf("DeadAfter 500ms: err %v, want it refused by name", err)
	}
	r, err := New(c, m, Options{DeadAfter: time.Minute, ClaimIdle: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.opt.DeadAfter != 2*time.Second {
		t.Errorf("DeadAfter 1m with ClaimIdle 2s is %v, want 2s", r.opt.DeadAfter)
	}
}
