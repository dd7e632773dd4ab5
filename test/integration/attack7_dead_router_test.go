package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/wire"
)

// A routerd serve killed (SIGKILL) in the middle of a backlog leaves the
// entries it read pending under its consumer name; a router started again
// under another name (a new pid, a rescheduled pod) is its heir. The heir
// runs with --claim-idle at an hour, as an operator who keeps it "well
// above the time to route one batch" may: the dead router's entries must
// not wait for that. They are claimed once its consumer has been silent
// for DeadAfter (5s by default, 1s here, as in the cluster case below),
// and every event is published, key-level. The heir's claim rounds are an
// hour apart here: its touch, which lists the consumers every
// DeadAfter/5, is what finds the dead one.
func TestAttack7DeadRoutersEntriesDoNotWaitForClaimIdle(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)
	keys := e.appendBacklog(9600)
	var log lockedBuffer
	e.killMidBacklog(e.serveProcess(backlogMatrix(), &log, "--consumer", "doomed"))
	const ch = "invalidate:acme:active"
	left := e.pending()
	t.Logf("killed with %d entries pending", left)
	if left == 0 {
		t.Fatal("the killed router left nothing pending: the attack did not run")
	}

	e.routerOn(e.busC, router.Options{Consumer: "heir", ClaimIdle: time.Hour, ClaimInterval: time.Hour, DeadAfter: time.Second})
	redistest.Eventually(t, 60*time.Second, "nothing pending, nothing left to read", func() bool {
		g, err := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && len(g) == 1 && g[0].Pending == 0 && g[0].Lag == 0
	})
	seen := map[string]bool{}
	for _, m := range e.history(ch) {
		if m.WholeTag() {
			t.Errorf("version %d is a whole-tag message", m.Version)
		}
		for _, k := range m.Keys {
			seen[k] = true
		}
	}
	for _, k := range keys {
		if !seen[k] {
			t.Fatalf("%s was never published", k)
		}
	}
}

// The other side of it: a router that is alive is never taken for dead,
// even while it reads nothing new. Router a holds an event under the
// storm limits (its channel's bucket is empty for seconds), and no other
// event comes, so nothing is delivered to it; router b, with a DeadAfter
// of its own, watches the group all that time. The held event must be
// published by a alone when its token comes: b claims nothing.
func TestAttack7LiveRouterHoldingEntriesIsNotTakenForDead(t *testing.T) {
	// Parallel: it waits seconds for the storm limit's tokens, on a bus
	// of its own.
	t.Parallel()
	e := newEnv(t, precisionMatrix("rate: 0.2, burst: 1"))
	e.running("acme")
	const ch = "invalidate:acme:active"
	// a's claim rounds (which refresh what it holds) are an hour apart:
	// only its liveness keeps b away.
	e.routerOn(e.busC, router.Options{Consumer: "a", DeadAfter: time.Second, ClaimInterval: time.Hour})
	e.publishFirstHoldSecond()
	reg := prometheus.NewRegistry()
	_, stopB := e.routerOn(e.busC, router.Options{Consumer: "b", DeadAfter: 3 * time.Second, Registerer: reg})
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

// claimedBy is the routerd_entries_claimed_total of the router that
// registered its metrics in reg.
func claimedBy(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	families, err := reg.Gather()
	must(t, err)
	for _, f := range families {
		if f.GetName() == "routerd_entries_claimed_total" {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no routerd_entries_claimed_total")
	return 0
}

// The same on Redis Cluster, where the partition streams live on several
// masters: entries a router read on each of them (raw XREADGROUP, as a
// router that died right after its reads) are claimed by an heir with
// --claim-idle at an hour once the dead consumer has been silent for
// DeadAfter, and the heir's own consumers are kept fresh on every master.
func TestAttack7ClusterDeadRoutersEntriesDoNotWaitForClaimIdle(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	mtx, streams := e.deadRouterOnEveryStream()
	defer e.heir(mtx)()
	redistest.Eventually(t, 30*time.Second, "every tenant's event published", e.everyTenantPublished)
	redistest.Eventually(t, 30*time.Second, "nothing pending, the heir's consumers fresh on every stream", func() bool {
		for stream := range streams {
			cs, err := e.busC.XInfoConsumers(ctx, stream, "routerd").Result()
			if err != nil {
				return false
			}
			fresh := false
			for _, c := range cs {
				if c.Pending > 0 {
					return false
				}
				fresh = fresh || c.Name == "heir" && c.Idle < time.Second
			}
			if !fresh {
				return false
			}
		}
		return true
	})
}

// publishFirstHoldSecond has acme's events "first" published and "held"
// held by the router that runs on e, whose matrix gives the channel a
// burst of one token (precisionMatrix): it waits until the first is
// published and the second pending.
func (e *env) publishFirstHoldSecond() {
	e.t.Helper()
	e.xaddPiped("acme", []string{"first"})
	redistest.Eventually(e.t, 10*time.Second, "the first event published", func() bool {
		_, v := e.meta("invalidate:acme:active")
		return v == 1
	})
	e.xaddPiped("acme", []string{"held"})
	redistest.Eventually(e.t, 10*time.Second, "the router holding the second event", func() bool {
		return e.pending() == 1
	})
}

// deadRouterTenants is how many tenants deadRouterOnEveryStream publishes
// an event of.
const deadRouterTenants = 40

// deadRouterOnEveryStream makes the bus as a router "doomed" leaves it
// that died right after its reads: an event of each of 40 tenants, over 8
// ingress partitions (on every master), pending for it. It returns the
// matrix (twoTagsEveryTenant on 8 partitions) and the partition streams.
func (e *clusterEnv) deadRouterOnEveryStream() (*matrix.Matrix, map[string]bool) {
	t, ctx := e.t, context.Background()
	t.Helper()
	mtx, err := matrix.Parse("cluster.yaml", []byte(strings.Replace(twoTagsEveryTenant, "version: 1\n", "version: 1\ningress: {partitions: 8}\n", 1)))
	must(t, err)
	streams := map[string]bool{}
	for p := range mtx.Partitions {
		stream := names.IngressStream(mtx.Prefix, p)
		must(t, e.busC.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err())
		streams[stream] = true
	}
	for i := range deadRouterTenants {
		tenant := fmt.Sprint("t", i)
		stream := names.IngressStream(mtx.Prefix, wire.Partition(tenant, mtx.Partitions))
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField,
			fmt.Sprintf(`{"tenant":%q,"domain":"user","keys":["user:1"]}`, tenant)}}).Err())
	}
	for stream := range streams {
		must(t, e.busC.Do(ctx, "XREADGROUP", "GROUP", "routerd", "doomed", "STREAMS", stream, ">").Err())
	}
	return mtx, streams
}

// heir runs the dead router's heir on mtx, at --claim-idle an hour and
// DeadAfter 1s, and returns its stop.
func (e *clusterEnv) heir(mtx *matrix.Matrix) (stop func()) {
	e.t.Helper()
	r, err := router.New(e.busC, mtx, router.Options{Consumer: "heir", ClaimIdle: time.Hour, DeadAfter: time.Second,
		Block: 100 * time.Millisecond, ClaimInterval: 100 * time.Millisecond, Logger: testLogger(e.t, "router")})
	must(e.t, err)
	return run(e.t, r.Run)
}

// everyTenantPublished reports whether both channels of each tenant of
// deadRouterOnEveryStream have published.
func (e *clusterEnv) everyTenantPublished() bool {
	for i := range deadRouterTenants {
		for _, tag := range []string{"active", "vip"} {
			v, err := e.busC.HGet(context.Background(), fmt.Sprintf("{invalidate:t%d:%s}:meta", i, tag), "version").Int()
			if err != nil || v < 1 {
				return false
			}
		}
	}
	return true
}
