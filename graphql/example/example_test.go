package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// The queries of issue 15.
const (
	q1 = `{ user(id: 1042) { name } }`
	q2 = `{ user(id: 7) { name } }`
	q3 = `{ products(category: "electronics") { name } }`
)

// The router and the subscriber stop with their tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	t     *testing.T
	svc   *Service
	store *tagstore.Store
	pub   *publisher.Publisher
}

// newEnv runs a bus and a cache Redis, routerd's router, and the example
// service with its embedded subscriber, all in-process.
func newEnv(t *testing.T, refGuard int) *env {
	t.Helper()
	mtx, err := matrix.Load("matrix.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bus, cache := redistest.Start(t), redistest.Start(t)
	r, err := router.New(bus.Client(t), mtx, router.Options{Block: 100 * time.Millisecond, ClaimInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	background(t, r.Run)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	svc, err := New(Config{Bus: bus.Client(t), Cache: cache.Client(t), Matrix: mtx, RefGuard: refGuard})
	if err != nil {
		t.Fatal(err)
	}
	background(t, svc.Subscriber.Run)
	redistest.Eventually(t, 10*time.Second, "subscriber ready", svc.Subscriber.Ready)
	store, err := tagstore.New(cache.Client(t), tagstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := publisher.New(bus.Client(t), publisher.Options{Prefix: mtx.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, svc: svc, store: store, pub: pub}
}

func background(t *testing.T, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stopped with error: %v", err)
		}
	})
}

// query posts a query for tenant acme and returns the response body.
func (e *env) query(q string) string {
	e.t.Helper()
	body := `{"query":` + strconv.Quote(q) + `}`
	req := httptest.NewRequest(http.MethodPost, "/query", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Tenant", "acme")
	rec := httptest.NewRecorder()
	e.svc.Handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		e.t.Fatalf("%s: HTTP %d %s", q, rec.Code, rec.Body)
	}
	return strings.TrimSpace(rec.Body.String())
}

// waitApplied waits until the service's cache stands at version v of a
// tag's channel: the invalidation is done.
func (e *env) waitApplied(tag string, v int64) {
	e.t.Helper()
	redistest.Eventually(e.t, 10*time.Second, fmt.Sprintf("gql applied %s version %d", tag, v), func() bool {
		p, ok, _ := e.store.ReadPosition(context.Background(), "acme", "gql", tag)
		return ok && p.Version >= v
	})
}

// resolved checks how many times each root field was executed (not served
// from the cache) so far.
func (e *env) resolved(want map[string]int) {
	e.t.Helper()
	for call, n := range want {
		if got := e.svc.Resolver.Resolved(call); got != n {
			e.t.Errorf("%s executed %d times, want %d", call, got, n)
		}
	}
}

func (e *env) publish(ev wire.Event) {
	e.t.Helper()
	if _, err := e.pub.Publish(context.Background(), ev); err != nil {
		e.t.Fatal(err)
	}
}

// A change to one user drops only the cached responses that hold that
// user; a product's change drops the list holding it; a creation drops the
// lists of its domain through their tag.
func TestResponsesInvalidatedByEntity(t *testing.T) {
	e := newEnv(t, 0)
	want := map[string]string{
		q1: `{"data":{"user":{"name":"Ada"}}}`,
		q2: `{"data":{"user":{"name":"Grace"}}}`,
		q3: `{"data":{"products":[{"name":"Headphones"},{"name":"Camera"}]}}`,
	}
	for range 2 {
		for _, q := range []string{q1, q2, q3} {
			if got := e.query(q); got != want[q] {
				t.Fatalf("%s = %s, want %s", q, got, want[q])
			}
		}
	}
	e.resolved(map[string]int{"user(1042)": 1, "user(7)": 1, "products(electronics)": 1})
	if got := e.query(`query { user ( id : 1042 ) { name } }`); got != want[q1] {
		t.Errorf("the same query spelt otherwise = %s", got)
	}
	e.resolved(map[string]int{"user(1042)": 1})

	// An event for user 1042 (the mutation publishes it) drops Q1 only.
	e.query(`mutation { renameUser(id: 1042, name: "Ada Lovelace") { id } }`)
	e.waitApplied("users", 1)
	if got := e.query(q1); got != `{"data":{"user":{"name":"Ada Lovelace"}}}` {
		t.Errorf("Q1 after the change = %s", got)
	}
	e.query(q2)
	e.query(q3)
	e.resolved(map[string]int{"user(1042)": 2, "user(7)": 1, "products(electronics)": 1})

	// An event for product 881 drops Q3.
	e.publish(wire.Event{Tenant: "acme", Domain: "product", Entity: "881"})
	e.waitApplied("products", 1)
	e.query(q1)
	e.query(q2)
	e.query(q3)
	e.resolved(map[string]int{"user(1042)": 2, "user(7)": 1, "products(electronics)": 2})

	// A creation in product, without an entity, drops Q3 through its list tag.
	e.query(`mutation { addProduct(name: "Drone", category: "electronics") { id } }`)
	e.waitApplied("products", 2)
	if got := e.query(q3); !strings.Contains(got, "Drone") {
		t.Errorf("Q3 after a creation = %s", got)
	}
	e.query(q1)
	e.resolved(map[string]int{"user(1042)": 2, "user(7)": 1, "products(electronics)": 3})
}

// A response touching more entities than the guard allows is registered at
// the type level of its domain: any event of the domain drops it.
func TestResponseAboveGuardDroppedByAnyEntity(t *testing.T) {
	e := newEnv(t, 1)
	e.query(q1)
	e.query(q3) // two products: above a guard of 1
	e.publish(wire.Event{Tenant: "acme", Domain: "product", Entity: "99999"})
	e.waitApplied("products", 1)
	e.query(q1)
	e.query(q3)
	e.resolved(map[string]int{"user(1042)": 1, "products(electronics)": 2})
}

// Variables are part of the key: one query text, two users, two responses.
func TestVariablesKeyTheResponse(t *testing.T) {
	e := newEnv(t, 0)
	post := func(id string) string {
		body := `{"query":"query U($id: ID!) { user(id: $id) { name } }","variables":{"id":"` + id + `"}}`
		req := httptest.NewRequest(http.MethodPost, "/query", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Tenant", "acme")
		rec := httptest.NewRecorder()
		e.svc.Handler.ServeHTTP(rec, req)
		return strings.TrimSpace(rec.Body.String())
	}
	if a, b := post("1042"), post("7"); a == b || !strings.Contains(a, "Ada") || !strings.Contains(b, "Grace") {
		t.Errorf("responses %s and %s", a, b)
	}
	post("1042")
	e.resolved(map[string]int{"user(1042)": 1, "user(7)": 1})
}

// A change of a product's category is an entity-level event of the
// product: the list it leaves held it (its ref), and the list it joins
// never did, so every response with a list of products is registered at
// product's type level and goes with any event of product. A response
// without a list of products stays.
func TestListMembershipChange(t *testing.T) {
	e := newEnv(t, 0)
	const kitchen = `{ products(category: "kitchen") { name } }`
	if got := e.query(kitchen); got != `{"data":{"products":[{"name":"Kettle"}]}}` {
		t.Fatalf("kitchen = %s", got)
	}
	e.query(q3)
	e.query(q1)
	e.query(`mutation { moveProduct(id: 881, category: "kitchen") { id } }`)
	e.waitApplied("products", 1)
	if got := e.query(kitchen); got != `{"data":{"products":[{"name":"Headphones"},{"name":"Kettle"}]}}` && got != `{"data":{"products":[{"name":"Kettle"},{"name":"Headphones"}]}}` {
		t.Errorf("kitchen after product 881 moved there = %s", got)
	}
	if got := e.query(q3); got != `{"data":{"products":[{"name":"Camera"}]}}` {
		t.Errorf("electronics after product 881 left = %s", got)
	}
	e.query(q1)
	e.resolved(map[string]int{"products(kitchen)": 2, "products(electronics)": 2, "user(1042)": 1})
}

// A response computed before an entity event is never cached after it: the
// query reads user 1042, the user is renamed and the event applied while
// the query is still running; the old response is served to its caller,
// and the next query reads the new name.
func TestResponseComputedBeforeEventNotCached(t *testing.T) {
	e := newEnv(t, 0)
	reading, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	e.svc.Resolver.Read = func(call string) {
		if call == "user(1042)" {
			once.Do(func() { close(reading); <-proceed })
		}
	}
	done := make(chan string, 1)
	go func() {
		req := httptest.NewRequest(http.MethodPost, "/query", strings.NewReader(`{"query":`+strconv.Quote(q1)+`}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Tenant", "acme")
		rec := httptest.NewRecorder()
		e.svc.Handler.ServeHTTP(rec, req)
		done <- strings.TrimSpace(rec.Body.String())
	}()
	<-reading
	e.query(`mutation { renameUser(id: 1042, name: "Ada Lovelace") { id } }`)
	e.waitApplied("users", 1)
	close(proceed)
	if got := <-done; got != `{"data":{"user":{"name":"Ada"}}}` {
		t.Fatalf("the racing query = %s", got)
	}
	if got := e.query(q1); got != `{"data":{"user":{"name":"Ada Lovelace"}}}` {
		t.Errorf("Q1 after the change = %s: the response computed before the event was cached after it", got)
	}
}
