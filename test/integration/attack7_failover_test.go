package integration

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
)

// A router dies (its reads left pending under its name on every master,
// replicated) and, as its heir starts claiming, the master of the ingress
// partitions it held most of is killed (kill -9): its replica is promoted
// with the dead router's pending entries, and its consumers' idle times
// as that replica saw them (a touch that delivers nothing is not
// replicated). The heir, at --claim-idle an hour, must still route every
// event within DeadAfter of the failover and leave nothing pending.
func TestAttack7ClusterFailoverWhileClaimingADeadRoutersEntries(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	mtx, streams := e.deadRouterOnEveryStream()
	onMaster := map[string]int{}
	for stream := range streams {
		onMaster[e.masterOf(stream).Addr]++
	}
	// The dead router's reads reached the replicas before the kill.
	must(t, e.busC.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		return m.Do(ctx, "WAIT", 1, 5000).Err()
	}))
	victim := e.bus.Nodes[0]
	for _, n := range e.bus.Nodes {
		if onMaster[n.Addr] > onMaster[victim.Addr] {
			victim = n
		}
	}
	defer e.heir(mtx)()
	victim.Stop()
	redistest.Eventually(t, 60*time.Second, "every tenant's event published", e.everyTenantPublished)
	redistest.Eventually(t, 30*time.Second, "nothing pending on any stream", func() bool {
		for stream := range streams {
			sum, err := e.busC.XPending(ctx, stream, "routerd").Result()
			if err != nil || sum.Count > 0 {
				return false
			}
		}
		return true
	})
}
