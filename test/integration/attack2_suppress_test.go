package integration

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// The shared ingress reserves the ids of the form "<publisher>/…" — but
// only for the publishers of the matrix in force when the event is routed.
// Before the operator adds a publishers section (the migration
// docs/security.md recommends), a shared-ingress client plants the id
// "profile-svc/order-7" on acme's active channel. Once profile-svc is
// granted and publishes its own event with the id "order-7" (an
// application's idempotency key: predictable), the router makes it
// "profile-svc/order-7", the channel's record of published ids already
// holds it, and the event is dropped as a duplicate: its keys stay cached.
// protocol.md: "Another publisher granted the same channel cannot make P's
// events duplicates by using their ids first."
func TestAttack2IDPlantedBeforeTheGrantSuppressesThePublisher(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.running("acme")
	e.subscriber("profile-svc", subscriber.Options{})
	r, _ := e.router(router.Options{})

	planted := `{"id":"profile-svc/order-7","tenant":"acme","domain":"user","keys":["user:9"]}`
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, planted}}).Err())
	// Routed (on main: version 1) or refused (a shared-ingress id may hold
	// no "/"): either way read before the grant.
	redistest.Eventually(t, 10*time.Second, "the planted event read", func() bool {
		_, v := e.meta("invalidate:acme:active")
		return v >= 1 || len(attack2DeadLetters(t, e)) == 1
	})

	granted, err := matrix.Parse("granted.yaml", []byte(testMatrix+"publishers:\n  profile-svc: {domains: [user], tenants: all}\n"))
	must(t, err)
	must(t, r.SetMatrix(granted))

	e.seed("profile-svc", "acme", "user:42", "active")
	victim, err := publisher.New(e.bus.Client(t), publisher.Options{Publisher: "profile-svc"})
	must(t, err)
	if _, err := victim.Publish(ctx, wire.Event{ID: "order-7", Tenant: "acme", Domain: "user", Keys: []string{"user:42"}}); err != nil {
		t.Fatal(err)
	}
	if err := redistest.Wait(ctx, 10*time.Second, "profile-svc's event order-7 applied", func() bool {
		return !e.cached("profile-svc", "acme", "user:42")
	}); err != nil {
		_, v := e.meta("invalidate:acme:active")
		t.Fatalf("%v: the channel is at version %d (the planted event was 1); dead letters %d", err, v, len(attack2DeadLetters(t, e)))
	}
}

// A shared-ingress client floods malformed entries (cheap: one XADD each)
// and pushes a granted publisher's dead letter out of the capped dead
// letter stream before the operator widens the grant: `routerd deadletter
// replay --reason not_granted` then finds nothing, and the publisher's
// keys stay cached. The cap (about 100,000 entries; 50 here, to keep the
// test short) is shared by every reason and every publisher, so one
// publisher's garbage evicts another's recoverable events.
func TestAttack2MalformedFloodTrimsAnotherPublishersDeadLetter(t *testing.T) {
	ctx := context.Background()
	narrow := testMatrix + "publishers:\n  profile-svc: {domains: [user], tenants: [globex]}\n"
	e := newEnv(t, narrow)
	e.running("acme")
	e.subscriber("profile-svc", subscriber.Options{})
	r, _ := e.router(router.Options{DeadLetterMaxLen: 50})

	e.seed("profile-svc", "acme", "user:42", "active")
	victim, err := publisher.New(e.bus.Client(t), publisher.Options{Publisher: "profile-svc"})
	must(t, err)
	if _, err := victim.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:42"}}); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 15*time.Second, "the event dead-lettered not_granted", func() bool {
		return len(attack2DeadLetters(t, e)) == 1
	})

	stream := names.IngressStream("invalidate", 0)
	pipe := e.busC.Pipeline()
	for i := 0; i < 500; i++ {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, "{"}})
	}
	_, err = pipe.Exec(ctx)
	must(t, err)
	redistest.Eventually(t, 30*time.Second, "the flood read", func() bool {
		groups, err := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && len(groups) == 1 && groups[0].Pending == 0 && groups[0].Lag == 0
	})

	wide, err := matrix.Parse("wide.yaml", []byte(testMatrix+"publishers:\n  profile-svc: {domains: [user], tenants: all}\n"))
	must(t, err)
	must(t, r.SetMatrix(wide))
	res, err := router.Redrive(ctx, e.busC, "invalidate", router.RedriveFilter{Reason: router.ReasonNotGranted})
	must(t, err)
	if res.Redriven != 1 {
		t.Fatalf("replay --reason not_granted after the flood: %d re-driven; profile-svc's dead letter was trimmed by another client's garbage (user:42 cached: %v)",
			res.Redriven, e.cached("profile-svc", "acme", "user:42"))
	}
	e.waitGone("profile-svc", "acme", "user:42")
}
