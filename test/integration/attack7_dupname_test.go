package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/wire"
)

// An entry read under a live router's consumer name by another process —
// a second routerd serve given the same --consumer (two replicas of one
// fixed command line) and killed, an operator's redis-cli XREADGROUP with
// the router's user and a name copied from XINFO CONSUMERS — is pending
// for a consumer that stays fresh: no other router takes it for dead, and
// the router of that name never read it. Run with --claim-idle at an hour,
// it waited the hour. The router must route it once it has been pending
// DeadAfter without being in its hand (claimForgotten), and once only.
func TestAttack7EntryReadUnderALiveRoutersName(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, backlogMatrix())
	e.running("acme")
	const ch = "invalidate:acme:active"
	e.routerOn(e.busC, router.Options{Consumer: "a", ClaimIdle: time.Hour, DeadAfter: time.Second})
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	_, err := e.busC.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["stolen"]}`}})
		pipe.Do(ctx, "XREADGROUP", "GROUP", "routerd", "a", "COUNT", 1, "STREAMS", stream, ">")
		return nil
	})
	must(t, err)
	redistest.Eventually(t, 20*time.Second, "the event published", func() bool {
		_, v := e.meta(ch)
		return v == 1 && e.pending() == 0
	})
	if h := e.history(ch); len(h) != 1 || len(h[0].Keys) != 1 || h[0].Keys[0] != "stolen" {
		t.Errorf("history %v, want the event once", h)
	}
}

// The other side of it: what a router has in hand is not taken for
// forgotten, however slowly it goes. One router alone routes a backlog of
// 9,600 events in reads of up to 4,096 (under -race on a loaded machine,
// a batch may take longer than DeadAfter), its claim rounds every 100ms
// at DeadAfter 1s: it never claims an entry of its own.
func TestAttack7RouterInHandClaimsNothingOfItsOwn(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)
	e.appendBacklog(9600)
	reg := prometheus.NewRegistry()
	e.routerOn(e.busC, router.Options{Consumer: "alone", ClaimIdle: time.Hour, DeadAfter: time.Second, Registerer: reg})
	redistest.Eventually(t, 60*time.Second, "nothing pending, nothing left to read", func() bool {
		g, err := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && len(g) == 1 && g[0].Pending == 0 && g[0].Lag == 0
	})
	if n := claimedBy(t, reg); n != 0 {
		t.Errorf("the router claimed %v entries it had in hand", n)
	}
}

// Redis takes an empty consumer name (a script's XREADGROUP GROUP routerd
// "$CONSUMER" with the variable unset), and to the claim an empty name
// meant any consumer: once that consumer went silent, each claim round
// claimed every entry pending for DeadAfter whoever held it — the entries
// live routers hold under the storm limits among them. The routers must
// claim the entry of a silent consumer with a name (a itself may, when its
// touch finds ghost silent first), and nothing a holds; the empty name is
// no router's: its entry waits for ClaimIdle like any other.
func TestAttack7EmptyConsumerNameIsNoWildcard(t *testing.T) {
	// Parallel: it waits seconds for the storm limit's tokens, on a bus
	// of its own.
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, precisionMatrix("rate: 0.1, burst: 1"))
	e.running("acme")
	const ch = "invalidate:acme:active"
	// a's claim rounds (which refresh what it holds) are an hour apart.
	regA := prometheus.NewRegistry()
	e.routerOn(e.busC, router.Options{Consumer: "a", DeadAfter: time.Second, ClaimInterval: time.Hour, Registerer: regA})
	e.publishFirstHoldSecond()
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	for _, consumer := range []string{"", "ghost"} {
		_, err := e.busC.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["of:` + consumer + `"]}`}})
			pipe.Do(ctx, "XREADGROUP", "GROUP", "routerd", consumer, "COUNT", 1, "STREAMS", stream, ">")
			return nil
		})
		must(t, err)
	}
	// What a holds (the held event, and ghost's if a claimed it) idle for
	// DeadAfter and more.
	redistest.Eventually(t, 10*time.Second, "the held entries idle for DeadAfter", func() bool {
		p, err := e.busC.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "routerd", Start: "-", End: "+", Count: 10, Consumer: "a"}).Result()
		return err == nil && len(p) >= 1 && !slices.ContainsFunc(p, func(x redis.XPendingExt) bool { return x.Idle <= 1500*time.Millisecond })
	})
	reg := prometheus.NewRegistry()
	_, stopB := e.routerOn(e.busC, router.Options{Consumer: "b", DeadAfter: time.Second, ClaimIdle: time.Hour, Registerer: reg})
	defer stopB()
	redistest.Eventually(t, 40*time.Second, "the held event and ghost's published", func() bool {
		seen := map[string]int{}
		for _, m := range e.history(ch) {
			for _, k := range m.Keys {
				seen[k]++
			}
		}
		return seen["held"] == 1 && seen["of:ghost"] == 1
	})
	if a, b := claimedBy(t, regA), claimedBy(t, reg); a+b != 1 {
		t.Errorf("router a claimed %v entries and b %v, want ghost's one between them", a, b)
	}
}
