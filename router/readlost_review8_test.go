package router

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// A claim whose connection could not be made (the bus unreachable, at
// maxclients) sent nothing, and no reply of it was too large: the
// stream's reads keep their size. Only a connection lost after the claim
// was sent shrinks them (readLost).
func TestReview8AClaimNeverSentLeavesReadsWhole(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	if err := c.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err(); err != nil {
		t.Fatal(err)
	}
	r, err := New(c, m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r.claimC = redis.NewClient(&redis.Options{Addr: redistest.RefusedAddr(t), MaxRetries: -1, DialTimeout: time.Second})
	defer r.claimC.Close()
	for range 3 {
		if _, err := r.claimOf(ctx, stream, time.Second, "", nil); err == nil {
			t.Fatal("a claim on a bus nobody listens on worked")
		}
	}
	if n := r.readSize(stream).scale(r.opt.ReadBytes); n != r.opt.ReadBytes {
		t.Errorf("reads take %d bytes after claims that could not connect, want %d", n, r.opt.ReadBytes)
	}
}
