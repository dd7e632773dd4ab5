package router

import (
	"context"
	"fmt"
	"strconv"
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
	before := xreadgroupCalls(t, c)
	stop := runRouter(t, r)
	redistest.Eventually(t, 30*time.Second, "the backlog routed, nothing pending", drained(c, stream, backlog))
	// 64, 128, 256, 512, 1,024, 1,024, 1,024 and the last 64: 8 reads
	// (the 8 that brought entries take the stream back to whole).
	// The others: reads of the idle streams (the other partition, the
	// re-drive stream) and the one that waits for more, 3 to 6 of them.
	if n := xreadgroupCalls(t, c) - before; n > 16 {
		t.Errorf("%d reads (XREADGROUP) for a backlog of %d at a quarter of the size, want at most 16", n, backlog)
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

// xreadgroupCalls is how many XREADGROUP calls the server has answered.
func xreadgroupCalls(t *testing.T, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_xreadgroup:calls="); ok {
			n, err := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	return 0
}
