package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// One bus key of the wrong type — the tenant registry invalidate:tenants
// overwritten as a string (`SET invalidate:tenants …` by a hand or a
// script) — fails the registration that every entry of a tenant new to the
// router goes through (and every tenant is new again each minute, when the
// router forgets which it registered). operations.md's poison rule is for
// WRONGTYPE at an entry's own channel keys; here it turns every event of
// every tenant into a poison dead letter after --dead-letter-after tries,
// though the registry is the router's own and can be rebuilt (a position
// key of another type in the cache is deleted and written again). The keys
// stay cached.
func TestAttack2TenantRegistryOfAnotherTypePoisonsEveryEvent(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.running("acme")
	e.subscriber("profile-svc", subscriber.Options{})
	tenants := []string{"globex", "initech", "umbrella"}
	for _, tenant := range tenants {
		e.seed("profile-svc", tenant, "user:1", "active")
	}
	registry := names.TenantsKey("invalidate")
	must(t, e.busC.Del(ctx, registry).Err())
	must(t, e.busC.Set(ctx, registry, "oops", 0).Err())
	e.router(router.Options{DeadLetterAfter: 3})
	for _, tenant := range tenants {
		e.publish(wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}})
	}
	if err := redistest.Wait(ctx, 20*time.Second, "the events routed", func() bool {
		for _, tenant := range tenants {
			if e.cached("profile-svc", tenant, "user:1") {
				return false
			}
		}
		return true
	}); err != nil {
		reasons := map[string]int{}
		for _, m := range attack2DeadLetters(t, e) {
			reasons[fmt.Sprint(m.Values["reason"])]++
		}
		t.Fatalf("%v: dead letters by reason %v; the registry is still a %s", err, reasons, e.busC.Type(ctx, registry).Val())
	}
}
