package integration

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// An operator (or a script) writes a wrong partition count on the bus:
// `SET invalidate:ingress:partitions 16` while the matrix says 4. A
// publisher that reads it then keeps it for its refresh (30 s) and appends
// to partitions 4…15. The router rewrites the count within a round and
// looks for partition streams at once and in the next round — but a
// stream this publisher first appends to after those two looks is found
// only by the once-a-minute scan: its event waits up to a minute, not the
// "seconds" protocol.md 2.2 promises ("never guess N": the publisher did
// not guess, it read what the bus said).
func TestAttack2WrongPartitionCountOutlivesTheRescan(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "") // 4 partitions
	e.running("acme", "globex")
	e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "user:1", "active")
	e.seed("profile-svc", "globex", "user:2", "active")

	// Count the router's writes of the partition count.
	must(t, e.busC.ConfigSet(ctx, "notify-keyspace-events", "K$").Err())
	key := names.PartitionsKey("invalidate")
	sub := e.busC.Subscribe(ctx, "__keyspace@0__:"+key)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	sets := sub.Channel()

	e.router(router.Options{ClaimInterval: 200 * time.Millisecond, DiscoverInterval: time.Minute})

	// The unlucky operator; a publisher reads the count before the router
	// rewrites it (tried again when the router was first).
	var pub *publisher.Publisher
	for try := 0; ; try++ {
		if try == 20 {
			t.Fatal("the router rewrote the count before the publisher read it, 20 times")
		}
		for len(sets) > 0 { // writes before the operator's
			<-sets
		}
		must(t, e.busC.Set(ctx, key, "16", 0).Err())
		var err error
		pub, err = publisher.New(e.bus.Client(t), publisher.Options{Prefix: "invalidate", Origin: "attack2"})
		must(t, err)
		if _, err := pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}); err != nil {
			t.Fatal(err)
		}
		if e.busC.XLen(ctx, names.IngressStream("invalidate", 15)).Val() > 0 {
			break
		}
	}
	// acme is partition 15 of 16: the rescan after the wrong count finds it.
	e.waitGone("profile-svc", "acme", "user:1")

	// Let the router's rescans pass: the round that found the wrong count
	// and the two after it (each rewrites the count).
	for i := 0; i < 4; i++ {
		select {
		case <-sets:
		case <-time.After(30 * time.Second):
			t.Fatalf("the router wrote the partition count %d times in 30s", i)
		}
	}
	if v := e.busC.Get(ctx, key).Val(); v != "4" {
		t.Fatalf("partition count %q, want the matrix's 4 rewritten", v)
	}

	// The same publisher, within its 30 s refresh, still uses 16: globex
	// goes to partition 14, a stream that did not exist at the rescans.
	if _, err := pub.Publish(ctx, wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:2"}}); err != nil {
		t.Fatal(err)
	}
	if n := e.busC.XLen(ctx, names.IngressStream("invalidate", 14)).Val(); n != 1 {
		t.Fatalf("partition 14 holds %d entries; the publisher did not use the count 16 it read", n)
	}
	redistest.Eventually(t, 15*time.Second, "globex's event on partition 14 routed within seconds", func() bool {
		return !e.cached("profile-svc", "globex", "user:2")
	})
}

// An operator's typo on the bus, `SET invalidate:ingress:partitions four`,
// makes every publisher that reads it then refuse to publish ("not a
// partition count"), though each knows the count it read before — the one
// a missing key or a Redis error makes it keep. Each event published until
// the router's next round rewrites the key (5 s; for as long as no router
// runs) is refused; issue 19 item 5 asks that an event published after the
// count was tampered with be routed within seconds, not lost.
func TestAttack2GarbagePartitionCountRefusesPublishes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "") // 4 partitions
	e.running("acme")
	e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "user:1", "active")
	// Its housekeeping waits an hour: only the start writes the count.
	e.router(router.Options{ClaimInterval: time.Hour})

	var clock atomic.Int64 // the publisher's clock, moved on by the test
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	pub, err := publisher.New(e.bus.Client(t), publisher.Options{Prefix: "invalidate", Origin: "attack2", Now: now})
	must(t, err)
	if _, err := pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:0"}}); err != nil {
		t.Fatal(err) // reads the count 4
	}
	must(t, e.busC.Set(ctx, names.PartitionsKey("invalidate"), "four", 0).Err())
	clock.Add(int64(publisher.DefaultRefresh + time.Second)) // the count is due to be read again
	if _, err := pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}); err != nil {
		t.Fatalf("a publisher that knew the count 4 refuses to publish while the key holds garbage: %v", err)
	}
	e.waitGone("profile-svc", "acme", "user:1")
}

// The partition count key overwritten with another type (an operator's
// `HSET invalidate:ingress:partitions …`, a script writing the wrong key):
// the router's rewrite (SET … GET) fails WRONGTYPE every round, so the key
// is never repaired, and a publisher that starts now (a deploy, a restart)
// cannot read a count and refuses every event, for as long as nobody
// deletes the key by hand. The router must write the count back within
// seconds, as it does after FLUSHALL.
func TestAttack2PartitionCountOfAnotherTypeIsNeverRepaired(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "") // 4 partitions
	e.running("acme")
	e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "user:1", "active")
	e.router(router.Options{ClaimInterval: 100 * time.Millisecond})

	key := names.PartitionsKey("invalidate")
	// One transaction: the router, which writes the count when it finds
	// none, must not slip its SET between the DEL and the HSET.
	_, err := e.busC.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, key)
		p.HSet(ctx, key, "partitions", "4")
		return nil
	})
	must(t, err)

	var lastErr error
	if err := redistest.Wait(ctx, 15*time.Second, "a publisher started now publishes", func() bool {
		pub, err := publisher.New(e.bus.Client(t), publisher.Options{Prefix: "invalidate", Origin: "attack2"})
		must(t, err)
		_, lastErr = pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
		return lastErr == nil
	}); err != nil {
		t.Fatalf("%v: %v (the key is a %s)", err, lastErr, e.busC.Type(ctx, key).Val())
	}
	e.waitGone("profile-svc", "acme", "user:1")
}

// The same wrong count met by a router that starts after it was written
// (`SET invalidate:ingress:partitions 16` during a deploy, while no router
// runs): the router's start writes its own count over it without looking
// (a plain SET, not SET … GET), so nothing tells it publishers may hold 16.
// Its start-up scan finds the streams that exist then; a stream a publisher
// that read 16 first appends to afterwards (within its 30 s refresh) waits
// for the once-a-minute scan.
func TestAttack2WrongPartitionCountBeforeTheRouterStarts(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "") // 4 partitions
	e.running("acme", "globex")
	e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "globex", "user:2", "active")

	key := names.PartitionsKey("invalidate")
	must(t, e.busC.Set(ctx, key, "16", 0).Err())
	pub, err := publisher.New(e.bus.Client(t), publisher.Options{Prefix: "invalidate", Origin: "attack2"})
	must(t, err)
	if _, err := pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}); err != nil {
		t.Fatal(err) // reads 16: acme goes to partition 15
	}
	e.router(router.Options{ClaimInterval: 200 * time.Millisecond, DiscoverInterval: time.Minute})
	redistest.Eventually(t, 10*time.Second, "the router's count written", func() bool { return e.busC.Get(ctx, key).Val() == "4" })

	if _, err := pub.Publish(ctx, wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:2"}}); err != nil {
		t.Fatal(err)
	}
	if n := e.busC.XLen(ctx, names.IngressStream("invalidate", 14)).Val(); n != 1 {
		t.Fatalf("partition 14 holds %d entries; the publisher did not use the count 16 it read", n)
	}
	redistest.Eventually(t, 15*time.Second, "globex's event on partition 14 routed within seconds", func() bool {
		return !e.cached("profile-svc", "globex", "user:2")
	})
}
