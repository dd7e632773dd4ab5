package integration

import (
	"testing"

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

	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1"})

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
