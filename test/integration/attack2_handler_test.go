package integration

import (
	"context"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// An embedded subscriber whose Handler (the service's in-process cache)
// hangs — a lock never released, a full queue — applies nothing more, yet
// Problems() stays empty and Ready() true: no breaker guards the Handler as
// one guards the cache Redis and the --deliver target, and the "no position
// check succeeded" reason waits three check intervals (90 s at the default
// 30 s). Issue 19 asks for not ready within 5 s of an outage.
func TestAttack2SubscriberReadyThroughAHangingHandler(t *testing.T) {
	e := newEnv(t, "")
	e.running("acme")
	release := make(chan struct{})
	defer close(release)
	calls := make(chan subscriber.Invalidation, 16)
	s, _ := e.subscriber("profile-svc", subscriber.Options{
		Cache: nil, CheckInterval: 30 * time.Second, // the default
		Handler: func(ctx context.Context, inv subscriber.Invalidation) error {
			select {
			case calls <- inv:
			default:
			}
			select {
			case <-release:
			case <-ctx.Done():
			}
			return ctx.Err()
		},
	})
	e.router(router.Options{})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	select {
	case <-calls:
	case <-time.After(15 * time.Second):
		t.Fatal("the Handler was not called within 15s")
	}
	redistest.Eventually(t, 15*time.Second, "the subscriber not ready while its Handler hangs", func() bool {
		return len(s.Problems()) > 0
	})
}
