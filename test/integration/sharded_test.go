package integration

import (
	"context"
	"fmt"
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

// A router given a cluster client and no other option publishes where the
// subscribers listen: whether pub/sub is sharded follows from the client,
// not from a second switch that can disagree with it.
func TestClusterRouterDefaultsReachSubscribers(t *testing.T) {
	e := newClusterEnv(t)
	tenant := e.tenantsOnMasters("dflt", 1, "active")[0]
	mtx, err := matrix.Parse("cluster.yaml", []byte(oneTenantMatrix(tenant)))
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(e.busC, mtx, router.Options{Block: 100 * time.Millisecond, ClaimInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	s, err := subscriber.New(e.busC, subscriber.Options{Service: "search-svc", Matrix: mtx, Cache: e.cacheC,
		CheckInterval: time.Hour, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, s.Run)
	redistest.Eventually(t, 10*time.Second, "subscriber ready", s.Ready)

	e.seed(tenant, "user:1", "active")
	if _, err := e.pub.Publish(context.Background(), wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}}); err != nil {
		t.Fatal(err)
	}
	// CheckInterval is an hour: only a delivered message can invalidate.
	e.waitGone(tenant, "user:1")
}

// On a cluster the router finds partition streams beyond the matrix's count
// on every master, not only on the one it asks first.
func TestClusterPartitionsBeyondTheCountRouted(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	tenant := e.tenantsOnMasters("far", 1, "active")[0]
	byMaster := map[string]string{}
	for p := 8; len(byMaster) < 3 && p < 200; p++ {
		s := names.IngressStream("invalidate", p)
		m, err := e.busC.MasterForKey(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := byMaster[m.Options().Addr]; !ok {
			byMaster[m.Options().Addr] = s
		}
	}
	var keys []string
	for _, s := range byMaster {
		key := "user:" + s
		keys = append(keys, key)
		e.seed(tenant, key, "active")
		ev := fmt.Sprintf(`{"tenant":%q,"domain":"user","keys":[%q]}`, tenant, key)
		if err := e.busC.XAdd(ctx, &redis.XAddArgs{Stream: s, Values: []any{wire.EventField, ev}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	e.start(oneTenantMatrix(tenant), "search-svc") // 8 partitions
	for _, key := range keys {
		e.waitGone(tenant, key)
	}
}
