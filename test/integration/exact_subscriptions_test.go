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
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// A subscriber of every tenant on a standalone bus subscribes to exact
// channels, never to patterns (Redis matches every pattern against every
// PUBLISH on the bus): a tenant that appears while it runs is announced by
// the router, joins the running connection and is applied live, key by key.
func TestEveryTenantServiceUsesNoPatterns(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:0"}})
	e.waitVersion("invalidate:acme:active", 1)
	reg := prometheus.NewRegistry()
	e.subscriber("profile-svc", subscriber.Options{Registerer: reg})

	numpat := func() int64 {
		n, err := e.busC.PubSubNumPat(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := numpat(); n != 0 {
		t.Errorf("PUBSUB NUMPAT = %d with a subscriber of every tenant, want 0", n)
	}
	if n := e.busC.PubSubNumSub(ctx, "invalidate:acme:active").Val()["invalidate:acme:active"]; n != 1 {
		t.Errorf("invalidate:acme:active has %d subscribers, want 1", n)
	}

	// A new tenant: announced, subscribed, applied live (key-level).
	e.seed("profile-svc", "newco", "user:1", "active")
	e.seed("profile-svc", "newco", "user:2", "active")
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "newco", "user:1")
	redistest.Eventually(t, 10*time.Second, "the new tenant's channel subscribed", func() bool {
		return e.busC.PubSubNumSub(ctx, "invalidate:newco:active").Val()["invalidate:newco:active"] == 1
	})
	if !e.cached("profile-svc", "newco", "user:2") {
		t.Error("the new tenant's first event invalidated more than its key")
	}
	received := metric(t, reg, "subscriber_messages_received_total")
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("profile-svc", "newco", "user:2")
	if got := metric(t, reg, "subscriber_messages_received_total"); got <= received {
		t.Errorf("the new tenant's next message was not received live (received %v, before %v)", got, received)
	}
	if n := numpat(); n != 0 {
		t.Errorf("PUBSUB NUMPAT = %d after a new tenant, want 0", n)
	}
}

// The announcement of a new tenant is not lost with the registry write
// that precedes it. A router whose announcement failed after its SADD (here
// its user may not publish on the announcement channel yet) left the
// tenant in the registry, the retry's SADD answered 0, and nobody
// announced: subscribers of every tenant missed the tenant's messages until
// their next check (an hour here). Registry entry and announcement now go
// together in one script.
func TestTenantAnnouncementSurvivesAFailedPublish(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.subscriber("profile-svc", subscriber.Options{})
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "rt", "on", ">pw", "~*", "+@all", "resetchannels", "&invalidate:newco:*").Err())
	rc := redis.NewClient(&redis.Options{Addr: e.bus.Addr, Username: "rt", Password: "pw"})
	t.Cleanup(func() { _ = rc.Close() })
	e.routerOn(rc, router.Options{})

	e.seed("profile-svc", "newco", "user:1", "active")
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:1"}})
	redistest.Eventually(t, 10*time.Second, "an announcement refused", func() bool {
		return e.busC.Do(ctx, "ACL", "LOG").Val() != nil && len(e.busC.Do(ctx, "ACL", "LOG").Val().([]any)) > 0
	})
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "rt", "&invalidate:tenants").Err())
	e.waitGone("profile-svc", "newco", "user:1")
}

// A new tenant's channels are checked together once the bus confirmed
// them, not one at a time: a check reads the bus's identity (three INFO
// sections) before the metas and again after them, the positions and the
// histories, and a tenant of a
// service with many tags took one such check per tag — 60 here, and 10,000
// for 100 new tenants of 100 tags, which held every other channel's
// invalidations back behind them.
func TestNewTenantsChannelsAreCheckedTogether(t *testing.T) {
	const tags = 60
	var y strings.Builder
	y.WriteString("version: 1\ntags:\n")
	var all []string
	for i := range tags {
		fmt.Fprintf(&y, "  g%d: {services: [svc]}\n", i)
		all = append(all, fmt.Sprint("g", i))
	}
	fmt.Fprintf(&y, "domains:\n  user: {tags: [%s]}\nservices:\n  svc: {tenants: all}\n", strings.Join(all, ", "))
	ctx := context.Background()
	e := newEnv(t, y.String())
	e.router(router.Options{})
	e.subscriber("svc", subscriber.Options{})

	for i := range tags {
		e.seed("svc", "newco", fmt.Sprint("k:", i), fmt.Sprint("g", i))
	}
	must(t, e.busC.ConfigResetStat(ctx).Err())
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"k:0"}})
	// The event reached the new tenant's channels before the subscriber
	// subscribed to them (the announcement is what makes it): each
	// channel's check recovers its first version.
	redistest.Eventually(t, 20*time.Second, "every new channel at version 1", func() bool {
		for _, tag := range all {
			if p, ok := e.position("svc", "newco", tag); !ok || p.Version != 1 {
				return false
			}
		}
		return true
	})
	e.waitGone("svc", "newco", "k:0")
	for i := 1; i < tags; i++ {
		if !e.cached("svc", "newco", fmt.Sprint("k:", i)) {
			t.Errorf("k:%d, named by no event, is gone", i)
		}
	}
	calls := int64(0)
	if line := e.busC.InfoMap(ctx, "commandstats").Item("Commandstats", "cmdstat_info"); line != "" {
		_, err := fmt.Sscanf(line, "calls=%d,", &calls)
		must(t, err)
	}
	t.Logf("INFO calls: %d for %d new channels", calls, tags)
	// Six calls a check of up to 1,000 channels: a few checks (the one of
	// every channel that a subscription round asks for among them), not
	// one a channel.
	if calls > 6*5 {
		t.Errorf("the new tenant's %d channels took %d INFO calls: checked one at a time", tags, calls)
	}
}
