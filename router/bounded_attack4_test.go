package router

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// Attack 4 on the bounded read of new entries: entries shaped to pass the
// bounds one value at a time.

// A client appends entries made of many fields, each value just within
// MaxEventBytes, so that no value is too large but each entry is many times
// MaxEventBytes (and above ReadBytes). The bounded connection cuts the read
// of new entries at the total; the entries are then pending and read
// through claim.lua, which cuts only values above MaxEventBytes and returns
// at least one entry whole: every entry is held whole. The promise is that
// the router never holds an entry above MaxEventBytes whole.
func TestAttack4EntriesOfManyValuesJustWithinTheLimitAreNotHeld(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	const maxEvent = 64 << 10
	const n, fields = 10, 64 // entries of 64 values of 64 KiB: 4 MiB each
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	value := strings.Repeat("v", maxEvent-100)
	for i := range n {
		args := []any{"XADD", stream, "*", wire.EventField, fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"e%d","keys":["user:%d"]}`, i, i)}
		for j := range fields {
			args = append(args, fmt.Sprintf("pad%d", j), value)
		}
		if err := c.Do(ctx, args...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	value = ""
	r, err := New(c, m, Options{Block: 100 * time.Millisecond, ClaimInterval: time.Hour, MaxEventBytes: maxEvent, ReadBytes: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	alloc := allocatedWhile(t, r, 30*time.Second, "nothing pending, no lag", drained(c, stream, n))
	weight := uint64(n * fields * maxEvent)
	t.Logf("routing %d entries of %d KiB each allocated %d KiB", n, fields*maxEvent>>10, alloc>>10)
	if alloc > weight/4 {
		t.Errorf("routing %d entries of %d values of %d KiB (each entry %d KiB, MaxEventBytes %d KiB, ReadBytes 256 KiB) allocated %d MiB: entries above MaxEventBytes are held whole",
			n, fields, maxEvent>>10, fields*maxEvent>>10, maxEvent>>10, alloc>>20)
	}
}

// A client appends entries of many empty fields (XADD s * "" "" "" "" …).
// claim.lua counts field names' and values' bytes against ReadBytes: such
// an entry counts 0 bytes however many fields it has, so one claim of the
// pending entries left by a cut read returns BatchSize of them — megabytes
// on the wire and many more in the router's memory — for a ReadBytes of
// 64 KiB.
func TestAttack4EmptyFieldsCountAgainstTheReadBudget(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	m := runMatrix(t)
	const n, fields = 20, 50_000 // each entry: 100,000 empty strings, 600 KB of RESP
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	const consumer = "attack4"
	if err := c.XGroupCreateMkStream(ctx, stream, "routers", "0").Err(); err != nil {
		t.Fatal(err)
	}
	for range n {
		args := []any{"XADD", stream, "*"}
		for range fields {
			args = append(args, "", "")
		}
		if err := c.Do(ctx, args...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	r, err := New(c, m, Options{Group: "routers", Consumer: consumer, ReadBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	// The entries pending for the router, as a cut read leaves them: 12 MB
	// of reply, read on a client that waits for it and never sends the
	// read again (on a loaded machine the default 3 s timeout fired, and
	// go-redis's retry found nothing left to deliver).
	reader := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: time.Minute, MaxRetries: -1})
	defer reader.Close()
	if err := reader.Do(ctx, "XREADGROUP", "GROUP", "routers", consumer, "COUNT", n, "STREAMS", stream, ">").Err(); err != nil {
		t.Fatal(err)
	}
	msgs, _, err := r.claimPending(ctx, stream, 0, "-", r.opt.Consumer, r.opt.ReadBytes)
	if err != nil {
		t.Fatal(err)
	}
	elems := len(msgs) * 2 * fields
	if len(msgs) > 1 {
		t.Errorf("one claim with ReadBytes 64 KiB returned %d entries of %d empty fields each (%d RESP elements, about %d KB on the wire): fields count nothing against the read budget",
			len(msgs), fields, elems, elems*6/1000)
	}
}
