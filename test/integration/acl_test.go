package integration

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// grantMatrix is testMatrix with a publishers section: profile-svc may
// publish users of every tenant, shop products of acme only.
const grantMatrix = testMatrix + `
publishers:
  profile-svc: {domains: [user], tenants: all}
  shop:        {domains: [product], tenants: [acme]}
`

// A publisher's own streams carry only what its grant allows: a granted
// event is routed, one outside the grant (another tenant, another domain)
// goes to the dead letters with the reason, and is counted.
func TestPublisherGrants(t *testing.T) {
	e := newEnv(t, grantMatrix)
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})
	e.subscriber("search-svc", subscriber.Options{})
	e.seed("search-svc", "acme", "product:1", "electronics")
	e.seed("search-svc", "globex", "product:2", "electronics")

	shop, err := publisher.New(e.busC, publisher.Options{Publisher: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, ev := range []wire.Event{
		{Tenant: "globex", Domain: "product", Keys: []string{"product:2"}}, // not granted: tenant
		{Tenant: "acme", Domain: "user", WholeTag: true},                   // not granted: domain
		{Tenant: "acme", Domain: "product", Keys: []string{"product:1"}},   // granted
	} {
		if _, err := shop.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	e.waitGone("search-svc", "acme", "product:1")
	dead := e.deadLetters(2)
	want := map[string]bool{
		`publisher "shop" is not granted domain "product" for tenant "globex"`: true,
		`publisher "shop" is not granted domain "user" for tenant "acme"`:      true,
	}
	for _, d := range dead {
		if d.Values["reason"] != router.ReasonNotGranted || !want[d.Values["error"].(string)] {
			t.Errorf("dead letter %v", d.Values)
		}
		delete(want, d.Values["error"].(string))
	}
	if len(want) != 0 {
		t.Errorf("no dead letter for %v", want)
	}
	if !e.cached("search-svc", "globex", "product:2") {
		t.Errorf("an event outside shop's grant invalidated globex's cache")
	}
	redistest.Eventually(t, 5*time.Second, "dead letters counted", func() bool {
		return metric(t, reg, "routerd_events_dead_lettered_total", "reason", router.ReasonNotGranted) == 2
	})
	if v := e.history("invalidate:globex:electronics"); len(v) != 0 {
		t.Errorf("globex's channel got %d messages", len(v))
	}
}
