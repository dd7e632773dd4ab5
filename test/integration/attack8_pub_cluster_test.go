package integration

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/wire"
)

// publishers runs goroutines that each publish events with ids of their
// own, one after another, without retrying, and keep the ids of those
// Publish said nil to.
type publishers struct {
	mu   sync.Mutex
	ok   []string
	errs int
	quit chan struct{}
	wg   sync.WaitGroup
}

func startPublishers(t *testing.T, pub *publisher.Publisher, name string, n int) *publishers {
	p := &publishers{quit: make(chan struct{})}
	for g := range n {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-p.quit:
					return
				default:
				}
				ev := wire.Event{ID: fmt.Sprintf("%s-%d-%d", name, g, i), Tenant: "acme", Domain: "user", Keys: []string{fmt.Sprintf("user:%d", i)}}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				id, err := pub.Publish(ctx, ev)
				cancel()
				p.mu.Lock()
				if err == nil {
					p.ok = append(p.ok, id)
				} else {
					p.errs++
				}
				p.mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond) // a service's backoff
				}
			}
		}()
	}
	t.Cleanup(p.stop)
	return p
}

func (p *publishers) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ok)
}

func (p *publishers) stop() {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
	p.wg.Wait()
}

// missing returns the ids Publish said nil to that the stream lacks.
func (p *publishers) missing(t *testing.T, c redis.UniversalClient, stream string) []string {
	t.Helper()
	in := map[string]bool{}
	var entries []redis.XMessage
	err := redistest.Wait(context.Background(), 20*time.Second, "the stream readable", func() bool {
		var err error
		entries, err = c.XRange(context.Background(), stream, "-", "+").Result()
		return err == nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		ev, err := wire.ParseEventString(en.Values[wire.EventField].(string))
		if err != nil {
			t.Fatalf("entry %s: %v", en.ID, err)
		}
		in[ev.ID] = true
	}
	var out []string
	for _, id := range p.ok {
		if !in[id] {
			out = append(out, id)
		}
	}
	return out
}

// attack: the ingress stream's slot is resharded (SETSLOT MIGRATING /
// IMPORTING, MIGRATE: ASK then MOVED) and then its master is killed -9 and
// its replica promoted, while publishers run without retrying. Every
// Publish either returned an error or its event is in the stream
// afterwards: durable publishers (WAIT 1) through both, plain ones through
// the resharding (a failover may lose their last writes: Options.Durable).
// And the durable publisher writes again once the slot settled. With the
// slot's last master killed too (CLUSTERDOWN), every Publish fails.
func TestAttack8PubClusterReshardAndFailover(t *testing.T) {
	ctx := context.Background()
	bus := redistest.StartCluster(t, 3, 1)
	cc := bus.Client(t)
	durable, err := publisher.New(cc, publisher.Options{Partitions: 8, Durable: true})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := publisher.New(cc, publisher.Options{Partitions: 8})
	if err != nil {
		t.Fatal(err)
	}
	stream := names.IngressStream("invalidate", wire.Partition("acme", 8))
	from, err := cc.MasterForKey(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	var to string
	var mu sync.Mutex // ForEachMaster calls back concurrently
	must(t, cc.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		if n.Options().Addr != from.Options().Addr {
			to = n.Options().Addr
		}
		return nil
	}))

	// The resharding.
	d := startPublishers(t, durable, "durable", 3)
	p := startPublishers(t, plain, "plain", 3)
	redistest.Eventually(t, 20*time.Second, "publishing under way", func() bool { return d.count() >= 30 && p.count() >= 30 })
	bus.MoveSlot(t, stream, to)
	before := d.count()
	redistest.Eventually(t, 20*time.Second, "durable publishing after the move", func() bool { return d.count() >= before+30 })
	p.stop()
	if lost := p.missing(t, cc, stream); len(lost) > 0 {
		t.Errorf("plain: Publish said nil for %d events not in the stream after the resharding: %v", len(lost), lost)
	}

	// The failover of the stream's master, now the one it moved to.
	var victim *redistest.Server
	for _, n := range bus.Nodes {
		if n.Addr == to {
			victim = n
		}
	}
	victim.Stop()
	before = d.count()
	redistest.Eventually(t, 60*time.Second, "durable publishing after the failover", func() bool { return d.count() >= before+30 })
	d.stop()
	if lost := d.missing(t, cc, stream); len(lost) > 0 {
		t.Errorf("durable: Publish said nil for %d events not in the stream after the resharding and the failover: %v", len(lost), lost)
	}
	t.Logf("durable: %d published, %d errors; plain: %d published, %d errors", len(d.ok), d.errs, len(p.ok), p.errs)

	// The promoted master, which has no replica, killed too: the slot has
	// no master, the cluster is down. Every Publish fails.
	master, err := cc.MasterForKey(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range bus.Nodes {
		if n.Addr == master.Options().Addr {
			n.Stop()
		}
	}
	for i := range 5 {
		for _, pub := range []*publisher.Publisher{durable, plain} {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := pub.Publish(pctx, wire.Event{ID: fmt.Sprintf("down-%d", i), Tenant: "acme", Domain: "user", WholeTag: true})
			cancel()
			if err == nil {
				t.Fatalf("Publish said nil with the stream's slot without a master")
			}
		}
	}
}

// attack: publishers, durable and plain, on cluster clients with go-redis's
// default options (the slot map read again only every minute) while the
// ingress stream's master is killed -9 and its replica promoted. Their
// publishes fail while the promotion runs, then succeed within seconds:
// each failure to reach the dead master (the durable one's INFO for the
// WAIT's replica count, or the XADD) makes the client read the slot map
// again, rather than every Publish failing on the dead address until the
// minute is over.
func TestAttack8PubFindsThePromotedMaster(t *testing.T) {
	ctx := context.Background()
	bus := redistest.StartCluster(t, 3, 1)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: bus.Addrs})
	t.Cleanup(func() { _ = cc.Close() })
	pub, err := publisher.New(cc, publisher.Options{Partitions: 8, Durable: true})
	if err != nil {
		t.Fatal(err)
	}
	plainC := redis.NewClusterClient(&redis.ClusterOptions{Addrs: bus.Addrs})
	t.Cleanup(func() { _ = plainC.Close() })
	plain, err := publisher.New(plainC, publisher.Options{Partitions: 8})
	if err != nil {
		t.Fatal(err)
	}
	ev := wire.Event{Tenant: "acme", Domain: "user", WholeTag: true}
	for _, p := range []*publisher.Publisher{pub, plain} {
		if _, err := p.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	stream := names.IngressStream("invalidate", wire.Partition("acme", 8))
	old, err := cc.MasterForKey(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range bus.Nodes {
		if n.Addr == old.Options().Addr {
			n.Stop()
		}
	}
	// Another client, with a fresh slot map, sees the replica promoted.
	watcher := bus.Client(t)
	redistest.Eventually(t, 30*time.Second, "the replica promoted", func() bool {
		m, err := watcher.MasterForKey(ctx, stream)
		return err == nil && m.Options().Addr != old.Options().Addr && m.Ping(ctx).Err() == nil
	})
	for _, p := range []*publisher.Publisher{pub, plain} {
		var last error
		if err := redistest.Wait(ctx, 10*time.Second, "a Publish through the promoted master", func() bool {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			_, last = p.Publish(pctx, ev)
			return last == nil
		}); err != nil {
			t.Fatalf("%v: the last Publish: %v", err, last)
		}
	}
}

// attack: the ingress stream's slot is migrated, step by step as `redis-cli
// --cluster reshard` does, while a durable publisher (WAIT 1) publishes
// one event at a time. Once the stream has moved to the importing master
// its old master answers ASK, and once the slot is handed over, to a
// client whose slot map is older, MOVED: a redirect means the XADD was
// not run, so each Publish follows it and succeeds at once, its WAIT on the
// master that appended the event (whose replica has it when Publish
// returns), rather than failing until the slot map is read again. The
// publisher is the user of `routerd acl --role publisher --durable
// --cluster`, which must let it follow the redirects (ASKING).
func TestAttack8PubDurableFollowsASlotMigration(t *testing.T) {
	ctx := context.Background()
	bus := redistest.StartCluster(t, 3, 1)
	file := writeMatrix(t, testMatrix)
	for _, n := range bus.Nodes {
		aclUser(t, n, file, "pub", "--role", "publisher", "--durable", "--cluster")
	}
	// go-redis's defaults: the slot map read again every minute, or when a
	// command of the client's own meets a redirect.
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: bus.Addrs, Username: "pub", Password: "pw-pub"})
	t.Cleanup(func() { _ = cc.Close() })
	adminC := bus.Client(t)
	// A replica slowed by a loaded machine still acknowledges within
	// WaitTimeout: the WAIT returns as soon as it does.
	pub, err := publisher.New(cc, publisher.Options{Partitions: 8, Durable: true, WaitTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	stream := names.IngressStream("invalidate", wire.Partition("acme", 8))
	slot, err := adminC.ClusterKeySlot(ctx, stream).Result()
	must(t, err)
	from, err := cc.MasterForKey(ctx, stream)
	must(t, err)
	var to *redis.Client
	var mu sync.Mutex // ForEachMaster calls back concurrently
	must(t, cc.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		if n.Options().Addr != from.Options().Addr {
			to = n
		}
		return nil
	}))
	admin := func(addr string) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	src, dst := admin(from.Options().Addr), admin(to.Options().Addr)
	var published []string
	publish := func(when string) {
		t.Helper()
		id, err := pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:" + strconv.Itoa(len(published))}})
		if err != nil {
			t.Fatalf("a durable Publish %s: %v", when, err)
		}
		published = append(published, id)
	}
	publish("before the migration")

	srcID, err := src.ClusterMyID(ctx).Result()
	must(t, err)
	dstID, err := dst.ClusterMyID(ctx).Result()
	must(t, err)
	must(t, dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", srcID).Err())
	must(t, src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err())
	publish("while the slot is migrating, the stream still on its old master")

	host, port, _ := net.SplitHostPort(dst.Options().Addr)
	must(t, src.Do(ctx, "MIGRATE", host, port, "", 0, 5000, "KEYS", stream).Err())
	if err := src.XLen(ctx, stream).Err(); err == nil || !strings.HasPrefix(err.Error(), "ASK ") {
		t.Fatalf("XLEN on the old master after MIGRATE: %v, want an ASK redirect", err)
	}
	publish("with the stream on the importing master (ASK)")
	// A batch whose other entry goes to a master not in the migration:
	// that one is appended where it was sent, the redirected one follows.
	other := ""
	for i := 0; other == ""; i++ {
		tenant := "t" + strconv.Itoa(i)
		m, err := cc.MasterForKey(ctx, names.IngressStream("invalidate", wire.Partition(tenant, 8)))
		must(t, err)
		if a := m.Options().Addr; a != from.Options().Addr && a != to.Options().Addr {
			other = tenant
		}
	}
	ids, err := pub.PublishBatch(ctx, []wire.Event{{Tenant: "acme", Domain: "user", Keys: []string{"user:batch"}}, {Tenant: other, Domain: "user", WholeTag: true}})
	if err != nil {
		t.Fatalf("a durable PublishBatch with the stream on the importing master (ASK): %v", err)
	}
	published = append(published, ids[0])
	otherStream := names.IngressStream("invalidate", wire.Partition(other, 8))
	if n, err := adminC.XLen(ctx, otherStream).Result(); err != nil || n != 1 {
		t.Errorf("the batch's entry for the master outside the migration: XLEN %s = %d, %v; want 1", otherStream, n, err)
	}

	// The handover: the new owner first, as redis-cli does.
	for _, c := range []*redis.Client{dst, src} {
		must(t, c.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", dstID).Err())
	}
	if m, err := cc.MasterForKey(ctx, stream); err != nil || m.Options().Addr != from.Options().Addr {
		t.Logf("the publisher's slot map already has the new owner (%v): the MOVED case is not exercised", err)
	}
	publish("after the handover, with a slot map older than it (MOVED)")
	publish("after the handover")

	// Each event on the new owner's replica, once: the WAIT was on the
	// master that appended it.
	repl := dst.InfoMap(ctx, "replication")
	must(t, repl.Err())
	var replica *redis.Client
	for _, field := range strings.Split(repl.Item("Replication", "slave0"), ",") {
		if rport, ok := strings.CutPrefix(field, "port="); ok {
			replica = redis.NewClient(&redis.Options{Addr: net.JoinHostPort(host, rport),
				OnConnect: func(ctx context.Context, cn *redis.Conn) error { return cn.ReadOnly(ctx).Err() }})
			t.Cleanup(func() { _ = replica.Close() })
		}
	}
	if replica == nil {
		t.Fatalf("no replica of %s: %v", dst.Options().Addr, repl)
	}
	msgs, err := replica.XRange(ctx, stream, "-", "+").Result()
	must(t, err)
	seen := map[string]int{}
	for _, m := range msgs {
		ev, err := wire.ParseEventString(m.Values[wire.EventField].(string))
		must(t, err)
		seen[ev.ID]++
	}
	for _, id := range published {
		if seen[id] != 1 {
			t.Errorf("event %s is %d times on the new owner's replica, want once (all: %v)", id, seen[id], seen)
		}
	}
	for _, n := range bus.Nodes {
		noRefusals(t, n.Addr, n)
	}
}
