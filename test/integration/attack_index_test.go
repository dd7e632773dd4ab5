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

// attack: the cache Redis loses its data (FLUSHALL, a restart without
// persistence) while the service runs. The tag store remembers in memory
// that it indexed the tenant (names.CacheTenantsKey) and never writes the
// index again, so the keys it caches afterwards belong to a tenant the
// cache does not list. When the bus then loses its data while the agent is
// down, a subscriber of every tenant looks for the tenants to drop in the
// bus's registry (gone with the bus) and the cache's index (without the
// tenant): the event the bus lost before the agent applied it is never
// made up for, and its key stays cached for good.
func TestAttackCacheFlushForgetsTenantIndex(t *testing.T) {
	ctx := context.Background()
	const ch = "invalidate:globex:active"
	e := newEnv(t, "")
	e.router(router.Options{})
	cache := e.caches["profile-svc"].Client(t)
	_, stop := e.subscriber("profile-svc", subscriber.Options{CheckInterval: 200 * time.Millisecond})
	e.seed("profile-svc", "globex", "user:0", "active") // indexes globex, once per Store
	must(t, cache.FlushAll(ctx).Err())
	redistest.Eventually(t, 10*time.Second, "the bus generation recorded again", func() bool {
		return cache.Exists(ctx, "routerd:generation:profile-svc").Val() == 1
	})
	e.seed("profile-svc", "globex", "user:1", "active")
	stop()

	e.publish(wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:1"}})
	e.waitVersion(ch, 1)
	must(t, e.busC.FlushAll(ctx).Err()) // lost before the agent applied it

	e.subscriber("profile-svc", subscriber.Options{})
	e.waitGone("profile-svc", "globex", "user:1")
}
