package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// Versions on a channel are consecutive within one epoch, and the history
// holds them in order. Events read in one batch share a message, so the
// events go out one Publish at a time and the messages are read until they
// have named every key.
func TestVersionsConsecutiveWithinEpoch(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	ps := e.busC.Subscribe(ctx, "invalidate:acme:active")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // subscription confirmed
		t.Fatal(err)
	}
	e.router(router.Options{})
	const n = 50
	for i := range n {
		e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: fmt.Sprint(i), Keys: []string{fmt.Sprintf("user:%d", i)}})
	}
	var epoch string
	named := map[string]bool{}
	var version int64
	for len(named) < n {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m, err := wire.ParseMessage([]byte(msg.Payload))
		if err != nil {
			t.Fatal(err)
		}
		if epoch == "" {
			epoch = m.Epoch
		}
		version++
		if m.Epoch != epoch || m.Version != version {
			t.Fatalf("message %d is %s:%d, want %s:%d", version, m.Epoch, m.Version, epoch, version)
		}
		if m.WholeTag() {
			t.Fatalf("message %d is whole-tag; %d key-level events fit max_keys", version, n)
		}
		for _, k := range m.Keys {
			named[k] = true
		}
	}
	hist, err := e.busC.XRange(ctx, "{invalidate:acme:active}:history", "-", "+").Result()
	if err != nil || int64(len(hist)) != version || hist[0].ID != "1-0" || hist[len(hist)-1].ID != fmt.Sprintf("%d-0", version) {
		t.Fatalf("history: %d entries for %d messages, err %v", len(hist), version, err)
	}
}

// A redelivered event produces no second message, and a message at or
// behind the position is ignored by the subscriber.
func TestDuplicateIgnored(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	e.subscriber("search-svc", subscriber.Options{Registerer: reg})

	ev := wire.Event{ID: "evt-1", Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
	e.seed("search-svc", "acme", "user:1", "active")
	e.publish(ev)
	e.waitGone("search-svc", "acme", "user:1")
	e.publish(ev) // the same event id again, as after a router crash
	e.publish(wire.Event{ID: "evt-2", Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitVersion("invalidate:acme:active", 2)
	if _, v := e.meta("invalidate:acme:active"); v != 2 {
		t.Fatalf("channel at version %d after a duplicate event, want 2", v)
	}

	// Replay version 1 onto the channel: the subscriber must ignore it.
	hist, err := e.busC.XRange(ctx, "{invalidate:acme:active}:history", "1-0", "1-0").Result()
	if err != nil || len(hist) != 1 {
		t.Fatalf("history: %v %v", hist, err)
	}
	redistest.Eventually(t, 10*time.Second, "version 2 applied", func() bool {
		return metric(t, reg, "subscriber_messages_applied_total") == 2
	})
	e.seed("search-svc", "acme", "user:1", "active")
	if err := e.busC.Publish(ctx, "invalidate:acme:active", hist[0].Values[names.HistoryField]).Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "duplicate counted", func() bool {
		return metric(t, reg, "subscriber_duplicates_total") == 1
	})
	if !e.cached("search-svc", "acme", "user:1") {
		t.Error("a duplicate message deleted a key")
	}
}

// A subscriber that was stopped catches up on restart from its stored position.
func TestStoppedSubscriberCatchesUp(t *testing.T) {
	e := newEnv(t, "")
	e.router(router.Options{})
	_, stop := e.subscriber("search-svc", subscriber.Options{})
	e.seed("search-svc", "acme", "user:1", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("search-svc", "acme", "user:1")
	stop()

	e.seed("search-svc", "acme", "user:2", "active")
	e.seed("search-svc", "acme", "user:3", "active")
	e.seed("search-svc", "acme", "product:1", "electronics")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.publish(wire.Event{Tenant: "acme", Domain: "product", Keys: []string{"product:1"}})
	e.waitVersion("invalidate:acme:active", 3)
	e.waitVersion("invalidate:acme:electronics", 1)

	reg := prometheus.NewRegistry()
	e.subscriber("search-svc", subscriber.Options{Registerer: reg})
	e.waitGone("search-svc", "acme", "user:2")
	e.waitGone("search-svc", "acme", "product:1")
	if !e.cached("search-svc", "acme", "user:3") {
		t.Error("catching up replayed more than the missed messages")
	}
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "replay"); got < 1 {
		t.Errorf("replay recoveries = %v", got)
	}
	pos, ok, err := e.stores["search-svc"].ReadPosition(context.Background(), "acme", "search-svc", "active")
	if err != nil || !ok || pos.Version != 3 {
		t.Errorf("position = %v %v %v, want version 3", pos, ok, err)
	}
}

// A message lost while the pub/sub connection was down (CLIENT KILL TYPE
// pubsub) is recovered after go-redis reconnects.
func TestKilledPubSubConnectionRecovered(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	// The subscriber logs in as its own user, so the test can keep it from
	// reconnecting while the message is published.
	if err := e.busC.Do(ctx, "ACL", "SETUSER", "sub", "on", ">pw", "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	subBus := redis.NewClient(&redis.Options{Addr: e.bus.Addr, Username: "sub", Password: "pw", MaxRetries: -1})
	defer subBus.Close()
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	e.subscriberOn(subBus, "search-svc", subscriber.Options{Registerer: reg})

	e.seed("search-svc", "acme", "user:1", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("search-svc", "acme", "user:1")

	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "off").Err())
	must(t, e.busC.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())
	redistest.Eventually(t, 10*time.Second, "pub/sub connection gone", func() bool {
		n, _ := e.busC.Do(ctx, "PUBSUB", "NUMSUB", "invalidate:acme:active").Slice()
		return len(n) == 2 && n[1] == int64(0)
	})
	e.seed("search-svc", "acme", "user:2", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitVersion("invalidate:acme:active", 2) // published while nobody listened

	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "on").Err())
	e.waitGone("search-svc", "acme", "user:2")
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "replay"); got != 1 {
		t.Errorf("replay recoveries = %v, want 1", got)
	}
}

// When the history no longer reaches back to the position, the subscriber
// invalidates the whole tag.
func TestTrimmedHistoryFallsBackToWholeTag(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	_, stop := e.subscriber("search-svc", subscriber.Options{})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:0"}})
	e.waitVersion("invalidate:acme:active", 1)
	redistest.Eventually(t, 10*time.Second, "position at 1", func() bool {
		p, ok, _ := e.stores["search-svc"].ReadPosition(ctx, "acme", "search-svc", "active")
		return ok && p.Version == 1
	})
	stop()

	e.seed("search-svc", "acme", "user:1", "active")
	e.seed("search-svc", "acme", "never-named", "active")
	e.seed("search-svc", "acme", "product:1", "electronics")
	for i := 1; i <= 10; i++ { // one message each
		e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{fmt.Sprintf("user:%d", i)}})
		e.waitVersion("invalidate:acme:active", int64(i+1))
	}
	must(t, e.busC.XTrimMaxLen(ctx, "{invalidate:acme:active}:history", 3).Err())

	reg := prometheus.NewRegistry()
	e.subscriber("search-svc", subscriber.Options{Registerer: reg})
	e.waitGone("search-svc", "acme", "never-named")
	e.waitGone("search-svc", "acme", "user:1")
	if !e.cached("search-svc", "acme", "product:1") {
		t.Error("another tag was invalidated")
	}
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "whole_tag"); got != 1 {
		t.Errorf("whole-tag recoveries = %v, want 1", got)
	}
	p, _, _ := e.stores["search-svc"].ReadPosition(ctx, "acme", "search-svc", "active")
	if p.Version != 11 {
		t.Errorf("position %v, want version 11", p)
	}
}

// A bus Redis that lost all its data keeps working: the router recreates its
// consumer groups, channels start a new epoch, and subscribers treat the new
// epoch as a gap.
func TestBusFlushAllStartsNewEpoch(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	e.subscriber("search-svc", subscriber.Options{Registerer: reg})

	e.seed("search-svc", "acme", "user:1", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("search-svc", "acme", "user:1")
	oldEpoch, _ := e.meta("invalidate:acme:active")

	must(t, e.busC.FlushAll(ctx).Err())
	e.seed("search-svc", "acme", "user:2", "active")
	e.seed("search-svc", "acme", "user:3", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("search-svc", "acme", "user:2")
	// The new epoch is a gap: the whole tag went, user:3 with it.
	e.waitGone("search-svc", "acme", "user:3")
	newEpoch, v := e.meta("invalidate:acme:active")
	if newEpoch == oldEpoch || v != 1 {
		t.Errorf("after FLUSHALL the channel is at %s:%d, old epoch %s", newEpoch, v, oldEpoch)
	}
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "whole_tag"); got != 1 {
		t.Errorf("whole-tag recoveries = %v, want 1", got)
	}
	// And the next change is key-level again.
	e.seed("search-svc", "acme", "user:4", "active")
	e.seed("search-svc", "acme", "user:5", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:4"}})
	e.waitGone("search-svc", "acme", "user:4")
	if !e.cached("search-svc", "acme", "user:5") {
		t.Error("a key-level event after the new epoch deleted the whole tag")
	}
}

// Entries a killed router had read but not acknowledged are claimed by
// another instance and routed; none is lost.
func TestKilledRouterEntriesClaimed(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	_, stop := e.router(router.Options{Consumer: "first"})
	stop() // the groups exist now

	const n = 20
	for i := 0; i < n; i++ {
		e.seed("search-svc", "acme", fmt.Sprintf("user:%d", i), "active")
		e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{fmt.Sprintf("user:%d", i)}})
	}
	// "dead" reads every partition and dies before publishing anything: its
	// entries stay pending, as they do when a router is killed mid-batch.
	read := 0
	for p := 0; p < e.mtx.Partitions; p++ {
		res, err := e.busC.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "routerd", Consumer: "dead",
			Streams: []string{names.IngressStream("invalidate", p), ">"}, Count: 1000, Block: -1}).Result()
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		for _, s := range res {
			read += len(s.Messages)
		}
	}
	if read != n {
		t.Fatalf("the dead consumer read %d entries, want %d", read, n)
	}

	reg := prometheus.NewRegistry()
	e.router(router.Options{Consumer: "second", ClaimIdle: 50 * time.Millisecond, Registerer: reg})
	e.subscriber("search-svc", subscriber.Options{})
	for i := 0; i < n; i++ {
		e.waitGone("search-svc", "acme", fmt.Sprintf("user:%d", i))
	}
	if got := metric(t, reg, "routerd_entries_claimed_total"); got != n {
		t.Errorf("claimed %v entries, want %d", got, n)
	}
	redistest.Eventually(t, 10*time.Second, "nothing pending", func() bool {
		pending := int64(0)
		for p := 0; p < e.mtx.Partitions; p++ {
			s, err := e.busC.XPending(ctx, names.IngressStream("invalidate", p), "routerd").Result()
			if err != nil {
				t.Fatal(err)
			}
			pending += s.Count
		}
		return pending == 0
	})
}

// A router stopped while idle leaves nothing pending, and one stopped with
// work in flight finishes or leaves it pending — never acknowledged unsent.
func TestRouterShutdownLosesNothing(t *testing.T) {
	e := newEnv(t, "")
	_, stop := e.router(router.Options{})
	e.subscriber("search-svc", subscriber.Options{})
	for i := 0; i < 200; i++ {
		e.seed("search-svc", "acme", fmt.Sprintf("user:%d", i), "active")
	}
	events := make([]wire.Event, 200)
	for i := range events {
		events[i] = wire.Event{Tenant: "acme", Domain: "user", Keys: []string{fmt.Sprintf("user:%d", i)}}
	}
	if _, err := e.pub.PublishBatch(context.Background(), events); err != nil {
		t.Fatal(err)
	}
	stop() // possibly mid-batch
	e.router(router.Options{Consumer: "next", ClaimIdle: 50 * time.Millisecond})
	for i := 0; i < 200; i++ {
		e.waitGone("search-svc", "acme", fmt.Sprintf("user:%d", i))
	}
}

// An in-process cache takes the same invalidations through a Handler, with
// positions in memory. A tenant the subscriber has not watched from before
// its first message may come whole the first time: an in-process cache has
// no tenant index to show that nothing of an epoch lost before was cached
// (recovery.Channel.Watched).
func TestHandlerForInProcessCache(t *testing.T) {
	e := newEnv(t, "")
	e.router(router.Options{})
	got := make(chan subscriber.Invalidation, 10)
	e.subscriber("profile-svc", subscriber.Options{Handler: func(_ context.Context, inv subscriber.Invalidation) error {
		got <- inv
		return nil
	}})
	next := func() subscriber.Invalidation {
		t.Helper()
		select {
		case inv := <-got:
			return inv
		case <-time.After(10 * time.Second):
			t.Fatal("handler not called")
		}
		return subscriber.Invalidation{}
	}
	e.publish(wire.Event{Tenant: "umbrella", Domain: "user", Keys: []string{"user:7"}})
	if inv := next(); inv.Tenant != "umbrella" || inv.Tag != "active" || inv.Version != 1 ||
		!(len(inv.Keys) == 1 && inv.Keys[0] == "user:7" || len(inv.Keys) == 0 && inv.Recovered) {
		t.Errorf("handler got %+v", inv)
	}
	e.publish(wire.Event{Tenant: "umbrella", Domain: "user", Keys: []string{"user:8"}})
	if inv := next(); inv.Tenant != "umbrella" || inv.Tag != "active" || len(inv.Keys) != 1 || inv.Keys[0] != "user:8" || inv.Version != 2 {
		t.Errorf("handler got %+v", inv)
	}
}

// A service of every tenant (pattern subscription) gets a tenant it has never
// seen, and catches up on it after a restart through the tenant registry.
func TestAllTenantsService(t *testing.T) {
	e := newEnv(t, "")
	e.router(router.Options{})
	_, stop := e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "newco", "user:1", "active")
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "newco", "user:1")
	stop()
	e.seed("profile-svc", "newco", "user:2", "active")
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:2"}})
	e.waitVersion("invalidate:newco:active", 2)
	e.subscriber("profile-svc", subscriber.Options{})
	e.waitGone("profile-svc", "newco", "user:2")
}

// An event older (source_version) than one already routed for the same
// entity is suppressed.
func TestOlderSourceVersionSuppressed(t *testing.T) {
	e := newEnv(t, "")
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1", SourceVersion: 5, Keys: []string{"user:1"}})
	e.waitVersion("invalidate:acme:active", 1)
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1", SourceVersion: 4, Keys: []string{"user:1"}})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "1", SourceVersion: 6, Keys: []string{"user:1"}})
	e.waitVersion("invalidate:acme:active", 2)
	redistest.Eventually(t, 10*time.Second, "suppressed", func() bool {
		return metric(t, reg, "routerd_events_suppressed_total") == 1
	})
	if _, v := e.meta("invalidate:acme:active"); v != 2 {
		t.Errorf("version %d, want 2: the older event was routed", v)
	}
}

// The chunked path is taken by subscribers too, for tags above the guard.
func TestSubscriberChunksLargeTag(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	e.subscriber("search-svc", subscriber.Options{Store: tagstore.Options{CardinalityGuard: 100}})
	for i := 0; i < 1500; i++ {
		e.seed("search-svc", "acme", fmt.Sprintf("p:%d", i), "electronics")
	}
	e.publish(wire.Event{Tenant: "acme", Domain: "product", WholeTag: true}) // whole tag
	redistest.Eventually(t, 10*time.Second, "tag emptied", func() bool {
		n, _ := e.caches["search-svc"].Client(t).Exists(ctx, "{tenant:acme}:tag:electronics").Result()
		return n == 0
	})
	for _, i := range []int{0, 777, 1499} {
		if e.cached("search-svc", "acme", fmt.Sprintf("p:%d", i)) {
			t.Errorf("p:%d survived", i)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Consumers of instances that went away, with nothing pending, are removed
// from the group; one with pending entries is kept until they are claimed.
func TestIdleConsumersForgotten(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	_, stop := e.router(router.Options{Consumer: "gone"})
	stop()
	e.router(router.Options{Consumer: "alive", ForgetConsumers: time.Millisecond})
	stream := names.IngressStream("invalidate", 0)
	redistest.Eventually(t, 10*time.Second, "consumer gone removed", func() bool {
		cs, err := e.busC.XInfoConsumers(ctx, stream, "routerd").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if c.Name == "gone" {
				return false
			}
		}
		return true
	})
}
