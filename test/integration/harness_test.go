// Package integration runs the whole invalidation path — publisher, router,
// subscriber, tag store — against real redis-server processes started by
// the tests on free loopback ports.
package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/routerd/routerd/internal/faultproxy"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

func TestMain(m *testing.M) {
	// go-redis logs every refused dial while a test has a server down.
	redis.SetLogger(quietLogger{})
	// go-redis retries a dead node's dial in a goroutine that sleeps a
	// second between tries and only then sees its pool closed: it ends by
	// itself after the failover tests, it does not leak.
	// The fault proxies' (toxiproxy) link goroutines end a while after
	// their links close, the same.
	opts := append(faultproxy.IgnoreLinks(), goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"),
		goleak.Cleanup(func(code int) {
			if err := testbin.Cleanup(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
			os.Exit(code)
		}))
	goleak.VerifyTestMain(m, opts...)
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

const testMatrix = `
version: 1
ingress: {partitions: 4}
tags:
  active:      {services: [profile-svc, search-svc]}
  electronics: {services: [search-svc]}
  billing:     {services: [billing-svc]}
domains:
  user:    {tags: [active]}
  product: {tags: [electronics, active]}
  invoice: {tags: [billing]}
services:
  profile-svc: {tenants: all}
  search-svc:  {tenants: [acme, globex]}
  billing-svc: {tenants: [acme]}
`

// env is one bus Redis and one cache Redis per service.
type env struct {
	t      *testing.T
	bus    *redistest.Server
	busC   *redis.Client
	mtx    *matrix.Matrix
	caches map[string]*redistest.Server
	stores map[string]*tagstore.Store
	pub    *publisher.Publisher
}

func newEnv(t *testing.T, matrixYAML string) *env {
	t.Helper()
	return newEnvBus(t, matrixYAML)
}

// newEnvBus is newEnv with a bus started with busArgs (server config).
func newEnvBus(t *testing.T, matrixYAML string, busArgs ...string) *env {
	t.Helper()
	if matrixYAML == "" {
		matrixYAML = testMatrix
	}
	mtx, err := matrix.Parse("test.yaml", []byte(matrixYAML))
	if err != nil {
		t.Fatal(err)
	}
	// The bus, then a cache per service, started together.
	services := mtx.ServiceNames()
	servers := redistest.StartEach(t, append([][]string{busArgs}, make([][]string, len(services))...)...)
	e := &env{t: t, bus: servers[0], mtx: mtx, caches: map[string]*redistest.Server{}, stores: map[string]*tagstore.Store{}}
	e.busC = e.bus.Client(t)
	for i, svc := range services {
		srv := servers[1+i]
		e.caches[svc] = srv
		st, err := tagstore.New(srv.Client(t), tagstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		e.stores[svc] = st
	}
	e.pub, err = publisher.New(e.busC, publisher.Options{Prefix: mtx.Prefix, Origin: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// run starts fn in the background and returns a function that stops it and
// waits for it to return.
func run(t *testing.T, fn func(ctx context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("stopped with error: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("did not stop within 15s")
		}
	}
	t.Cleanup(stop)
	return stop
}

func (e *env) router(opt router.Options) (*router.Router, func()) {
	e.t.Helper()
	return e.routerOn(e.bus.Client(e.t), opt)
}

// routerOn runs a router on the bus through the given client (another
// user's, say).
func (e *env) routerOn(bus redis.UniversalClient, opt router.Options) (*router.Router, func()) {
	e.t.Helper()
	if opt.ClaimInterval == 0 {
		opt.ClaimInterval = 100 * time.Millisecond
	}
	if opt.Block == 0 {
		opt.Block = 100 * time.Millisecond
	}
	if opt.Logger == nil {
		opt.Logger = testLogger(e.t, "router")
	}
	r, err := router.New(bus, e.mtx, opt)
	if err != nil {
		e.t.Fatal(err)
	}
	stop := run(e.t, r.Run)
	redistest.Eventually(e.t, 10*time.Second, "router ready", r.Ready)
	return r, stop
}

// routerRanBefore sets the bus generation as a router that ran on the bus
// before would have: a subscriber that starts before any router has never
// recorded one, and takes each channel's first message whole
// (recovery.Check) until its first complete check under one.
func (e *env) routerRanBefore() {
	e.t.Helper()
	must(e.t, e.busC.SetNX(context.Background(), "invalidate:generation", "before", 0).Err())
}

// running sets the bus up as a system that has been running: a router ran
// on it before (routerRanBefore), the tenants published before, so their
// registry entries exist, and the services recorded the bus's generation. A subscriber started then is subscribed to the
// tenants' channels from its first check and applies their first messages
// live, as they come; without it, a subscriber that never recorded the bus's
// generation takes a channel's first messages as a whole tag
// (recovery.Check).
func (e *env) running(tenants ...string) {
	e.t.Helper()
	ctx := context.Background()
	e.routerRanBefore()
	for _, tenant := range tenants {
		must(e.t, e.busC.SAdd(ctx, "invalidate:tenants", tenant).Err())
	}
	// The services looked at the bus before too: their last complete check
	// recorded its generation, so their first check now watches the
	// tenants' channels that have no meta yet.
	gen := e.busIdentity()
	for svc, cache := range e.caches {
		must(e.t, cache.Client(e.t).Set(ctx, names.GenerationSeenKey(svc), gen, 0).Err())
	}
}

// busIdentity is the bus's identity as a subscriber's complete check
// records it (tagstore.BusIdentity): its generation and its run_id.
func (e *env) busIdentity() string {
	e.t.Helper()
	ctx := context.Background()
	gen, err := e.busC.Get(ctx, "invalidate:generation").Result()
	if err != nil {
		e.t.Fatalf("the router's bus generation: %v", err)
	}
	run := e.busC.InfoMap(ctx, "server").Item("Server", "run_id")
	return tagstore.BusIdentity(gen, []string{run})
}

func (e *env) subscriber(service string, opt subscriber.Options) (*subscriber.Subscriber, func()) {
	e.t.Helper()
	return e.subscriberOn(e.bus.Client(e.t), service, opt)
}

func (e *env) subscriberOn(bus redis.UniversalClient, service string, opt subscriber.Options) (*subscriber.Subscriber, func()) {
	e.t.Helper()
	return e.subscriberReadyWithin(10*time.Second, bus, service, opt)
}

// subscriberReadyWithin runs a subscriber and waits up to d for it to be ready.
func (e *env) subscriberReadyWithin(d time.Duration, bus redis.UniversalClient, service string, opt subscriber.Options) (*subscriber.Subscriber, func()) {
	e.t.Helper()
	// A subscriber is ready only once a router has marked the bus
	// (TestSubscriberNotReadyUntilARouterMarksTheBus): one started before
	// the test's router finds it marked as by one that ran before.
	e.routerRanBefore()
	opt.Service = service
	opt.Matrix = e.mtx
	if opt.Cache == nil && opt.Handler == nil {
		opt.Cache = e.caches[service].Client(e.t)
	}
	if opt.CheckInterval == 0 {
		opt.CheckInterval = time.Hour // tests trigger recovery by events, not by the clock
	}
	if opt.Logger == nil {
		// In the test's own output, so a failure shows what its
		// subscriber did (parallel tests' logs do not mix in).
		opt.Logger = testLogger(e.t, service)
	}
	s, err := subscriber.New(bus, opt)
	if err != nil {
		e.t.Fatal(err)
	}
	stop := run(e.t, s.Run)
	redistest.Eventually(e.t, d, service+" subscriber ready", s.Ready)
	return s, stop
}

// seed caches value under tags for a tenant in a service's cache.
func (e *env) seed(service, tenant, key string, tags ...string) {
	e.t.Helper()
	if err := e.stores[service].Set(context.Background(), tenant, key, []byte("cached"), 0, tags...); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) cached(service, tenant, key string) bool {
	e.t.Helper()
	_, err := e.stores[service].Get(context.Background(), tenant, key)
	if err == redis.Nil {
		return false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return true
}

func (e *env) publish(ev wire.Event) string {
	e.t.Helper()
	id, err := e.pub.Publish(context.Background(), ev)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

// waitGone waits until the key is no longer cached in the service.
func (e *env) waitGone(service, tenant, key string) {
	e.t.Helper()
	redistest.Eventually(e.t, 10*time.Second, fmt.Sprintf("%s %s/%s invalidated", service, tenant, key), func() bool {
		return !e.cached(service, tenant, key)
	})
}

// waitReadyz waits until the daemon listening on addr answers /readyz 200.
// A routerd serve is ready once it wrote the partition count: a publisher
// that reads none before guesses the default count, and its event lands
// on a partition the matrix does not have (found by the router's rescan,
// but not by a test counting the matrix's partitions).
func waitReadyz(t *testing.T, addr string) {
	t.Helper()
	redistest.Eventually(t, 10*time.Second, "routerd ready", func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// waitAllGone waits until none of keys is cached for the service's tenant.
func (e *env) waitAllGone(within time.Duration, what, service, tenant string, keys []string) {
	e.t.Helper()
	redistest.Eventually(e.t, within, what, func() bool {
		for _, k := range keys {
			if e.cached(service, tenant, k) {
				return false
			}
		}
		return true
	})
}

// meta returns a channel's epoch and version on the bus.
func (e *env) meta(channel string) (string, int64) {
	e.t.Helper()
	vals, err := e.busC.HMGet(context.Background(), "{"+channel+"}:meta", "epoch", "version").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	ep, _ := vals[0].(string)
	var v int64
	if s, ok := vals[1].(string); ok {
		fmt.Sscan(s, &v)
	}
	return ep, v
}

// waitVersion waits until the channel has reached version v.
func (e *env) waitVersion(channel string, v int64) {
	e.t.Helper()
	redistest.Eventually(e.t, 10*time.Second, fmt.Sprintf("%s at version %d", channel, v), func() bool {
		_, got := e.meta(channel)
		return got >= v
	})
}

// metric sums every series of a metric family in a registry.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}
