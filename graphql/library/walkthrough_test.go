package library

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/transport"
	"go.uber.org/goleak"

	"github.com/routerd/routerd/graphql/gqlcache"
	"github.com/routerd/routerd/graphql/library/graph"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Step 2 of the walkthrough: the domains of the mapped types, with
// entity_refs, and the service that caches them.
const libraryMatrix = `
version: 1
tags:
  books:   {services: [library]}
  authors: {services: [library]}
domains:
  book:   {tags: [books], entity_refs: true}
  author: {tags: [authors], entity_refs: true}
services:
  library: {tenants: all}
`

// The walkthrough of docs/graphql.md on the library server: after the
// extension is added, a repeated query is served from the cache, an event
// for one author drops exactly the responses holding that author (a book
// of theirs too, the list of books too), and nothing else.
func TestGqlcacheInFrontOfAnExistingServer(t *testing.T) {
	ctx := context.Background()
	mtx, err := matrix.Parse("library.yaml", []byte(libraryMatrix))
	if err != nil {
		t.Fatal(err)
	}
	bus, cache := redistest.Start(t), redistest.Start(t)
	r, err := router.New(bus.Client(t), mtx, router.Options{Block: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	background(t, r.Run)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)

	// Step 3: a tag store on the cache Redis, the extension, srv.Use.
	store, err := tagstore.New(cache.Client(t), tagstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := gqlcache.New(gqlcache.Options{
		Store:  store,
		Matrix: mtx,
		Types:  map[string]string{"Book": "book", "Author": "author"},
		Tenant: func(context.Context) (string, error) { return "acme", nil },
		TTL:    10 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	res := graph.NewResolver()
	srv := handler.New(graph.NewExecutableSchema(graph.Config{Resolvers: res}))
	srv.AddTransport(transport.POST{})
	srv.Use(rc)

	// Step 4: a subscriber applies the invalidations to the same cache Redis.
	sub, err := subscriber.New(bus.Client(t), subscriber.Options{Service: "library", Matrix: mtx, Cache: cache.Client(t)})
	if err != nil {
		t.Fatal(err)
	}
	background(t, sub.Run)
	redistest.Eventually(t, 10*time.Second, "subscriber ready", sub.Ready)

	query := func(q string) string {
		t.Helper()
		req := httptest.NewRequest(http.MethodPost, "/query", strings.NewReader(`{"query":`+strconv.Quote(q)+`}`))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: HTTP %d %s", q, rec.Code, rec.Body)
		}
		return strings.TrimSpace(rec.Body.String())
	}
	const (
		dispossessed = `{ book(id: "1") { title author { name } } }`
		cities       = `{ book(id: "2") { title author { name } } }`
		leGuin       = `{ author(id: "7") { name } }`
	)
	for range 2 {
		for _, q := range []string{dispossessed, cities, leGuin} {
			query(q)
		}
	}
	if n := res.Resolved.Load(); n != 3 {
		t.Fatalf("%d queries resolved for 3 distinct queries asked twice, want 3: the second round is not served from the cache", n)
	}

	// Step 5: the writer publishes the change of author 7.
	res.RenameAuthor("7", "U. K. Le Guin")
	pub, err := publisher.New(bus.Client(t), publisher.Options{Prefix: mtx.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, publisher.Event{Tenant: "acme", Domain: "author", Entity: "7"}); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the library applied the author's event", func() bool {
		p, ok, _ := store.ReadPosition(ctx, "acme", "library", "authors")
		return ok && p.Version >= 1
	})
	for q, want := range map[string]string{
		dispossessed: `{"data":{"book":{"title":"The Dispossessed","author":{"name":"U. K. Le Guin"}}}}`,
		leGuin:       `{"data":{"author":{"name":"U. K. Le Guin"}}}`,
		cities:       `{"data":{"book":{"title":"Invisible Cities","author":{"name":"Italo Calvino"}}}}`,
	} {
		if got := query(q); got != want {
			t.Errorf("%s after the author's change = %s, want %s", q, got, want)
		}
	}
	if n := res.Resolved.Load(); n != 5 {
		t.Errorf("%d queries resolved, want 5: the two holding author 7 again, the other book from the cache", n)
	}
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
