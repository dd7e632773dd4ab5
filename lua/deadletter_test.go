package lua

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
)

// deadletter.lua writes one dead letter per origin while its record keeps
// it, keeps the record as long as the stream (an origin dropped once its
// dead letter is), and runs on a cluster: the record is in the stream's
// slot.
func TestDeadLetterOncePerOrigin(t *testing.T) {
	ctx := context.Background()
	run := func(t *testing.T, c redis.UniversalClient) {
		stream := names.DeadLetterStream("invalidate")
		write := func(origin string) string {
			t.Helper()
			got, err := Run(ctx, c, &DeadLetterRequest{Stream: stream, Written: names.DeadLetterWrittenKey(stream), Origin: origin, MaxLen: 3,
				Values: []any{"reason", "unknown_domain", "entry_id", origin}})
			if err != nil {
				t.Fatal(err)
			}
			return got.ID
		}
		if write("s 1-0 -1") == "" {
			t.Fatal("the first dead letter was not written")
		}
		if id := write("s 1-0 -1"); id != "" {
			t.Fatalf("a second dead letter of the same origin was written: %s", id)
		}
		if write("s 1-0 0") == "" || write("s 2-0 -1") == "" || write("s 3-0 -1") == "" {
			t.Fatal("dead letters of other origins not written")
		}
		// The stream holds all four (MAXLEN ~ trims whole nodes), so
		// does the record.
		if n, err := c.ZCard(ctx, names.DeadLetterWrittenKey(stream)).Result(); err != nil || n != 4 {
			t.Fatalf("the record holds %d (%v), want the 4 the stream holds", n, err)
		}
		if id := write("s 1-0 -1"); id != "" {
			t.Fatalf("an origin the stream holds a dead letter of was written again: %s", id)
		}
		// Emptied (an operator's XTRIM), the stream drops them all; the
		// record drops them at the next write, once it is in a later
		// millisecond than they are.
		last, err := c.XRevRangeN(ctx, stream, "+", "-", 1).Result()
		if err != nil || len(last) != 1 {
			t.Fatal(last, err)
		}
		if err := c.XTrimMaxLen(ctx, stream, 0).Err(); err != nil {
			t.Fatal(err)
		}
		lastMS, _, _ := strings.Cut(last[0].ID, "-")
		redistest.Eventually(t, 5*time.Second, "the server's clock past the last dead letter's millisecond", func() bool {
			now, err := c.Time(ctx).Result()
			return err == nil && strconv.FormatInt(now.UnixMilli(), 10) > lastMS
		})
		if write("s 4-0 -1") == "" {
			t.Fatal("a new origin was not written")
		}
		if write("s 1-0 -1") == "" {
			t.Error("an origin whose dead letter the stream dropped was not written again")
		}
	}
	t.Run("server", func(t *testing.T) { run(t, redistest.Start(t).Client(t)) })
	t.Run("cluster", func(t *testing.T) { run(t, redistest.StartCluster(t, 3, 0).Client(t)) })
}

// The dead-letter stream is capped approximately (XADD … MAXLEN ~ keeps
// whole nodes: up to about 100 more than the cap), its record was capped
// exactly: an origin dropped from the record while its dead letter was
// still in the stream got a second one when its batch was routed again.
// The record keeps an origin while the stream holds its dead letter.
func TestDeadLetterOnceWhileTheStreamHoldsIt(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	stream := names.DeadLetterStream("invalidate")
	written := names.DeadLetterWrittenKey(stream)
	write := func(origin string) string {
		t.Helper()
		got, err := Run(ctx, c, &DeadLetterRequest{Stream: stream, Written: written, Origin: origin, MaxLen: 3,
			Values: []any{"reason", "unknown_domain", "origin", origin}})
		if err != nil {
			t.Fatal(err)
		}
		return got.ID
	}
	for i := range 250 {
		write(fmt.Sprintf("s %d-0 -1", i))
	}
	// The last ten batches routed again (their routers killed before they
	// acknowledged them): no origin whose dead letter the stream holds
	// gets another.
	for i := 240; i < 250; i++ {
		write(fmt.Sprintf("s %d-0 -1", i))
	}
	all, err := c.XRange(ctx, stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[any]int{}
	for _, m := range all {
		if seen[m.Values["origin"]]++; seen[m.Values["origin"]] == 2 {
			t.Errorf("origin %v has two dead letters in the stream", m.Values["origin"])
		}
	}
	// The record holds nothing older than the stream's first dead letter
	// (same millisecond aside), so it stays about as long as the stream.
	first, err := c.XRangeN(ctx, stream, "-", "+", 1).Result()
	if err != nil || len(first) != 1 {
		t.Fatalf("first dead letter: %v %v", first, err)
	}
	ms, _, _ := strings.Cut(first[0].ID, "-")
	if older, err := c.ZCount(ctx, written, "-inf", "("+ms).Result(); err != nil || older != 0 {
		t.Errorf("the record keeps %d origins older than the stream's first dead letter (%v)", older, err)
	}
}

// A cap of 0 (XADD … MAXLEN ~ 0 may leave the stream empty) is no error.
func TestDeadLetterCapZero(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	stream := names.DeadLetterStream("invalidate")
	for i := range 3 {
		if _, err := Run(ctx, c, &DeadLetterRequest{Stream: stream, Written: names.DeadLetterWrittenKey(stream), Origin: fmt.Sprintf("s %d-0 -1", i), MaxLen: 0,
			Values: []any{"reason", "unknown_domain"}}); err != nil {
			t.Fatal(err)
		}
	}
}
