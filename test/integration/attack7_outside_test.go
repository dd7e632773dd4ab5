package integration

import (
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/faultproxy"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
)

// Attacks from outside on the claim of a silent router's entries
// (router.Options.DeadAfter), with real processes and raw Redis commands.

// A routerd serve stopped (SIGSTOP) in the middle of a backlog is silent,
// not dead: another router claims its entries after DeadAfter and routes
// them, and then the stopped one is continued (SIGCONT) with the same
// entries in hand, half published. Nothing is published twice as two
// messages (every key is in one message), nothing is lost or left pending,
// and the continued router goes on routing.
func TestAttack7StoppedRouterContinuedAfterItsEntriesWereClaimed(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)
	keys := e.appendBacklog(9600)
	var log lockedBuffer
	cmd := e.serveProcess(backlogMatrix(), &log, "--consumer", "sleepy", "--claim-idle", "1h")
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGCONT) }) // before the kill
	const ch = "invalidate:acme:active"
	redistest.Eventually(t, 20*time.Second, "the backlog under way", func() bool {
		_, v := e.meta(ch)
		return v >= 1
	})
	must(t, cmd.Process.Signal(syscall.SIGSTOP))
	if e.pending() == 0 {
		t.Fatal("the stopped router holds nothing pending: the attack did not run")
	}

	reg := prometheus.NewRegistry()
	_, stopB := e.routerOn(e.busC, router.Options{Consumer: "b", ClaimIdle: time.Hour, DeadAfter: time.Second, Registerer: reg})
	redistest.Eventually(t, 30*time.Second, "the stopped router's entries claimed", func() bool {
		return claimedBy(t, reg) > 0
	})
	must(t, cmd.Process.Signal(syscall.SIGCONT))
	redistest.Eventually(t, 60*time.Second, "nothing pending, nothing left to read", func() bool {
		g, err := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && len(g) == 1 && g[0].Pending == 0 && g[0].Lag == 0
	})
	in := map[string]int{}
	for _, m := range e.history(ch) {
		if m.WholeTag() {
			t.Errorf("version %d is a whole-tag message", m.Version)
		}
		for _, k := range m.Keys {
			in[k]++
		}
	}
	for _, k := range keys {
		if in[k] != 1 {
			t.Errorf("%s is in %d messages, want 1", k, in[k])
		}
	}
	if t.Failed() {
		return
	}
	// The continued router still routes, alone.
	stopB()
	e.xaddPiped("acme", []string{"after"})
	redistest.Eventually(t, 20*time.Second, "an event after the continue routed by it", func() bool {
		h := e.history(ch)
		last := h[len(h)-1]
		return len(last.Keys) == 1 && last.Keys[0] == "after" && e.pending() == 0
	})
}

// Routers on different --dead-after (an operator rolling out a new value,
// or one instance started with --dead-after equal to its --claim-idle, to
// keep the claim as it was): each touches its consumers at its own pace,
// and each takes another for dead at its own threshold. Router a, at
// --dead-after 10s, holds an event under the storm limits (its channel's
// bucket is empty for ten seconds) and reads nothing else; router b, at
// 1s, watches the group all that time. a is alive and must not be taken
// for dead: b claims nothing, and the held event is published once.
func TestAttack7LiveRouterOnALongerDeadAfterIsNotTakenForDead(t *testing.T) {
	// Parallel: it waits seconds for the storm limit's tokens, on a bus
	// of its own.
	t.Parallel()
	e := newEnv(t, precisionMatrix("rate: 0.1, burst: 1"))
	e.running("acme")
	const ch = "invalidate:acme:active"
	e.routerOn(e.busC, router.Options{Consumer: "a", DeadAfter: 10 * time.Second, ClaimInterval: time.Hour})
	e.publishFirstHoldSecond()
	reg := prometheus.NewRegistry()
	_, stopB := e.routerOn(e.busC, router.Options{Consumer: "b", DeadAfter: time.Second, Registerer: reg})
	defer stopB()
	redistest.Eventually(t, 30*time.Second, "the held event published", func() bool {
		_, v := e.meta(ch)
		return v == 2 && e.pending() == 0
	})
	if n := claimedBy(t, reg); n != 0 {
		t.Errorf("router b claimed %v entries of the live router a", n)
	}
	if h := e.history(ch); len(h) != 2 || len(h[1].Keys) != 1 || h[1].Keys[0] != "held" {
		t.Errorf("history of %d messages (%v), want the two events once each", len(h), h)
	}
}

// A router cut off from the bus (its link blackholed: no error, no data)
// while it holds an event under the storm limits is taken for dead after
// DeadAfter, and another router claims the event and holds it in turn (the
// channel's bucket is shared). Then the link comes back, with the first
// router still holding it in its coalescer and keeping it fresh (hold):
// the two hold the same entry for a while. It is published once, in one
// message, when the bucket has a token, the claim happens once (no
// claiming back and forth), nothing is left pending, and the router that
// came back goes on routing.
func TestAttack7RouterCutOffWhileHoldingUnderStormLimits(t *testing.T) {
	// Parallel: it waits seconds for the storm limit's tokens, on a bus
	// of its own.
	t.Parallel()
	e := newEnv(t, precisionMatrix("rate: 0.2, burst: 1"))
	e.running("acme")
	const ch = "invalidate:acme:active"
	link := faultproxy.Start(t, e.bus.Addr)
	cut := redis.NewClient(&redis.Options{Addr: link.Addr(), ReadTimeout: 500 * time.Millisecond, WriteTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { _ = cut.Close() })
	_, stopA := e.routerOn(cut, router.Options{Consumer: "a", DeadAfter: time.Second})
	e.publishFirstHoldSecond()
	must(t, link.Blackhole())
	reg := prometheus.NewRegistry()
	_, stopB := e.routerOn(e.busC, router.Options{Consumer: "b", DeadAfter: time.Second, Registerer: reg})
	redistest.Eventually(t, 10*time.Second, "b claiming the held event of a, cut off", func() bool {
		return claimedBy(t, reg) == 1
	})
	must(t, link.Heal())
	redistest.Eventually(t, 30*time.Second, "the held event published", func() bool {
		_, v := e.meta(ch)
		return v == 2 && e.pending() == 0
	})
	if h := e.history(ch); len(h) != 2 || len(h[1].Keys) != 1 || h[1].Keys[0] != "held" {
		t.Errorf("history of %d messages (%v), want the two events once each", len(h), h)
	}
	// a routes again, alone.
	stopB()
	if n := claimedBy(t, reg); n != 1 {
		t.Errorf("b claimed %v entries, want the held one once", n)
	}
	e.xaddPiped("acme", []string{"after"})
	redistest.Eventually(t, 30*time.Second, "an event after the cut routed by a", func() bool {
		h := e.history(ch)
		last := h[len(h)-1]
		return len(last.Keys) == 1 && last.Keys[0] == "after" && e.pending() == 0
	})
	stopA()
}

// A routerd serve killed (SIGKILL) in the middle of a backlog and started
// again under the same --consumer (a restarted container: same hostname,
// pid 1) reads what it left pending first, its own entries whatever their
// age, and claims none of them as forgotten while it does (claimForgotten
// would route them a second time): every key is published in one message,
// nothing is left pending. (A SIGTERM finishes the batch in hand and
// leaves nothing pending: it was tried first.)
func TestAttack7RouterRestartedUnderItsName(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)
	keys := e.appendBacklog(9600)
	start := func(log *lockedBuffer) *exec.Cmd {
		return e.serveProcess(backlogMatrix(), log, "--consumer", "same", "--claim-idle", "1h", "--dead-after", "1s")
	}
	var first, second lockedBuffer
	e.killMidBacklog(start(&first))
	const ch = "invalidate:acme:active"
	if e.pending() == 0 {
		t.Fatal("the killed router left nothing pending: the attack did not run")
	}
	start(&second)
	redistest.Eventually(t, 60*time.Second, "nothing pending, nothing left to read", func() bool {
		g, err := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && len(g) == 1 && g[0].Pending == 0 && g[0].Lag == 0
	})
	in := map[string]int{}
	for _, m := range e.history(ch) {
		for _, k := range m.Keys {
			in[k]++
		}
	}
	for _, k := range keys {
		if in[k] != 1 {
			t.Errorf("%s is in %d messages, want 1", k, in[k])
		}
	}
	if strings.Contains(second.String(), "claimed pending entries") {
		t.Errorf("the router started again claimed entries of its own:\n%s", second.String())
	}
}

// The bus restored from an older snapshot: every consumer comes back with
// the idle time it had when the snapshot was saved plus everything since,
// so each of two live routers takes the other for dead until the other's
// first touch. Entries that routers held when the snapshot was saved are
// pending again. A burst of claims is acceptable (the channels' event ids
// make it harmless); it must stay a burst: after the restore every key is
// in one message of the channel's history, nothing is pending, and an
// event held under the storm limits after that is claimed by nobody.
// An entry a router had routed and acknowledged after the snapshot is
// pending again under its live name, and it does not have it in hand:
// before claimForgotten it waited ClaimIdle (an hour here).
func TestAttack7BusRestoredFromASnapshotClaimsOnlyABurst(t *testing.T) {
	// Parallel: it waits seconds for the storm limit's tokens, on a bus
	// of its own.
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, precisionMatrix("rate: 0.5, burst: 1"))
	e.running("acme")
	const ch = "invalidate:acme:active"
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	e.routerOn(e.bus.Client(t), router.Options{Consumer: "a", DeadAfter: time.Second, ClaimIdle: time.Hour, Registerer: regA})
	e.routerOn(e.bus.Client(t), router.Options{Consumer: "b", DeadAfter: time.Second, ClaimIdle: time.Hour, Registerer: regB})
	e.xaddPiped("acme", []string{"first"})
	redistest.Eventually(t, 10*time.Second, "the first event published", func() bool {
		_, v := e.meta(ch)
		return v == 1
	})
	e.xaddPiped("acme", []string{"x1"})
	e.xaddPiped("acme", []string{"x2"})
	redistest.Eventually(t, 10*time.Second, "the second and third events held", func() bool {
		return e.pending() == 2
	})
	snap, err := e.bus.Snapshot(ctx)
	must(t, err)
	// Time passes on the lost timeline: the held events are published,
	// another one too.
	e.xaddPiped("acme", []string{"lost"})
	redistest.Eventually(t, 20*time.Second, "the events after the snapshot published", func() bool {
		_, v := e.meta(ch)
		return v >= 3 && e.pending() == 0
	})
	must(t, e.bus.RestoreSnapshot(snap))
	redistest.Eventually(t, 30*time.Second, "the restored entries published again, nothing pending", func() bool {
		seen := map[string]bool{}
		for _, m := range e.history(ch) {
			for _, k := range m.Keys {
				seen[k] = true
			}
		}
		return seen["x1"] && seen["x2"] && e.pending() == 0
	})
	burst := claimedBy(t, regA) + claimedBy(t, regB)
	t.Logf("claims after the restore: %v", burst)
	e.xaddPiped("acme", []string{"after"})
	redistest.Eventually(t, 30*time.Second, "an event after the restore published", func() bool {
		h := e.history(ch)
		last := h[len(h)-1]
		return len(last.Keys) == 1 && last.Keys[0] == "after" && e.pending() == 0
	})
	if n := claimedBy(t, regA) + claimedBy(t, regB); n != burst {
		t.Errorf("%v claims after the restore's burst of %v: the routers go on claiming from each other", n-burst, burst)
	}
	in := map[string]int{}
	for _, m := range e.history(ch) {
		for _, k := range m.Keys {
			in[k]++
		}
	}
	for k, n := range in {
		if n != 1 {
			t.Errorf("%s is in %d messages of the history, want 1", k, n)
		}
	}
}
