package router

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// A stream whose reads were shrunk once (readLost: a quarter) drains a
// backlog in reads of a quarter of what they would take, growing as full
// reads do: the quarter is of the read the loop wants, not taken again of
// the read before. (Taken of the read before, a backlog was read one entry
// at a time: 64, 32, 16, … 1, then doubling back up from 1, some 20 reads
// for 4,096 entries where 8 do.)
func TestReview8AShrunkReadTakesAQuarterNotLessAndLess(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	const backlog = 4096
	pipe := c.Pipeline()
	for i := range backlog {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField,
			fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"e%d","keys":["user:%d"]}`, i, i)}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	// Reads of idle streams block past the test, uncounted until they end.
	r, err := New(c, m, Options{Block: time.Minute, ClaimInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r.readSize(stream).shrunk = 1 // one read lost its connection
	// Every command from now on in the slow log, to count the reads of this
	// stream alone: the server's count of every XREADGROUP took in the
	// idle streams' reads too, more of them on a loaded machine.
	for _, kv := range [][2]string{{"slowlog-max-len", "100000"}, {"slowlog-log-slower-than", "0"}} {
		if err := c.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Do(ctx, "SLOWLOG", "RESET").Err(); err != nil {
		t.Fatal(err)
	}
	stop := runRouter(t, r)
	redistest.Eventually(t, 30*time.Second, "the backlog routed, nothing pending", drained(c, stream, backlog))
	// 64, 128, 256, 512, 1,024, 1,024, 1,024 and the last 64: 8 reads
	// (the 8 that brought entries take the stream back to whole); the
	// slow log holds a read when it ends, so one waiting for more is not
	// there yet, and one that found the stream drained may be.
	if n := readsOf(t, c, stream); n > 11 {
		t.Errorf("%d reads (XREADGROUP) of %s for a backlog of %d at a quarter of the size, want at most 11", n, stream, backlog)
	}
	// The reads blocked on idle streams end when their connections do.
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	redistest.Eventually(t, 10*time.Second, "the router stopped", func() bool {
		c.Do(ctx, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
		select {
		case <-stopped:
			return true
		default:
			return false
		}
	})
}

// readsOf is how many XREADGROUP calls naming stream the server's slow log
// holds (every command, with slowlog-log-slower-than 0).
func readsOf(t *testing.T, c *redis.Client, stream string) int {
	t.Helper()
	logged, err := c.SlowLogGet(context.Background(), -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range logged {
		if len(l.Args) > 0 && strings.EqualFold(l.Args[0], "XREADGROUP") && slices.Contains(l.Args, stream) {
			n++
		}
	}
	return n
}
