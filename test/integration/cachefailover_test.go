package integration

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// cacheChangedLog is what a subscriber logs when it finds its cache Redis
// is another server, or the same one restarted (subscriber/identity.go).
const cacheChangedLog = "the cache Redis restarted or failed over"

// recheckedAtOnce waits, at most within, until stale is false (the value
// the cache got back is invalidated again), and fails the test if the
// subscriber said it was ready while it knew its cache was behind: its log
// said the cache changed, then it said ready, and the value was still
// readable after that (the check that recovers it had not completed).
// Read in that order, so a check completing between the reads is not
// taken for a lie.
func recheckedAtOnce(t *testing.T, within time.Duration, detected, ready, stale func() bool) {
	t.Helper()
	lied := false
	redistest.Eventually(t, within, "the stale value invalidated again (before the next --check-interval)", func() bool {
		d := detected()
		r := ready()
		s := stale()
		if d && r && s && !lied {
			lied = true
			t.Errorf("ready while the subscriber knew its cache had changed and the stale value was still readable")
		}
		return !s
	})
	// Another check may have got there first (one the circuit breaker's
	// recovery asks for, when the cache answers again): the identity read,
	// once a second, says so soon after.
	redistest.Eventually(t, 10*time.Second, "the subscriber saying that its cache Redis changed ("+cacheChangedLog+")", detected)
}

// A cache failover that loses the last invalidation (as in
// TestSentinelCacheFailoverLosesAnInvalidation) with the agent at the
// default --check-interval (30 s): the agent must see that its cache is
// another server, check its positions at once and delete the value again,
// and not say ready while it knows its cache is behind. Before, the value
// stayed readable, and /readyz 200, until the next interval's check.
func TestSentinelCacheFailoverRecheckedAtOnce(t *testing.T) {
	bus := redistest.Start(t)
	cache := redistest.StartSentinel(t, 1, 1)
	keys := keyRange("user", 0, 4)
	r := newSentinelRig(t, bus.URL, cache.URL())
	r.loseOnReplica(cache, keys)
	cache.KillMaster(t)
	promoted := time.Now()
	defer func() { t.Logf("the value invalidated again %v after the promotion", time.Since(promoted)) }()
	// Well under the 30 s interval, with room for a loaded machine.
	recheckedAtOnce(t, 10*time.Second,
		func() bool { return strings.Contains(r.agentLog.String(), cacheChangedLog) },
		func() bool { return readyz(r.agentAddr) },
		func() bool { return r.cached(keys[1]) })
	r.ready()
	for _, k := range keys[2:] {
		if !r.cached(k) {
			t.Errorf("%s, named by no event, was invalidated: the replay went whole", k)
		}
	}
}

// The cache Redis restarted from a snapshot taken before the last
// invalidation (a crash with RDB persistence, a restore from a backup):
// the value is back, with the position from before. An embedded subscriber
// at the default CheckInterval must see the restart (another run_id),
// check at once, and not be Ready while it knows its cache is behind.
func TestCacheRestartFromSnapshotRecheckedAtOnce(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	const svc = "profile-svc"
	var log lockedBuffer
	logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("subscriber log:\n%s", log.String())
		}
	})
	// A Handler beside the cache: the check's replay gives it the
	// invalidation again, in the middle of the check, when a subscriber
	// that has said its cache changed must not say it is ready (a
	// deterministic look at readiness, where recheckedAtOnce's polling may
	// miss a check that takes milliseconds). The log is read first: a
	// check that a reconnection asked for may replay before the change is
	// seen.
	var sub atomic.Pointer[subscriber.Subscriber]
	var armed atomic.Bool
	var mu sync.Mutex
	var replays, readyInReplay int
	handler := func(_ context.Context, inv subscriber.Invalidation) error {
		if armed.Load() {
			detected := strings.Contains(log.String(), cacheChangedLog)
			ready := sub.Load().Ready()
			mu.Lock()
			replays++
			if detected && ready {
				readyInReplay++
			}
			mu.Unlock()
		}
		return nil
	}
	s, _ := e.subscriber(svc, subscriber.Options{Cache: e.caches[svc].Client(t), Handler: handler, CheckInterval: 30 * time.Second, Logger: logger})
	sub.Store(s)
	for _, k := range []string{"user:1", "user:2", "user:3"} {
		e.seed(svc, "acme", k, "active")
	}
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone(svc, "acme", "user:1")
	snap, err := e.caches[svc].Snapshot(ctx)
	must(t, err)
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone(svc, "acme", "user:2")

	armed.Store(true)
	must(t, e.caches[svc].RestoreSnapshot(snap))
	recheckedAtOnce(t, 10*time.Second,
		func() bool { return strings.Contains(log.String(), cacheChangedLog) },
		s.Ready,
		func() bool { return e.cached(svc, "acme", "user:2") })
	redistest.Eventually(t, 10*time.Second, "ready again", s.Ready)
	mu.Lock()
	if replays == 0 {
		t.Error("the Handler was not given the replayed invalidation")
	}
	if readyInReplay > 0 {
		t.Error("Ready in the middle of the check that replays what the restarted cache lost, after saying the cache changed")
	}
	mu.Unlock()
	// The restore took: the check found the cache's position behind the
	// one the subscriber applied (user:2 was back).
	if !strings.Contains(log.String(), "the cache holds another position") {
		t.Error("the check did not find the cache's position moved: the restore did not bring the position back, the attack did not take")
	}
	if !e.cached(svc, "acme", "user:3") {
		t.Error("user:3, named by no event, was invalidated: the replay went whole")
	}
	if e.cached(svc, "acme", "user:1") {
		t.Error("user:1 is cached again")
	}
}

// The same on a cluster cache: one master restarted from a snapshot taken
// before the last invalidation of a tenant whose keys (values and
// positions, all under the tenant's hash tag) it holds. Its run_id
// changes; the others' do not. The subscriber checks at once (every
// position, not only that master's).
func TestClusterCacheMasterRestartRecheckedAtOnce(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	const svc = "profile-svc"
	cluster := redistest.StartClusterOwnDirs(t, 3, 0)
	cacheC := cluster.Client(t)
	store, err := tagstore.New(cacheC, tagstore.Options{})
	must(t, err)
	cached := func(key string) bool {
		_, err := store.Get(ctx, "acme", key)
		if errors.Is(err, redis.Nil) {
			return false
		}
		must(t, err)
		return true
	}
	var log lockedBuffer
	logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelInfo}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("subscriber log:\n%s", log.String())
		}
	})
	s, _ := e.subscriber(svc, subscriber.Options{Cache: cacheC, CheckInterval: 30 * time.Second, Logger: logger})
	for _, k := range []string{"user:1", "user:2", "user:3"} {
		must(t, store.Set(ctx, "acme", k, []byte("cached"), 0, "active"))
	}
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	redistest.Eventually(t, 10*time.Second, "user:1 invalidated", func() bool { return !cached("user:1") })

	master, err := cacheC.MasterForKey(ctx, names.TenantTag("acme"))
	must(t, err)
	var node *redistest.Server
	for _, n := range cluster.Nodes {
		if n.Addr == master.Options().Addr {
			node = n
		}
	}
	if node == nil {
		t.Fatalf("no node of the cache cluster is %s", master.Options().Addr)
	}
	snap, err := node.Snapshot(ctx)
	must(t, err)
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	redistest.Eventually(t, 10*time.Second, "user:2 invalidated", func() bool { return !cached("user:2") })

	must(t, node.RestoreSnapshot(snap))
	recheckedAtOnce(t, 10*time.Second,
		func() bool { return strings.Contains(log.String(), cacheChangedLog) },
		s.Ready,
		func() bool {
			_, err := store.Get(ctx, "acme", "user:2")
			return !errors.Is(err, redis.Nil) // an error (the cluster settling) counts as not gone yet
		})
	redistest.Eventually(t, 10*time.Second, "ready again", s.Ready)
	if !strings.Contains(log.String(), "the cache holds another position") {
		t.Error("the check did not find the cache's position moved: the restore did not bring the position back, the attack did not take")
	}
	if !cached("user:3") {
		t.Error("user:3, named by no event, was invalidated: the replay went whole")
	}
}
