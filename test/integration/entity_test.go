package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// entityMatrix turns entity-level invalidation on for user and product; a
// service caches query responses under both. order has it off.
const entityMatrix = `
version: 1
tags:
  users:    {services: [gql]}
  products: {services: [gql]}
  orders:   {services: [gql]}
domains:
  user:    {tags: [users], entity_refs: true}
  product: {tags: [products], entity_refs: true}
  order:   {tags: [orders]}
services:
  gql: {tenants: all}
`

// response caches a query response in gql's cache as the GraphQL extension
// does: under a ref for every entity it holds and the tags of their
// domains (plus list tags). guard is the ref guard of the store used.
func (e *env) response(key string, guard int, tags []string, refs ...tagstore.Ref) tagstore.SetResult {
	e.t.Helper()
	st, err := tagstore.New(e.caches["gql"].Client(e.t), tagstore.Options{RefGuard: guard})
	if err != nil {
		e.t.Fatal(err)
	}
	res, err := st.SetRefs(context.Background(), "acme", key, []byte("{}"), time.Minute, tags, refs)
	if err != nil {
		e.t.Fatal(err)
	}
	return res
}

func user(id string) tagstore.Ref    { return tagstore.Ref{Domain: "user", Entity: id} }
func product(id string) tagstore.Ref { return tagstore.Ref{Domain: "product", Entity: id} }

// waitApplied waits until gql's cache stands at version v of a tag's channel.
func (e *env) waitApplied(tag string, v int64) {
	e.t.Helper()
	redistest.Eventually(e.t, 10*time.Second, fmt.Sprintf("gql applied %s version %d", tag, v), func() bool {
		p, ok := e.position("gql", "acme", tag)
		return ok && p.Version >= v
	})
}

func (e *env) seedQueries() {
	e.response("q1", 0, []string{"users"}, user("1042"))                                      // user(id: 1042) { name }
	e.response("q2", 0, []string{"users"}, user("7"))                                         // user(id: 7) { name }
	e.response("q3", 0, []string{"products"}, product("881"), product("882"), product("883")) // products(category: "electronics")
}

// An event for one entity drops exactly the cached responses that hold it;
// an event without an entity (a creation) drops the lists through their tag;
// a response above the guard goes with any event of its domain.
func TestEntityLevelInvalidation(t *testing.T) {
	e := newEnv(t, entityMatrix)
	e.router(router.Options{})
	e.subscriber("gql", subscriber.Options{})
	e.seedQueries()

	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1042"})
	e.waitGone("gql", "acme", "q1")
	e.waitApplied("users", 1)
	if !e.cached("gql", "acme", "q2") || !e.cached("gql", "acme", "q3") {
		t.Error("the event for user 1042 dropped more than the response holding user 1042")
	}

	e.publish(wire.Event{Tenant: "acme", Domain: "product", Entity: "881"})
	e.waitGone("gql", "acme", "q3")
	if !e.cached("gql", "acme", "q2") {
		t.Error("the event for product 881 dropped a response about a user")
	}

	// A creation: no entity, so the lists of the domain go through the tag.
	e.seedQueries()
	e.publish(wire.Event{Tenant: "acme", Domain: "product", WholeTag: true})
	e.waitGone("gql", "acme", "q3")

	// A response touching more products than the guard allows is registered
	// under the domain's type level, and any product's event drops it.
	var many []tagstore.Ref
	for i := range 5 {
		many = append(many, product(fmt.Sprint(900+i)))
	}
	if res := e.response("big", 3, []string{"products"}, many...); !res.TypeLevel {
		t.Fatal("a response above the guard was registered by entity")
	}
	e.response("q3", 0, []string{"products"}, product("881"))
	e.publish(wire.Event{Tenant: "acme", Domain: "product", Entity: "12345"})
	e.waitGone("gql", "acme", "big")
	e.waitApplied("products", 3)
	if !e.cached("gql", "acme", "q3") || !e.cached("gql", "acme", "q1") {
		t.Error("an event for an entity nobody cached dropped more than the type-level response")
	}

	// An entity named with whole-tag intent is a whole-tag event.
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "7", WholeTag: true})
	e.waitGone("gql", "acme", "q1")
	e.waitGone("gql", "acme", "q2")
}

// Where the matrix leaves entity_refs off, an event naming only its entity
// invalidates its tags whole, as before.
func TestEntityEventWithoutEntityRefsIsWholeTag(t *testing.T) {
	e := newEnv(t, entityMatrix)
	e.router(router.Options{})
	e.subscriber("gql", subscriber.Options{})
	e.seed("gql", "acme", "order:1", "orders")
	e.seed("gql", "acme", "order:2", "orders")
	e.publish(wire.Event{Tenant: "acme", Domain: "order", Entity: "1"})
	e.waitGone("gql", "acme", "order:1")
	e.waitGone("gql", "acme", "order:2")
	if m := e.history("invalidate:acme:orders"); len(m) != 1 || len(m[0].Refs) != 0 || !m[0].WholeTag() {
		t.Errorf("history %+v, want one whole-tag message", m)
	}
}

// An entity-level message missed while the subscriber was down is replayed
// from the history: exactly the entity's responses go.
func TestEntityLevelReplayedFromHistory(t *testing.T) {
	e := newEnv(t, entityMatrix)
	e.router(router.Options{})
	_, stop := e.subscriber("gql", subscriber.Options{})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "0"})
	e.waitApplied("users", 1)
	stop()

	e.seedQueries()
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1042"})
	e.publish(wire.Event{Tenant: "acme", Domain: "product", Entity: "881"})
	e.waitVersion("invalidate:acme:users", 2)
	e.waitVersion("invalidate:acme:products", 1)

	reg := prometheus.NewRegistry()
	e.subscriber("gql", subscriber.Options{Registerer: reg})
	e.waitGone("gql", "acme", "q1")
	e.waitGone("gql", "acme", "q3")
	e.waitApplied("users", 2)
	if !e.cached("gql", "acme", "q2") {
		t.Error("the replay dropped a response of another user")
	}
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "replay"); got < 1 {
		t.Errorf("replay recoveries = %v", got)
	}
}

// When the history no longer reaches back, the whole-tag fallback drops
// every response registered by ref in the domain's tags — those of the
// missed entity, the others, and those registered at type level — and
// nothing of other tags.
func TestEntityLevelWholeTagFallback(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, entityMatrix)
	e.router(router.Options{})
	_, stop := e.subscriber("gql", subscriber.Options{})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "0"})
	e.waitApplied("users", 1)
	stop()

	e.seedQueries()
	var many []tagstore.Ref
	for i := range 5 {
		many = append(many, user(fmt.Sprint(100+i)))
	}
	e.response("big", 3, []string{"users"}, many...)
	// One at a time: events the router reads in one batch merge into one
	// message, and this test needs eleven versions.
	for i := 1; i <= 10; i++ {
		e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: fmt.Sprint(2000 + i)})
		e.waitVersion("invalidate:acme:users", int64(i+1))
	}
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1042"})
	e.waitVersion("invalidate:acme:users", 12)
	must(t, e.busC.XTrimMaxLen(ctx, "{invalidate:acme:users}:history", 3).Err())

	reg := prometheus.NewRegistry()
	e.subscriber("gql", subscriber.Options{Registerer: reg})
	for _, q := range []string{"q1", "q2", "big"} {
		e.waitGone("gql", "acme", q)
	}
	e.waitApplied("users", 12)
	if !e.cached("gql", "acme", "q3") {
		t.Error("the whole-tag fallback of users dropped a response of products")
	}
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "whole_tag"); got != 1 {
		t.Errorf("whole-tag recoveries = %v, want 1", got)
	}
}

// Under the storm limits an entity-level message merges with the others of
// its channel; with a whole-tag event among them the merged message is
// whole-tag, never entity-level only (which would lose the whole tag).
func TestCoalescedEntityLevelKeepsWholeTag(t *testing.T) {
	e := newEnv(t, `
version: 1
defaults: {rate: 1, burst: 1, coalesce: 20ms}
tags:
  users: {services: [gql]}
domains:
  user: {tags: [users], entity_refs: true}
services:
  gql: {tenants: all}
`)
	e.router(router.Options{})
	e.subscriber("gql", subscriber.Options{})
	e.response("q1", 0, []string{"users"}, user("1042"))
	e.response("q2", 0, []string{"users"}, user("7"))
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1"}) // takes the only token
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1042"})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", WholeTag: true})
	e.waitGone("gql", "acme", "q1")
	e.waitGone("gql", "acme", "q2")
	e.waitVersion("invalidate:acme:users", 2)
	h := e.history("invalidate:acme:users")
	if len(h) != 2 || !h[1].WholeTag() {
		t.Errorf("history %+v, want the entity-level and whole-tag events merged into one whole-tag message", h)
	}
}

// An entity-level event never suppresses an older whole-tag event of its
// entity (source_version): it invalidated less than the whole tag.
func TestEntityLevelSuppressesNoWholeTag(t *testing.T) {
	e := newEnv(t, entityMatrix)
	e.router(router.Options{})
	e.subscriber("gql", subscriber.Options{})
	e.seedQueries()
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1042", SourceVersion: 9})
	e.waitGone("gql", "acme", "q1")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1042", SourceVersion: 5, WholeTag: true})
	e.waitGone("gql", "acme", "q2")
}

// An event naming its entity and its keys (README's call) on a domain with
// entity_refs invalidates the keys and what was cached under the entity's
// ref — not the other values of the tag cached with plain Set.
func TestEntityEventWithKeysDropsRefs(t *testing.T) {
	e := newEnv(t, entityMatrix)
	e.router(router.Options{})
	e.subscriber("gql", subscriber.Options{})
	e.seedQueries()
	e.seed("gql", "acme", "user:1042", "users")
	e.seed("gql", "acme", "user:7", "users")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1042", Keys: []string{"user:1042"}})
	e.waitApplied("users", 1)
	for _, k := range []string{"q1", "user:1042"} {
		if e.cached("gql", "acme", k) {
			t.Errorf("%s survives an event for entity 1042 naming key user:1042", k)
		}
	}
	for _, k := range []string{"q2", "q3", "user:7"} {
		if !e.cached("gql", "acme", k) {
			t.Errorf("the event for user 1042 and its key dropped %s", k)
		}
	}
	if h := e.history("invalidate:acme:users"); len(h) != 1 || len(h[0].Keys) != 1 || len(h[0].Refs) != 1 || h[0].Plain {
		t.Errorf("history %+v, want one message with the key and the ref, not dropping plain values", h)
	}
}

// Every event of a domain with entity_refs drops the responses registered
// at its type level (above the guard): a key-level one too.
func TestKeyLevelEventDropsTypeLevel(t *testing.T) {
	e := newEnv(t, entityMatrix)
	e.router(router.Options{})
	e.subscriber("gql", subscriber.Options{})
	e.seedQueries()
	var many []tagstore.Ref
	for i := range 5 {
		many = append(many, product(fmt.Sprint(900+i)))
	}
	if res := e.response("big", 3, []string{"products"}, many...); !res.TypeLevel {
		t.Fatal("a response above the guard was registered by entity")
	}
	e.seed("gql", "acme", "product:1", "products")
	e.publish(wire.Event{Tenant: "acme", Domain: "product", Keys: []string{"product:900"}})
	e.waitApplied("products", 1)
	if e.cached("gql", "acme", "big") {
		t.Error("a response at product's type level survives a key-level event of product")
	}
	if !e.cached("gql", "acme", "q3") || !e.cached("gql", "acme", "product:1") {
		t.Error("a key-level event dropped more than its keys and the type level")
	}
}

// With entity_refs on, an entity-level event still drops the values of the
// domain's tags cached with plain Set (which no ref names), as the whole-tag
// event it was before the switch did — and nothing registered under the
// refs of other entities.
func TestEntityLevelDropsPlainValues(t *testing.T) {
	e := newEnv(t, `
version: 1
tags:
  active: {services: [gql]}
domains:
  user: {tags: [active], entity_refs: true}
services:
  gql: {tenants: all}
`)
	e.router(router.Options{})
	e.subscriber("gql", subscriber.Options{})
	e.seed("gql", "acme", "user:1042", "active")
	e.seed("gql", "acme", "user:7", "active")
	e.response("q1", 0, []string{"active"}, user("1042"))
	e.response("q2", 0, []string{"active"}, user("7"))
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1042"})
	e.waitApplied("active", 1)
	for _, k := range []string{"user:1042", "user:7", "q1"} {
		if e.cached("gql", "acme", k) {
			t.Errorf("%s survives the entity-level event for user 1042", k)
		}
	}
	if !e.cached("gql", "acme", "q2") {
		t.Error("the entity-level event for user 1042 dropped the response about user 7")
	}
	// A whole-tag event still reaches both kinds.
	e.seed("gql", "acme", "user:7", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", WholeTag: true})
	e.waitGone("gql", "acme", "q2")
	e.waitGone("gql", "acme", "user:7")
}

// Two entity-level events of one channel in one PublishBatch (one packed
// entry, read in one batch: the router starts after it) merge into one
// message naming both refs: only those two entities' responses go.
func TestBatchedEntityEventsStayEntityLevel(t *testing.T) {
	e := newEnv(t, entityMatrix)
	e.routerRanBefore()
	e.subscriber("gql", subscriber.Options{})
	e.seedQueries()
	e.response("q4", 0, []string{"users"}, user("5"))
	if _, err := e.pub.PublishBatch(context.Background(), []wire.Event{
		{Tenant: "acme", Domain: "user", Entity: "1042"},
		{Tenant: "acme", Domain: "user", Entity: "5"},
	}); err != nil {
		t.Fatal(err)
	}
	e.router(router.Options{})
	e.waitGone("gql", "acme", "q1")
	e.waitGone("gql", "acme", "q4")
	e.waitApplied("users", 1)
	if !e.cached("gql", "acme", "q2") {
		t.Error("two entity-level events batched together dropped user 7's response")
	}
	if h := e.history("invalidate:acme:users"); len(h) != 1 || len(h[0].Refs) != 2 || !h[0].Plain {
		t.Errorf("history %+v, want one message naming both refs", h)
	}
}

// Under the storm limits entity-level events merge by union of their refs:
// the merged message stays entity-level.
func TestCoalescedEntityLevelStaysEntityLevel(t *testing.T) {
	e := newEnv(t, `
version: 1
defaults: {rate: 1, burst: 1, coalesce: 20ms}
tags:
  users: {services: [gql]}
domains:
  user: {tags: [users], entity_refs: true}
services:
  gql: {tenants: all}
`)
	e.router(router.Options{})
	e.subscriber("gql", subscriber.Options{})
	e.response("q1", 0, []string{"users"}, user("1042"))
	e.response("q2", 0, []string{"users"}, user("7"))
	e.response("q4", 0, []string{"users"}, user("5"))
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1"}) // takes the only token
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1042"})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "5", Keys: []string{"user:5"}})
	e.waitGone("gql", "acme", "q1")
	e.waitGone("gql", "acme", "q4")
	e.waitApplied("users", 2)
	if !e.cached("gql", "acme", "q2") {
		t.Error("coalesced entity-level events dropped user 7's response")
	}
	h := e.history("invalidate:acme:users")
	if len(h) != 2 || len(h[1].Refs) != 2 || len(h[1].Keys) != 1 || !h[1].Plain {
		t.Errorf("history %+v, want the second message to unite both refs and the key", h)
	}
}

// The subscriber's local limit merges a channel's messages by union too:
// entity-level messages stay entity-level.
func TestSubscriberLimitMergesEntityLevel(t *testing.T) {
	e := newEnv(t, entityMatrix)
	// One entry a read, and each event below routed before the next is
	// published: each is a message of its own.
	e.router(router.Options{BatchSize: 1})
	reg := prometheus.NewRegistry()
	// One token, then one every 5 s: a message that finds none waits, and
	// the ones after it merge into it.
	e.subscriber("gql", subscriber.Options{Registerer: reg, ApplyRate: 0.2, ApplyBurst: 1, Coalesce: 10 * time.Millisecond, MaxKeys: 100})
	e.seedQueries()
	e.response("q4", 0, []string{"users"}, user("5"))
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1"})
	e.waitApplied("users", 1)
	// Messages the channel's checks replay (the check of a channel just
	// subscribed, on a slow machine a late one) take no token: publish
	// until one live message has to wait, whatever came before it. Each
	// event is routed before the next is published: the router joins the
	// batches it reads while it publishes, so events published together
	// may make one message.
	const ch = "invalidate:acme:users"
	publishRouted := func(ev wire.Event) {
		_, before := e.meta(ch)
		e.publish(ev)
		e.waitVersion(ch, before+1)
	}
	redistest.Eventually(t, 30*time.Second, "a message waiting for the local limit", func() bool {
		if metric(t, reg, "subscriber_applies_delayed_total") >= 1 {
			return true
		}
		publishRouted(wire.Event{Tenant: "acme", Domain: "user", Entity: "6"})
		return false
	})
	// Within the 5 s the waiting message waits, these two merge into it
	// (or, if it was applied just before, the second into the first).
	publishRouted(wire.Event{Tenant: "acme", Domain: "user", Entity: "1042"})
	publishRouted(wire.Event{Tenant: "acme", Domain: "user", Entity: "5", Keys: []string{"user:5"}})
	e.waitGone("gql", "acme", "q1")
	e.waitGone("gql", "acme", "q4")
	_, last := e.meta(ch)
	e.waitApplied("users", last)
	if got := metric(t, reg, "subscriber_messages_coalesced_total"); got < 1 {
		t.Fatalf("coalesced = %v: the local limit merged nothing", got)
	}
	if !e.cached("gql", "acme", "q2") {
		t.Error("entity-level messages merged under the local limit dropped user 7's response")
	}
}
