package redisurl_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/redisurl"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
)

const followMatrix = `
version: 1
tags:
  users: {services: [svc]}
domains:
  user: {tags: [users]}
services:
  svc: {tenants: [acme]}
`

// An embedded subscriber on a bus that Redis Sentinel fails over without a
// crash (SENTINEL FAILOVER: the old master keeps running, and answering as a
// master, until the sentinels reconfigure it 8 s or more later) hears an
// event published after the switch while the old master is still a master:
// its pub/sub connection left the old master at once rather than when the
// sentinels closed it there.
func TestEmbeddedSubscriberFollowsManualFailover(t *testing.T) {
	bus := redistest.StartSentinel(t, 1, 1)
	c, err := redisurl.Open(bus.URL(), redisurl.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	embeddedFollows(t, bus, c)
}

// embeddedFollows runs a router (on a client of routerd's own, which
// follows the master) and a subscriber on c, fails bus over without a
// crash, publishes an event and fails the test unless the subscriber's
// Handler is given it (its keys, or its tag whole: the first message of a
// new epoch is a gap) while the old master still answers as a master.
func embeddedFollows(t *testing.T, bus *redistest.Sentinel, c redis.UniversalClient) {
	t.Helper()
	mtx, err := matrix.Parse("matrix.yaml", []byte(followMatrix))
	if err != nil {
		t.Fatal(err)
	}
	routerC, err := redisurl.Open(bus.URL(), redisurl.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = routerC.Close() })
	r, err := router.New(routerC, mtx, router.Options{Block: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	background(t, r.Run)

	var mu sync.Mutex
	var got []subscriber.Invalidation
	// covered reports whether an invalidation since the from-th, of
	// another epoch than notEpoch, covers key; epoch is its epoch.
	var epoch string
	covered := func(key string, from int, notEpoch string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, inv := range got[from:] {
			if inv.Epoch != notEpoch && (len(inv.Keys) == 0 && len(inv.Refs) == 0 || slices.Contains(inv.Keys, key)) {
				epoch = inv.Epoch
				return true
			}
		}
		return false
	}
	sub, err := subscriber.New(c, subscriber.Options{Service: "svc", Matrix: mtx, CheckInterval: time.Minute,
		Handler: func(_ context.Context, inv subscriber.Invalidation) error {
			mu.Lock()
			got = append(got, inv)
			mu.Unlock()
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	background(t, sub.Run)
	redistest.Eventually(t, 10*time.Second, "router and subscriber ready", func() bool { return r.Ready() && sub.Ready() })

	ctx := context.Background()
	publish := func(pc redis.UniversalClient, key string) {
		t.Helper()
		pub, err := publisher.New(pc, publisher.Options{Prefix: mtx.Prefix})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pub.Publish(ctx, publisher.Event{ID: "ev-" + key, Tenant: "acme", Domain: "user", Keys: []string{key}}); err != nil {
			t.Fatal(err)
		}
	}
	publish(bus.Client(t), "user:before")
	redistest.Eventually(t, 10*time.Second, "user:before invalidated", func() bool { return covered("user:before", 0, "") })
	before := epoch

	old := bus.Master(t)
	promoted := bus.Failover(t)
	switched := time.Now()
	mu.Lock()
	from := len(got)
	mu.Unlock()
	// A client made now asks the sentinels for the master: the event goes
	// to the promoted replica, under a new epoch (another replication id),
	// which tells its invalidation from any made of the channel's old one.
	publish(bus.Client(t), "user:after")
	redistest.Eventually(t, 30*time.Second, "user:after invalidated", func() bool { return covered("user:after", from, before) })
	took := time.Since(switched)
	info, err := old.Client(t).InfoMap(ctx, "replication").Result()
	if err != nil || info["Replication"]["role"] != "master" {
		t.Errorf("the event published on the promoted replica %s reached the subscriber %v after the switch, once the sentinels had reconfigured the old master %s (role %q, %v) and closed its pub/sub connection there",
			promoted.Addr, took.Round(10*time.Millisecond), old.Addr, info["Replication"]["role"], err)
	} else {
		t.Logf("the event published on the promoted replica reached the subscriber %v after the switch", took.Round(10*time.Millisecond))
	}
}

// background runs run until the test ends.
func background(t *testing.T, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stopped with error: %v", err)
		}
	})
}
