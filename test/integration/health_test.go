package integration

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/faultproxy"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// hasReason reports whether the subscriber's Problems name reason.
func hasReason(s *subscriber.Subscriber, reason string) bool { return hasProblem(s, reason, "") }

// hasProblem reports whether the subscriber's Problems name reason with a
// detail that holds part.
func hasProblem(s *subscriber.Subscriber, reason, part string) bool {
	for _, p := range s.Problems() {
		if p.Reason == reason && strings.Contains(p.Detail, part) {
			return true
		}
	}
	return false
}

// startUnready runs a subscriber of the test's matrix without waiting for
// it to be ready (these tests want it not to be).
func (e *env) startUnready(opt subscriber.Options) *subscriber.Subscriber {
	e.t.Helper()
	opt.Matrix = e.mtx
	if opt.Logger == nil {
		opt.Logger = testLogger(e.t, opt.Service)
	}
	s, err := subscriber.New(e.bus.Client(e.t), opt)
	must(e.t, err)
	run(e.t, s.Run)
	return s
}

// While the cache Redis is a blackhole, the breaker opens and the
// subscriber says cache_failing; the invalidations that arrive meanwhile —
// merged under the local apply limit, or applied and refused — are not
// dropped: once the cache answers again the position check replays them,
// and every key is gone.
func TestCacheOutageDropsNothingQueued(t *testing.T) {
	e := newEnv(t, "")
	e.router(router.Options{})
	link := faultproxy.Start(t, e.caches["search-svc"].Addr)
	cache := redis.NewClient(&redis.Options{Addr: link.Addr()})
	t.Cleanup(func() { _ = cache.Close() })
	reg := prometheus.NewRegistry()
	s, _ := e.subscriber("search-svc", subscriber.Options{Cache: cache, Registerer: reg, ApplyRate: 2, ApplyBurst: 1, Coalesce: 50 * time.Millisecond})

	const n = 20
	for i := range n {
		e.seed("search-svc", "acme", fmt.Sprintf("user:%d", i), "active")
	}
	must(t, link.Blackhole())
	redistest.Eventually(t, 20*time.Second, "cache_failing", func() bool { return hasReason(s, subscriber.ReasonCacheFailing) })
	for i := range n { // one message each (the router would merge a batch)
		e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{fmt.Sprintf("user:%d", i)}})
		e.waitVersion("invalidate:acme:active", int64(i+1))
	}
	redistest.Eventually(t, 20*time.Second, "every message received during the outage", func() bool {
		return metric(t, reg, "subscriber_messages_received_total") >= n
	})
	if got := metric(t, reg, "subscriber_breaker_state"); got != 2 && got != 1 {
		t.Errorf("cache breaker state %v during the outage, want open (2) or probing (1)", got)
	}
	must(t, link.Heal())
	for i := range n {
		e.waitGone("search-svc", "acme", fmt.Sprintf("user:%d", i))
	}
	redistest.Eventually(t, 20*time.Second, "ready after the heal", s.Ready)
}

// The eviction policy of the cache Redis is checked against the one rule
// (internal/eviction): volatile-lru is safe for a service without entity
// references, and a risk for one with them (their sets expire with their
// values); AcceptEvictionRisk takes the risk.
func TestSubscriberEvictionPolicy(t *testing.T) {
	const refsMatrix = `
version: 1
tags:
  active: {services: [profile-svc, search-svc]}
  misc:   {services: [billing-svc]}
domains:
  user:  {tags: [active], entity_refs: true}
  other: {tags: [misc]}
services:
  profile-svc: {tenants: all}
  search-svc:  {tenants: [acme]}
  billing-svc: {tenants: [acme]}
`
	e := newEnv(t, refsMatrix)
	e.routerRanBefore() // ready needs a marked bus
	volatile := redistest.Start(t, "--maxmemory-policy", "volatile-lru")
	start := func(service string, accept bool) *subscriber.Subscriber {
		return e.startUnready(subscriber.Options{Service: service, Cache: volatile.Client(t), CheckInterval: time.Hour, AcceptEvictionRisk: accept})
	}
	refs := start("search-svc", false)
	redistest.Eventually(t, 20*time.Second, "eviction_policy for a service with entity references", func() bool {
		return hasProblem(refs, subscriber.ReasonEvictionPolicy, "volatile-lru")
	})
	redistest.Eventually(t, 20*time.Second, "a service without entity references ready", start("billing-svc", false).Ready)
	redistest.Eventually(t, 20*time.Second, "ready with the risk accepted", start("profile-svc", true).Ready)
	must(t, volatile.Client(t).ConfigSet(context.Background(), "maxmemory-policy", "noeviction").Err())
	refs.SetMatrix(e.mtx) // a check follows the regroup: the policy is read again
	redistest.Eventually(t, 20*time.Second, "ready once the policy is noeviction", refs.Ready)
}

// A bus link that stays silent past a few seconds is replaced by a new
// connection (once it answers again the subscriber is subscribed at once,
// whatever TCP's backoff on the old one), with one warning; an
// invalidation published meanwhile is applied after the heal.
func TestSilentBusLinkIsReplaced(t *testing.T) {
	e := newEnv(t, "")
	e.router(router.Options{})
	link := faultproxy.Start(t, e.bus.Addr)
	bus := redis.NewClient(&redis.Options{Addr: link.Addr()})
	t.Cleanup(func() { _ = bus.Close() })
	var logs lockedBuffer
	s, _ := e.subscriberOn(bus, "search-svc", subscriber.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	e.seed("search-svc", "acme", "user:silent", "active")
	must(t, link.Blackhole())
	redistest.Eventually(t, 20*time.Second, "bus_link_silent", func() bool { return hasReason(s, subscriber.ReasonBusLinkSilent) })
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:silent"}})
	redistest.Eventually(t, 30*time.Second, "the silent connection replaced", func() bool {
		return strings.Contains(logs.String(), "connecting again")
	})
	must(t, link.Heal())
	e.waitGone("search-svc", "acme", "user:silent")
	redistest.Eventually(t, 20*time.Second, "ready after the heal", s.Ready)
	if n := strings.Count(logs.String(), "connecting again"); n != 1 {
		t.Errorf("%d warnings of replaced connections, want 1 (at most one per 30s)", n)
	}
}

// Only a cache that refuses INFO (NOPERM: a cache user from before +info)
// leaves the eviction policy unknown and the subscriber not ready for it,
// saying how to fix it; a cache that cannot be used at all (WRONGPASS here)
// is another problem, reported as such, not as eviction_policy.
func TestEvictionPolicyUnreadableOnlyOnNoPerm(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.routerRanBefore()
	file := writeMatrix(t, testMatrix)
	srv := e.caches["search-svc"]
	noInfo := aclUser(t, srv, file, "cache-noinfo", "--role", "cache", "--service", "search-svc")
	must(t, srv.Client(t).Do(ctx, "ACL", "SETUSER", "cache-noinfo", "-info").Err())
	if err := noInfo.Info(ctx, "memory").Err(); err == nil || !strings.HasPrefix(err.Error(), "NOPERM") {
		t.Fatalf("INFO as a user without +info: %v, want NOPERM", err)
	}
	s := e.startUnready(subscriber.Options{Service: "search-svc", Cache: noInfo, CheckInterval: time.Second})
	redistest.Eventually(t, 20*time.Second, "eviction_policy naming the missing +info", func() bool {
		return hasProblem(s, subscriber.ReasonEvictionPolicy, "+info")
	})

	wrong := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "cache-noinfo", Password: "not-the-password"})
	t.Cleanup(func() { _ = wrong.Close() })
	w := e.startUnready(subscriber.Options{Service: "profile-svc", Cache: wrong, CheckInterval: time.Second})
	// The eviction check runs at start, before the subscriber reads its
	// tenants from the cache: once that failed, it has answered.
	redistest.Eventually(t, 20*time.Second, "cache_failing naming WRONGPASS", func() bool {
		return hasProblem(w, subscriber.ReasonCacheFailing, "WRONGPASS")
	})
	if hasReason(w, subscriber.ReasonEvictionPolicy) {
		t.Errorf("WRONGPASS reported as eviction_policy: %v", w.Problems())
	}
}
