package integration

import (
	"context"
	"encoding/json"
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

// An operator bounds normal clients' output buffers (client-output-buffer-
// limit normal 256kb 128kb 1, against clients that read huge replies): the
// bus closes any connection whose reply passes 256 KB — a router's read of
// a backlog of 1.5 KB events (256 entries and more a read, and the claim of
// what a cut read left pending, up to 8 MiB), a subscriber's replay of a
// history. Every event is routed and every key dropped all the same,
// nothing is left pending, and the router is ready.
func TestAttack8BusNormalOutputBufferLimitLosesNothing(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)
	must(t, e.busC.ConfigSet(ctx, "client-output-buffer-limit", "normal 256kb 128kb 1").Err())
	r, _ := e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})

	const n = 3000
	pad := strings.Repeat("x", 480)
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("k:%d", i)
		e.seed("profile-svc", "acme", keys[i], "active")
	}
	for from := 0; from < n; from += 500 {
		_, err := e.busC.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, k := range keys[from : from+500] {
				b, _ := json.Marshal(map[string]any{"tenant": "acme", "domain": "user", "keys": []string{k, k + ":a:" + pad, k + ":b:" + pad, k + ":c:" + pad}})
				pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, string(b)}})
			}
			return nil
		})
		must(t, err)
	}
	e.waitAllGone(60*time.Second, "every key of the backlog dropped", "profile-svc", "acme", keys)
	redistest.Eventually(t, 10*time.Second, "nothing pending", func() bool { return e.pending() == 0 })
	if err := redistest.Wait(ctx, 10*time.Second, "the router ready", r.Ready); err != nil {
		t.Errorf("%v: %v", err, r.Problems())
	}
}

// The same limit against a subscriber: while it was away, 400 messages of
// 2 KB were published on its channel; coming back, it replays them from
// the history, a reply of 800 KB that the bus closes at 256 KB. It
// recovers all the same: every key is dropped.
func TestAttack8BusNormalOutputBufferLimitReplayRecovers(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, precisionMatrix("rate: 1000000, burst: 1000000, max_keys: 4"))
	e.running("acme")
	e.router(router.Options{})
	_, stop := e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "first", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"first"}})
	e.waitGone("profile-svc", "acme", "first")
	stop()

	const n = 400
	keys := e.publishHeavy("profile-svc", "acme", n)
	e.waitVersion("invalidate:acme:active", n+1)
	must(t, e.busC.ConfigSet(ctx, "client-output-buffer-limit", "normal 256kb 128kb 1").Err())
	s, _ := e.subscriberReadyWithin(60*time.Second, e.bus.Client(t), "profile-svc", subscriber.Options{})
	e.waitAllGone(30*time.Second, "every key published while the subscriber was away dropped", "profile-svc", "acme", keys)
	if !s.Ready() {
		t.Errorf("not ready: %v", s.Problems())
	}
}

// The same limit against the claim of a dead router's entries: a router
// read 1,000 events of 1.5 KB and died; the router that claims them
// (claim.lua, up to 8 MiB a claim) has each claim closed by the bus at
// 256 KB — and a claim run again by go-redis after its connection failed
// finds the entries it claimed no longer idle and answers none. It routes
// them all the same.
func TestAttack8BusNormalOutputBufferLimitClaimRecovers(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)
	const n = 1000
	pad := strings.Repeat("x", 480)
	keys := make([]string, n)
	_, err := e.busC.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i := range keys {
			keys[i] = fmt.Sprintf("k:%d", i)
			b, _ := json.Marshal(map[string]any{"tenant": "acme", "domain": "user", "keys": []string{keys[i], keys[i] + ":a:" + pad, keys[i] + ":b:" + pad, keys[i] + ":c:" + pad}})
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, string(b)}})
		}
		return nil
	})
	must(t, err)
	for _, k := range keys {
		e.seed("profile-svc", "acme", k, "active")
	}
	// The dead router's read: delivered to it, never routed.
	must(t, e.busC.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "routerd", Consumer: "dead", Streams: []string{stream, ">"}, Count: n, Block: -1}).Err())
	must(t, e.busC.ConfigSet(ctx, "client-output-buffer-limit", "normal 256kb 128kb 1").Err())
	r, _ := e.router(router.Options{DeadAfter: time.Second})
	e.subscriber("profile-svc", subscriber.Options{})
	e.waitAllGone(60*time.Second, "every key of the dead router's entries dropped", "profile-svc", "acme", keys)
	redistest.Eventually(t, 10*time.Second, "nothing pending", func() bool { return e.pending() == 0 })
	if err := redistest.Wait(ctx, 10*time.Second, "the router ready", r.Ready); err != nil {
		t.Errorf("%v: %v", err, r.Problems())
	}
}

// publishHeavy seeds n keys k:<i> of tenant's "active" tag in service's
// cache and publishes an event for each, naming it and three keys of about
// 500 bytes more: a channel history of heavy messages, which a replay reads
// back whole. It returns the seeded keys.
func (e *env) publishHeavy(service, tenant string, n int) []string {
	pad := strings.Repeat("x", 480)
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("k:%d", i)
		e.seed(service, tenant, keys[i], "active")
		e.publish(wire.Event{Tenant: tenant, Domain: "user", Keys: []string{keys[i], keys[i] + ":a:" + pad, keys[i] + ":b:" + pad, keys[i] + ":c:" + pad}})
	}
	return keys
}
