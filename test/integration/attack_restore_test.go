package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
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
			const ch = "invalidate:globex:active"
			e := newEnv(t, "")
			e.router(router.Options{})
			_, stop := e.subscriber(service, subscriber.Options{})
			redistest.Eventually(t, 10*time.Second, "the bus generation recorded", func() bool {
				n, _ := e.caches[service].Client(t).Exists(ctx, "routerd:generation:"+service).Result()
				return n == 1
			})
			stop()
			snap, err := e.bus.Snapshot(ctx)
			must(t, err)

			for _, k := range []string{"user:1", "user:2", "user:3", "user:4"} {
				e.seed(service, "globex", k, "active")
			}
			e.publish(wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:1", "user:2", "user:3"}})
			e.waitVersion(ch, 1)
			first, _ := e.meta(ch)
			must(t, e.bus.RestoreSnapshot(snap))
			e.publish(wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:4"}})
			redistest.Eventually(t, 20*time.Second, "a new epoch at version 1", func() bool {
				epoch, v := e.meta(ch)
				return epoch != "" && epoch != first && v == 1
			})

			e.subscriber(service, subscriber.Options{})
			for _, k := range []string{"user:4", "user:1", "user:2", "user:3"} {
				e.waitGone(service, "globex", k)
			}
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
	generation := e.masterOf("invalidate:generation")
	var tenant string
	for i := 0; tenant == "" && i < 1000; i++ {
		if c := fmt.Sprintf("rs%d", i); e.masterOf("{invalidate:"+c+":active}:meta") != generation {
			tenant = c
		}
	}
	ch := "invalidate:" + tenant + ":active"
	restored := e.masterOf("{" + ch + "}:meta")
	mtx := e.startRouter(oneTenantMatrix(tenant))
	stop := e.subscribe(mtx, "search-svc")
	redistest.Eventually(t, 10*time.Second, "the bus generation recorded", func() bool {
		n, _ := e.cacheC.Exists(ctx, "routerd:generation:search-svc").Result()
		return n == 1
	})
	stop()
	snap, err := restored.Snapshot(ctx)
	must(t, err)

	e.seed(tenant, "user:1", "active")
	e.seed(tenant, "user:2", "active")
	_, err = e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}})
	must(t, err)
	redistest.Eventually(t, 10*time.Second, "published", func() bool {
		return e.busC.HGet(ctx, "{"+ch+"}:meta", "version").Val() == "1"
	})
	first := e.busC.HGet(ctx, "{"+ch+"}:meta", "epoch").Val()
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
	redistest.Eventually(t, 20*time.Second, "an event published after the restore", func() bool {
		_, err := e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:2"}})
		return err == nil
	})
	redistest.Eventually(t, 20*time.Second, "a new epoch", func() bool {
		epoch := e.busC.HGet(ctx, "{"+ch+"}:meta", "epoch").Val()
		return epoch != "" && epoch != first
	})
	if e.busC.Exists(ctx, "invalidate:generation").Val() != 1 {
		t.Fatal("the bus generation is gone: the restore must keep it for this attack")
	}
	e.subscribe(mtx, "search-svc")
	e.waitGone(tenant, "user:1")
	e.waitGone(tenant, "user:2")
}

// attack: the same with FLUSHALL on the channel's master, which neither
// restarts it (its run_id stays) nor touches the bus generation (on another
// master): the meta and the history of the channel are gone, the next
// event starts a new epoch, and a service without a position on the
// channel must not take that epoch for everything there is.
func TestAttackClusterMasterFlushAllHidesOldEpoch(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	generation := e.masterOf("invalidate:generation")
	var tenant string
	for i := 0; tenant == "" && i < 1000; i++ {
		if c := fmt.Sprintf("fa%d", i); e.masterOf("{invalidate:"+c+":active}:meta") != generation {
			tenant = c
		}
	}
	ch := "invalidate:" + tenant + ":active"
	flushed := e.masterOf("{" + ch + "}:meta")
	mtx := e.startRouter(oneTenantMatrix(tenant))
	stop := e.subscribe(mtx, "search-svc")
	redistest.Eventually(t, 10*time.Second, "the bus generation recorded", func() bool {
		n, _ := e.cacheC.Exists(ctx, "routerd:generation:search-svc").Result()
		return n == 1
	})
	stop()

	e.seed(tenant, "user:1", "active")
	e.seed(tenant, "user:2", "active")
	_, err := e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}})
	must(t, err)
	redistest.Eventually(t, 10*time.Second, "published", func() bool {
		return e.busC.HGet(ctx, "{"+ch+"}:meta", "version").Val() == "1"
	})
	first := e.busC.HGet(ctx, "{"+ch+"}:meta", "epoch").Val()
	must(t, flushed.Client(t).FlushAll(ctx).Err())
	redistest.Eventually(t, 20*time.Second, "an event published after the FLUSHALL", func() bool {
		_, err := e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:2"}})
		return err == nil
	})
	redistest.Eventually(t, 20*time.Second, "a new epoch", func() bool {
		epoch := e.busC.HGet(ctx, "{"+ch+"}:meta", "epoch").Val()
		return epoch != "" && epoch != first
	})
	if e.busC.Exists(ctx, "invalidate:generation").Val() != 1 {
		t.Fatal("the bus generation is gone: the FLUSHALL must keep it for this attack")
	}
	e.subscribe(mtx, "search-svc")
	e.waitGone(tenant, "user:2")
	e.waitGone(tenant, "user:1")
}
