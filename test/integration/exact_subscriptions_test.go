package integration

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// A subscriber of every tenant on a standalone bus subscribes to exact
// channels, never to patterns (Redis matches every pattern against every
// PUBLISH on the bus): a tenant that appears while it runs is announced by
// the router, joins the running connection and is applied live, key by key.
func TestEveryTenantServiceUsesNoPatterns(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:0"}})
	e.waitVersion("invalidate:acme:active", 1)
	reg := prometheus.NewRegistry()
	e.subscriber("profile-svc", subscriber.Options{Registerer: reg})

	numpat := func() int64 {
		n, err := e.busC.PubSubNumPat(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := numpat(); n != 0 {
		t.Errorf("PUBSUB NUMPAT = %d with a subscriber of every tenant, want 0", n)
	}
	if n := e.busC.PubSubNumSub(ctx, "invalidate:acme:active").Val()["invalidate:acme:active"]; n != 1 {
		t.Errorf("invalidate:acme:active has %d subscribers, want 1", n)
	}

	// A new tenant: announced, subscribed, applied live (key-level).
	e.seed("profile-svc", "newco", "user:1", "active")
	e.seed("profile-svc", "newco", "user:2", "active")
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "newco", "user:1")
	redistest.Eventually(t, 10*time.Second, "the new tenant's channel subscribed", func() bool {
		return e.busC.PubSubNumSub(ctx, "invalidate:newco:active").Val()["invalidate:newco:active"] == 1
	})
	if !e.cached("profile-svc", "newco", "user:2") {
		t.Error("the new tenant's first event invalidated more than its key")
	}
	received := metric(t, reg, "subscriber_messages_received_total")
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("profile-svc", "newco", "user:2")
	if got := metric(t, reg, "subscriber_messages_received_total"); got <= received {
		t.Errorf("the new tenant's next message was not received live (received %v, before %v)", got, received)
	}
	if n := numpat(); n != 0 {
		t.Errorf("PUBSUB NUMPAT = %d after a new tenant, want 0", n)
	}
}

// The announcement of a new tenant is not lost with the registry write that
// preceded it. A router that added the tenant to the registry and then
// failed to announce it (its PUBLISH failed, or it died in between) left
// the retry's SADD answering 0, and nobody announced: subscribers of every
// tenant missed the tenant's messages until their next check (an hour
// here). Every router announces each tenant it has not announced itself.
func TestTenantInRegistryButNeverAnnounced(t *testing.T) {
	e := newEnv(t, "")
	e.subscriber("profile-svc", subscriber.Options{})
	// What the failed router left: the registry entry, no announcement.
	must(t, e.busC.SAdd(context.Background(), wire.TenantsKey(e.mtx.Prefix), "newco").Err())
	e.seed("profile-svc", "newco", "user:1", "active")
	e.router(router.Options{})
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "newco", "user:1")
}
