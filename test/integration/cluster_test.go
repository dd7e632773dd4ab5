package integration

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
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
	subReg *prometheus.Registry // the subscriber's metrics
	pub    *publisher.Publisher
}

// masterOf returns the node that is master of key's slot now.
func (e *clusterEnv) masterOf(key string) *redistest.Server {
	e.t.Helper()
	master, err := e.busC.MasterForKey(context.Background(), key)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, n := range e.bus.Nodes {
		if n.Addr == master.Options().Addr {
			return n
		}
	}
	e.t.Fatalf("no node of the cluster is %s", master.Options().Addr)
	return nil
}

// newClusterEnv is a clusterEnv on a bus of three masters with a replica
// each, and a cache of three masters, started together.
func newClusterEnv(t *testing.T) *clusterEnv {
	t.Helper()
	cs := redistest.StartClusters(t, redistest.Shape{Masters: 3, Replicas: 1}, redistest.Shape{Masters: 3})
	return newClusterEnvWith(t, cs[0], cs[1])
}

// newClusterEnvOn is a clusterEnv on the given bus cluster.
func newClusterEnvOn(t *testing.T, bus *redistest.Cluster) *clusterEnv {
	t.Helper()
	return newClusterEnvWith(t, bus, redistest.StartCluster(t, 3, 0))
}

// newClusterEnvWith is a clusterEnv on the given bus and cache clusters.
func newClusterEnvWith(t *testing.T, bus, cache *redistest.Cluster) *clusterEnv {
	t.Helper()
	e := &clusterEnv{t: t, bus: bus}
	e.busC = e.bus.Client(t)
	e.cacheC = cache.Client(t)
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
	e.subscribe(e.startRouter(yaml), service)
}

// startRouter runs a router on the matrix and returns the matrix.
func (e *clusterEnv) startRouter(yaml string) *matrix.Matrix {
	e.t.Helper()
	mtx, err := matrix.Parse("cluster.yaml", []byte(yaml))
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := router.New(e.busC, mtx, router.Options{Block: 100 * time.Millisecond,
		ClaimInterval: 100 * time.Millisecond, ClaimIdle: 500 * time.Millisecond, Logger: testLogger(e.t, "router")})
	if err != nil {
		e.t.Fatal(err)
	}
	run(e.t, r.Run)
	redistest.Eventually(e.t, 10*time.Second, "router ready", r.Ready)
	return mtx
}

// subscribe runs the service's subscriber on the cache cluster and returns
// its stop.
func (e *clusterEnv) subscribe(mtx *matrix.Matrix, service string) (stop func()) {
	e.t.Helper()
	e.subReg = prometheus.NewRegistry()
	s, err := subscriber.New(e.busC, subscriber.Options{Service: service, Matrix: mtx, Cache: e.cacheC, CheckInterval: time.Hour,
		Registerer: e.subReg, Logger: testLogger(e.t, "subscriber")})
	if err != nil {
		e.t.Fatal(err)
	}
	stop = run(e.t, s.Run)
	redistest.Eventually(e.t, 10*time.Second, "subscriber ready", s.Ready)
	return stop
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

// oneTenantMatrix maps domain user to tag active, owned by search-svc for
// the listed tenants.
func oneTenantMatrix(tenants string) string {
	return fmt.Sprintf(`
version: 1
tags:
  active: {services: [search-svc]}
domains:
  user: {tags: [active]}
services:
  search-svc: {tenants: [%s]}
`, tenants)
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
	yaml := oneTenantMatrix(strings.Join(tenants, ", "))
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

// A master usually owns the channels of many slots, and SSUBSCRIBE takes
// the channels of one slot only: 30 tenants' channels, several per master
// in different slots, are all delivered live — and again after every
// pub/sub connection was killed and re-established (go-redis resubscribes a
// connection's shard channels in one command, which such a connection
// refuses).
func TestClusterManyChannelsPerMaster(t *testing.T) {
	e := newClusterEnv(t)
	var tenants []string
	for i := 0; i < 30; i++ {
		tenants = append(tenants, fmt.Sprintf("many%d", i))
	}
	for _, tenant := range tenants {
		e.seed(tenant, "user:1", "active")
		e.seed(tenant, "user:2", "active")
	}
	e.start(oneTenantMatrix(strings.Join(tenants, ", ")), "search-svc")
	publishAll := func(key string) {
		for _, tenant := range tenants {
			if _, err := e.pub.Publish(context.Background(), wire.Event{Tenant: tenant, Domain: "user", Keys: []string{key}}); err != nil {
				t.Fatal(err)
			}
		}
		for _, tenant := range tenants {
			e.waitGone(tenant, key)
		}
	}
	// CheckInterval is an hour: only live delivery (or the check after a
	// reconnect) can invalidate.
	publishAll("user:1")
	if got := metric(t, e.subReg, "subscriber_gaps_total"); got != 0 {
		t.Errorf("%v gaps: messages were missed and recovered, not delivered", got)
	}

	if err := e.busC.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
		return m.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err()
	}); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 15*time.Second, "every channel subscribed again on its master", func() bool {
		for _, tenant := range tenants {
			ch := "invalidate:" + tenant + ":active"
			m, err := e.busC.MasterForKey(context.Background(), ch)
			if err != nil {
				return false
			}
			v, err := m.Do(context.Background(), "PUBSUB", "SHARDNUMSUB", ch).Slice()
			if err != nil || len(v) != 2 || v[1] != int64(1) {
				return false
			}
		}
		return true
	})
	publishAll("user:2")
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
		e.firstEventKeyLevel(tenant)
	}
}

// firstEventKeyLevel publishes a new tenant's first event, for user:1 of
// two cached keys, and checks that it was applied key by key.
func (e *clusterEnv) firstEventKeyLevel(tenant string) {
	e.t.Helper()
	e.seed(tenant, "user:1", "active")
	e.seed(tenant, "user:2", "active")
	if _, err := e.pub.Publish(context.Background(), wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}}); err != nil {
		e.t.Fatal(err)
	}
	e.waitGone(tenant, "user:1")
	if _, err := e.store.Get(context.Background(), tenant, "user:2"); err != nil {
		e.t.Errorf("%s/user:2 deleted: the new tenant's first message was not applied key by key", tenant)
	}
}

// twoTagsEveryTenant: profile-svc of every tenant, on two tags a user
// change invalidates, so that a new tenant's two channels may live on two
// masters.
const twoTagsEveryTenant = `
version: 1
tags:
  active: {services: [profile-svc]}
  vip: {services: [profile-svc]}
domains:
  user: {tags: [active, vip]}
services:
  profile-svc: {tenants: all}
`

// Once every master has a connection, a new tenant's channels join the
// running connections: no connection is rebuilt, and its first message is
// still applied key by key.
func TestClusterNewTenantJoinsRunningConnections(t *testing.T) {
	e := newClusterEnv(t)
	e.start(twoTagsEveryTenant, "profile-svc")
	for _, tenant := range e.tenantsOnMasters("early", 3, "active") {
		e.firstEventKeyLevel(tenant) // the first on a master without a connection regroups
	}
	pubsubClients := func() string {
		var ids []string
		var mu sync.Mutex
		if err := e.busC.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
			list, err := m.ClientList(ctx).Result()
			for _, line := range strings.Split(list, "\n") {
				if strings.Contains(line, "flags=P") || strings.Contains(line, " ssub=") && !strings.Contains(line, " ssub=0") {
					id, _, _ := strings.Cut(line, " ")
					mu.Lock()
					ids = append(ids, m.Options().Addr+"/"+id)
					mu.Unlock()
				}
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		slices.Sort(ids)
		return strings.Join(ids, ",")
	}
	before := pubsubClients()
	for i := 0; i < 5; i++ {
		e.firstEventKeyLevel(fmt.Sprintf("late%d", i))
	}
	if after := pubsubClients(); after != before {
		t.Errorf("pub/sub connections were rebuilt for new tenants: %s, then %s", before, after)
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

// kill -9 of the master that owns a channel, under continuous publishing,
// loses no invalidation, and delivery resumes within seconds.
func TestClusterMasterFailoverLosesNothing(t *testing.T) {
	e := newClusterEnv(t)
	tenant := e.tenantsOnMasters("fo", 1, "active")[0]
	e.start(oneTenantMatrix(tenant), "search-svc")
	victim := e.masterOf("invalidate:" + tenant + ":active")

	pub := e.publishContinuously(tenant)
	redistest.Eventually(t, 10*time.Second, "publishing under way", func() bool { return len(pub.keys()) >= 30 })
	e.waitGone(tenant, "user:10")
	victim.Stop()
	killed := time.Now()
	before := len(pub.keys())
	redistest.Eventually(t, 20*time.Second, "publishing resumed after the failover", func() bool { return len(pub.keys()) >= before+30 })
	keys := pub.stop()
	for _, key := range keys {
		e.waitGone(tenant, key)
	}
	t.Logf("%d changes published, %d before the kill; all invalidated %v after the kill", len(keys), before, time.Since(killed))
}

// Moving a channel's slot to another master (with its meta, history and
// event ids) under continuous publishing loses no invalidation.
func TestClusterSlotMigrationLosesNothing(t *testing.T) {
	e := newClusterEnv(t)
	tenant := e.tenantsOnMasters("mv", 1, "active")[0]
	e.start(oneTenantMatrix(tenant), "search-svc")
	e.moveUnderTraffic(tenant, "invalidate:"+tenant+":active")
}

// Moving the slot of a tenant's ingress stream (with its consumer group and
// pending entries) under continuous publishing loses no invalidation: the
// router's own connection to the stream's master (router/bounded.go) is
// told the key moved, reads through the cluster client meanwhile, and
// reconnects to the stream's new master.
func TestClusterIngressSlotMigrationLosesNothing(t *testing.T) {
	e := newClusterEnv(t)
	tenant := e.tenantsOnMasters("ing", 1, "active")[0]
	mtx := e.startRouter(oneTenantMatrix(tenant))
	e.subscribe(mtx, "search-svc")
	stream := names.IngressStream(mtx.Prefix, wire.Partition(tenant, mtx.Partitions))
	e.moveUnderTraffic(tenant, stream)
	ctx := context.Background()
	redistest.Eventually(t, 10*time.Second, "nothing pending on the moved stream", func() bool {
		g, err := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && len(g) == 1 && g[0].Pending == 0
	})
}

// moveUnderTraffic moves the slot of key to another master while the tenant
// publishes continuously, and waits until every change published is
// invalidated.
func (e *clusterEnv) moveUnderTraffic(tenant, key string) {
	t := e.t
	t.Helper()
	ctx := context.Background()
	from, err := e.busC.MasterForKey(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	var to string
	var mu sync.Mutex // ForEachMaster calls back concurrently
	must(t, e.busC.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		if n.Options().Addr != from.Options().Addr {
			to = n.Options().Addr
		}
		return nil
	}))

	pub := e.publishContinuously(tenant)
	redistest.Eventually(t, 10*time.Second, "publishing under way", func() bool { return len(pub.keys()) >= 30 })
	e.waitGone(tenant, "user:10")
	e.bus.MoveSlot(t, key, to)
	moved := time.Now()
	before := len(pub.keys())
	redistest.Eventually(t, 20*time.Second, "publishing after the move", func() bool { return len(pub.keys()) >= before+30 })
	keys := pub.stop()
	for _, k := range keys {
		e.waitGone(tenant, k)
	}
	if now, _ := e.busC.MasterForKey(ctx, key); now.Options().Addr != to {
		t.Errorf("the slot of %s is on %s, want %s", key, now.Options().Addr, to)
	}
	t.Logf("%d changes published, %d before the move of %s; all invalidated %v after it", len(keys), before, key, time.Since(moved))
}

// publisher publishes a change (with a freshly cached key) every 20ms; a
// publish that fails, while a master is down or a slot moves, is retried
// with the same event id, as a service would.
type continuous struct {
	mu        sync.Mutex
	published []string
	quit      chan struct{}
	done      chan struct{}
}

func (e *clusterEnv) publishContinuously(tenant string) *continuous {
	return e.publishContinuouslyFrom(tenant, 0)
}

// publishContinuouslyFrom is publishContinuously with the changes numbered
// from first on; keys returns them from there.
func (e *clusterEnv) publishContinuouslyFrom(tenant string, first int) *continuous {
	pub, err := publisher.New(e.busC, publisher.Options{Durable: true})
	if err != nil {
		e.t.Fatal(err)
	}
	c := &continuous{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for i := first; ; i++ {
			key := fmt.Sprintf("user:%d", i)
			if err := e.store.Set(context.Background(), tenant, key, []byte("v"), 0, "active"); err != nil {
				e.t.Error(err)
				return
			}
			ev := wire.Event{ID: fmt.Sprintf("ev-%d", i), Tenant: tenant, Domain: "user", Keys: []string{key}}
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := pub.Publish(ctx, ev)
				cancel()
				if err == nil {
					break
				}
				select {
				case <-c.quit:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
			c.mu.Lock()
			c.published = append(c.published, key)
			c.mu.Unlock()
			select {
			case <-c.quit:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	e.t.Cleanup(func() { c.stop() })
	return c
}

func (c *continuous) keys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.published...)
}

// stop ends the publishing and returns the keys of every published change.
func (c *continuous) stop() []string {
	select {
	case <-c.quit:
	default:
		close(c.quit)
	}
	<-c.done
	return c.keys()
}

// testLogger logs to the test's output, shown when it fails or with -v.
func testLogger(t *testing.T, who string) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("who", who)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// position is search-svc's stored position on a tenant's tag.
func (e *clusterEnv) position(tenant, tag string) tagstore.Position {
	e.t.Helper()
	p, _, err := e.store.ReadPosition(context.Background(), tenant, "search-svc", tag)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// TestForgedNextVersionThenRealOneLost on a cluster: the forgery comes by
// SPUBLISH on the channel's master, the meta's chain is read from it.
func TestClusterForgedNextVersionThenRealOneLost(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	tenant := e.tenantsOnMasters("fg", 1, "active")[0]
	ch := "invalidate:" + tenant + ":active"
	mtx := e.startRouter(oneTenantMatrix(tenant))
	stop := e.subscribe(mtx, "search-svc")
	_, err := e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:0"}})
	must(t, err)
	redistest.Eventually(t, 10*time.Second, "position at 1", func() bool { return e.position(tenant, "active").Version == 1 })
	epoch := e.busC.HGet(ctx, "{"+ch+"}:meta", "epoch").Val()
	e.seed(tenant, "user:1", "active")

	must(t, e.busC.SPublish(ctx, ch, `{"tenant":"`+tenant+`","tag":"active","epoch":"`+epoch+`","version":2,"keys":["nothing"],"event":"forged"}`).Err())
	redistest.Eventually(t, 10*time.Second, "the forged version 2 applied", func() bool { return e.position(tenant, "active").Version == 2 })
	stop()
	_, err = e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}})
	must(t, err)
	redistest.Eventually(t, 10*time.Second, "the real version 2 published", func() bool {
		return e.busC.HGet(ctx, "{"+ch+"}:meta", "version").Val() == "2"
	})
	e.subscribe(mtx, "search-svc")
	e.waitGone(tenant, "user:1")
}

// TestBusLossHidesOldEpochFromChannelWithoutPosition on a cluster: every
// master loses its data.
func TestClusterBusLossHidesOldEpochFromChannelWithoutPosition(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	tenants := e.tenantsOnMasters("bl", 2, "active")
	ch := "invalidate:" + tenants[1] + ":active"
	mtx := e.startRouter(oneTenantMatrix(strings.Join(tenants, ", ")))
	stop := e.subscribe(mtx, "search-svc")
	redistest.Eventually(t, 10*time.Second, "the bus generation recorded", func() bool {
		n, _ := e.cacheC.Exists(ctx, "routerd:generation:search-svc").Result()
		return n == 1
	})
	stop()

	e.seed(tenants[1], "user:1", "active")
	e.seed(tenants[1], "user:2", "active")
	_, err := e.pub.Publish(ctx, wire.Event{Tenant: tenants[1], Domain: "user", Keys: []string{"user:1"}})
	must(t, err)
	redistest.Eventually(t, 10*time.Second, "published", func() bool {
		return e.busC.HGet(ctx, "{"+ch+"}:meta", "version").Val() == "1"
	})
	first := e.busC.HGet(ctx, "{"+ch+"}:meta", "epoch").Val()
	must(t, e.busC.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() }))
	_, err = e.pub.Publish(ctx, wire.Event{Tenant: tenants[1], Domain: "user", Keys: []string{"user:2"}})
	must(t, err)
	redistest.Eventually(t, 10*time.Second, "a new epoch at version 1", func() bool {
		epoch := e.busC.HGet(ctx, "{"+ch+"}:meta", "epoch").Val()
		return epoch != "" && epoch != first
	})
	e.subscribe(mtx, "search-svc")
	e.waitGone(tenants[1], "user:1")
	e.waitGone(tenants[1], "user:2")
}
