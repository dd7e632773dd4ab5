package router

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// eventOfSize is an event of exactly size bytes of JSON, with id id: ten
// keys of 300 bytes, then blanks before the closing brace.
func eventOfSize(t *testing.T, id string, size int) string {
	t.Helper()
	keys := make([]string, 10)
	for j := range keys {
		prefix := fmt.Sprintf("user:%s:%d:", id, j)
		keys[j] = `"` + prefix + strings.Repeat("k", 300-len(prefix)) + `"`
	}
	ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":%q,"keys":[%s]`, id, strings.Join(keys, ","))
	if len(ev)+1 > size {
		t.Fatalf("an event of %d bytes cannot be built for id %s", size, id)
	}
	return ev + strings.Repeat(" ", size-len(ev)-1) + "}"
}

// Events whose size sits at the bounds — MaxEventBytes-1, MaxEventBytes
// and MaxEventBytes+1, with ReadBytes exactly one entry's field name and
// value — appended as a backlog before the router starts and again while
// it waits in XREADGROUP: those within the limit are published, each
// once, the one above it dead-lettered as too large, and nothing is left
// pending. Coverage the unit tests of the bounded connection lack: the
// edges through a real Redis, RESP3 framing included. (Holds.)
func TestAttack4EventsAtTheBoundsAreRoutedOrRefusedOnce(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	const limit = 4096
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	add := func(round string) {
		for i, size := range []int{limit - 1, limit, limit + 1} {
			ev := eventOfSize(t, fmt.Sprintf("%s%d", round, i), size)
			if err := c.Do(ctx, "XADD", stream, "*", wire.EventField, ev).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	add("backlog")
	r, err := New(c, m, Options{Block: 100 * time.Millisecond, ClaimInterval: time.Hour, MaxEventBytes: limit, ReadBytes: len(wire.EventField) + limit})
	if err != nil {
		t.Fatal(err)
	}
	stopRouter := runRouter(t, r)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	events := names.EventsKey(names.Channel(m.Prefix, "acme", "a"))
	if err := redistest.Wait(ctx, 10*time.Second, "the backlog routed", func() bool { return c.ZCard(ctx, events).Val() == 2 }); err != nil {
		g, _ := c.XInfoGroups(ctx, stream).Result()
		t.Fatalf("%v: %d published, %d dead-lettered, group %+v", err, c.ZCard(ctx, events).Val(), c.XLen(ctx, names.InvalidDeadLetterStream(m.Prefix)).Val(), g)
	}
	add("live")
	redistest.Eventually(t, 10*time.Second, "every event within the limit published, every one above dead-lettered", func() bool {
		return c.ZCard(ctx, events).Val() == 4 && c.XLen(ctx, names.InvalidDeadLetterStream(m.Prefix)).Val() == 2
	})
	redistest.Eventually(t, 10*time.Second, "nothing pending, no lag", drained(c, stream, 6))
	stopRouter()
	for _, d := range c.XRange(ctx, names.InvalidDeadLetterStream(m.Prefix), "-", "+").Val() {
		if d.Values["reason"] != ReasonTooLarge {
			t.Errorf("dead letter %s: reason %v, want %s", d.ID, d.Values["reason"], ReasonTooLarge)
		}
	}
	if v, _ := c.HGet(ctx, names.MetaKey(names.Channel(m.Prefix, "acme", "a")), "version").Int(); v > 4 {
		t.Errorf("4 events went out in %d messages: some were routed twice", v)
	}
}
