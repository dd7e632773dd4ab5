package router

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// What a router holds while it reads is bounded in bytes, not only in
// entries: a backlog of twenty 4 MiB events (each refused as too large) is
// read and dead-lettered with far less allocated, in all, than the events
// weigh — they are never read whole. Before, one read took all twenty (80
// MiB, and a copy of each for its dead letter).
func TestHugeEntriesAreNotHeld(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	const n, size = 20, 4 << 20
	big := `{"tenant":"acme","domain":"user","keys":["` + strings.Repeat("k", size) + `"]}`
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	for range n {
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, big}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	big = ""
	r, err := New(c, m, Options{Block: 100 * time.Millisecond, ClaimInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	alloc := allocatedWhile(t, r, 30*time.Second, "every huge event dead-lettered", func() bool {
		return c.XLen(ctx, names.InvalidDeadLetterStream(m.Prefix)).Val() == n
	})
	// The bound is generous (a quarter of the events' weight; one entry is
	// read whole by a read that waits) but far below reading them.
	t.Logf("routing %d events of %d MiB allocated %d KiB", n, size>>20, alloc>>10)
	if alloc > n*size/4 {
		t.Errorf("routing %d events of %d MiB allocated %d MiB: entries are held whole", n, size>>20, alloc>>20)
	}
	for _, d := range c.XRange(ctx, names.InvalidDeadLetterStream(m.Prefix), "-", "+").Val() {
		if d.Values["reason"] != ReasonTooLarge || len(d.Values["entry"].(string)) > 20<<10 {
			t.Errorf("dead letter %s: reason %v, entry copy of %d bytes", d.ID, d.Values["reason"], len(d.Values["entry"].(string)))
		}
	}
}

// Entries beyond a read's byte budget are given back to the group and read
// by the next read: every one is routed once, and the group's lag and
// pending list end empty.
func TestReadBudgetGivesBackWhatDoesNotFit(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	const n = 50
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	for i := range n {
		keys := make([]string, 20) // about 4,000 bytes
		for j := range keys {
			keys[j] = fmt.Sprintf(`"%s:%d:%d"`, strings.Repeat("k", 190), i, j)
		}
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"e%d","keys":[%s]}`, i, strings.Join(keys, ","))
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	r, err := New(c, m, Options{Block: 100 * time.Millisecond, ClaimInterval: time.Hour, ReadBytes: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	events := names.EventsKey(names.Channel(m.Prefix, "acme", "a"))
	redistest.Eventually(t, 20*time.Second, "every event published", func() bool {
		return c.ZCard(ctx, events).Val() == n
	})
	redistest.Eventually(t, 10*time.Second, "nothing pending, no lag", drained(c, stream, n))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if v, _ := c.HGet(ctx, names.MetaKey(names.Channel(m.Prefix, "acme", "a")), "version").Int(); v < n/3 {
		t.Errorf("%d events went out in %d messages: reads of 10,000 bytes took more than two 4,000-byte events", n, v)
	}
}

// A huge event that comes while the router waits for new entries (the one
// read that returns an entry whole) is dead-lettered as too large like the
// others, with its copy cut.
func TestHugeEntryWhileWaitingDeadLettered(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	r, err := New(c, m, Options{Block: 100 * time.Millisecond, ClaimInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	big := `{"tenant":"acme","domain":"user","keys":["` + strings.Repeat("k", 2<<20) + `"]}`
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, big}}).Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the huge event dead-lettered", func() bool {
		return c.XLen(ctx, names.InvalidDeadLetterStream(m.Prefix)).Val() == 1
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	d := c.XRange(ctx, names.InvalidDeadLetterStream(m.Prefix), "-", "+").Val()[0]
	if d.Values["reason"] != ReasonTooLarge || len(d.Values["entry"].(string)) > 20<<10 || !strings.Contains(d.Values["error"].(string), "2097") {
		t.Errorf("dead letter: %v", d.Values["reason"])
	}
}

// A router whose Redis user was made by an older routerd acl (no XRANGE,
// XDEL, XGROUP SETID) still routes everything: new entries, entries beyond
// the byte budget, and a dead consumer's pending entries, read as before
// the read scripts (bounded in entries only), with a warning.
func TestReadsWithAnOlderRouterUser(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	m := runMatrix(t)
	routerUser(t, c, m, "old", "+xrange", "+xdel", "+xgroup|setid")
	old := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "old", Password: "pw"})
	t.Cleanup(func() { _ = old.Close() })

	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	xadd := func(i int) {
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"e%d","keys":["user:%d"]}`, i, i)
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		xadd(i)
	}
	// A dead router left them pending.
	if err := c.XGroupCreate(ctx, stream, "routerd", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "routerd", Consumer: "dead", Streams: []string{stream, ">"}, Block: -1}).Err(); err != nil {
		t.Fatal(err)
	}
	r, err := New(old, m, Options{Block: 100 * time.Millisecond, ClaimInterval: 100 * time.Millisecond, ClaimIdle: time.Millisecond, ReadBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	redistest.Eventually(t, 10*time.Second, "router ready", func() bool {
		select {
		case err := <-done:
			t.Fatalf("router stopped: %v", err)
		default:
		}
		return r.Ready()
	})
	for i := 3; i < 8; i++ {
		xadd(i)
	}
	events := names.EventsKey(names.Channel(m.Prefix, "acme", "a"))
	redistest.Eventually(t, 20*time.Second, "every event published", func() bool { return c.ZCard(ctx, events).Val() == 8 })
	redistest.Eventually(t, 10*time.Second, "nothing pending, no lag", drained(c, stream, -1))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
