package router

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// Entries left pending for a router by a cut read (delivered by XREADGROUP,
// never returned), of which a client then deletes some (XDEL) and trims
// others (XTRIM MINID) before the router restarts: the restarted router
// routes the entries still there, acknowledges the ones gone, and leaves
// nothing pending. Coverage: the claim script's acknowledgement of deleted
// entries through a restart. (Holds.)
func TestAttack4EntriesDeletedWhilePendingAfterACutAreAcknowledged(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	const consumer = "cut"
	if err := c.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 10 {
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"e%d","keys":["user:%d"]}`, i, i)
		id, err := c.Do(ctx, "XADD", stream, "*", wire.EventField, ev).Text()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	// The read a cut left: delivered to the router's consumer, not returned.
	if err := c.Do(ctx, "XREADGROUP", "GROUP", "routerd", consumer, "COUNT", 10, "STREAMS", stream, ">").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, "XTRIM", stream, "MINID", ids[2]).Err(); err != nil { // e0, e1
		t.Fatal(err)
	}
	if err := c.Do(ctx, "XDEL", stream, ids[4], ids[6], ids[9]).Err(); err != nil {
		t.Fatal(err)
	}
	r, err := New(c, m, Options{Consumer: consumer, Block: 100 * time.Millisecond, ClaimInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	stopRouter := runRouter(t, r)
	events := names.EventsKey(names.Channel(m.Prefix, "acme", "a"))
	redistest.Eventually(t, 10*time.Second, "the 5 entries still there published", func() bool { return c.ZCard(ctx, events).Val() == 5 })
	redistest.Eventually(t, 10*time.Second, "nothing pending, no lag", drained(c, stream, -1))
	stopRouter()
	for _, i := range []int{2, 3, 5, 7, 8} {
		if err := c.ZScore(ctx, events, fmt.Sprintf("e%d", i)).Err(); err != nil {
			t.Errorf("event e%d: %v", i, err)
		}
	}
	if n := c.XLen(ctx, names.InvalidDeadLetterStream(m.Prefix)).Val(); n != 0 {
		t.Errorf("%d dead letters, want none", n)
	}
}
