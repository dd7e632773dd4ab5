// Command example is a small gqlgen service with User and Product whose
// query responses are cached in Redis by the routerd response cache
// (github.com/routerd/routerd/graphql/gqlcache) and invalidated by routerd:
// a mutation publishes its domain-change event, routerd routes it, and the
// subscriber embedded here drops exactly the cached responses that hold the
// changed entity.
//
//	routerd serve --matrix graphql/example/matrix.yaml --redis redis://localhost:6379
//	go run ./example --redis redis://localhost:6379 --cache-redis redis://localhost:6379/1
//	curl -H 'X-Tenant: acme' -d '{"query":"{ user(id: 1042) { name } }"}' localhost:8080/query
//
// The tenant of a request is its X-Tenant header.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/99designs/gqlgen/graphql/handler"
	"github.com/99designs/gqlgen/graphql/handler/transport"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/graphql/example/graph"
	"github.com/routerd/routerd/graphql/gqlcache"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/redisurl"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	bus := fs.String("redis", "redis://localhost:6379", "the bus Redis (routerd's): one server, cluster seeds, or a Sentinel URL (master_name=)")
	cache := fs.String("cache-redis", "redis://localhost:6379/1", "the cache Redis, in the same forms")
	matrixFile := fs.String("matrix", "graphql/example/matrix.yaml", "the routing matrix")
	listen := fs.String("listen", "localhost:8080", "HTTP address of /query")
	if err := fs.Parse(args); err != nil {
		return err
	}
	mtx, err := matrix.Load(*matrixFile)
	if err != nil {
		return err
	}
	// Opened as routerd's commands open theirs: a Sentinel URL's client,
	// the subscriber's pub/sub connections included, follows a failover.
	busC, err := redisurl.Open(*bus, redisurl.Options{})
	if err != nil {
		return err
	}
	defer busC.Close()
	cacheC, err := redisurl.Open(*cache, redisurl.Options{})
	if err != nil {
		return err
	}
	defer cacheC.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	svc, err := New(Config{Bus: busC, Cache: cacheC, Matrix: mtx, Logger: log})
	if err != nil {
		return err
	}
	srv := &http.Server{Addr: *listen, Handler: svc.Handler, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- svc.Subscriber.Run(ctx) }()
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("serving", "addr", *listen)
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

// Config wires the service.
type Config struct {
	Bus, Cache redis.UniversalClient
	Matrix     *matrix.Matrix
	// RefGuard is the tag store's reference guard (default 500).
	RefGuard int
	Logger   *slog.Logger
}

// Service is the example wired up: its HTTP handler (POST /query), its
// resolver and the subscriber that applies invalidations to the cache.
type Service struct {
	Handler    http.Handler
	Resolver   *graph.Resolver
	Subscriber *subscriber.Subscriber
	Cache      *gqlcache.Cache
}

type tenantKey struct{}

// tenantOf is the request's tenant, from its X-Tenant header.
func tenantOf(ctx context.Context) (string, error) {
	t, _ := ctx.Value(tenantKey{}).(string)
	if err := names.Tenant(t); err != nil {
		return "", fmt.Errorf("X-Tenant: %w", err)
	}
	return t, nil
}

// New wires the service.
func New(cfg Config) (*Service, error) {
	store, err := tagstore.New(cfg.Cache, tagstore.Options{RefGuard: cfg.RefGuard})
	if err != nil {
		return nil, err
	}
	pub, err := publisher.New(cfg.Bus, publisher.Options{Prefix: cfg.Matrix.Prefix, Origin: "graphql-example"})
	if err != nil {
		return nil, err
	}
	res := graph.NewResolver()
	res.Tenant = tenantOf
	res.Publish = func(ctx context.Context, e wire.Event) error {
		_, err := pub.Publish(ctx, e)
		return err
	}
	cache, err := gqlcache.New(gqlcache.Options{
		Store:  store,
		Matrix: cfg.Matrix,
		Types:  map[string]string{"User": "user", "Product": "product"},
		Tenant: tenantOf,
		Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	gql := handler.New(graph.NewExecutableSchema(graph.Config{Resolvers: res}))
	gql.AddTransport(transport.POST{})
	gql.Use(cache)
	sub, err := subscriber.New(cfg.Bus, subscriber.Options{Service: "gql", Matrix: cfg.Matrix, Cache: cfg.Cache, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /query", func(w http.ResponseWriter, r *http.Request) {
		gql.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tenantKey{}, r.Header.Get("X-Tenant"))))
	})
	return &Service{Handler: mux, Resolver: res, Subscriber: sub, Cache: cache}, nil
}
