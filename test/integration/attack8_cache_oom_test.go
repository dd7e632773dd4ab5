package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// These tests attack the cache side the way a full cache Redis does: at
// maxmemory with maxmemory-policy noeviction (what operations.md advises
// for a cache with entity references) Redis refuses every command that may
// grow memory (SET, SADD, …) with OOM, while reads and deletions (GET,
// DEL, UNLINK, SREM) still run. An invalidation frees memory: it must land
// when the cache is full, and stale values stay readable until it does.

// fill makes a cache Redis full: every command that may grow its memory is
// refused with OOM from now on, until the test ends.
func fill(t *testing.T, c *redis.Client) {
	t.Helper()
	ctx := context.Background()
	must(t, c.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
	must(t, c.ConfigSet(ctx, "maxmemory", "1").Err())
	t.Cleanup(func() { _ = c.ConfigSet(context.Background(), "maxmemory", "0").Err() })
	if err := c.Set(ctx, "attack8:probe", "x", 0).Err(); !redis.HasErrorPrefix(err, "OOM") {
		t.Fatalf("a SET on the full cache answered %v, want OOM", err)
	}
}

// A subscriber that starts (or restarts) while its cache is full (its
// script cache empty, too) has indexed no tenant yet in this run. Its first invalidation of a tenant
// records the tenant in the position index (a SADD) before the script
// runs: refused with OOM, the invalidation never ran and the key named
// stayed cached for as long as the cache was full.
func TestAttack8CacheFullStillInvalidates(t *testing.T) {
	e := newEnv(t, "")
	e.running("acme")
	e.seed("profile-svc", "acme", "user:1", "active")
	e.seed("profile-svc", "acme", "user:2", "active")
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	cache := e.caches["profile-svc"].Client(t)
	fill(t, cache)
	// And its script cache empty, as on a replica that took over: the
	// scripts are loaded again on the full cache.
	must(t, cache.ScriptFlush(context.Background()).Err())

	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "acme", "user:1")
	if !e.cached("profile-svc", "acme", "user:2") {
		t.Error("user:2, not named, was invalidated too")
	}
	epoch, _ := e.meta("invalidate:acme:active")
	if p, _ := e.position("profile-svc", "acme", "active"); p.Epoch != epoch || p.Version != 1 {
		t.Errorf("position = %v, want %s:1", p, epoch)
	}
}

// A whole-tag invalidation of a tag that holds nothing (a whole tag before
// it took it all) deletes nothing and writes the position alone: on a full
// cache that SET was the script's first write, refused with OOM. The
// channel stood still at the version before, every later message of it
// waited behind the failed one, and a key the next message named stayed
// cached for as long as the cache was full.
func TestAttack8CacheFullWholeTagOfAnEmptyTag(t *testing.T) {
	e := newEnv(t, "")
	e.running("acme")
	e.seed("profile-svc", "acme", "user:1", "active")
	// Named by the key-level message below; a key is deleted whatever tags
	// registered it.
	e.seed("profile-svc", "acme", "user:2", "billing")
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", WholeTag: true}) // takes user:1
	e.waitGone("profile-svc", "acme", "user:1")
	e.waitVersion("invalidate:acme:active", 1)
	epoch, _ := e.meta("invalidate:acme:active")
	redistest.Eventually(t, 10*time.Second, "position at 1", func() bool {
		p, _ := e.position("profile-svc", "acme", "active")
		return p.Epoch == epoch && p.Version == 1
	})
	fill(t, e.caches["profile-svc"].Client(t))

	e.publish(wire.Event{Tenant: "acme", Domain: "user", WholeTag: true}) // of an empty tag
	e.waitVersion("invalidate:acme:active", 2)                            // not merged with the next
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("profile-svc", "acme", "user:2")
	redistest.Eventually(t, 10*time.Second, "position at 3", func() bool {
		p, _ := e.position("profile-svc", "acme", "active")
		return p.Epoch == epoch && p.Version == 3
	})
}

// A whole tag above the cardinality guard with more of its channel after it
// in the same pipeline marks the channel (an SADD of the batch mark) before
// it is taken down in chunks: on a full cache the mark was refused with
// OOM, the whole tag failed, and the key-level invalidation after it was a
// GAP (its position not yet there), its key left cached.
func TestAttack8CacheFullDeferredWholeTag(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	st, err := tagstore.New(c, tagstore.Options{CardinalityGuard: 2})
	must(t, err)
	for _, k := range []string{"a", "b", "c"} {
		must(t, st.Set(ctx, "acme", k, []byte("v"), 0, "big"))
	}
	must(t, st.Set(ctx, "acme", "d", []byte("v"), 0, "other"))
	fill(t, c)

	at := func(v int64) tagstore.Position { return tagstore.Position{Epoch: "e1", Version: v} }
	results, errs := st.ApplyMany(ctx, []tagstore.Invalidation{
		{Tenant: "acme", Tag: "big", Service: "svc", Position: at(1), Strict: true},
		{Tenant: "acme", Tag: "big", Keys: []string{"d"}, Service: "svc", Position: at(2), Strict: true},
	})
	for i, err := range errs {
		if err != nil || results[i].Status != tagstore.Success {
			t.Errorf("invalidation %d: %v, %v; want Success", i+1, results[i].Status, err)
		}
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		if _, err := st.Get(ctx, "acme", k); !errors.Is(err, redis.Nil) {
			t.Errorf("%s still cached (%v)", k, err)
		}
	}
	if p, _, err := st.ReadPosition(ctx, "acme", "svc", "big"); err != nil || p != at(2) {
		t.Errorf("position %v (%v), want %v", p, err, at(2))
	}
}

// A Fetch on a full cache: the miss cannot take its lease (lease.lua's SET
// is refused with OOM), and a fill whose lease was taken before the cache
// filled cannot be recorded (the tenant index's SADD is refused). Either
// way the value was the caller's to have: it was refused with an error
// instead (before the load, or after it, the loaded value dropped), so a
// full cache failed every read of a key not cached. Nothing must be cached
// and no lease left behind.
func TestAttack8CacheFullFetchReturnsTheLoadedValue(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	st, err := tagstore.New(c, tagstore.Options{})
	must(t, err)
	opt := tagstore.FetchOptions{Tags: []string{"active"}}
	noLease := func(key string) {
		t.Helper()
		full, _ := st.Key("acme", key)
		if n, err := c.Exists(ctx, names.LeaseKey("acme", full), full).Result(); err != nil || n != 0 {
			t.Errorf("%s: %d of its lease and value left (%v), want none", key, n, err)
		}
	}

	// The lease taken, then the cache fills during the load.
	loading, filled := make(chan struct{}), make(chan struct{})
	type got struct {
		v   []byte
		err error
	}
	done := make(chan got, 1)
	go func() {
		v, err := st.Fetch(ctx, "acme", "user:1", opt, func(context.Context) ([]byte, error) {
			close(loading)
			<-filled
			return []byte("fresh 1"), nil
		})
		done <- got{v, err}
	}()
	<-loading
	fill(t, c)
	close(filled)
	if r := <-done; r.err != nil || string(r.v) != "fresh 1" {
		t.Errorf("a fill on a cache that filled during the load: %q, %v; want the loaded value", r.v, r.err)
	}
	noLease("user:1")

	// A miss on the full cache.
	v, err := st.Fetch(ctx, "acme", "user:2", opt, func(context.Context) ([]byte, error) { return []byte("fresh 2"), nil })
	if err != nil || string(v) != "fresh 2" {
		t.Errorf("a miss on the full cache: %q, %v; want the loaded value", v, err)
	}
	noLease("user:2")
}

// The bus loses its data while the cache is full. The check that drops the
// whole tags of the new epochs records the bus identity it saw (a SET in
// the cache Redis, refused with OOM): the check must still complete, once,
// and the channels go on key by key, not a whole tag at every check.
func TestAttack8CacheFullBusLosesItsData(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.running("acme")
	for _, k := range []string{"user:1", "user:2", "user:3", "user:4", "user:5"} {
		e.seed("profile-svc", "acme", k, "active")
	}
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	s, _ := e.subscriber("profile-svc", subscriber.Options{Registerer: reg, CheckInterval: 200 * time.Millisecond})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "acme", "user:1")
	fill(t, e.caches["profile-svc"].Client(t))

	must(t, e.busC.FlushAll(ctx).Err())
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitAllGone(10*time.Second, "the new epoch's whole tag", "profile-svc", "acme", []string{"user:2", "user:3", "user:4", "user:5"})
	redistest.Eventually(t, 10*time.Second, "ready after the bus lost its data", s.Ready)
	wholeTags := metric(t, reg, "subscriber_recoveries_total", "kind", "whole_tag")
	// A few more checks: none drops the tag again.
	for i := 0; i < 3; i++ {
		checked := metric(t, reg, "subscriber_position_checks_total")
		redistest.Eventually(t, 10*time.Second, "another check", func() bool { return metric(t, reg, "subscriber_position_checks_total") > checked })
	}
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "whole_tag"); got != wholeTags {
		t.Errorf("whole-tag recoveries went from %v to %v in three checks after the loss", wholeTags, got)
	}
	if !s.Ready() {
		t.Errorf("not ready: %v", s.Problems())
	}
}

// The sidecar started, and started again, on a full cache Redis: it is
// ready, and applies what comes, each run (a run indexes its tenants anew).
func TestAttack8CacheFullAgentStartsAndApplies(t *testing.T) {
	e := newEnv(t, "")
	e.running("acme")
	e.seed("profile-svc", "acme", "user:1", "active")
	e.seed("profile-svc", "acme", "user:2", "active")
	e.router(router.Options{})
	fill(t, e.caches["profile-svc"].Client(t))
	path := filepath.Join(t.TempDir(), "matrix.yaml")
	must(t, os.WriteFile(path, []byte(testMatrix), 0o644))
	epoch := ""
	for run, key := range []string{"user:1", "user:2"} {
		cmd := exec.Command(testbin.Routerd(t), "agent", "--matrix", path, "--service", "profile-svc", "--redis", e.bus.URL,
			"--cache-redis", e.caches["profile-svc"].URL, "--listen", testbin.AnyPort)
		var log lockedBuffer
		cmd.Stderr = &log
		must(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		waitReadyz(t, testbin.ListenAddr(t, log.String))

		e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{key}})
		e.waitGone("profile-svc", "acme", key)
		if epoch == "" {
			epoch, _ = e.meta("invalidate:acme:active")
		}
		want := int64(run + 1)
		redistest.Eventually(t, 10*time.Second, fmt.Sprintf("position at %d", want), func() bool {
			p, _ := e.position("profile-svc", "acme", "active")
			return p.Epoch == epoch && p.Version == want
		})
		must(t, cmd.Process.Signal(syscall.SIGTERM))
		if err := cmd.Wait(); err != nil {
			t.Errorf("agent run %d: %v\n%s", run+1, err, log.String())
		}
	}
}

// set.lua, as a client of another language sends it (docs/protocol.md 3),
// on a full cache: its first write was the DEL of the key's lease, which
// Redis lets through (a deletion), and after a first write Redis refuses
// nothing more in a script: the value was stored past maxmemory, and a
// full cache under noeviction kept growing with every value written. It
// must be refused whole, with OOM.
func TestAttack8CacheFullRefusesAValue(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	full, set := "{tenant:acme}:user:1", names.TagSetKey("acme", "active")
	fill(t, c)
	raw := redis.NewScript(lua.Sources()["set.lua"])
	err := raw.Run(ctx, c, []string{full, names.LeaseKey("acme", full), set}, strings.Repeat("v", 100000), 0).Err()
	if !redis.HasErrorPrefix(err, "OOM") {
		t.Errorf("set.lua on the full cache: %v, want OOM", err)
	}
	if n, err := c.Exists(ctx, full, set).Result(); err != nil || n != 0 {
		t.Errorf("%d of the value and its tag set written on the full cache (%v)", n, err)
	}
}

// lease.lua, as a client of another language sends it, on a full cache
// where the key's lease has no time to live (an operator's or a stray
// write, which the script replaces): that path's first write was the DEL
// of the stray lease, which Redis lets through (a deletion), and after a
// first write Redis refuses nothing more in a script. It must be refused
// whole, with OOM: the stray lease as it was, no set written.
func TestAttack8CacheFullRefusesALeaseOverAStrayOne(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	key, set := "{tenant:acme}:user:1", names.TagSetKey("acme", "active")
	lease := names.LeaseKey("acme", key)
	must(t, c.Set(ctx, lease, "stray", 0).Err())
	fill(t, c)
	raw := redis.NewScript(lua.Sources()["lease.lua"])
	err := raw.Run(ctx, c, []string{key, lease, set}, strings.Repeat("t", 100000), 30000).Err()
	if !redis.HasErrorPrefix(err, "OOM") {
		t.Errorf("lease.lua over a stray lease on the full cache: %v, want OOM", err)
	}
	if v, err := c.Get(ctx, lease).Result(); err != nil || v != "stray" {
		t.Errorf("the stray lease after lease.lua on the full cache: %.20q, %v; want it untouched", v, err)
	}
	if n, err := c.Exists(ctx, set).Result(); err != nil || n != 0 {
		t.Errorf("the tag set written on the full cache (%d, %v)", n, err)
	}
}

// The same on a full cache cluster, each master at maxmemory: the scripts'
// flags (allow-oom, and allow-cross-slot-keys as without flags) hold on
// cluster nodes, for key-level and whole-tag invalidations, an empty tag's
// too, on every master.
func TestAttack8CacheFullClusterStillInvalidates(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	tenants := e.tenantsOnMasters("shop", 3, "active")
	for _, tenant := range tenants {
		e.seed(tenant, "user:1", "active")
		e.seed(tenant, "user:2", "active")
	}
	e.start(oneTenantMatrix(strings.Join(tenants, ", ")), "search-svc")
	must(t, e.cacheC.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		if err := m.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
			return err
		}
		t.Cleanup(func() { _ = m.ConfigSet(context.Background(), "maxmemory", "0").Err() })
		return nil
	}))
	if err := e.store.Set(ctx, tenants[0], "probe", []byte("v"), 0, "active"); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("a Set on the full cluster: %v, want OOM", err)
	}
	publish := func(ev wire.Event) {
		if _, err := e.pub.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	for _, tenant := range tenants {
		publish(wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}})
	}
	// waitAt waits until the tenant's position is at version v, the
	// channel's on the bus too (v events were not merged into fewer).
	waitAt := func(tenant string, v int64) {
		t.Helper()
		redistest.Eventually(t, 15*time.Second, fmt.Sprintf("%s position at %d", tenant, v), func() bool {
			meta, _ := e.busC.HGet(ctx, "{"+names.Channel("invalidate", tenant, "active")+"}:meta", "version").Int64()
			p, ok, err := e.store.ReadPosition(ctx, tenant, "search-svc", "active")
			return meta == v && err == nil && ok && p.Version == v
		})
	}
	for _, tenant := range tenants {
		e.waitGone(tenant, "user:1")
		if _, err := e.store.Get(ctx, tenant, "user:2"); err != nil {
			t.Errorf("%s/user:2 was deleted by a key-level event (%v)", tenant, err)
		}
		waitAt(tenant, 1)
		publish(wire.Event{Tenant: tenant, Domain: "user", WholeTag: true})
		e.waitGone(tenant, "user:2")
		waitAt(tenant, 2)
		publish(wire.Event{Tenant: tenant, Domain: "user", WholeTag: true}) // of an empty tag
		waitAt(tenant, 3)
	}
}
