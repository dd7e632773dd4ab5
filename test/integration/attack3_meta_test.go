package integration

import (
	"context"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
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
			const service, meta = "search-svc", "{invalidate:globex:active}:meta"
			e := newEnv(t, "")
			e.router(router.Options{})
			e.generationRecorded(service)
			e.lostEpoch(service, func() {
				switch how {
				case "unlink": // redis-cli UNLINK '{invalidate:globex:active}:meta'
					must(t, e.busC.Unlink(ctx, meta).Err())
				case "expire": // redis-cli PEXPIRE '{invalidate:globex:active}:meta' 1
					must(t, e.busC.PExpire(ctx, meta, time.Millisecond).Err())
					redistest.Eventually(t, 5*time.Second, "the meta expired", func() bool {
						return e.busC.Exists(ctx, meta).Val() == 0
					})
				}
			})
		})
	}
}
