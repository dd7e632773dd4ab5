package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// attack4 on "a failed leave is retried": the agent reloads the bad matrix
// (acme taken from billing-svc) while its cache refuses scripts, so leaving
// acme's billing channel fails and is kept in memory (unleft), and the
// interest record keeps the former matrix's. A change to inv:2 reaches
// nobody. Then the pods are rolled back (the agent restarts on the former
// matrix) and the cache takes scripts again. The restarted agent has no
// unleft; the record equals the matrix it starts on, so nothing is
// compared; the position, never set to lost, equals the meta: inv:2 stays
// cached for good.
func TestAttack4RestartOnTheFormerMatrixWhileLeavingFailedDropsWhatTheGapChanged(t *testing.T) {
	ctx := context.Background()
	const service = "billing-svc"
	e := newEnv(t, "")
	v1 := e.mtx
	v2, err := matrix.Parse("v2.yaml", []byte(strings.Replace(testMatrix, "billing-svc: {tenants: [acme]}", "billing-svc: {tenants: [globex]}", 1)))
	must(t, err)
	admin := e.caches[service].Client(t)
	must(t, admin.Do(ctx, "ACL", "SETUSER", "svc", "on", ">pw", "~*", "&*", "+@all").Err())
	user := func() *redis.Client {
		u := redis.NewClient(&redis.Options{Addr: e.caches[service].Addr, Username: "svc", Password: "pw"})
		t.Cleanup(func() { _ = u.Close() })
		return u
	}
	r, _ := e.router(router.Options{})
	start := func(m *matrix.Matrix) (*subscriber.Subscriber, func()) {
		s, err := subscriber.New(e.bus.Client(t), subscriber.Options{Service: service, Matrix: m, Cache: user(),
			CheckInterval: 200 * time.Millisecond, Logger: testLogger(t, service)})
		must(t, err)
		return s, run(t, s.Run)
	}
	s, stop := start(v1)
	redistest.Eventually(t, 10*time.Second, service+" ready", s.Ready)
	e.acmeBillingLive(admin, service)

	// The cache refuses scripts; the bad deploy reloaded; a change nobody receives.
	must(t, admin.Do(ctx, "ACL", "SETUSER", "svc", "-eval", "-evalsha").Err())
	must(t, r.SetMatrix(v2))
	must(t, s.SetMatrix(v2))
	redistest.Eventually(t, 10*time.Second, "billing-svc not ready (its leave failed)", func() bool { return !s.Ready() })
	e.publish(wire.Event{Tenant: "acme", Domain: "invoice", Keys: []string{"inv:2"}})
	e.waitAllRead("acme")

	// The rollback rolls the pods: the agent restarts on v1; the cache
	// takes scripts again.
	stop()
	must(t, r.SetMatrix(v1))
	must(t, admin.Do(ctx, "ACL", "SETUSER", "svc", "+eval", "+evalsha").Err())
	s, _ = start(v1)
	redistest.Eventually(t, 10*time.Second, service+" ready after the restart", s.Ready)
	if err := redistest.Wait(ctx, 10*time.Second, "inv:2 invalidated", func() bool { return !e.cached(service, "acme", "inv:2") }); err != nil {
		t.Fatalf("%v: billing-svc's position %q, interest %q", err,
			admin.Get(ctx, "{tenant:acme}:pos:billing-svc:billing").Val(), admin.Get(ctx, names.InterestKey(service)).Val())
	}
}

// attack4 with tenant shards: billing-svc runs as two shards sharing its
// cache Redis (and so its interest record). The matrix takes acme from the
// service; the shard that owns acme cannot leave its channel (its cache
// user refuses scripts), so it keeps the record back — but the other
// shard, which had nothing to leave, writes the new record at once. The
// acme shard then restarts (on the same matrix) with a working cache: the
// record equals its matrix, nothing is compared, and acme's billing
// channel, taken from the service, is never left: inv:2 stays cached with
// nothing keeping it fresh. The record should be written only once every
// leave succeeded — every shard's.
func TestAttack4ShardThatCouldNotLeaveIsMaskedByAnotherShardsRecord(t *testing.T) {
	ctx := context.Background()
	const service = "billing-svc"
	e := newEnv(t, "")
	acme := wire.TenantShard{I: wire.Partition("acme", 2), K: 2}
	other := wire.TenantShard{I: 1 - acme.I, K: 2}
	// A tenant of the other shard, so that it has a channel (a shard with
	// none is never ready).
	// And one of the acme shard's that v2 keeps, for the same reason.
	mate, kept := "", ""
	for i := 0; mate == "" || kept == ""; i++ {
		switch t := fmt.Sprintf("t%d", i); {
		case other.Owns(t) && mate == "":
			mate = t
		case acme.Owns(t) && kept == "":
			kept = t
		}
	}
	v1, err := matrix.Parse("v1.yaml", []byte(strings.Replace(testMatrix, "billing-svc: {tenants: [acme]}", "billing-svc: {tenants: [acme, "+mate+"]}", 1)))
	must(t, err)
	v2, err := matrix.Parse("v2.yaml", []byte(strings.Replace(testMatrix, "billing-svc: {tenants: [acme]}", "billing-svc: {tenants: [globex, "+mate+", "+kept+"]}", 1)))
	must(t, err)
	admin := e.caches[service].Client(t)
	for _, u := range []string{"shard-acme", "shard-other"} {
		must(t, admin.Do(ctx, "ACL", "SETUSER", u, "on", ">pw", "~*", "&*", "+@all").Err())
	}
	user := func(name string) *redis.Client {
		u := redis.NewClient(&redis.Options{Addr: e.caches[service].Addr, Username: name, Password: "pw"})
		t.Cleanup(func() { _ = u.Close() })
		return u
	}
	r, _ := e.router(router.Options{})
	must(t, r.SetMatrix(v1))
	start := func(m *matrix.Matrix, shard wire.TenantShard, name string) (*subscriber.Subscriber, func()) {
		s, err := subscriber.New(e.bus.Client(t), subscriber.Options{Service: service, Matrix: m, Cache: user(name), TenantShard: shard,
			CheckInterval: 200 * time.Millisecond, Logger: testLogger(t, service+"-"+name)})
		must(t, err)
		return s, run(t, s.Run)
	}
	sa, stopA := start(v1, acme, "shard-acme")
	sb, _ := start(v1, other, "shard-other")
	redistest.Eventually(t, 10*time.Second, "both shards ready", func() bool { return sa.Ready() && sb.Ready() })
	e.acmeBillingLive(admin, service)

	// The acme shard's cache user refuses scripts; the deploy takes acme.
	must(t, admin.Do(ctx, "ACL", "SETUSER", "shard-acme", "-eval", "-evalsha").Err())
	must(t, r.SetMatrix(v2))
	must(t, sa.SetMatrix(v2))
	redistest.Eventually(t, 10*time.Second, "the acme shard not ready (its leave failed)", func() bool { return !sa.Ready() })
	must(t, sb.SetMatrix(v2))
	redistest.Eventually(t, 10*time.Second, "the other shard recorded the new interest", func() bool {
		return strings.Contains(admin.Get(ctx, names.InterestKey(service)).Val(), "tenants=globex")
	})

	// The acme shard restarts on the same matrix; its cache works again.
	stopA()
	must(t, admin.Do(ctx, "ACL", "SETUSER", "shard-acme", "+eval", "+evalsha").Err())
	sa, _ = start(v2, acme, "shard-acme")
	redistest.Eventually(t, 10*time.Second, "the acme shard ready after its restart", sa.Ready)
	if err := redistest.Wait(ctx, 10*time.Second, "acme's billing tag dropped (inv:2 gone)", func() bool { return !e.cached(service, "acme", "inv:2") }); err != nil {
		t.Fatalf("%v: position %q, interest %q", err,
			admin.Get(ctx, "{tenant:acme}:pos:billing-svc:billing").Val(), admin.Get(ctx, names.InterestKey(service)).Val())
	}
}

// acmeBillingLive has the service apply one acme invoice (inv:1), caches
// inv:2 under billing, and waits until the service's interest record names
// acme: the state each leave attack starts from.
func (e *env) acmeBillingLive(admin *redis.Client, service string) {
	e.t.Helper()
	e.seed(service, "acme", "inv:1", "billing")
	e.publish(wire.Event{Tenant: "acme", Domain: "invoice", Keys: []string{"inv:1"}})
	e.waitGone(service, "acme", "inv:1")
	e.seed(service, "acme", "inv:2", "billing")
	redistest.Eventually(e.t, 10*time.Second, "the interest recorded", func() bool {
		return strings.Contains(admin.Get(context.Background(), names.InterestKey(service)).Val(), "tenants=acme")
	})
}
