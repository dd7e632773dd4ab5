package lua_test

import (
	"context"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/lua"
)

// attack: read.lua bounds a read by the bytes of the field *values* and cuts
// only values above the largest whole; a field *name* is neither counted
// nor cut. Any user allowed to XADD on the ingress (every publisher) can
// append entries whose field names are megabytes each, and one read hands
// the router all of them (issue 19: "memory is bounded by bytes, not
// entries"; forty 7 MB events took the router to 658 MB).
func TestAttackReadBoundsFieldNames(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	const stream = "invalidate:ingress:{0}"
	if err := c.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err(); err != nil {
		t.Fatal(err)
	}
	huge := strings.Repeat("n", 1<<20)
	for range 8 {
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{huge, "x"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	const budget, whole, keep = 64 << 10, 16 << 10, 1 << 10
	reply, err := redis.NewScript(lua.Sources()["read.lua"]).Run(ctx, c, []string{stream}, "routerd", "r1", 100, budget, whole, keep).Slice()
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := reply[0].([]any)
	if n, held := heldBytes(entries); n == 0 || held > budget+whole {
		t.Errorf("one read returned %d entries holding %d bytes, above the budget of %d bytes (largest whole value %d)", n, held, budget, whole)
	}

	// claim.lua: the same entries, pending (those read.lua gave back read
	// now), claimed by another consumer.
	if err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "routerd", Consumer: "r1", Streams: []string{stream, ">"}, Count: 100, Block: -1}).Err(); err != nil && err != redis.Nil {
		t.Fatal(err)
	}
	reply, err = redis.NewScript(lua.Sources()["claim.lua"]).Run(ctx, c, []string{stream}, "routerd", "r2", 0, "-", 100, budget, whole, keep, "").Slice()
	if err != nil {
		t.Fatal(err)
	}
	entries, _ = reply[1].([]any)
	if n, held := heldBytes(entries); n == 0 || held > budget+whole {
		t.Errorf("one claim returned %d entries holding %d bytes, above the budget of %d bytes (largest whole value %d)", n, held, budget, whole)
	}
}

// heldBytes are the number of entries of a script's reply and the bytes of
// their field names and values.
func heldBytes(entries []any) (n, held int) {
	for _, e := range entries {
		fields, _ := e.([]any)[1].([]any)
		for _, f := range fields {
			s, _ := f.(string)
			held += len(s)
		}
	}
	return len(entries), held
}
