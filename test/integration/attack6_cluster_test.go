package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// On a cluster bus, a new tenant's channel whose slot moved to another
// master behind the subscriber's back (its slot map still names the old
// one) is refused (MOVED) while the tenant's other channel is confirmed on
// the running connection: both are checked — the first event applied key
// by key on both — and both then take messages live.
func TestAttack6ClusterNewTenantSlotMovedDuringConfirmations(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	e.start(twoTagsEveryTenant, "profile-svc")
	for _, tenant := range e.tenantsOnMasters("early", 3, "active") {
		e.firstEventKeyLevel(tenant) // a connection to every master
	}
	const tenant = "late0"
	moved := "invalidate:" + tenant + ":vip"
	from, err := e.busC.MasterForKey(ctx, moved)
	must(t, err)
	other, err := e.busC.MasterForKey(ctx, "invalidate:"+tenant+":active")
	must(t, err)
	to := ""
	for _, n := range e.bus.Nodes {
		if n.Addr != from.Options().Addr && n.Addr != other.Options().Addr && isMaster(ctx, n) {
			to = n.Addr
		}
	}
	if to == "" {
		for _, n := range e.bus.Nodes {
			if n.Addr != from.Options().Addr && isMaster(ctx, n) {
				to = n.Addr
			}
		}
	}
	e.bus.MoveSlot(t, moved, to) // through a client of its own: e.busC's map is stale

	for _, k := range []struct{ key, tag string }{{"user:1", "active"}, {"user:2", "active"}, {"v:1", "vip"}, {"v:2", "vip"}} {
		e.seed(tenant, k.key, k.tag)
	}
	if _, err := e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1", "v:1"}}); err != nil {
		t.Fatal(err)
	}
	e.waitGone(tenant, "user:1")
	e.waitGone(tenant, "v:1")
	for _, k := range []string{"user:2", "v:2"} {
		if _, err := e.store.Get(ctx, tenant, k); err != nil {
			t.Errorf("%s/%s deleted: the new tenant's first message was not applied key by key", tenant, k)
		}
	}
	// Live on both channels (an hour's CheckInterval: no check would
	// recover them).
	for _, k := range []struct{ key, tag string }{{"user:3", "active"}, {"v:3", "vip"}} {
		e.seed(tenant, k.key, k.tag)
		if _, err := e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{k.key}}); err != nil {
			t.Fatal(err)
		}
		e.waitGone(tenant, k.key)
	}
}

// On a cluster bus, a tenant's channels the bus refuses to the subscriber's
// user (NOPERM on their SSUBSCRIBE) hold no other tenant back: the tenant
// announced right after is applied key by key, and after every sharded
// pub/sub connection is killed, every channel the bus allows is live again.
func TestAttack6ClusterRefusedTenantHoldsNoOtherBack(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	mtx := e.startRouter(`
version: 1
tags:
  active: {services: [profile-svc]}
domains:
  user: {tags: [active]}
services:
  profile-svc: {tenants: all}
`)
	for _, n := range e.bus.Nodes {
		c := redis.NewClient(&redis.Options{Addr: n.Addr})
		must(t, c.Do(ctx, "ACL", "SETUSER", "sub", "on", ">pw", "~*", "+@all", "resetchannels",
			"&invalidate:tenants", "&invalidate:early*", "&invalidate:late*").Err())
		_ = c.Close()
	}
	subBus := redis.NewClusterClient(&redis.ClusterOptions{Addrs: e.bus.Addrs, Username: "sub", Password: "pw", ClusterStateReloadInterval: 500 * time.Millisecond})
	t.Cleanup(func() { _ = subBus.Close() })
	sub, err := subscriber.New(subBus, subscriber.Options{Service: "profile-svc", Matrix: mtx, Cache: e.cacheC, CheckInterval: time.Hour,
		Logger: testLogger(t, "subscriber")})
	must(t, err)
	run(t, sub.Run)
	redistest.Eventually(t, 10*time.Second, "subscriber ready", sub.Ready)
	early := e.tenantsOnMasters("early", 3, "active")
	for _, tenant := range early {
		e.firstEventKeyLevel(tenant) // a connection to every master
	}

	if _, err := e.pub.Publish(ctx, wire.Event{Tenant: "evil", Domain: "user", Keys: []string{"user:1"}}); err != nil {
		t.Fatal(err)
	}
	e.firstEventKeyLevel("late0")
	redistest.Eventually(t, 10*time.Second, "evil's channel named refused", func() bool {
		for _, p := range sub.Problems() {
			if strings.Contains(p.Detail, "NOPERM") && strings.Contains(p.Detail, "invalidate:evil:active") {
				return true
			}
		}
		return false
	})

	for _, n := range e.bus.Nodes {
		c := redis.NewClient(&redis.Options{Addr: n.Addr})
		must(t, c.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())
		_ = c.Close()
	}
	for i, tenant := range append(early, "late0") {
		for j := range 2 {
			key := fmt.Sprintf("after:%d:%d", i, j)
			e.seed(tenant, key, "active")
			if _, err := e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{key}}); err != nil {
				t.Fatal(err)
			}
			e.waitGone(tenant, key)
		}
	}
}
