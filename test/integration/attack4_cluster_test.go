package integration

import (
	"context"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// kill -9 of the master that holds an ingress stream — the master the
// router's own bounded connection for the stream reads from, blocked in
// XREADGROUP — under continuous durable publishing: its replica takes
// over, the router reads from the new master, every change is invalidated
// and nothing is left pending on the stream. Coverage the other tests
// lack: TestClusterMasterFailoverLosesNothing kills a channel's master, and
// TestClusterIngressSlotMigrationLosesNothing moves the stream's slot with
// both masters up.
func TestAttack4ClusterIngressMasterKilledLosesNothing(t *testing.T) {
	e := newClusterEnv(t)
	tenant := e.tenantsOnMasters("a4fo", 1, "active")[0]
	mtx := e.startRouter(oneTenantMatrix(tenant))
	e.subscribe(mtx, "search-svc")
	stream := names.IngressStream(mtx.Prefix, wire.Partition(tenant, mtx.Partitions))
	victim := e.masterOf(stream)

	pub := e.publishContinuously(tenant)
	redistest.Eventually(t, 10*time.Second, "publishing under way", func() bool { return len(pub.keys()) >= 30 })
	e.waitGone(tenant, "user:10")
	victim.Stop()
	killed := time.Now()
	before := len(pub.keys())
	redistest.Eventually(t, 30*time.Second, "publishing resumed after the failover", func() bool { return len(pub.keys()) >= before+30 })
	keys := pub.stop()
	for _, key := range keys {
		e.waitGone(tenant, key)
	}
	ctx := context.Background()
	redistest.Eventually(t, 20*time.Second, "nothing pending on the stream", func() bool {
		g, err := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && len(g) == 1 && g[0].Pending == 0 && g[0].Lag == 0
	})
	t.Logf("%d changes published, %d before the kill; all invalidated %v after the kill", len(keys), before, time.Since(killed))
}
