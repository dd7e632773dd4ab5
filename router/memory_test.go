package router

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
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
	stream := wire.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
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
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	redistest.Eventually(t, 30*time.Second, "every huge event dead-lettered", func() bool {
		return c.XLen(ctx, wire.DeadLetterStream(m.Prefix)).Val() == n
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	// TotalAlloc only grows: what was allocated in all bounds what was held
	// at any moment. The bound is generous (a quarter of the events'
	// weight; one entry is read whole by a read that waits) but far below
	// reading them.
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("routing %d events of %d MiB allocated %d KiB", n, size>>20, alloc>>10)
	if alloc > n*size/4 {
		t.Errorf("routing %d events of %d MiB allocated %d MiB: entries are held whole", n, size>>20, alloc>>20)
	}
	for _, d := range c.XRange(ctx, wire.DeadLetterStream(m.Prefix), "-", "+").Val() {
		if d.Values["reason"] != ReasonTooLarge || len(d.Values["entry"].(string)) > 20<<10 {
			t.Errorf("dead letter %s: reason %v, entry copy of %d bytes", d.ID, d.Values["reason"], len(d.Values["entry"].(string)))
		}
	}
}
