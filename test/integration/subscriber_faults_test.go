package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// These tests attack the subscriber's promise — no lost invalidation — the
// way a hostile client or an unlucky operator would, with raw Redis commands.

// forge publishes a hand-made message on a channel, as any client allowed to
// PUBLISH on the bus could.
func (e *env) forge(channel, payload string) {
	e.t.Helper()
	must(e.t, e.busC.Publish(context.Background(), channel, payload).Err())
}

func (e *env) position(service, tenant, tag string) (tagstore.Position, bool) {
	e.t.Helper()
	p, ok, err := e.stores[service].ReadPosition(context.Background(), tenant, service, tag)
	if err != nil {
		e.t.Fatal(err)
	}
	return p, ok
}

// A forged message with the channel's epoch and a version far ahead must not
// silence the channel: it is checked against the channel's meta first.
func TestForgedVersionAheadDoesNotSilenceChannel(t *testing.T) {
	e := newEnv(t, "")
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	e.subscriber("search-svc", subscriber.Options{Registerer: reg})

	e.seed("search-svc", "acme", "user:1", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("search-svc", "acme", "user:1")
	epoch, _ := e.meta("invalidate:acme:active")

	e.forge("invalidate:acme:active", `{"tenant":"acme","tag":"active","epoch":"`+epoch+`","version":10000000000000,"keys":["nothing"],"event":"forged"}`)
	redistest.Eventually(t, 10*time.Second, "forged message handled", func() bool {
		return metric(t, reg, "subscriber_recoveries_total")+metric(t, reg, "subscriber_unconfirmed_messages_total") >= 1
	})

	e.seed("search-svc", "acme", "user:2", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("search-svc", "acme", "user:2")
	if p, _ := e.position("search-svc", "acme", "active"); p.Epoch != epoch || p.Version != 2 {
		t.Errorf("position = %v, want %s:2", p, epoch)
	}
	if got := metric(t, reg, "subscriber_unconfirmed_messages_total"); got != 1 {
		t.Errorf("unconfirmed messages = %v, want 1", got)
	}
}

// A forged message with the channel's epoch and exactly its next version
// is applied (nothing tells it from the real one yet), but when the real
// message of that version arrives — same version, another event id — the
// subscriber asks the channel's history which one the router published,
// and, the applied one being forged, invalidates the whole tag: the real
// invalidation is not lost to the forgery. Before, the real message was
// dropped as a duplicate and its key stayed cached. A forgery arriving
// after the real message is ignored (the history holds the real one).
func TestForgedNextVersionDoesNotHideTheRealOne(t *testing.T) {
	e := newEnv(t, "")
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	e.subscriber("search-svc", subscriber.Options{Registerer: reg})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:0"}})
	redistest.Eventually(t, 10*time.Second, "position at 1", func() bool {
		p, _ := e.position("search-svc", "acme", "active")
		return p.Version == 1
	})
	epoch, _ := e.meta("invalidate:acme:active")
	e.seed("search-svc", "acme", "user:1", "active")

	e.forge("invalidate:acme:active", `{"tenant":"acme","tag":"active","epoch":"`+epoch+`","version":2,"keys":["nothing"],"event":"forged"}`)
	redistest.Eventually(t, 10*time.Second, "the forged version 2 applied", func() bool {
		p, _ := e.position("search-svc", "acme", "active")
		return p.Version == 2
	})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("search-svc", "acme", "user:1")
	if got := metric(t, reg, "subscriber_unconfirmed_messages_total"); got != 1 {
		t.Errorf("unconfirmed messages = %v, want the forgery counted", got)
	}

	// A forged copy of version 2 after the real one: ignored, nothing dropped.
	e.seed("search-svc", "acme", "user:3", "active")
	e.forge("invalidate:acme:active", `{"tenant":"acme","tag":"active","epoch":"`+epoch+`","version":2,"keys":["user:3"],"event":"forged-again"}`)
	redistest.Eventually(t, 10*time.Second, "the late forgery counted", func() bool {
		return metric(t, reg, "subscriber_unconfirmed_messages_total") == 2
	})
	e.seed("search-svc", "acme", "user:4", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:4"}})
	e.waitGone("search-svc", "acme", "user:4")
	if !e.cached("search-svc", "acme", "user:3") {
		t.Error("a forged copy of an applied version dropped user:3")
	}
}

// A position already ahead of the channel's meta (a forged message believed
// by an older version, or a bus that went back) is repaired by the periodic
// check — whole tag, position reset to the channel's real state — and later
// messages are applied again.
func TestPositionAheadOfChannelRepaired(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:0"}})
	e.waitVersion("invalidate:acme:active", 1)
	epoch, _ := e.meta("invalidate:acme:active")

	// The stored position claims a version the channel never reached.
	cache := e.caches["search-svc"].Client(t)
	must(t, cache.Set(ctx, "{tenant:acme}:pos:search-svc:active", epoch+":10000000000000", 0).Err())
	e.seed("search-svc", "acme", "stale", "active")

	reg := prometheus.NewRegistry()
	e.subscriber("search-svc", subscriber.Options{Registerer: reg, CheckInterval: 200 * time.Millisecond})
	e.waitGone("search-svc", "acme", "stale") // the repair invalidates the whole tag
	redistest.Eventually(t, 10*time.Second, "position repaired", func() bool {
		p, _ := e.position("search-svc", "acme", "active")
		return p.Epoch == epoch && p.Version == 1
	})
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "repair"); got < 1 {
		t.Errorf("repairs = %v, want at least 1", got)
	}

	e.seed("search-svc", "acme", "user:2", "active")
	e.seed("search-svc", "acme", "user:3", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("search-svc", "acme", "user:2")
	if !e.cached("search-svc", "acme", "user:3") {
		t.Error("a key-level event after the repair deleted the whole tag")
	}
}

// Bus data loss while a subscriber is down: the event was published, then the
// bus lost everything (FLUSHALL, or a failover that lost writes). The
// restarted subscriber holds a position on a channel whose meta vanished: a
// new epoch, so the whole tag goes. For a service of every tenant the tenant
// registry went with the bus: the subscriber finds its channels from the
// index it keeps with its positions.
func TestBusLossWhileSubscriberDown(t *testing.T) {
	for _, service := range []string{"search-svc", "profile-svc"} { // listed tenants; every tenant
		t.Run(service, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "")
			e.router(router.Options{})
			_, stop := e.subscriber(service, subscriber.Options{})
			e.seed(service, "acme", "user:1", "active")
			e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
			e.waitGone(service, "acme", "user:1")
			stop()

			e.seed(service, "acme", "user:2", "active")
			e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
			e.waitVersion("invalidate:acme:active", 2)
			must(t, e.busC.FlushAll(ctx).Err())

			reg := prometheus.NewRegistry()
			e.subscriber(service, subscriber.Options{Registerer: reg})
			e.waitGone(service, "acme", "user:2")
			// Every channel without a meta goes whole once the bus lost its
			// data (the service's other channels too).
			if got := metric(t, reg, "subscriber_recoveries_total", "kind", "whole_tag"); got < 1 {
				t.Errorf("whole-tag recoveries = %v, want at least 1", got)
			}

			// The channel starts again on the bus. Its first epoch after the
			// loss is a gap too (the bus may have lost another one before it
			// was seen); from then on, key-level.
			e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:3"}})
			redistest.Eventually(t, 10*time.Second, "the new epoch taken up", func() bool {
				p, _ := e.position(service, "acme", "active")
				return p.Version == 1
			})
			e.seed(service, "acme", "user:4", "active")
			e.seed(service, "acme", "user:5", "active")
			e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:4"}})
			e.waitGone(service, "acme", "user:4")
			if !e.cached(service, "acme", "user:5") {
				t.Error("a key-level event after the new epoch deleted the whole tag")
			}
		})
	}
}

// A cache Redis restarted from an older snapshot has its invalidated keys back
// and its stored position behind. The running subscriber re-reads the stored
// position at its periodic check and replays from there, without any later
// event on the channel.
func TestCacheRollbackReplayed(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	e.subscriber("search-svc", subscriber.Options{Registerer: reg, CheckInterval: 200 * time.Millisecond})

	e.seed("search-svc", "acme", "user:1", "active")
	e.seed("search-svc", "acme", "user:2", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:0"}})
	redistest.Eventually(t, 10*time.Second, "position at 1", func() bool {
		p, _ := e.position("search-svc", "acme", "active")
		return p.Version == 1
	})
	cacheSrv := e.caches["search-svc"]
	cache := cacheSrv.Client(t)
	must(t, cache.Save(ctx).Err())
	snapshot, err := os.ReadFile(filepath.Join(cacheSrv.Dir, "dump.rdb"))
	if err != nil {
		t.Fatal(err)
	}

	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("search-svc", "acme", "user:1")

	// Restart the cache from the snapshot: user:1 is back, the position is at 1.
	cacheSrv.Stop()
	if err := os.WriteFile(filepath.Join(cacheSrv.Dir, "dump.rdb"), snapshot, 0o600); err != nil {
		t.Fatal(err)
	}
	cacheSrv.Restart(t)
	e.waitGone("search-svc", "acme", "user:1")
	if !e.cached("search-svc", "acme", "user:2") {
		t.Error("replaying the rollback invalidated more than the missed message")
	}
	if p, _ := e.position("search-svc", "acme", "active"); p.Version != 2 {
		t.Errorf("position after replay = %v, want version 2", p)
	}
}

// State the subscriber cannot read — a position key or a channel meta of the
// wrong type, as a careless operator or a colliding key could leave — is
// counted and logged, never taken silently as "none", and does not stop the
// other channels from being checked.
func TestUnreadableStateSurfaces(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	_, stop := e.subscriber("search-svc", subscriber.Options{})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:0"}})
	e.publish(wire.Event{Tenant: "globex", Domain: "product", Keys: []string{"p:0"}})
	e.waitVersion("invalidate:globex:electronics", 1)
	redistest.Eventually(t, 10*time.Second, "positions at 1", func() bool {
		p, _ := e.position("search-svc", "acme", "active")
		q, _ := e.position("search-svc", "globex", "electronics")
		return p.Version == 1 && q.Version == 1
	})
	stop()

	cache := e.caches["search-svc"].Client(t)
	must(t, cache.Del(ctx, "{tenant:acme}:pos:search-svc:electronics").Err())
	must(t, cache.HSet(ctx, "{tenant:acme}:pos:search-svc:electronics", "x", "y").Err())
	must(t, e.busC.Del(ctx, "{invalidate:globex:active}:meta").Err())
	must(t, e.busC.Set(ctx, "{invalidate:globex:active}:meta", "garbage", 0).Err())
	e.seed("search-svc", "acme", "user:1", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitVersion("invalidate:acme:active", 2)

	reg := prometheus.NewRegistry()
	s, err := subscriber.New(e.busC, subscriber.Options{Service: "search-svc", Matrix: e.mtx, Registerer: reg,
		Cache: e.caches["search-svc"].Client(t), CheckInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	run(t, s.Run)
	e.waitGone("search-svc", "acme", "user:1") // the readable channels are still checked
	redistest.Eventually(t, 10*time.Second, "unreadable position and meta counted", func() bool {
		return metric(t, reg, "subscriber_unreadable_state_total") >= 2
	})
}

// A stored position of the wrong type is taken for none, as one that does
// not parse is: the channel recovered whole and the position written again
// (a check that meets it counts it in subscriber_unreadable_state_total:
// TestUnreadableStateSurfaces). It wedged its channel for good: every check
// skipped the channel, and every message's script failed on it.
func TestPositionOfWrongTypeRecovered(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	e.subscriber("search-svc", subscriber.Options{CheckInterval: 300 * time.Millisecond})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:0"}})
	redistest.Eventually(t, 10*time.Second, "position at 1", func() bool {
		p, _ := e.position("search-svc", "acme", "active")
		return p.Version == 1
	})
	cache := e.caches["search-svc"].Client(t)
	must(t, cache.Del(ctx, "{tenant:acme}:pos:search-svc:active").Err())
	must(t, cache.HSet(ctx, "{tenant:acme}:pos:search-svc:active", "x", "y").Err())
	e.seed("search-svc", "acme", "user:1", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("search-svc", "acme", "user:1")
	redistest.Eventually(t, 10*time.Second, "the position written again", func() bool {
		p, ok := e.position("search-svc", "acme", "active")
		return ok && p.Version == 2
	})
}

// Bus data loss on a channel the service never held a position on: the
// service ran (and saw the bus's generation), a change of a quiet tenant was
// published while it was down, then the bus lost everything. Nothing on the
// bus or in the positions tells of that message; the bus's generation does.
func TestBusLossOnChannelNeverApplied(t *testing.T) {
	for _, service := range []string{"search-svc", "profile-svc"} {
		t.Run(service, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "")
			e.router(router.Options{})
			reg := prometheus.NewRegistry()
			_, stop := e.subscriber(service, subscriber.Options{Registerer: reg})
			redistest.Eventually(t, 10*time.Second, "the bus generation recorded", func() bool {
				n, _ := e.caches[service].Client(t).Exists(ctx, "routerd:generation:"+service).Result()
				return n == 1
			})
			stop()

			e.seed(service, "globex", "user:1", "active")
			e.publish(wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:1"}})
			e.waitVersion("invalidate:globex:active", 1)
			must(t, e.busC.FlushAll(ctx).Err())
			redistest.Eventually(t, 10*time.Second, "the router makes the generation again", func() bool {
				n, _ := e.busC.Exists(ctx, "invalidate:generation").Result()
				return n == 1
			})
			e.subscriber(service, subscriber.Options{})
			e.waitGone(service, "globex", "user:1")
		})
	}
}

// A service with both a cache Redis and an in-process cache (Handler): the
// Handler fails on an invalidation the cache has already applied. The cache's
// position has moved on, but the Handler's has not: the next check replays it
// to the Handler, which gets it once it answers again.
func TestHandlerFailureAfterCacheApplyRetried(t *testing.T) {
	e := newEnv(t, "")
	e.router(router.Options{})
	var mu sync.Mutex
	failures, handled := 0, map[string]bool{}
	handler := func(_ context.Context, inv subscriber.Invalidation) error {
		mu.Lock()
		defer mu.Unlock()
		for _, k := range inv.Keys {
			if k == "user:2" && failures < 2 {
				failures++
				return errors.New("in-process cache unavailable")
			}
		}
		for _, k := range inv.Keys {
			handled[k] = true
		}
		if len(inv.Keys) == 0 {
			handled["*"] = true
		}
		return nil
	}
	e.subscriber("search-svc", subscriber.Options{Handler: handler, Cache: e.caches["search-svc"].Client(t)})
	e.seed("search-svc", "acme", "user:2", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("search-svc", "acme", "user:2") // the cache Redis took it
	redistest.Eventually(t, 15*time.Second, "the in-process cache given user:2 after its failures", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return handled["user:2"] || handled["*"]
	})
}

// One channel whose meta cannot be read (a key of another type) must not
// keep the service's other channels from settling: after a bus loss, the
// channels without a meta are invalidated whole once, not again at every
// check because the check as a whole never succeeds.
func TestUnreadableMetaDoesNotRepeatRecoveries(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	_, stop := e.subscriber("search-svc", subscriber.Options{})
	redistest.Eventually(t, 10*time.Second, "the bus generation recorded", func() bool {
		n, _ := e.caches["search-svc"].Client(t).Exists(ctx, "routerd:generation:search-svc").Result()
		return n == 1
	})
	stop()
	must(t, e.busC.FlushAll(ctx).Err())
	must(t, e.busC.Set(ctx, "{invalidate:globex:active}:meta", "garbage", 0).Err())
	redistest.Eventually(t, 10*time.Second, "the router makes the generation again", func() bool {
		n, _ := e.busC.Exists(ctx, "invalidate:generation").Result()
		return n == 1
	})

	reg := prometheus.NewRegistry()
	e.subscriber("search-svc", subscriber.Options{Registerer: reg, CheckInterval: 100 * time.Millisecond})
	redistest.Eventually(t, 10*time.Second, "a few checks", func() bool {
		return metric(t, reg, "subscriber_position_checks_total") >= 3
	})
	first := metric(t, reg, "subscriber_recoveries_total", "kind", "whole_tag")
	checks := metric(t, reg, "subscriber_position_checks_total")
	redistest.Eventually(t, 10*time.Second, "five more checks", func() bool {
		return metric(t, reg, "subscriber_position_checks_total") >= checks+5
	})
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "whole_tag"); got != first {
		t.Errorf("whole-tag recoveries went from %v to %v over five checks: the bus loss is recovered again and again", first, got)
	}
	if got := metric(t, reg, "subscriber_unreadable_state_total"); got < 1 {
		t.Errorf("the unreadable meta was not counted")
	}
}

// A bus that comes back from an older snapshot while a subscriber is down
// must start new epochs, even while the router still holds the replication
// id it looked up before the restart (it keeps it two seconds): publishing
// on in the old epoch reused versions the subscriber had already applied,
// so after its restart its position equalled the meta and the new
// messages' keys stayed cached for good.
func TestBusRestoredFromSnapshotStartsNewEpoch(t *testing.T) {
	ctx := context.Background()
	const ch = "invalidate:acme:active"
	e := newEnv(t, "")
	e.router(router.Options{})
	_, stop := e.subscriber("search-svc", subscriber.Options{})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:0"}})
	e.waitVersion(ch, 1)
	snap, err := e.bus.Snapshot(ctx)
	must(t, err)
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:a"}})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:b"}})
	e.waitVersion(ch, 3)
	redistest.Eventually(t, 10*time.Second, "version 3 applied", func() bool {
		p, _ := e.position("search-svc", "acme", "active")
		return p.Version == 3
	})
	stop()
	epoch, _ := e.meta(ch)
	must(t, e.bus.RestoreSnapshot(snap)) // at once: the router's replication id is still fresh
	e.seed("search-svc", "acme", "user:c", "active")
	e.seed("search-svc", "acme", "user:d", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:c"}})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:d"}})
	// Both events, as one message or two: a router slow to come back (a
	// loaded machine) reads them in one batch and merges them.
	redistest.Eventually(t, 30*time.Second, "both events published", func() bool {
		named := map[string]bool{}
		for _, m := range e.history(ch) {
			for _, k := range m.Keys {
				named[k] = true
			}
		}
		return named["user:c"] && named["user:d"]
	})
	if now, _ := e.meta(ch); now == epoch {
		t.Errorf("the restored bus goes on in epoch %s: its versions repeat ones already applied", epoch)
	}
	e.subscriber("search-svc", subscriber.Options{CheckInterval: 300 * time.Millisecond})
	e.waitGone("search-svc", "acme", "user:c")
	e.waitGone("search-svc", "acme", "user:d")
}

// Bus data loss on a channel the service holds no position on, after which
// the channel published again: the service cached keys of a tenant whose
// channel it never applied; while it was down an event for them was routed
// (epoch E1), the bus lost its data, and a later event started epoch E2. The
// restarted subscriber found a channel without a position whose meta is at
// version 1 and replayed E2 from there as a new channel: the keys of E1
// stayed cached for good. Whether or not the service had looked at the bus
// before (recorded its generation), nothing tells it that no epoch came
// before E2, so the whole tag goes.
func TestBusLossHidesOldEpochFromChannelWithoutPosition(t *testing.T) {
	for _, service := range []string{"search-svc", "profile-svc"} { // listed tenants; every tenant
		for _, looked := range []bool{true, false} {
			name := service + "/never-looked"
			if looked {
				name = service + "/looked-before"
			}
			t.Run(name, func(t *testing.T) {
				e := newEnv(t, "")
				e.router(router.Options{})
				if looked {
					e.generationRecorded(service)
				}
				e.lostEpoch(service, func() { must(t, e.busC.FlushAll(context.Background()).Err()) })
			})
		}
	}
}

// A forged next version (the channel's epoch, its position + 1, a made-up
// event id) is applied: nothing tells it from the real message when it
// comes. If the real message of that version is then lost — the agent
// restarts, or its pub/sub link drops — the real one never arrives to
// contest the forgery (TestForgedNextVersionDoesNotHideTheRealOne), and the
// stored position equals the meta: no check saw anything wrong, and the
// real message's keys stayed cached for good. The position carries the
// channel's chain (a digest of every message applied in the epoch), which a
// check compares with the meta's.
func TestForgedNextVersionThenRealOneLost(t *testing.T) {
	for _, tc := range []struct {
		name  string
		later bool // the channel publishes once more after the real message
		link  bool // the pub/sub link drops instead of a restart
	}{
		{"restart", false, false},
		{"restart, channel moved on", true, false},
		{"link dropped", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			const ch = "invalidate:acme:active"
			e := newEnv(t, "")
			e.router(router.Options{})
			// The subscriber logs in as its own user, so the test can keep
			// it from reconnecting while the real message is published.
			must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "on", ">pw", "~*", "&*", "+@all").Err())
			subBus := redis.NewClient(&redis.Options{Addr: e.bus.Addr, Username: "sub", Password: "pw", MaxRetries: -1})
			defer subBus.Close()
			reg := prometheus.NewRegistry()
			_, stop := e.subscriberOn(subBus, "search-svc", subscriber.Options{Registerer: reg})
			e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:0"}})
			redistest.Eventually(t, 10*time.Second, "position at 1", func() bool {
				p, _ := e.position("search-svc", "acme", "active")
				return p.Version == 1
			})
			epoch, _ := e.meta(ch)
			e.seed("search-svc", "acme", "user:1", "active")
			e.seed("search-svc", "acme", "user:2", "active")

			e.forge(ch, `{"tenant":"acme","tag":"active","epoch":"`+epoch+`","version":2,"keys":["nothing"],"event":"forged"}`)
			redistest.Eventually(t, 10*time.Second, "the forged version 2 applied", func() bool {
				p, _ := e.position("search-svc", "acme", "active")
				return p.Version == 2
			})
			if tc.link {
				must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "off").Err())
				must(t, e.busC.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())
				redistest.Eventually(t, 10*time.Second, "pub/sub connection gone", func() bool {
					n, _ := e.busC.Do(ctx, "PUBSUB", "NUMSUB", ch).Slice()
					return len(n) == 2 && n[1] == int64(0)
				})
			} else {
				stop()
			}
			e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
			want := int64(2)
			if tc.later {
				e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
				want = 3
			}
			e.waitVersion(ch, want) // published while nobody listened
			if tc.link {
				must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "on").Err())
			} else {
				e.subscriberOn(subBus, "search-svc", subscriber.Options{})
			}
			e.waitGone("search-svc", "acme", "user:1")
			if tc.later {
				e.waitGone("search-svc", "acme", "user:2")
			}
			redistest.Eventually(t, 10*time.Second, "the position at the channel's", func() bool {
				p, _ := e.position("search-svc", "acme", "active")
				return p.Epoch == epoch && p.Version == want
			})
			// From there on, key-level again.
			e.seed("search-svc", "acme", "user:4", "active")
			e.seed("search-svc", "acme", "user:5", "active")
			e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:4"}})
			e.waitGone("search-svc", "acme", "user:4")
			if !e.cached("search-svc", "acme", "user:5") {
				t.Error("a key-level event after the repair deleted the whole tag")
			}
		})
	}
}

// TestBusLossHidesOldEpochFromChannelWithoutPosition for an in-process cache
// (a Handler, positions in memory): the running subscriber's pub/sub link is
// down (its user refused while the connection is killed) while an event of
// a channel it never applied is routed, the bus loses its data and the
// channel's next event starts a new epoch. The reconnect check must not
// replay the new epoch from version 1 to the Handler as a new channel.
func TestBusLossHidesOldEpochFromHandler(t *testing.T) {
	ctx := context.Background()
	const ch = "invalidate:globex:active"
	e := newEnv(t, "")
	e.router(router.Options{})
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "on", ">pw", "~*", "&*", "+@all").Err())
	subBus := redis.NewClient(&redis.Options{Addr: e.bus.Addr, Username: "sub", Password: "pw", MaxRetries: -1})
	defer subBus.Close()
	var mu sync.Mutex
	dropped := map[string]bool{} // globex keys the in-process cache dropped; "*" the whole tag
	e.subscriberOn(subBus, "search-svc", subscriber.Options{Handler: func(_ context.Context, inv subscriber.Invalidation) error {
		mu.Lock()
		defer mu.Unlock()
		if inv.Tenant == "globex" && inv.Tag == "active" {
			for _, k := range inv.Keys {
				dropped[k] = true
			}
			if len(inv.Keys) == 0 && len(inv.Refs) == 0 {
				dropped["*"] = true
			}
		}
		return nil
	}})

	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "off").Err())
	// Every connection of the subscriber, not only its pub/sub one: no
	// check may see the bus between the loss and the new epoch.
	must(t, e.busC.Do(ctx, "CLIENT", "KILL", "USER", "sub").Err())
	redistest.Eventually(t, 10*time.Second, "pub/sub connection gone", func() bool {
		n, _ := e.busC.Do(ctx, "PUBSUB", "NUMSUB", ch).Slice()
		return len(n) == 2 && n[1] == int64(0)
	})
	e.publish(wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:1"}})
	e.waitVersion(ch, 1)
	first, _ := e.meta(ch)
	must(t, e.busC.FlushAll(ctx).Err())
	e.publish(wire.Event{Tenant: "globex", Domain: "user", Keys: []string{"user:2"}})
	redistest.Eventually(t, 10*time.Second, "a new epoch", func() bool {
		epoch, v := e.meta(ch)
		return epoch != "" && epoch != first && v == 1
	})
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "on").Err())
	redistest.Eventually(t, 10*time.Second, "the in-process cache drops user:1 (lost with the bus) and user:2", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return dropped["*"] || dropped["user:1"] && dropped["user:2"]
	})
}
