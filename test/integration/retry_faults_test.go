package integration

import (
	"context"
	"fmt"
	"strings"
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

// A batch whose publishing fails on a killed master is retried by its own
// router as soon as the cluster has failed over, not when ClaimIdle (left at
// its 30 s default here) lets the claim loop take it: every invalidation
// published around the kill is applied within seconds of the failover.
func TestClusterFailoverRetriedAtOnce(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	// A tenant whose channel and ingress partition live on different
	// masters, so events keep reaching the ingress while the channel's
	// master is down and their routing fails.
	var tenant, channel string
	for i := 0; tenant == "" && i < 1000; i++ {
		cand := fmt.Sprintf("fx%d", i)
		ch, _ := e.busC.MasterForKey(ctx, "invalidate:"+cand+":active")
		in, _ := e.busC.MasterForKey(ctx, names.IngressStream("invalidate", wire.Partition(cand, wire.DefaultPartitions)))
		if ch != nil && in != nil && ch.Options().Addr != in.Options().Addr {
			tenant, channel = cand, "invalidate:"+cand+":active"
		}
	}
	mtx, err := matrix.Parse("cluster.yaml", []byte(oneTenantMatrix(tenant)))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := router.New(e.busC, mtx, router.Options{Block: 100 * time.Millisecond, ClaimInterval: 100 * time.Millisecond,
		Registerer: reg, Logger: testLogger(t, "router")})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	s, err := subscriber.New(e.busC, subscriber.Options{Service: "search-svc", Matrix: mtx, Cache: e.cacheC,
		CheckInterval: time.Hour, Registerer: prometheus.NewRegistry(), Logger: testLogger(t, "subscriber")})
	if err != nil {
		t.Fatal(err)
	}
	run(t, s.Run)
	redistest.Eventually(t, 10*time.Second, "subscriber ready", s.Ready)

	victim := e.masterOf(channel)
	pub := e.publishContinuously(tenant)
	redistest.Eventually(t, 10*time.Second, "publishing under way", func() bool { return len(pub.keys()) >= 30 })
	e.waitGone(tenant, "user:10")
	killedAt := len(pub.keys()) // events from here on are published on the new master only
	victim.Stop()
	// The failover is complete when another node owns the slot as master
	// and takes a write there.
	redistest.Eventually(t, 20*time.Second, "a replica promoted", func() bool {
		m, err := e.busC.MasterForKey(ctx, channel)
		return err == nil && m.Options().Addr != victim.Addr && m.Set(ctx, "{"+channel+"}:probe", 1, 0).Err() == nil
	})
	failedOver := time.Now()
	before := len(pub.keys())
	redistest.Eventually(t, 10*time.Second, "publishing after the failover", func() bool { return len(pub.keys()) >= before+20 })
	keys := pub.stop()
	// Whether each event was published on its channel, not whether its key
	// is gone: the promoted replica starts a new epoch, and the whole-tag
	// recovery that follows empties the cache of events never published.
	// The new epoch's event ids hold every event published since.
	deadline := failedOver.Add(10 * time.Second)
	for i := killedAt; i < len(keys); i++ {
		id := fmt.Sprintf("ev-%d", i)
		redistest.Eventually(t, time.Until(deadline), id+" published within 10s of the failover", func() bool {
			return e.busC.ZScore(ctx, names.EventsKey(channel), id).Err() == nil
		})
	}
	for _, key := range keys {
		e.waitGone(tenant, key)
	}
	t.Logf("%d changes, %d before the kill, %d before the failover completed; all applied %v after it; %v entries retried",
		len(keys), killedAt, before, time.Since(failedOver), metric(t, reg, "routerd_entries_retried_total"))

	// Round two: the channel's slot moves to another master under
	// continuous publishing.
	from, err := e.busC.MasterForKey(ctx, channel)
	if err != nil {
		t.Fatal(err)
	}
	var to string
	for _, n := range e.bus.Nodes {
		if n.Addr != from.Options().Addr && n != victim && isMaster(ctx, n) {
			to = n.Addr
		}
	}
	pub = e.publishContinuouslyFrom(tenant, len(keys))
	redistest.Eventually(t, 10*time.Second, "publishing under way again", func() bool { return len(pub.keys()) >= 10 })
	e.bus.MoveSlot(t, channel, to)
	moved := time.Now()
	before = len(pub.keys())
	redistest.Eventually(t, 10*time.Second, "publishing after the move", func() bool { return len(pub.keys()) >= before+20 })
	pub.stop()
	// Here the new master starts a new epoch too, but the events published
	// on the old one while the slot moved went with it and are not in the
	// new epoch's ids: what shows that every event was published (or
	// dead-lettered) is that none stays pending.
	stream := names.IngressStream("invalidate", wire.Partition(tenant, wire.DefaultPartitions))
	redistest.Eventually(t, time.Until(moved.Add(10*time.Second)), "every entry acknowledged within 10s of the slot move", func() bool {
		s, err := e.busC.XPending(ctx, stream, "routerd").Result()
		return err == nil && s.Count == 0
	})
	if got := metric(t, reg, "routerd_events_dead_lettered_total"); got != 0 {
		t.Errorf("%v events dead-lettered", got)
	}
	if got := metric(t, reg, "routerd_entries_claimed_total"); got != 0 {
		t.Errorf("%v entries were claimed: the router's own retry did not deliver them", got)
	}
}

func isMaster(ctx context.Context, s *redistest.Server) bool {
	c := redis.NewClient(&redis.Options{Addr: s.Addr})
	defer c.Close()
	info, err := c.InfoMap(ctx, "replication").Result()
	return err == nil && info["Replication"]["role"] == "master"
}

// On one server, a batch that fails for a while (the router's Redis user
// loses EVALSHA) is routed as soon as the failure passes, long before
// ClaimIdle (30 s).
func TestFailedBatchRetriedAtOnce(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "rt", "on", ">pw", "~*", "&*", "+@all").Err())
	bus := redis.NewClient(&redis.Options{Addr: e.bus.Addr, Username: "rt", Password: "pw"})
	t.Cleanup(func() { _ = bus.Close() })
	reg := prometheus.NewRegistry()
	r, err := router.New(bus, e.mtx, router.Options{Block: 100 * time.Millisecond, ClaimInterval: 100 * time.Millisecond,
		Registerer: reg, Logger: testLogger(t, "router")})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	e.subscriber("search-svc", subscriber.Options{})
	e.seed("search-svc", "acme", "user:1", "active")

	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "rt", "-evalsha", "-eval").Err())
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	redistest.Eventually(t, 10*time.Second, "the batch failed", func() bool {
		return metric(t, reg, "routerd_publish_errors_total") > 0
	})
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "rt", "+evalsha", "+eval").Err())
	restored := time.Now()
	redistest.Eventually(t, time.Until(restored.Add(10*time.Second)), "acme/user:1 invalidated within 10s of the failure passing", func() bool {
		return !e.cached("search-svc", "acme", "user:1")
	})
	if got := metric(t, reg, "routerd_entries_claimed_total"); got != 0 {
		t.Errorf("%v entries were claimed: the router's own retry did not deliver them", got)
	}
	if got := metric(t, reg, "routerd_events_dead_lettered_total"); got != 0 {
		t.Errorf("%v events dead-lettered for a passing failure", got)
	}
}

// An entry that fails every time for a reason that will not pass (its
// channel's meta key is a string: WRONGTYPE in the publish script) reaches
// the dead letters after DeadLetterAfter tries, with the reason, counted,
// and acknowledged; the events read with it and after it keep flowing, and
// the ingress is trimmed past it.
func TestPoisonEntryDeadLettered(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	// Small stream nodes, so the approximate trim shows within a few entries.
	must(t, e.busC.ConfigSet(ctx, "stream-node-max-entries", "8").Err())
	reg := prometheus.NewRegistry()
	_, stop := e.router(router.Options{Consumer: "first"})
	stop() // the consumer groups exist now
	e.subscriber("billing-svc", subscriber.Options{})
	for i := 0; i < 60; i++ {
		e.seed("billing-svc", "acme", fmt.Sprintf("invoice:%d", i), "billing")
	}

	must(t, e.busC.Set(ctx, "{invalidate:acme:active}:meta", "not a hash", 0).Err())
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	// The poison entry and good ones of the same tenant, read in one batch
	// (on one server, one publish script call carries several channels).
	poisonID := e.publish(wire.Event{ID: "poison-event", Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	for i := 0; i < 10; i++ {
		e.publish(wire.Event{Tenant: "acme", Domain: "invoice", Keys: []string{fmt.Sprintf("invoice:%d", i)}})
	}
	entries, err := e.busC.XRange(ctx, stream, "-", "+").Result()
	if err != nil || len(entries) == 0 {
		t.Fatal(entries, err)
	}
	poisonEntry := entries[0].ID

	e.router(router.Options{Consumer: "second", DeadLetterAfter: 3, Registerer: reg, Logger: testLogger(t, "router")})
	for i := 0; i < 10; i++ {
		e.waitGone("billing-svc", "acme", fmt.Sprintf("invoice:%d", i))
	}
	dl := names.DeadLetterStream("invalidate")
	redistest.Eventually(t, 20*time.Second, "the poison entry dead-lettered", func() bool {
		n, _ := e.busC.XLen(ctx, dl).Result()
		return n > 0
	})
	dead, err := e.busC.XRange(ctx, dl, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 {
		t.Fatalf("%d dead letters, want the poison entry only: %v", len(dead), dead)
	}
	d := dead[0].Values
	if d["reason"] != router.ReasonPoison || !strings.Contains(d["error"].(string), "WRONGTYPE") ||
		!strings.Contains(d["error"].(string), "3 tries") || d["entry_id"] != poisonEntry || !strings.Contains(d["entry"].(string), poisonID) {
		t.Errorf("dead letter %v", d)
	}
	if got := metric(t, reg, "routerd_events_dead_lettered_total", "reason", router.ReasonPoison); got != 1 {
		t.Errorf("dead-lettered{reason=%q} = %v, want 1", router.ReasonPoison, got)
	}
	redistest.Eventually(t, 10*time.Second, "the poison entry acknowledged", func() bool {
		s, _ := e.busC.XPending(ctx, stream, "routerd").Result()
		return s != nil && s.Count == 0
	})

	// Events keep flowing after it, and the ingress is trimmed past it.
	for i := 10; i < 60; i++ {
		e.publish(wire.Event{Tenant: "acme", Domain: "invoice", Keys: []string{fmt.Sprintf("invoice:%d", i)}})
	}
	for i := 10; i < 60; i++ {
		e.waitGone("billing-svc", "acme", fmt.Sprintf("invoice:%d", i))
	}
	redistest.Eventually(t, 10*time.Second, "the ingress trimmed past the poison entry", func() bool {
		first, err := e.busC.XRangeN(ctx, stream, "-", "+", 1).Result()
		return err == nil && len(first) == 1 && first[0].ID != poisonEntry
	})
}
