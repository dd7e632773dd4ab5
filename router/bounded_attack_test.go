package router

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// Outside attacks on the bounded read of new entries (bounded.go).

// A client that appends entries with a huge field name — not a huge value
// — among good ones: the good ones are routed, the others dead-lettered
// with their copy cut, and the router never holds one whole.
func TestAttackHugeFieldNamesAreNotHeld(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	m := runMatrix(t)
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	const bad, size = 10, 4 << 20
	name := strings.Repeat("f", size)
	for i := range bad {
		good := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"good%d","keys":["user:%d"]}`, i, i)
		// Through redis-cli's protocol as any client would send it.
		if err := c.Do(ctx, "XADD", stream, "*", wire.EventField, good).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.Do(ctx, "XADD", stream, "*", name, "x").Err(); err != nil {
			t.Fatal(err)
		}
	}
	name = ""
	r, err := New(c, m, Options{Block: 100 * time.Millisecond, ClaimInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	events := names.EventsKey(names.Channel(m.Prefix, "acme", "a"))
	routed := drained(c, stream, -1)
	alloc := allocatedWhile(t, r, 30*time.Second, "every good event published, every bad one dead-lettered, nothing pending", func() bool {
		return c.ZCard(ctx, events).Val() == bad && c.XLen(ctx, names.InvalidDeadLetterStream(m.Prefix)).Val() == bad && routed()
	})
	if alloc > bad*size/4 {
		t.Errorf("routing %d entries with a field name of %d MiB allocated %d MiB: entries are held whole", bad, size>>20, alloc>>20)
	}
}

// A client that kills the router's connections while it reads (CLIENT
// KILL, as an operator or a proxy might) loses nothing: the entries a
// killed read had delivered are pending for the router, which takes them
// from there; every event is published once, and nothing is left pending.
func TestAttackKilledReadsLoseNothing(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	admin := srv.Client(t)
	m := runMatrix(t)
	r, err := New(c, m, Options{Block: 50 * time.Millisecond, ClaimInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	stopRouter := runRouter(t, r)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)

	// The attack kills up to maxKills reads, then lets the router finish:
	// a client that kills every read at once, for ever, leaves no router
	// a read to finish (on a loaded machine the killer wins every race).
	const maxKills = 500
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	kills := 0
	var stopOnce sync.Once
	stopKilling := func() { stopOnce.Do(func() { close(stop); wg.Wait() }) }
	t.Cleanup(stopKilling) // a failed wait must not leave it running into the next test
	go func() {
		defer wg.Done()
		for kills < maxKills {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			// Every connection whose last command was a read of new entries.
			list, err := admin.Do(ctx, "CLIENT", "LIST").Text()
			if err != nil {
				continue
			}
			for _, line := range strings.Split(list, "\n") {
				if strings.Contains(line, "cmd=xreadgroup") {
					for _, f := range strings.Fields(line) {
						if id, ok := strings.CutPrefix(f, "id="); ok && admin.Do(ctx, "CLIENT", "KILL", "ID", id).Err() == nil {
							kills++
						}
					}
				}
			}
		}
	}()
	const n = 3000
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	for i := range n {
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"e%d","keys":["user:%d"]}`, i, i)
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	events := names.EventsKey(names.Channel(m.Prefix, "acme", "a"))
	redistest.Eventually(t, 60*time.Second, "every event published", func() bool { return c.ZCard(ctx, events).Val() == n })
	stopKilling()
	redistest.Eventually(t, 20*time.Second, "nothing pending, no lag", drained(c, stream, -1))
	stopRouter()
	// Published once each: the channel's versions count its messages,
	// and its event ids are n.
	ids, _ := c.ZRangeWithScores(ctx, events, 0, -1).Result()
	if len(ids) != n {
		t.Fatalf("%d event ids recorded, want %d", len(ids), n)
	}
	t.Logf("%d events routed through %d killed reads", n, kills)
	if kills == 0 {
		t.Fatalf("no read was killed: the attack did not run")
	}
}
