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

// Redis 7.0 answers a read of new entries held by CLIENT PAUSE WRITE and
// released by CLIENT UNBLOCK … ERROR with the error, then runs it once the
// pause ends: the entries it delivers are pending for the router, which
// got an error. A read that failed is followed by a read of the router's
// own pending entries, so the event is routed — not left pending until a
// claim (here never: ClaimInterval is an hour).
func TestReadUnblockedWhilePausedThenRunIsRouted(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	admin := srv.Client(t)
	m := runMatrix(t)
	r, err := New(srv.Client(t), m, Options{Block: 50 * time.Millisecond, ClaimInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	stopRouter := runRouter(t, r)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))

	// readers lists the connections reading the stream, those held by the
	// pause (flag b while paused) when held.
	readers := func(held bool) []string {
		var ids []string
		for _, line := range strings.Split(admin.ClientList(ctx).Val(), "\n") {
			if !strings.Contains(line, "cmd=xreadgroup") {
				continue
			}
			fields := strings.Fields(line)
			var id, flags string
			for _, f := range fields {
				if v, ok := strings.CutPrefix(f, "id="); ok {
					id = v
				}
				if v, ok := strings.CutPrefix(f, "flags="); ok {
					flags = v
				}
			}
			if !held || strings.Contains(flags, "b") {
				ids = append(ids, id)
			}
		}
		return ids
	}
	// Every read unblocked once: the stream's own connections give way to
	// the read script and the shared client's blocking reads.
	redistest.Eventually(t, 10*time.Second, "the stream connections unblocked", func() bool {
		n := 0
		for _, id := range readers(false) {
			n += int(admin.Do(ctx, "CLIENT", "UNBLOCK", id, "ERROR").Val().(int64))
		}
		return n > 0
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.Do(ctx, "CLIENT", "PAUSE", 1500, "WRITE").Err())
	var held []string
	redistest.Eventually(t, 10*time.Second, "a read held by the pause", func() bool {
		held = readers(true)
		return len(held) > 0
	})
	// Appended during the pause: held too, run after the read.
	added := make(chan error, 1)
	go func() {
		added <- c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","id":"held","keys":["user:held"]}`}}).Err()
	}()
	redistest.Eventually(t, 10*time.Second, "the XADD held by the pause", func() bool {
		return strings.Contains(admin.ClientList(ctx).Val(), "cmd=xadd")
	})
	for _, id := range held {
		must(admin.Do(ctx, "CLIENT", "UNBLOCK", id, "ERROR").Err())
	}
	must(<-added)
	events := names.EventsKey(names.Channel(m.Prefix, "acme", "a"))
	redistest.Eventually(t, 20*time.Second, "the event read by the unblocked read routed", func() bool {
		return c.ZCard(ctx, events).Val() == 1
	})
	redistest.Eventually(t, 10*time.Second, "nothing pending", func() bool {
		g, err := c.XInfoGroups(ctx, stream).Result()
		return err == nil && len(g) == 1 && g[0].Pending == 0
	})
	stopRouter()
}
