package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// A subscriber of every tenant whose bus user may not read one tenant's
// channels (an operator's ACL of named tenants) gets NOPERM for that
// tenant's SUBSCRIBE. The tenant announced right after it is still
// recovered and applied live, and so is every channel after the pub/sub
// connection is killed: go-redis resubscribes every channel it was asked
// for in one command, which the refused channels would make the bus refuse
// whole, leaving the connection without a subscription until the hourly
// check.
func TestAttack6RefusedTenantHoldsNoOtherBack(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "on", ">pw", "~*", "+@all", "resetchannels",
		"&invalidate:tenants", "&invalidate:acme:*", "&invalidate:newco:*").Err())
	subBus := redis.NewClient(&redis.Options{Addr: e.bus.Addr, Username: "sub", Password: "pw"})
	t.Cleanup(func() { _ = subBus.Close() })
	e.running("acme")
	e.router(router.Options{})
	sub, _ := e.subscriberOn(subBus, "profile-svc", subscriber.Options{})

	// Back to back: evil's subscription is refused, newco's is not.
	must(t, e.busC.Do(ctx, "ACL", "LOG", "RESET").Err())
	e.seed("profile-svc", "newco", "user:1", "active")
	e.seed("profile-svc", "newco", "user:2", "active")
	e.publish(wire.Event{Tenant: "evil", Domain: "user", Keys: []string{"user:1"}})
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "newco", "user:1")
	redistest.Eventually(t, 10*time.Second, "evil's subscription refused", func() bool {
		v, _ := e.busC.Do(ctx, "ACL", "LOG").Slice()
		return len(v) > 0
	})
	if !e.cached("profile-svc", "newco", "user:2") {
		t.Error("newco's first event invalidated more than its key")
	}
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("profile-svc", "newco", "user:2")

	// The pub/sub connection is killed: every channel the bus allows is
	// subscribed again, and applied live.
	must(t, e.busC.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())
	for i := range 3 {
		for _, tenant := range []string{"acme", "newco"} {
			key := fmt.Sprint("after:", i)
			e.seed("profile-svc", tenant, key, "active")
			e.publish(wire.Event{Tenant: tenant, Domain: "user", Keys: []string{key}})
			e.waitGone("profile-svc", tenant, key)
		}
	}
	refusal := func() bool {
		for _, p := range sub.Problems() {
			if strings.Contains(p.Detail, "NOPERM") && strings.Contains(p.Detail, "invalidate:evil:active") {
				return true
			}
		}
		return false
	}
	if !refusal() {
		t.Errorf("Problems %v do not say that evil's channels are refused", sub.Problems())
	}

	// The operator takes newco from the user mid-run: the bus closes the
	// connection subscribed to its channels, and acme's stay live.
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "resetchannels", "&invalidate:tenants", "&invalidate:acme:*").Err())
	for i := range 3 {
		key := fmt.Sprint("revoked:", i)
		e.seed("profile-svc", "acme", key, "active")
		e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{key}})
		e.waitGone("profile-svc", "acme", key)
	}
}

// Channels the bus refused are tried again every CheckInterval: once the
// operator grants them, they are subscribed and what they missed is
// recovered.
func TestAttack6RefusedTenantSubscribedOnceGranted(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "on", ">pw", "~*", "+@all", "resetchannels",
		"&invalidate:tenants", "&invalidate:acme:*").Err())
	subBus := redis.NewClient(&redis.Options{Addr: e.bus.Addr, Username: "sub", Password: "pw"})
	t.Cleanup(func() { _ = subBus.Close() })
	e.running("acme")
	e.router(router.Options{})
	sub, _ := e.subscriberOn(subBus, "profile-svc", subscriber.Options{CheckInterval: time.Second})

	e.seed("profile-svc", "evil", "user:1", "active")
	e.seed("profile-svc", "evil", "user:2", "active")
	e.publish(wire.Event{Tenant: "evil", Domain: "user", Keys: []string{"user:1"}})
	redistest.Eventually(t, 10*time.Second, "evil's channel refused", func() bool {
		for _, p := range sub.Problems() {
			if strings.Contains(p.Detail, "NOPERM") {
				return true
			}
		}
		return false
	})
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "&invalidate:evil:*").Err())
	e.waitGone("profile-svc", "evil", "user:1")
	redistest.Eventually(t, 10*time.Second, "subscribed to evil's channel", func() bool {
		return e.busC.PubSubNumSub(ctx, "invalidate:evil:active").Val()["invalidate:evil:active"] == 1
	})
	e.publish(wire.Event{Tenant: "evil", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("profile-svc", "evil", "user:2")
	redistest.Eventually(t, 10*time.Second, "ready", sub.Ready)
}

// A flood of forged announcements (PUBLISH on invalidate:tenants, by a
// client allowed to) keeps the subscriber's connection subscribing new
// channels without a pause: a real new tenant announced in the middle of
// it is checked — its first event, published before its channel was
// subscribed, recovered key by key — while the flood is still being
// subscribed, not once the whole of it is.
func TestAttack6AnnouncementFloodHoldsNoTenantBack(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.running("acme")
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})

	// Forged tenants as fast as the bus takes them: 40,000 (below a
	// connection's 50,000 channels) take the subscriber seconds.
	const forged = 40000
	e.floodAnnouncements(0, forged/4)
	e.seed("profile-svc", "newco", "user:1", "active")
	e.seed("profile-svc", "newco", "user:2", "active")
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:1"}})
	redistest.Eventually(t, 10*time.Second, "newco announced", func() bool {
		return e.busC.SIsMember(ctx, "invalidate:tenants", "newco").Val() // in the script that announces it
	})
	e.floodAnnouncements(forged/4, forged)
	e.waitGone("profile-svc", "newco", "user:1")
	last := fmt.Sprint("invalidate:forged", forged, ":active")
	if e.busC.PubSubNumSub(ctx, last).Val()[last] == 1 {
		t.Errorf("newco's first event was applied only once the whole flood of %d forged announcements was subscribed", forged)
	}
	if !e.cached("profile-svc", "newco", "user:2") {
		t.Error("newco's first event invalidated more than its key")
	}
}

// The pub/sub connection killed (CLIENT KILL) while a new tenant's
// subscription and a flood of others wait for their confirmations: the new
// tenant's missed first event is recovered, and its next events are
// applied live. go-redis reconnects at once when a SUBSCRIBE's write fails,
// without the channels of that command and without the receiver seeing an
// error: the subscriber neither checked what the reconnect lost nor
// subscribed those channels again.
func TestAttack6ConnectionKilledBetweenSubscribeAndConfirmations(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.running("acme")
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	const forged = 20000
	e.floodAnnouncements(0, forged/2)
	e.seed("profile-svc", "newco", "user:1", "active")
	e.seed("profile-svc", "newco", "user:2", "active")
	e.seed("profile-svc", "newco", "user:3", "active")
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:1"}})
	redistest.Eventually(t, 10*time.Second, "newco announced", func() bool {
		return e.busC.SIsMember(ctx, "invalidate:tenants", "newco").Val()
	})
	must(t, e.busC.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())
	e.floodAnnouncements(forged/2, forged)
	must(t, e.busC.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())
	e.waitGone("profile-svc", "newco", "user:1")
	// Live again (forged tenants are in no registry: those whose
	// announcement the kill lost stay unsubscribed, as they should).
	for _, tenant := range []string{"newco", "acme"} {
		key := "live:" + tenant
		e.seed("profile-svc", tenant, key, "active")
		e.publish(wire.Event{Tenant: tenant, Domain: "user", Keys: []string{key}})
		e.waitGone("profile-svc", tenant, key)
	}
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("profile-svc", "newco", "user:2")
	if !e.cached("profile-svc", "newco", "user:3") {
		t.Error("a newco key no event named was invalidated")
	}
}

// floodAnnouncements publishes forged tenant announcements forged<from+1>
// to forged<to> on invalidate:tenants, 200 a pipeline: as fast as the bus
// takes them.
func (e *env) floodAnnouncements(from, to int) {
	e.t.Helper()
	ctx := context.Background()
	for n := from; n < to; {
		pipe := e.busC.Pipeline()
		for range 200 {
			n++
			pipe.Publish(ctx, "invalidate:tenants", fmt.Sprint("forged", n))
		}
		_, err := pipe.Exec(ctx)
		must(e.t, err)
	}
}
