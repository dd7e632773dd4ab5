package integration

import (
	"context"
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

// attack3: a matrix deploy takes tenant acme from billing-svc by mistake
// (the only service with tag billing, the only tag of domain invoice) and
// is rolled back a little later. Meanwhile no service owns acme's billing
// channel, so the router publishes nothing on it: a change to invoice
// inv:2, which billing-svc cached under billing before the deploy, reaches
// no channel. After the rollback billing-svc subscribes to the channel
// again and checks it: its position (kept from before) equals the meta, so
// nothing is done, and inv:2 stays cached for good.
func TestAttack3MatrixRollbackLeavesWhatTheGapChangedCached(t *testing.T) {
	ctx := context.Background()
	const service, ch = "billing-svc", "invalidate:acme:billing"
	e := newEnv(t, "")
	v1 := e.mtx
	v2, err := matrix.Parse("v2.yaml", []byte(strings.Replace(testMatrix, "billing-svc: {tenants: [acme]}", "billing-svc: {tenants: [globex]}", 1)))
	must(t, err)
	r, _ := e.router(router.Options{})
	s, _ := e.subscriber(service, subscriber.Options{})
	e.seed(service, "acme", "inv:1", "billing")
	e.publish(wire.Event{Tenant: "acme", Domain: "invoice", Keys: []string{"inv:1"}})
	e.waitGone(service, "acme", "inv:1")
	e.seed(service, "acme", "inv:2", "billing")

	// The bad deploy: routerd serve and the agent take the file.
	must(t, r.SetMatrix(v2))
	must(t, s.SetMatrix(v2))
	e.publish(wire.Event{Tenant: "acme", Domain: "invoice", Keys: []string{"inv:2"}})
	e.waitAllRead("acme")

	// The rollback.
	must(t, r.SetMatrix(v1))
	must(t, s.SetMatrix(v1))
	redistest.Eventually(t, 10*time.Second, "billing-svc ready on the old matrix", s.Ready)
	if err := redistest.Wait(ctx, 10*time.Second, "inv:2 invalidated", func() bool { return !e.cached(service, "acme", "inv:2") }); err != nil {
		epoch, v := e.meta(ch)
		t.Fatalf("%v: %s at %s:%d, billing-svc's position %v, %d dead letters", err, ch, epoch, v,
			e.caches[service].Client(t).Get(ctx, "{tenant:acme}:pos:billing-svc:billing").Val(), e.busC.XLen(ctx, "invalidate:deadletter").Val())
	}
}

// The same deploy and rollback where the agent restarts with each matrix
// (a ConfigMap change rolls the pods) instead of reloading it: the agent
// started on the matrix without the channel never had it in memory to
// leave. It finds the interest the service last ran with in its cache
// Redis, and drops the channel's tag as a reload would.
func TestMatrixRollbackAcrossRestartsDropsWhatTheGapChanged(t *testing.T) {
	const service = "billing-svc"
	e := newEnv(t, "")
	v1 := e.mtx
	v2, err := matrix.Parse("v2.yaml", []byte(strings.Replace(testMatrix, "billing-svc: {tenants: [acme]}", "billing-svc: {tenants: [globex]}", 1)))
	must(t, err)
	r, _ := e.router(router.Options{})
	start := func(m *matrix.Matrix) func() {
		s, err := subscriber.New(e.bus.Client(t), subscriber.Options{Service: service, Matrix: m, Cache: e.caches[service].Client(t),
			CheckInterval: time.Hour, Logger: testLogger(t, service)})
		must(t, err)
		stop := run(t, s.Run)
		redistest.Eventually(t, 10*time.Second, service+" ready", s.Ready)
		return stop
	}
	stop := start(v1)
	e.seed(service, "acme", "inv:1", "billing")
	e.publish(wire.Event{Tenant: "acme", Domain: "invoice", Keys: []string{"inv:1"}})
	e.waitGone(service, "acme", "inv:1")
	e.seed(service, "acme", "inv:2", "billing")
	stop()

	// The bad deploy: the router reloads, the agent restarts on v2, and a
	// change to inv:2 reaches no channel.
	must(t, r.SetMatrix(v2))
	stop = start(v2)
	e.publish(wire.Event{Tenant: "acme", Domain: "invoice", Keys: []string{"inv:2"}})
	e.waitAllRead("acme")
	stop()

	// The rollback.
	must(t, r.SetMatrix(v1))
	start(v1)
	e.waitGone(service, "acme", "inv:2")
}

// waitAllRead waits until the router has read and acknowledged every entry
// of the tenant's ingress stream.
func (e *env) waitAllRead(tenant string) {
	e.t.Helper()
	ctx := context.Background()
	stream := names.IngressStream("invalidate", wire.Partition(tenant, e.mtx.Partitions))
	redistest.Eventually(e.t, 10*time.Second, tenant+"'s events read and acknowledged", func() bool {
		p, err := e.busC.XPending(ctx, stream, "routerd").Result()
		groups, _ := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && p.Count == 0 && len(groups) == 1 && groups[0].Lag == 0
	})
}

// The same deploy and rollback while the service's cache Redis refuses the
// invalidation scripts (an ACL edited by mistake; the cache failing over):
// leaving the channel fails, and before anything retried it, the matrix
// gave the channel back, its position (kept from before) equal to the
// meta. Each check tries a failed leaving again, given back or not, until
// the cache takes it: inv:2, changed while nobody owned the channel, is
// dropped once the cache accepts scripts again.
func TestMatrixRollbackWhileLeavingFailedDropsWhatTheGapChanged(t *testing.T) {
	ctx := context.Background()
	const service = "billing-svc"
	e := newEnv(t, "")
	v1 := e.mtx
	v2, err := matrix.Parse("v2.yaml", []byte(strings.Replace(testMatrix, "billing-svc: {tenants: [acme]}", "billing-svc: {tenants: [globex]}", 1)))
	must(t, err)
	admin := e.caches[service].Client(t)
	must(t, admin.Do(ctx, "ACL", "SETUSER", "svc", "on", ">pw", "~*", "&*", "+@all").Err())
	user := redis.NewClient(&redis.Options{Addr: e.caches[service].Addr, Username: "svc", Password: "pw"})
	t.Cleanup(func() { _ = user.Close() })
	r, _ := e.router(router.Options{})
	s, _ := e.subscriber(service, subscriber.Options{Cache: user})
	e.seed(service, "acme", "inv:1", "billing")
	e.publish(wire.Event{Tenant: "acme", Domain: "invoice", Keys: []string{"inv:1"}})
	e.waitGone(service, "acme", "inv:1")
	e.seed(service, "acme", "inv:2", "billing")

	// The cache refuses scripts; the bad deploy; a change nobody receives.
	must(t, admin.Do(ctx, "ACL", "SETUSER", "svc", "-eval", "-evalsha").Err())
	must(t, r.SetMatrix(v2))
	must(t, s.SetMatrix(v2))
	e.publish(wire.Event{Tenant: "acme", Domain: "invoice", Keys: []string{"inv:2"}})
	e.waitAllRead("acme")

	// The rollback, then the cache takes scripts again.
	must(t, r.SetMatrix(v1))
	must(t, s.SetMatrix(v1))
	must(t, admin.Do(ctx, "ACL", "SETUSER", "svc", "+eval", "+evalsha").Err())
	redistest.Eventually(t, 10*time.Second, "billing-svc ready on the old matrix", s.Ready)
	e.waitGone(service, "acme", "inv:2")
	if rec := admin.Get(ctx, names.InterestKey(service)).Val(); !strings.Contains(rec, "tenants=acme") {
		t.Errorf("the interest recorded is %q, want the matrix's it runs with (acme)", rec)
	}
}
