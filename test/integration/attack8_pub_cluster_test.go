package integration

import (
	"context"
	"fmt"
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
