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
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// A change deletes exactly the keys of the mapped tags, for that tenant and in
// the services that own the tags; other tags, tenants and services keep theirs.
func TestChangeDeletesExactlyMappedTags(t *testing.T) {
	e := newEnv(t, "")
	for _, svc := range []string{"profile-svc", "search-svc"} {
		e.seed(svc, "acme", "user:1", "active")
		e.seed(svc, "acme", "user:2", "active")
		e.seed(svc, "acme", "product:9", "electronics")
		e.seed(svc, "globex", "user:1", "active")
	}
	e.seed("billing-svc", "acme", "user:1", "active") // billing-svc does not own "active"
	e.seed("billing-svc", "acme", "invoice:1", "billing")
	e.router(router.Options{})
	for _, svc := range []string{"profile-svc", "search-svc", "billing-svc"} {
		e.subscriber(svc, subscriber.Options{})
	}

	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1", WholeTag: true})

	for _, svc := range []string{"profile-svc", "search-svc"} {
		e.waitGone(svc, "acme", "user:1")
		e.waitGone(svc, "acme", "user:2")
	}
	// Untouched: other tag, other tenant, a service that does not own the tag.
	for _, svc := range []string{"profile-svc", "search-svc"} {
		if !e.cached(svc, "acme", "product:9") {
			t.Errorf("%s: key of another tag was deleted", svc)
		}
		if !e.cached(svc, "globex", "user:1") {
			t.Errorf("%s: key of another tenant was deleted", svc)
		}
	}
	if !e.cached("billing-svc", "acme", "user:1") || !e.cached("billing-svc", "acme", "invoice:1") {
		t.Error("billing-svc lost keys though it does not own tag active")
	}
}

// A key-level event deletes only the keys it names.
func TestKeyLevelEventDeletesOnlyItsKeys(t *testing.T) {
	e := newEnv(t, "")
	e.seed("search-svc", "acme", "product:1", "electronics", "active")
	e.seed("search-svc", "acme", "product:2", "electronics", "active")
	e.seed("search-svc", "acme", "product:3", "electronics")
	e.router(router.Options{})
	e.subscriber("search-svc", subscriber.Options{})

	e.publish(wire.Event{Tenant: "acme", Domain: "product", Entity: "1", Keys: []string{"product:1", "product:3"}})

	e.waitGone("search-svc", "acme", "product:1")
	e.waitGone("search-svc", "acme", "product:3")
	e.waitVersion("invalidate:acme:active", 1)
	// Both channels' messages are applied once product:1 is gone from both
	// tags; product:2 shares both tags and must survive both.
	if !e.cached("search-svc", "acme", "product:2") {
		t.Error("product:2 was deleted by a key-level event that did not name it")
	}
}

// After traffic the router and the subscriber export the metrics operators
// watch, with bounded labels only (never a tenant or a key).
func TestMetricsAfterTraffic(t *testing.T) {
	e := newEnv(t, "")
	routerReg, subReg := prometheus.NewRegistry(), prometheus.NewRegistry()
	e.router(router.Options{Registerer: routerReg})
	e.subscriber("search-svc", subscriber.Options{Registerer: subReg})
	e.seed("search-svc", "acme", "user:1", "active")
	e.publish(wire.Event{ID: "m1", Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.publish(wire.Event{ID: "m1", Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}) // duplicate
	e.publish(wire.Event{Tenant: "acme", Domain: "product", WholeTag: true})
	must(t, e.busC.XAdd(context.Background(), &redis.XAddArgs{Stream: names.IngressStream("invalidate", 0), Values: []any{"event", "nope"}}).Err())
	e.waitGone("search-svc", "acme", "user:1")

	checks := []struct {
		reg    *prometheus.Registry
		name   string
		labels []string
	}{
		{routerReg, "routerd_events_read_total", nil},
		{routerReg, "routerd_events_routed_total", []string{"domain", "user"}},
		{routerReg, "routerd_messages_published_total", []string{"tag", "active"}},
		{routerReg, "routerd_publish_duplicates_total", nil},
		{routerReg, "routerd_events_dead_lettered_total", []string{"reason", "malformed"}},
		{routerReg, "routerd_batch_duration_seconds", nil},
		{routerReg, "routerd_publish_lag_seconds", nil},
		{subReg, "subscriber_messages_received_total", nil},
		{subReg, "subscriber_messages_applied_total", []string{"tag", "active"}},
		{subReg, "cache_invalidation_keys_total", []string{"tag", "active", "status", "SUCCESS"}},
		{subReg, "cache_invalidation_duration_seconds", []string{"tag", "active"}},
		{subReg, "subscriber_delivery_lag_seconds", nil},
		{subReg, "subscriber_position_checks_total", nil},
	}
	for _, c := range checks {
		redistest.Eventually(t, 10*time.Second, c.name, func() bool { return metric(t, c.reg, c.name, c.labels...) > 0 })
	}
	for _, reg := range []*prometheus.Registry{routerReg, subReg} {
		families, _ := reg.Gather()
		for _, f := range families {
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "tenant" || l.GetName() == "key" {
						t.Errorf("%s has an unbounded label %s", f.GetName(), l.GetName())
					}
				}
			}
		}
	}
}
