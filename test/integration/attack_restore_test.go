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

// attack: issue 19 item 1 with the bus restored from an older snapshot
// instead of FLUSHALL. The snapshot holds the bus generation the service
// recorded at its last complete check, so the restored bus looks like the
// same generation: the service, down meanwhile, finds a channel without a
// position whose meta (a new epoch, started because the restore took the
// meta away) is at version 1, replays it from there, and the keys of the
// event routed between the snapshot and the restore (the lost epoch) stay
// cached for good.
func TestAttackBusRestoreHidesOldEpochFromChannelWithoutPosition(t *testing.T) {
	for _, service := range []string{"search-svc", "profile-svc"} { // listed tenants; every tenant
		t.Run(service, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "")
			e.router(router.Options{})
			e.generationRecorded(service)
			snap, err := e.bus.Snapshot(ctx)
			must(t, err)
			e.lostEpoch(service, func() { must(t, e.bus.RestoreSnapshot(snap)) })
		})
	}
}

// attack: the same on a cluster bus, where the master restored from an
// older snapshot is not the one holding the bus generation, which keeps
// its value: only the restored master's run_id tells the service that the
// channel's master may have lost what it published.
func TestAttackClusterMasterRestoreHidesOldEpoch(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnvOn(t, redistest.StartClusterOwnDirs(t, 3, 0)) // own dirs: a snapshot per node
	tenant, restored := e.tenantOffGeneration("rs")
	mtx := e.startRouter(oneTenantMatrix(tenant))
	e.generationRecorded(mtx)
	snap, err := restored.Snapshot(ctx)
	must(t, err)

	e.lostEpoch(mtx, tenant, func() {
		must(t, restored.RestoreSnapshot(snap))
		redistest.Eventually(t, 30*time.Second, "the cluster ok again on every node", func() bool {
			for _, n := range e.bus.Nodes {
				c := redis.NewClient(&redis.Options{Addr: n.Addr})
				info, err := c.ClusterInfo(ctx).Result()
				_ = c.Close()
				if err != nil || !strings.Contains(info, "cluster_state:ok") {
					return false
				}
			}
			return true
		})
	})
}

// attack: the same with FLUSHALL on the channel's master, which neither
// restarts it (its run_id stays) nor touches the bus generation (on another
// master): the meta and the history of the channel are gone, the next
// event starts a new epoch, and a service without a position on the
// channel must not take that epoch for everything there is.
func TestAttackClusterMasterFlushAllHidesOldEpoch(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	tenant, flushed := e.tenantOffGeneration("fa")
	mtx := e.startRouter(oneTenantMatrix(tenant))
	e.generationRecorded(mtx)

	e.lostEpoch(mtx, tenant, func() { must(t, flushed.Client(t).FlushAll(ctx).Err()) })
}

// generationRecorded runs the service's subscriber until its first complete
// check recorded the bus identity, and stops it.
func (e *env) generationRecorded(service string) {
	e.t.Helper()
	_, stop := e.subscriber(service, subscriber.Options{})
	redistest.Eventually(e.t, 10*time.Second, "the bus generation recorded", func() bool {
		n, _ := e.caches[service].Client(e.t).Exists(context.Background(), names.GenerationSeenKey(service)).Result()
		return n == 1
	})
	stop()
}

// lostEpoch is the scenario of a channel whose first epoch is lost while
// the service is down: keys user:1–4 of globex cached under active, an
// event for user:1–3 routed (epoch E1), then lose() takes E1 away, and an
// event for user:4 starts a new epoch at version 1. The subscriber started
// after it must drop all four.
func (e *env) lostEpoch(service string, lose func()) {
	e.t.Helper()
	const ch = "invalidate:globex:active"
	for _, k := range []string{"user:1", "user:2", "user:3", "user:4"} {
		e.seed(service, "globex", k, "active")
	}
	e.publish(wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:1", "user:2", "user:3"}})
	e.waitVersion(ch, 1)
	first, _ := e.meta(ch)
	lose()
	e.publish(wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:4"}})
	redistest.Eventually(e.t, 20*time.Second, "a new epoch at version 1", func() bool {
		epoch, v := e.meta(ch)
		return epoch != "" && epoch != first && v == 1
	})
	e.subscriber(service, subscriber.Options{})
	for _, k := range []string{"user:4", "user:1", "user:2", "user:3"} {
		e.waitGone(service, "globex", k)
	}
}

// tenantOffGeneration returns a tenant (prefix and a number) whose channel
// active lives on another cluster master than the bus generation, and
// that master.
func (e *clusterEnv) tenantOffGeneration(prefix string) (string, *redistest.Server) {
	e.t.Helper()
	generation := e.masterOf("invalidate:generation")
	for i := 0; i < 1000; i++ {
		tenant := fmt.Sprintf("%s%d", prefix, i)
		if m := e.masterOf("{invalidate:" + tenant + ":active}:meta"); m != generation {
			return tenant, m
		}
	}
	e.t.Fatal("no tenant off the generation's master")
	return "", nil
}

// generationRecorded runs search-svc until its check recorded the bus
// identity, and stops it.
func (e *clusterEnv) generationRecorded(mtx *matrix.Matrix) {
	e.t.Helper()
	stop := e.subscribe(mtx, "search-svc")
	redistest.Eventually(e.t, 10*time.Second, "the bus generation recorded", func() bool {
		n, _ := e.cacheC.Exists(context.Background(), names.GenerationSeenKey("search-svc")).Result()
		return n == 1
	})
	stop()
}

// lostEpoch is env.lostEpoch on a cluster bus, for a tenant whose channel
// active lives on another master than the generation (tenantOffGeneration):
// user:1 and user:2 cached, an event for user:1 routed, lose() takes its
// epoch away (the generation must stay), an event for user:2 starts a new
// epoch; search-svc started after it must drop both.
func (e *clusterEnv) lostEpoch(mtx *matrix.Matrix, tenant string, lose func()) {
	e.t.Helper()
	ctx := context.Background()
	meta := "{invalidate:" + tenant + ":active}:meta"
	e.seed(tenant, "user:1", "active")
	e.seed(tenant, "user:2", "active")
	_, err := e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}})
	must(e.t, err)
	redistest.Eventually(e.t, 10*time.Second, "published", func() bool {
		return e.busC.HGet(ctx, meta, "version").Val() == "1"
	})
	first := e.busC.HGet(ctx, meta, "epoch").Val()
	lose()
	redistest.Eventually(e.t, 20*time.Second, "an event published after the loss", func() bool {
		_, err := e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:2"}})
		return err == nil
	})
	redistest.Eventually(e.t, 20*time.Second, "a new epoch", func() bool {
		epoch := e.busC.HGet(ctx, meta, "epoch").Val()
		return epoch != "" && epoch != first
	})
	if e.busC.Exists(ctx, "invalidate:generation").Val() != 1 {
		e.t.Fatal("the bus generation is gone: the loss must keep it for this attack")
	}
	e.subscribe(mtx, "search-svc")
	e.waitGone(tenant, "user:1")
	e.waitGone(tenant, "user:2")
}
