package subscriber

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
)

// A master whose identity changed, or that is new (a cluster master that
// took over another's address, or was added), counts as changed; one that
// left does not; nor does a counter that could not be counted, or that
// another key answered (a slot that moved).
func TestCacheIDsChanged(t *testing.T) {
	id := func(server string, count int64) cacheID { return cacheID{server: server, key: "k", count: count} }
	was := cacheIDs{"a:1": id("run-a", 5), "b:1": id("run-b", 5), "c:1": id("run-c", 5)}
	now := cacheIDs{"a:1": id("run-a", 6), "b:1": id("run-b2", 1), "d:1": id("run-d", 1)}
	got := was.changed(now)
	slices.Sort(got)
	want := []string{"b:1 run-b→run-b2", "d:1 none→run-d"}
	if !slices.Equal(got, want) {
		t.Errorf("changed = %q, want %q", got, want)
	}
	if c := now.changed(now); len(c) != 3 {
		t.Errorf("the same counts: %q, want each counter gone back", c)
	}
	if c := (cacheIDs{"a:1": id("run", 3)}).changed(cacheIDs{"a:1": id("run+flushes=1", 4)}); len(c) != 1 {
		t.Errorf("a flush since is not a change: %q", c)
	}
	if c := (cacheIDs{"a:1": id("run", 7)}).changed(cacheIDs{"a:1": id("run", 2)}); len(c) != 1 {
		t.Errorf("a counter gone back is not a change: %q", c)
	}
	moved := cacheIDs{"a:1": {server: "run", key: "k2", count: 1}}
	if c := (cacheIDs{"a:1": id("run", 7)}).changed(moved); len(c) != 0 {
		t.Errorf("another key's count is a change: %q", c)
	}
	unknown := cacheIDs{"a:1": id("run", 0)}
	unknown.carry(cacheIDs{"a:1": id("run", 7)})
	if c := (cacheIDs{"a:1": id("run", 7)}).changed(unknown); len(c) != 0 || unknown["a:1"].count != 7 {
		t.Errorf("a count not read: changed %q, carried %d, want none and 7", c, unknown["a:1"].count)
	}
	if c := unknown.changed(cacheIDs{"a:1": id("run", 7)}); len(c) != 1 {
		t.Errorf("the count carried, then answered the same: %q, want a change", c)
	}
}

// A cache Redis whose data goes back while its run_id and flush counts stay
// as they were: DEBUG RELOAD NOSAVE of a dump saved before the last
// invalidation brings the value back with the older position; FLUSHALL and
// CONFIG RESETSTAT in one transaction empty it and leave no flush counted.
// The subscriber sees each (its identity counter went back) and checks at
// once: the value is invalidated again long before the 30 s check.
func TestCacheGoneBackUnderTheSameIdentityRecheckedAtOnce(t *testing.T) {
	f := newBurst(t, 1, true, false, "--enable-debug-command", "yes")
	f.cached(t, "t0", "user:1", "user:2")
	f.publish(t, "t0", 1, "user:1")
	stop := runUntilCancelled(t, f.s)
	redistest.Eventually(t, 10*time.Second, "ready, user:1 invalidated", func() bool {
		return f.s.Ready() && len(f.left(t, "t0", "user:1")) == 0
	})
	must(t, f.cache.Save(f.ctx).Err())
	counter := names.IdentityKey("svc", "")
	saved, err := f.cache.Get(f.ctx, counter).Int64()
	must(t, err)
	m := f.publish(t, "t0", 2, "user:2")
	must(t, f.bus.Publish(f.ctx, m.Channel, m.Payload).Err())
	// A read of the identity after the dump's save (once a second): a
	// reload of a dump saved since the last read goes unseen (cacheID).
	redistest.Eventually(t, 10*time.Second, "user:2 invalidated, the identity read since the save", func() bool {
		n, _ := f.cache.Get(f.ctx, counter).Int64()
		return n > saved && len(f.left(t, "t0", "user:2")) == 0
	})

	changes := f.s.health.cacheChanges.Load()
	must(t, f.cache.Do(f.ctx, "DEBUG", "RELOAD", "NOSAVE").Err())
	// Seen only if the data went back: user:2 was readable again.
	redistest.Eventually(t, 10*time.Second, "the reload of the older dump seen, and user:2 invalidated again", func() bool {
		return f.s.health.cacheChanges.Load() > changes && len(f.left(t, "t0", "user:2")) == 0
	})
	if p := f.stored(t, "t0"); p.Version != 2 {
		t.Errorf("position %+v after the check, want version 2", p)
	}

	changes = f.s.health.cacheChanges.Load()
	if _, err := f.cache.TxPipelined(f.ctx, func(p redis.Pipeliner) error {
		p.FlushAll(f.ctx)
		p.ConfigResetStat(f.ctx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the flush seen", func() bool { return f.s.health.cacheChanges.Load() > changes })
	stop()
}

// On a cluster cache each master counts on a key of its own slots, and a
// flush of one master hidden by CONFIG RESETSTAT is that master's change.
func TestClusterCacheIdentityCountedOnEveryMaster(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	cache := cl.Client(t)
	seen := &redistest.Counter{Name: "incr"}
	cache.AddHook(seen) // a service's hook on its cluster client: it sees the counting too
	bus := redistest.Start(t).Client(t)
	s, err := New(bus, Options{Service: "profile-svc", Matrix: testMatrixParsed(t), Cache: cache,
		Handler: func(context.Context, Invalidation) error { return nil }})
	must(t, err)
	ctx := context.Background()
	first, err := s.readCacheIDs(ctx)
	must(t, err)
	if len(first) != 3 {
		t.Fatalf("identities of %d masters, want 3: %+v", len(first), first)
	}
	for addr, id := range first {
		if id.count != 1 {
			t.Errorf("%s: counted %d on %q, want 1", addr, id.count, id.key)
		}
	}
	now, err := s.readCacheIDs(ctx)
	must(t, err)
	if c := first.changed(now); len(c) != 0 {
		t.Errorf("changed with nothing done: %q", c)
	}
	var flushed string
	for addr := range now {
		flushed = addr
		break
	}
	node := redis.NewClient(&redis.Options{Addr: flushed})
	defer node.Close()
	if _, err := node.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.FlushAll(ctx)
		p.ConfigResetStat(ctx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	after, err := s.readCacheIDs(ctx)
	must(t, err)
	if c := now.changed(after); len(c) != 1 || !strings.HasPrefix(c[0], flushed+" ") {
		t.Errorf("changed %q, want %s alone", c, flushed)
	}
	if n := seen.N(); n != 9 {
		t.Errorf("the cluster client's hook saw %d INCRs of the identity counters, want 9 (3 reads of 3 masters)", n)
	}
}

// The position index (tagstore IndexTenants) is written again after the
// cache Redis lost it: a FLUSHALL seen by the identity watch makes the
// next positions written — the check's that follows it, then the next
// message's — index their tenants again. Without it, a restart
// on a matrix that took the tag from the service leaves the channel's
// values cached (leaveFormer reads the index), and a service of every
// tenant whose bus lost its registry does not find the tenant.
func TestPositionIndexRebuiltAfterAFlush(t *testing.T) {
	f := newBurst(t, 1, true, false)
	stop := runUntilCancelled(t, f.s)
	redistest.Eventually(t, 10*time.Second, "ready", f.s.Ready)
	live := func(v int64, keys ...string) {
		m := f.publish(t, "t0", v, keys...)
		must(t, f.bus.Publish(f.ctx, m.Channel, m.Payload).Err())
		redistest.Eventually(t, 10*time.Second, fmt.Sprint("version ", v, " stored"), func() bool { return f.stored(t, "t0").Version == v })
	}
	indexed := func() []string {
		ts, err := f.s.store.IndexedTenants(f.ctx, "svc")
		must(t, err)
		return ts
	}
	live(1, "user:1")
	if ts := indexed(); !slices.Equal(ts, []string{"t0"}) {
		t.Fatalf("indexed %v before the flush, want [t0]", ts)
	}
	must(t, f.cache.Do(f.ctx, "FLUSHALL").Err())
	redistest.Eventually(t, 10*time.Second, "the flush seen and checked", func() bool {
		return f.s.health.cacheChanges.Load() > 0 && f.s.Ready()
	})
	if ts := indexed(); !slices.Equal(ts, []string{"t0"}) {
		t.Errorf("indexed %v after the flush's check, want [t0]", ts)
	}
	live(2, "user:2")
	if ts := indexed(); !slices.Equal(ts, []string{"t0"}) {
		t.Errorf("indexed %v after the flush and a position written again, want [t0]", ts)
	}
	stop()
}
