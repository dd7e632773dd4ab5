package integration

import (
	"context"
	"fmt"
	"strings"
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

// A packed entry of PublishBatch (100 events of ordinary size, ~20 KB
// together) meets a channel key of the wrong type (an operator's SET on
// {invalidate:acme:active}:meta): the entry is poison, and after
// --dead-letter-after tries it goes to the dead letters whole — its copy cut
// at 16 KiB. operations.md says: fix the cause (DEL the key), then
// `routerd deadletter replay --reason poison`. The replay re-drives nothing
// ("left: their copy of the entry was cut"), and the events' keys stay
// cached for good though no event was too large and the fault was the
// bus's, not the publisher's.
func TestAttack2PoisonPackedEntryCannotBeReplayed(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.running("acme")
	e.subscriber("profile-svc", subscriber.Options{})
	meta := "{" + names.Channel("invalidate", "acme", "active") + "}:meta"
	must(t, e.busC.Set(ctx, meta, "not a hash", 0).Err()) // the unlucky operator

	e.router(router.Options{DeadLetterAfter: 2})
	pad := strings.Repeat("x", 150)
	evs := make([]wire.Event, 100)
	for i := range evs {
		key := fmt.Sprintf("user:%d:%s", i, pad)
		e.seed("profile-svc", "acme", key, "active")
		evs[i] = wire.Event{Tenant: "acme", Domain: "user", Keys: []string{key}}
	}
	if _, err := e.pub.PublishBatch(ctx, evs); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 30*time.Second, "the entry dead-lettered as poison", func() bool {
		for _, m := range attack2DeadLetters(t, e) {
			if m.Values["reason"] == router.ReasonPoison {
				return true
			}
		}
		return false
	})

	must(t, e.busC.Del(ctx, meta).Err()) // the fix operations.md asks for
	res, err := router.Redrive(ctx, e.busC, "invalidate", router.RedriveFilter{Reason: router.ReasonPoison})
	must(t, err)
	if res.Skipped > 0 || res.Redriven == 0 {
		t.Fatalf("deadletter replay --reason poison after the fix: %d re-driven, %d left (copy cut at 16 KiB): the entry's 100 invalidations are lost (its first key still cached: %v)",
			res.Redriven, res.Skipped, e.cached("profile-svc", "acme", evs[0].Keys[0]))
	}
	for i := range evs {
		e.waitGone("profile-svc", "acme", evs[i].Keys[0])
	}
}

// attack2DeadLetters returns the dead letters (of both streams).
func attack2DeadLetters(t *testing.T, e *env) []redis.XMessage {
	t.Helper()
	return allDeadLetters(t, e.busC)
}

// An event of 300 keys (about 30 KB, far below the 1 MiB event limit) on a
// granted publisher's stream, outside its grant: dead-lettered not_granted,
// its copy cut at 16 KiB. operations.md's remedy for a grant widened too
// late — reload, then `routerd deadletter replay --reason not_granted` —
// re-drives nothing ("left: their copy … was cut"): the 300 keys stay
// cached for good though the event was valid and now granted.
func TestAttack2ReplayOfAnOrdinaryLargeEventIsCut(t *testing.T) {
	ctx := context.Background()
	narrow := testMatrix + "publishers:\n  profile-svc: {domains: [user], tenants: [globex]}\n"
	e := newEnv(t, narrow)
	e.running("acme")
	e.subscriber("profile-svc", subscriber.Options{})
	r, _ := e.router(router.Options{})

	pub, err := publisher.New(e.bus.Client(t), publisher.Options{Prefix: "invalidate", Origin: "attack2", Publisher: "profile-svc"})
	must(t, err)
	keys := make([]string, 300)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d:%s", i, strings.Repeat("y", 90))
		e.seed("profile-svc", "acme", keys[i], "active")
	}
	if _, err := pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: keys}); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 15*time.Second, "the event dead-lettered not_granted", func() bool {
		for _, m := range attack2DeadLetters(t, e) {
			if m.Values["reason"] == router.ReasonNotGranted {
				return true
			}
		}
		return false
	})

	wide, err := matrix.Parse("wide.yaml", []byte(testMatrix+"publishers:\n  profile-svc: {domains: [user], tenants: all}\n"))
	must(t, err)
	must(t, r.SetMatrix(wide))
	res, err := router.Redrive(ctx, e.busC, "invalidate", router.RedriveFilter{Reason: router.ReasonNotGranted})
	must(t, err)
	if res.Skipped > 0 || res.Redriven == 0 {
		t.Fatalf("deadletter replay --reason not_granted after the grant was widened: %d re-driven, %d left (copy cut at 16 KiB): a valid 30 KB event is lost (its first key still cached: %v)",
			res.Redriven, res.Skipped, e.cached("profile-svc", "acme", keys[0]))
	}
	e.waitGone("profile-svc", "acme", keys[0])
	e.waitGone("profile-svc", "acme", keys[len(keys)-1])
}
