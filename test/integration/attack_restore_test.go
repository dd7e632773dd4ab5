package integration

import (
	"context"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// attack: issue 19 item 1 with the bus restored from an older snapshot
// instead of FLUSHALL. The snapshot holds the bus generation the service
// recorded at its last complete check, so the restored bus looks like the
// same generation: the service, down meanwhile, finds a channel without a
// position whose meta (a new epoch, started because the restore took the
// meta away) is at version 1, replays it from there, and the keys of the
// event routed between the snapshot and the restore (the lost epoch) stay
// cached for good.
func TestAttackBusRestoreHidesOldEpochFromChannelWithoutPosition(t *testing.T) {
	for _, service := range []string{"search-svc", "profile-svc"} { // listed tenants; every tenant
		t.Run(service, func(t *testing.T) {
			ctx := context.Background()
			const ch = "invalidate:globex:active"
			e := newEnv(t, "")
			e.router(router.Options{})
			_, stop := e.subscriber(service, subscriber.Options{})
			redistest.Eventually(t, 10*time.Second, "the bus generation recorded", func() bool {
				n, _ := e.caches[service].Client(t).Exists(ctx, "routerd:generation:"+service).Result()
				return n == 1
			})
			stop()
			snap, err := e.bus.Snapshot(ctx)
			must(t, err)

			for _, k := range []string{"user:1", "user:2", "user:3", "user:4"} {
				e.seed(service, "globex", k, "active")
			}
			e.publish(wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:1", "user:2", "user:3"}})
			e.waitVersion(ch, 1)
			first, _ := e.meta(ch)
			must(t, e.bus.RestoreSnapshot(snap))
			e.publish(wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:4"}})
			redistest.Eventually(t, 20*time.Second, "a new epoch at version 1", func() bool {
				epoch, v := e.meta(ch)
				return epoch != "" && epoch != first && v == 1
			})

			e.subscriber(service, subscriber.Options{})
			for _, k := range []string{"user:4", "user:1", "user:2", "user:3"} {
				e.waitGone(service, "globex", k)
			}
		})
	}
}
