package integration

import (
	"context"
	"testing"
	"time"

	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// The output buffer limit of TestAttack8BusNormalOutputBufferLimitReplayRecovers
// against a subscriber that comes back to two gaps: acme's, 400 messages of
// 2 KB (a reply the bus closes at 256 KB), and beta's, one small message.
// acme's tag may go whole; beta's gap is replayed: its key named is dropped
// and its other cached key stays (a reply too large for one channel is no
// reason to flush another's tag).
func TestReview8AHistoryTooLargeForTheBusFlushesOnlyItsOwnTag(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, precisionMatrix("rate: 1000000, burst: 1000000, max_keys: 4"))
	e.running("acme", "beta")
	e.router(router.Options{})
	_, stop := e.subscriber("profile-svc", subscriber.Options{})
	for _, tenant := range []string{"acme", "beta"} {
		e.seed("profile-svc", tenant, "first", "active")
		e.publish(wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"first"}})
		e.waitGone("profile-svc", tenant, "first")
	}
	stop()

	const n = 400
	keys := e.publishHeavy("profile-svc", "acme", n)
	e.seed("profile-svc", "beta", "gone", "active")
	e.seed("profile-svc", "beta", "kept", "active")
	e.publish(wire.Event{Tenant: "beta", Domain: "user", Keys: []string{"gone"}})
	e.waitVersion("invalidate:acme:active", n+1)
	e.waitVersion("invalidate:beta:active", 2)
	must(t, e.busC.ConfigSet(ctx, "client-output-buffer-limit", "normal 256kb 128kb 1").Err())
	s, _ := e.subscriberReadyWithin(60*time.Second, e.bus.Client(t), "profile-svc", subscriber.Options{})
	e.waitAllGone(30*time.Second, "every key published while the subscriber was away dropped", "profile-svc", "acme", keys)
	e.waitGone("profile-svc", "beta", "gone")
	if !e.cached("profile-svc", "beta", "kept") {
		t.Error("beta's key not named by its one missed message was dropped: its tag went whole with acme's")
	}
	if !s.Ready() {
		t.Errorf("not ready: %v", s.Problems())
	}
}
