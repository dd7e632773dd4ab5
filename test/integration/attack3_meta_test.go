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

// attack3: an operator (or a bus that evicts, which docs/operations.md
// calls safe) removes one channel's meta while the service is down. No
// FLUSHALL, no restart, no restore: the bus generation, the run_id and the
// flush count all stay, so the service's bus identity is unchanged. The
// router takes the missing meta for a new channel and starts a new epoch
// at version 1 (dropping the old history); the service, which holds no
// position on the channel, finds the identity it recorded and replays the
// new epoch from version 1 as everything there is, and the keys of the
// event routed before the meta went stay cached for good.
func TestAttack3ChannelMetaRemovedHidesOldEpoch(t *testing.T) {
	for _, how := range []string{"unlink", "expire"} {
		t.Run(how, func(t *testing.T) {
			ctx := context.Background()
			const service, ch = "search-svc", "invalidate:globex:active"
			e := newEnv(t, "")
			e.router(router.Options{})
			_, stop := e.subscriber(service, subscriber.Options{})
			redistest.Eventually(t, 10*time.Second, "the bus generation recorded", func() bool {
				n, _ := e.caches[service].Client(t).Exists(ctx, "routerd:generation:"+service).Result()
				return n == 1
			})
			stop()

			for _, k := range []string{"user:1", "user:2", "user:3", "user:4"} {
				e.seed(service, "globex", k, "active")
			}
			e.publish(wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:1", "user:2", "user:3"}})
			e.waitVersion(ch, 1)
			first, _ := e.meta(ch)
			switch how {
			case "unlink": // redis-cli UNLINK '{invalidate:globex:active}:meta'
				must(t, e.busC.Unlink(ctx, "{"+ch+"}:meta").Err())
			case "expire": // redis-cli PEXPIRE '{invalidate:globex:active}:meta' 1
				must(t, e.busC.PExpire(ctx, "{"+ch+"}:meta", time.Millisecond).Err())
				redistest.Eventually(t, 5*time.Second, "the meta expired", func() bool {
					return e.busC.Exists(ctx, "{"+ch+"}:meta").Val() == 0
				})
			}
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
