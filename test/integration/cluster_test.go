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
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// clusterEnv is a 6-node bus cluster (3 masters, 3 replicas) and a 3-master
// cache cluster.
type clusterEnv struct {
	t      *testing.T
	bus    *redistest.Cluster
	busC   *redis.ClusterClient
	cacheC *redis.ClusterClient
	store  *tagstore.Store
	pub    *publisher.Publisher
}

func newClusterEnv(t *testing.T) *clusterEnv {
	t.Helper()
	e := &clusterEnv{t: t, bus: redistest.StartCluster(t, 3, 1)}
	e.busC = e.bus.Client(t)
	e.cacheC = redistest.StartCluster(t, 3, 0).Client(t)
	var err error
	if e.store, err = tagstore.New(e.cacheC, tagstore.Options{}); err != nil {
		t.Fatal(err)
	}
	if e.pub, err = publisher.New(e.busC, publisher.Options{}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *clusterEnv) start(yaml, service string) {
	e.t.Helper()
	mtx, err := matrix.Parse("cluster.yaml", []byte(yaml))
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := router.New(e.busC, mtx, router.Options{Sharded: true, Block: 100 * time.Millisecond, ClaimInterval: 100 * time.Millisecond})
	if err != nil {
		e.t.Fatal(err)
	}
	run(e.t, r.Run)
	redistest.Eventually(e.t, 10*time.Second, "router ready", r.Ready)
	s, err := subscriber.New(e.busC, subscriber.Options{Service: service, Matrix: mtx, Cache: e.cacheC, CheckInterval: time.Hour})
	if err != nil {
		e.t.Fatal(err)
	}
	run(e.t, s.Run)
	redistest.Eventually(e.t, 10*time.Second, "subscriber ready", s.Ready)
}

func (e *clusterEnv) seed(tenant, key, tag string) {
	e.t.Helper()
	if err := e.store.Set(context.Background(), tenant, key, []byte("v"), 0, tag); err != nil {
		e.t.Fatal(err)
	}
}

func (e *clusterEnv) waitGone(tenant, key string) {
	e.t.Helper()
	redistest.Eventually(e.t, 15*time.Second, tenant+"/"+key+" invalidated", func() bool {
		_, err := e.store.Get(context.Background(), tenant, key)
		return err == redis.Nil
	})
}

// tenantsOnMasters returns n tenants whose channel for tag lives on n
// different masters.
func (e *clusterEnv) tenantsOnMasters(prefix string, n int, tag string) []string {
	e.t.Helper()
	byMaster := map[string]string{}
	var out []string
	for i := 0; len(out) < n && i < 1000; i++ {
		tenant := fmt.Sprintf("%s%d", prefix, i)
		m, err := e.busC.MasterForKey(context.Background(), "invalidate:"+tenant+":"+tag)
		if err != nil {
			e.t.Fatal(err)
		}
		if _, ok := byMaster[m.Options().Addr]; !ok {
			byMaster[m.Options().Addr] = tenant
			out = append(out, tenant)
		}
	}
	if len(out) != n {
		e.t.Fatalf("found tenants on %d masters only", len(out))
	}
	return out
}

// Tenants whose channels live on three different masters are all delivered
// to one subscriber over sharded pub/sub, and applied on a cache cluster.
func TestClusterTenantsOnThreeMasters(t *testing.T) {
	e := newClusterEnv(t)
	tenants := e.tenantsOnMasters("shop", 3, "active")
	yaml := fmt.Sprintf(`
version: 1
tags:
  active: {services: [search-svc]}
domains:
  user: {tags: [active]}
services:
  search-svc: {tenants: [%s]}
`, strings.Join(tenants, ", "))
	for _, tenant := range tenants {
		e.seed(tenant, "user:1", "active")
		e.seed(tenant, "user:2", "active")
	}
	e.start(yaml, "search-svc")
	for _, tenant := range tenants {
		if _, err := e.pub.Publish(context.Background(), wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tenant := range tenants {
		e.waitGone(tenant, "user:1")
		if _, err := e.store.Get(context.Background(), tenant, "user:2"); err != nil {
			t.Errorf("%s/user:2 was deleted by a key-level event", tenant)
		}
	}
}

// A subscriber for every tenant picks up tenants it has never seen, on
// whichever master their channels live, without a restart.
func TestClusterAllTenantsPicksUpNewTenants(t *testing.T) {
	e := newClusterEnv(t)
	yaml := `
version: 1
tags:
  active: {services: [profile-svc]}
domains:
  user: {tags: [active]}
services:
  profile-svc: {tenants: all}
`
	e.start(yaml, "profile-svc")
	for _, tenant := range e.tenantsOnMasters("newco", 3, "active") {
		e.seed(tenant, "user:1", "active")
		e.seed(tenant, "user:2", "active")
		if _, err := e.pub.Publish(context.Background(), wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}}); err != nil {
			t.Fatal(err)
		}
		e.waitGone(tenant, "user:1")
		if _, err := e.store.Get(context.Background(), tenant, "user:2"); err != nil {
			t.Errorf("%s/user:2 deleted: the new tenant's first message was not applied key by key", tenant)
		}
	}
}

// On a cluster the write side refuses a key template that would put cache
// keys in another slot than their tenant's tag sets.
func TestClusterRefusesMisalignedKeyTemplate(t *testing.T) {
	c := redistest.StartCluster(t, 3, 0).Client(t)
	if _, err := tagstore.New(c, tagstore.Options{KeyTemplate: "cache:${tenant}:${key}"}); err == nil || !strings.Contains(err.Error(), "{tenant:${tenant}}") {
		t.Errorf("New with a template without the tenant hash tag: %v", err)
	}
	if _, err := tagstore.New(c, tagstore.Options{KeyTemplate: "app:{tenant:${tenant}}:${key}"}); err != nil {
		t.Errorf("a prefixed template with the tenant hash tag: %v", err)
	}
}
