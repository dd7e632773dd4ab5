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
	"github.com/routerd/routerd/wire"
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
	mtx, err := matrix.Parse("cluster.yaml", []byte(strings.Replace(twoTagsEveryTenant, "version: 1\n", "version: 1\ningress: {partitions: 8}\n", 1)))
	must(t, err)
	streams := map[string]bool{}
	onMaster := map[string]int{}
	for p := range mtx.Partitions {
		stream := names.IngressStream(mtx.Prefix, p)
		must(t, e.busC.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err())
		streams[stream] = true
	}
	const tenants = 40
	for i := range tenants {
		tenant := fmt.Sprint("t", i)
		stream := names.IngressStream(mtx.Prefix, wire.Partition(tenant, mtx.Partitions))
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField,
			fmt.Sprintf(`{"tenant":%q,"domain":"user","keys":["user:1"]}`, tenant)}}).Err())
	}
	for stream := range streams {
		must(t, e.busC.Do(ctx, "XREADGROUP", "GROUP", "routerd", "doomed", "STREAMS", stream, ">").Err())
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
	r, err := router.New(e.busC, mtx, router.Options{Consumer: "heir", ClaimIdle: time.Hour, DeadAfter: time.Second,
		Block: 100 * time.Millisecond, ClaimInterval: 100 * time.Millisecond, Logger: testLogger(t, "router")})
	must(t, err)
	stop := run(t, r.Run)
	defer stop()
	victim.Stop()
	redistest.Eventually(t, 60*time.Second, "every tenant's event published", func() bool {
		for i := range tenants {
			for _, tag := range []string{"active", "vip"} {
				v, err := e.busC.HGet(ctx, fmt.Sprintf("{invalidate:t%d:%s}:meta", i, tag), "version").Int()
				if err != nil || v < 1 {
					return false
				}
			}
		}
		return true
	})
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
