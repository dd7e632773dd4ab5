package integration

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/wire"
)

// The record of written dead letters is a key of another type (an
// operator's SET on the wrong name): a malformed entry ahead of a good one
// on the same partition must neither hold the good one back nor be
// acknowledged without a dead letter.
func TestAttack11DeadLetterRecordOfAnotherType(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	reg := prometheus.NewRegistry()
	written := names.DeadLetterWrittenKey(names.InvalidDeadLetterStream("invalidate"))
	must(t, e.busC.Set(ctx, written, "x", 0).Err())
	e.router(router.Options{Registerer: reg})
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"event", "{not json"}}).Err())
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitVersion("invalidate:acme:active", 1)
	redistest.Eventually(t, 10*time.Second, "the malformed entry's dead letter", func() bool {
		return len(allDeadLetters(t, e.busC)) == 1
	})
}
