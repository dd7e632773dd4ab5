package lua

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
)

// unread.lua counts the entries deleted before the group read them once
// the group has read everything left, and only then; it takes them out of
// the group's lag, so the next call counts nothing.
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
	unread := func(want int64) {
		t.Helper()
		got, err := Run(ctx, c, &UnreadRequest{Stream: s, Group: g})
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
	unread(0) // three left to read: the lag is theirs too
	read()
	unread(5)
	unread(0)
	if g, err := c.XInfoGroups(ctx, s).Result(); err != nil || g[0].Lag != 0 {
		t.Fatalf("the group after: %+v, %v; want a lag of 0", g, err)
	}
	// XDEL of unread entries, the same.
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
