package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// budgetSlack is the messages a budget may send beyond burst + rate ×
// elapsed in these tests: the elapsed time is measured from the first
// event's XADD to the last message seen, and the bucket starts full at
// the first message, so rounding of the refill (a token a millisecond
// early) and the one message in flight at the end are all it may cost.
const budgetSlack = 2

// budgetCase is one budget under a storm spread over three routers: the
// channels the budget covers, the events and how to seed their keys.
type budgetCase struct {
	matrix   string
	channels []string
	event    func(i int) (wire.Event, string) // the event and the tag its key is cached under
}

// runBudgetStorm starts three routers of the same group on one bus, writes
// n events raw into both ingress partitions (so every router reads some of
// every channel's events), waits until every key named is invalidated and
// nothing is held, and checks the messages on the budget's channels against
// burst + rate × elapsed.
func runBudgetStorm(t *testing.T, c budgetCase, n int, rate float64, burst int) {
	e := newEnv(t, c.matrix)
	ctx := context.Background()
	for i := 0; i < n; i++ {
		ev, tag := c.event(i)
		e.seed("search-svc", ev.Tenant, ev.Keys[0], tag)
	}
	var regs []*prometheus.Registry
	for i := 0; i < 3; i++ {
		reg := prometheus.NewRegistry()
		regs = append(regs, reg)
		e.router(router.Options{Consumer: fmt.Sprintf("router-%d", i), Registerer: reg})
	}
	e.subscriber("search-svc", subscriber.Options{})

	start := time.Now()
	for i := 0; i < n; i++ {
		ev, _ := c.event(i)
		b, err := ev.Marshal()
		must(t, err)
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: names.IngressStream(e.mtx.Prefix, i%2), Values: []any{wire.EventField, string(b)}}).Err())
	}
	injected := time.Since(start)
	redistest.Eventually(t, 60*time.Second, "every key invalidated", func() bool {
		for i := 0; i < n; i++ {
			ev, _ := c.event(i)
			if e.cached("search-svc", ev.Tenant, ev.Keys[0]) {
				return false
			}
		}
		return true
	})
	redistest.Eventually(t, 10*time.Second, "every event routed, nothing held", func() bool {
		var routed, held float64
		for _, reg := range regs {
			routed += metric(t, reg, "routerd_events_routed_total")
			held += metric(t, reg, "routerd_pending_channels")
		}
		return routed == float64(n) && held == 0
	})
	elapsed := time.Since(start)
	var messages int64
	for _, ch := range c.channels {
		_, v := e.meta(ch)
		messages += v
	}
	limit := float64(burst) + rate*elapsed.Seconds()
	t.Logf("%d events injected in %v over 3 routers; %d messages in %v (burst + rate × elapsed = %.1f, slack %d)",
		n, injected, messages, elapsed, limit, budgetSlack)
	if float64(messages) > limit+budgetSlack {
		t.Errorf("%d messages in %v: more than burst + rate × elapsed + slack = %.1f", messages, elapsed, limit+budgetSlack)
	}
}

const budgetMatrixTail = `
domains:
  stock: {tags: [hot]}
  price: {tags: [warm]}
services:
  search-svc: {tenants: [acme, globex]}
`

// A hot channel's bucket (rate 20/s, burst 20) holds whatever the number
// of routers that read its events.
func TestChannelBudgetAcrossRouters(t *testing.T) {
	runBudgetStorm(t, budgetCase{
		matrix: `
version: 1
ingress: {partitions: 2}
tags:
  hot:  {services: [search-svc], rate: 20, burst: 20, coalesce: 20ms, max_keys: 10000}
  warm: {services: [search-svc]}
` + budgetMatrixTail,
		channels: []string{"invalidate:acme:hot"},
		event: func(i int) (wire.Event, string) {
			return wire.Event{Tenant: "acme", Domain: "stock", Keys: []string{fmt.Sprintf("sku:%d", i)}}, "hot"
		},
	}, 3000, 20, 20)
}

// A tenant's budget holds over its channels across routers.
func TestTenantBudgetAcrossRouters(t *testing.T) {
	runBudgetStorm(t, budgetCase{
		matrix: `
version: 1
ingress: {partitions: 2}
budgets:
  tenant: {rate: 20, burst: 20}
tags:
  hot:  {services: [search-svc], rate: 100000, burst: 100000, coalesce: 20ms, max_keys: 10000}
  warm: {services: [search-svc], rate: 100000, burst: 100000, coalesce: 20ms, max_keys: 10000}
` + budgetMatrixTail,
		channels: []string{"invalidate:acme:hot", "invalidate:acme:warm"},
		event: func(i int) (wire.Event, string) {
			if i%2 == 0 {
				return wire.Event{Tenant: "acme", Domain: "stock", Keys: []string{fmt.Sprintf("sku:%d", i)}}, "hot"
			}
			return wire.Event{Tenant: "acme", Domain: "price", Keys: []string{fmt.Sprintf("sku:%d", i)}}, "warm"
		},
	}, 2000, 20, 20)
}

// The global budget holds over every tenant's channels across routers.
func TestGlobalBudgetAcrossRouters(t *testing.T) {
	runBudgetStorm(t, budgetCase{
		matrix: `
version: 1
ingress: {partitions: 2}
budgets:
  global: {rate: 20, burst: 20}
tags:
  hot:  {services: [search-svc], rate: 100000, burst: 100000, coalesce: 20ms, max_keys: 10000}
  warm: {services: [search-svc], rate: 100000, burst: 100000, coalesce: 20ms, max_keys: 10000}
` + budgetMatrixTail,
		channels: []string{"invalidate:acme:hot", "invalidate:globex:hot", "invalidate:acme:warm", "invalidate:globex:warm"},
		event: func(i int) (wire.Event, string) {
			tenant := []string{"acme", "globex"}[i%2]
			if i%4 < 2 {
				return wire.Event{Tenant: tenant, Domain: "stock", Keys: []string{fmt.Sprintf("sku:%d", i)}}, "hot"
			}
			return wire.Event{Tenant: tenant, Domain: "price", Keys: []string{fmt.Sprintf("sku:%d", i)}}, "warm"
		},
	}, 2000, 20, 20)
}

// On a cluster, the global bucket lives on one master while the channels
// it limits live on three: three routers still share one budget.
func TestClusterGlobalBudgetAcrossRouters(t *testing.T) {
	const n, rate, burst = 900, 20.0, 20
	e := newClusterEnv(t)
	tenants := e.tenantsOnMasters("shop", 3, "active")
	mtx, err := matrix.Parse("cluster.yaml", []byte(fmt.Sprintf(`
version: 1
ingress: {partitions: 2}
budgets:
  global: {rate: %v, burst: %d}
tags:
  active: {services: [search-svc], rate: 100000, burst: 100000, coalesce: 20ms, max_keys: 10000}
domains:
  user: {tags: [active]}
services:
  search-svc: {tenants: [%s]}
`, rate, burst, strings.Join(tenants, ", "))))
	must(t, err)
	event := func(i int) wire.Event {
		return wire.Event{Tenant: tenants[i%3], Domain: "user", Keys: []string{fmt.Sprintf("user:%d", i)}}
	}
	for i := 0; i < n; i++ {
		e.seed(event(i).Tenant, event(i).Keys[0], "active")
	}
	var regs []*prometheus.Registry
	for i := 0; i < 3; i++ {
		reg := prometheus.NewRegistry()
		regs = append(regs, reg)
		r, err := router.New(e.busC, mtx, router.Options{Consumer: fmt.Sprintf("router-%d", i), Block: 100 * time.Millisecond,
			ClaimInterval: 100 * time.Millisecond, Registerer: reg, Logger: testLogger(t, "router")})
		must(t, err)
		run(t, r.Run)
		redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	}
	s, err := subscriber.New(e.busC, subscriber.Options{Service: "search-svc", Matrix: mtx, Cache: e.cacheC, CheckInterval: time.Hour,
		Logger: testLogger(t, "subscriber")})
	must(t, err)
	run(t, s.Run)
	redistest.Eventually(t, 10*time.Second, "subscriber ready", s.Ready)

	ctx := context.Background()
	start := time.Now()
	for i := 0; i < n; i++ {
		ev := event(i)
		b, err := ev.Marshal()
		must(t, err)
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: names.IngressStream(mtx.Prefix, i%2), Values: []any{wire.EventField, string(b)}}).Err())
	}
	redistest.Eventually(t, 60*time.Second, "every key invalidated", func() bool {
		for i := 0; i < n; i++ {
			if _, err := e.store.Get(ctx, event(i).Tenant, event(i).Keys[0]); err != redis.Nil {
				return false
			}
		}
		return true
	})
	redistest.Eventually(t, 10*time.Second, "every event routed, nothing held", func() bool {
		var routed, held float64
		for _, reg := range regs {
			routed += metric(t, reg, "routerd_events_routed_total")
			held += metric(t, reg, "routerd_pending_channels")
		}
		return routed == n && held == 0
	})
	elapsed := time.Since(start)
	var messages int64
	for _, tenant := range tenants {
		v, err := e.busC.HGet(ctx, "{invalidate:"+tenant+":active}:meta", "version").Int64()
		must(t, err)
		messages += v
	}
	limit := burst + rate*elapsed.Seconds()
	t.Logf("%d events over 3 routers and 3 masters; %d messages in %v (burst + rate × elapsed = %.1f, slack %d)", n, messages, elapsed, limit, budgetSlack)
	if float64(messages) > limit+budgetSlack {
		t.Errorf("%d messages in %v: more than burst + rate × elapsed + slack = %.1f", messages, elapsed, limit+budgetSlack)
	}
}
