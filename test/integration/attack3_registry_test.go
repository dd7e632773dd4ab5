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

// attack3: the tenant registry on the bus is emptied (an operator's
// DEL invalidate:tenants, or the bus losing its data: FLUSHALL) while a
// router runs that has already registered tenant umbrella: the router keeps
// the tenants it registered in memory for up to a minute and neither adds
// umbrella to the registry again nor announces it when umbrella's next
// event comes. A service of every tenant with an in-process cache (a
// Handler, no cache Redis: its tenants come from the registry and the
// announcements alone) that starts meanwhile never subscribes to umbrella's
// channels, and what it cached of umbrella stays cached: until umbrella's
// next event at least a minute later, and for good when none comes.
func TestAttack3EmptiedTenantRegistryHidesATenantFromInProcessCaches(t *testing.T) {
	for _, how := range []string{"del", "flushall"} {
		t.Run(how, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "")
			e.router(router.Options{})
			e.publish(wire.Event{Tenant: "umbrella", Domain: "user", Keys: []string{"user:1"}})
			e.waitVersion("invalidate:umbrella:active", 1)
			gen := e.busC.Get(ctx, "invalidate:generation").Val()
			switch how {
			case "del": // redis-cli DEL invalidate:tenants
				must(t, e.busC.Del(ctx, "invalidate:tenants").Err())
			case "flushall": // redis-cli FLUSHALL
				must(t, e.busC.FlushAll(ctx).Err())
				redistest.Eventually(t, 10*time.Second, "the router marked the bus again", func() bool {
					g := e.busC.Get(ctx, "invalidate:generation").Val()
					return g != "" && g != gen
				})
			}

			got := make(chan subscriber.Invalidation, 100)
			// The service starts (a deploy): its in-process cache is empty,
			// then it caches umbrella's user:2.
			e.subscriber("profile-svc", subscriber.Options{Handler: func(_ context.Context, inv subscriber.Invalidation) error {
				got <- inv
				return nil
			}})
			e.publish(wire.Event{Tenant: "umbrella", Domain: "user", Keys: []string{"user:2"}})
			deadline := time.After(10 * time.Second)
			for {
				select {
				case inv := <-got:
					if inv.Tenant == "umbrella" && inv.Tag == "active" && (len(inv.Keys) == 0 || inv.Keys[0] == "user:2") {
						return
					}
				case <-deadline:
					t.Fatalf("profile-svc's Handler was never given umbrella's invalidation of user:2 (registry holds %v)",
						e.busC.SMembers(ctx, "invalidate:tenants").Val())
				}
			}
		})
	}
}
