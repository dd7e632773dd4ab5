package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// xaddRaw appends an event for acme's key to an ingress stream the way a
// publisher in another language (or with another partition count) would.
func (e *env) xaddRaw(stream, key string) {
	e.t.Helper()
	ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","keys":[%q]}`, key)
	must(e.t, e.busC.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err())
}

// Partition streams beyond the matrix's count are read too: one that
// existed when the router started, and one that appeared while it runs.
func TestPartitionsBeyondTheCountRouted(t *testing.T) {
	e := newEnv(t, "") // 4 partitions
	e.subscriber("search-svc", subscriber.Options{})
	for _, k := range []string{"user:12", "user:13"} {
		e.seed("search-svc", "acme", k, "active")
	}
	e.xaddRaw("invalidate:ingress:{12}", "user:12")
	e.router(router.Options{DiscoverInterval: 200 * time.Millisecond})
	e.waitGone("search-svc", "acme", "user:12")
	e.xaddRaw("invalidate:ingress:{13}", "user:13")
	e.waitGone("search-svc", "acme", "user:13")
}

// The partition count changes on reload: the router reads new partitions at
// once and records the count for publishers, and keeps reading the old
// partitions (for publishers that still use the old count); a router
// restarted with fewer partitions drains the higher ones.
func TestPartitionCountChange(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "") // 4 partitions
	mtx8, err := matrix.Parse("eight.yaml", []byte(strings.Replace(testMatrix, "partitions: 4", "partitions: 8", 1)))
	if err != nil {
		t.Fatal(err)
	}
	e.subscriber("search-svc", subscriber.Options{})
	for i := 5; i <= 7; i++ {
		e.seed("search-svc", "acme", fmt.Sprintf("user:%d", i), "active")
	}
	// Discovery by the clock is off: only the count change may start the
	// new partitions' readers.
	r, stop := e.router(router.Options{DiscoverInterval: time.Hour})
	partitions := func(n string) func() bool {
		return func() bool { v, _ := e.busC.Get(ctx, names.PartitionsKey("invalidate")).Result(); return v == n }
	}

	if err := r.SetMatrix(mtx8); err != nil {
		t.Fatalf("raising the partition count on reload: %v", err)
	}
	redistest.Eventually(t, 10*time.Second, "the count 8 recorded", partitions("8"))
	e.xaddRaw(names.IngressStream("invalidate", 7), "user:7")
	e.waitGone("search-svc", "acme", "user:7")

	if err := r.SetMatrix(e.mtx); err != nil {
		t.Fatalf("lowering the partition count on reload: %v", err)
	}
	redistest.Eventually(t, 10*time.Second, "the count 4 recorded", partitions("4"))
	e.xaddRaw(names.IngressStream("invalidate", 6), "user:6") // a publisher still on 8
	e.waitGone("search-svc", "acme", "user:6")

	stop()
	e.xaddRaw(names.IngressStream("invalidate", 5), "user:5")
	e.router(router.Options{DiscoverInterval: time.Hour})
	e.waitGone("search-svc", "acme", "user:5")
}

// Right after the bus lost its data the partition count is gone, and a
// publisher that reads it then takes the default (8, protocol.md 2.2) while
// the matrix says 4: its event lands on a partition the router does not
// read. The router notices the count was gone when it writes it again and
// looks for partitions at once, so the event is routed within seconds, not
// at the next periodic scan (an hour here; a minute by default). The
// publisher is raw commands, as in any language: GET the count, XADD.
func TestPartitionWrittenJustAfterBusLossRoutedSoon(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "") // 4 partitions
	e.router(router.Options{ClaimInterval: time.Second, DiscoverInterval: time.Hour})
	key := names.PartitionsKey("invalidate")
	redistest.Eventually(t, 10*time.Second, "the count recorded", func() bool { return e.busC.Get(ctx, key).Val() == "4" })

	// Lose the bus's data, and read the count before the router writes it
	// again (try again when the router was first).
	redistest.Eventually(t, 10*time.Second, "a publisher finds no partition count", func() bool {
		must(t, e.busC.FlushAll(ctx).Err())
		return errors.Is(e.busC.Get(ctx, key).Err(), redis.Nil)
	})
	stream := names.IngressStream("invalidate", wire.Partition("acme", wire.DefaultPartitions))
	if stream == names.IngressStream("invalidate", wire.Partition("acme", 4)) {
		t.Fatalf("acme's partition is %s among 8 as among 4: the test proves nothing", stream)
	}
	e.xaddRaw(stream, "user:1")
	redistest.Eventually(t, 20*time.Second, "the event on "+stream+" routed", func() bool {
		_, v := e.meta("invalidate:acme:active")
		return v >= 1
	})
}
