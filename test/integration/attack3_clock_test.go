package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// attack3: the bus's clock goes back (an NTP step after a clock that ran
// ahead, a VM restored, or a cluster failover to a replica whose clock is
// behind its old master's). A channel's token bucket keeps `at`, the bus
// TIME of its last take, and bucket.lua refills by (now - at) × rate: with
// now before at that is negative, the bucket sinks rate × (at - now) tokens
// below zero, and the router holds the channel's messages until the bus's
// clock has caught up with the old at — an hour here, for ever with a clock
// that ran a year ahead — while /readyz of the router and the subscriber
// stay 200. The test leaves the state a clock step leaves: the meta's at an
// hour ahead of the bus's TIME (redis-cli HSET '{invalidate:acme:active}:meta'
// at <TIME + 1 h in µs>).
func TestAttack3BusClockStepBackHoldsAChannel(t *testing.T) {
	ctx := context.Background()
	const service, ch = "search-svc", "invalidate:acme:active"
	e := newEnv(t, "")
	r, _ := e.router(router.Options{})
	s, _ := e.subscriber(service, subscriber.Options{})
	e.seed(service, "acme", "user:1", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone(service, "acme", "user:1")

	now, err := e.busC.Time(ctx).Result()
	must(t, err)
	ahead := now.Add(time.Hour).UnixMicro()
	must(t, e.busC.HSet(ctx, "{"+ch+"}:meta", "at", fmt.Sprint(ahead)).Err())

	e.seed(service, "acme", "user:2", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	if err := redistest.Wait(ctx, 15*time.Second, "user:2 invalidated", func() bool { return !e.cached(service, "acme", "user:2") }); err != nil {
		_, v := e.meta(ch)
		t.Fatalf("%v: the channel is at version %d; router ready %v %v, subscriber ready %v %v", err, v, r.Ready(), r.Problems(), s.Ready(), s.Problems())
	}
}
