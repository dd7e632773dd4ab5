package lua

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
)

// unread.lua counts the entries deleted before the group read them, with
// entries left to read too: counting those left when the lag is at most
// Most, else by the head check while the stream's first entry is after
// the group's last delivered one (no read since the trim). It takes them
// out of the group's lag, so the next call counts nothing. Past the trim
// with a lag above Most it cannot tell, nor with an XDEL inside the
// stream: those are counted once the group has read everything left.
func TestUnreadCountsEntriesDeletedBeforeTheGroupReadThem(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	const s, g = "ingress", "routerd"
	add := func(n int) {
		for range n {
			if err := c.XAdd(ctx, &redis.XAddArgs{Stream: s, Values: []any{"event", "{}"}}).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	read := func() {
		if err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: g, Consumer: "r", Streams: []string{s, ">"}, Count: 100, Block: -1}).Err(); err != nil && err != redis.Nil {
			t.Fatal(err)
		}
	}
	most := 2
	unread := func(want int64) {
		t.Helper()
		got, err := Run(ctx, c, &UnreadRequest{Stream: s, Group: g, Most: most})
		if err != nil || got.Lost != want {
			t.Fatalf("unread = %+v, %v; want %d lost", got, err, want)
		}
	}
	if err := c.XGroupCreateMkStream(ctx, s, g, "0").Err(); err != nil {
		t.Fatal(err)
	}
	add(2)
	read() // the group's read counter is known from here
	unread(0)
	add(5)
	if err := c.XTrimMaxLen(ctx, s, 0).Err(); err != nil {
		t.Fatal(err)
	}
	add(3)
	unread(5) // three left to read, a lag of 8 above Most: the head check (no read since the trim)
	unread(0)
	read()
	unread(0)
	// A trim the group has read past.
	add(4)
	if err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: g, Consumer: "r", Streams: []string{s, ">"}, Count: 1, Block: -1}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.XTrimMaxLen(ctx, s, 1).Err(); err != nil { // all but the last: the one read and 2 unread
		t.Fatal(err)
	}
	add(2)
	if err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: g, Consumer: "r", Streams: []string{s, ">"}, Count: 1, Block: -1}).Err(); err != nil {
		t.Fatal(err)
	}
	unread(0)  // 2 left to read, 2 deleted: a lag of 4 above Most, read past the trim
	most = 100 // a lag below Most: what is left is counted
	unread(2)
	unread(0)
	add(2)
	if err := c.XTrimMaxLen(ctx, s, 3).Err(); err != nil { // the one held and one unread
		t.Fatal(err)
	}
	unread(1)
	unread(0)
	read()
	unread(0)
	if g, err := c.XInfoGroups(ctx, s).Result(); err != nil || g[0].Lag != 0 {
		t.Fatalf("the group after: %+v, %v; want a lag of 0", g, err)
	}
	// XDEL of unread entries, the same (a lag above Most: once read).
	most = 1
	add(4)
	ids, err := c.XRevRangeN(ctx, s, "+", "-", 4).Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.XDel(ctx, s, ids[2].ID, ids[3].ID).Err(); err != nil {
		t.Fatal(err)
	}
	read()
	unread(2)
}
