package lua

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
)

// deadletter.lua writes one dead letter per origin while its record keeps
// it, keeps the record as long as the stream (its oldest dropped past the
// cap), and runs on a cluster: the record is in the stream's slot.
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
		if n, err := c.ZCard(ctx, names.DeadLetterWrittenKey(stream)).Result(); err != nil || n != 3 {
			t.Fatalf("the record holds %d (%v), want the cap of 3", n, err)
		}
		if write("s 1-0 -1") == "" {
			t.Error("the oldest origin, dropped from the record, was not written again")
		}
	}
	t.Run("server", func(t *testing.T) { run(t, redistest.Start(t).Client(t)) })
	t.Run("cluster", func(t *testing.T) { run(t, redistest.StartCluster(t, 3, 0).Client(t)) })
}
