package tagstore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
)

// A miss loads, caches under the tags and leaves no lease; a hit does not
// load.
func TestFetchMissThenHit(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	loads := 0
	load := func(context.Context) ([]byte, error) { loads++; return []byte("v1"), nil }
	opt := tagstore.FetchOptions{TTL: time.Minute, Tags: []string{"active"}}
	for range 3 {
		v, err := s.Fetch(ctx, "acme", "user:1", opt, load)
		if err != nil || string(v) != "v1" {
			t.Fatalf("Fetch = %q, %v", v, err)
		}
	}
	if loads != 1 {
		t.Errorf("loaded %d times, want 1", loads)
	}
	if ok, _ := c.SIsMember(ctx, "{tenant:acme}:tag:active", "{tenant:acme}:user:1").Result(); !ok {
		t.Error("the value is not registered under its tag")
	}
	lease := names.LeaseKey("acme", "{tenant:acme}:user:1")
	if exists(t, c, lease) != 0 {
		t.Error("the lease outlived the fill")
	}
	if ttl := c.PTTL(ctx, "{tenant:acme}:user:1").Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("ttl = %v", ttl)
	}
}

// fetchDuring runs a Fetch whose load runs invalidate in the middle (a
// change committed and its invalidation applied while the old value was
// being read), and says whether the old value ended up cached.
func fetchDuring(t *testing.T, s *tagstore.Store, key string, opt tagstore.FetchOptions, invalidate func()) bool {
	t.Helper()
	ctx := context.Background()
	v, err := s.Fetch(ctx, "acme", key, opt, func(context.Context) ([]byte, error) {
		invalidate()
		return []byte("old"), nil
	})
	if err != nil || string(v) != "old" {
		t.Fatalf("Fetch = %q, %v; want the loaded value", v, err)
	}
	_, err = s.Get(ctx, "acme", key)
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	return err == nil
}

// Every invalidation covering the key voids the lease: the value loaded
// before it is returned, never cached.
func TestFetchInvalidatedDuringLoadNotCached(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t, tagstore.Options{CardinalityGuard: 10, ChunkSize: 3, RefGuard: 1})
	plain := tagstore.FetchOptions{Tags: []string{"active"}}
	byRef := tagstore.FetchOptions{Tags: []string{"users"}, Refs: []tagstore.Ref{{Domain: "user", Entity: "1"}}}
	// Above the ref guard: registered at the domain's type level.
	typeLevel := tagstore.FetchOptions{Tags: []string{"users"}, Refs: []tagstore.Ref{{Domain: "user", Entity: "1"}, {Domain: "user", Entity: "2"}}}
	pos := tagstore.Position{Epoch: "e", Version: 0}
	next := func() tagstore.Position { pos.Version++; return pos }
	apply := func(inv tagstore.Invalidation) func() {
		return func() {
			if _, err := s.Apply(ctx, inv); err != nil {
				t.Fatal(err)
			}
		}
	}
	fill := func(tag string, n int) {
		for i := range n {
			must(t, s.Set(ctx, "acme", "other:"+string(rune('a'+i)), []byte("x"), 0, tag))
		}
	}
	for name, tc := range map[string]struct {
		opt        tagstore.FetchOptions
		invalidate func()
	}{
		"key level":                  {plain, apply(tagstore.Invalidation{Tenant: "acme", Tag: "active", Keys: []string{"k"}})},
		"key level of a ref'd value": {byRef, apply(tagstore.Invalidation{Tenant: "acme", Tag: "users", Keys: []string{"k"}, Refs: []string{"user"}})},
		"key level in a batch": {plain, func() {
			_, errs := s.ApplyMany(ctx, []tagstore.Invalidation{
				{Tenant: "acme", Tag: "active", Keys: []string{"x"}, Service: "svc", Position: next()},
				{Tenant: "acme", Tag: "active", Keys: []string{"k"}, Service: "svc", Position: next()},
			})
			must(t, errors.Join(errs...))
		}},
		"whole tag":                  {plain, apply(tagstore.Invalidation{Tenant: "acme", Tag: "active"})},
		"whole tag, chunked":         {plain, func() { fill("active", 25); apply(tagstore.Invalidation{Tenant: "acme", Tag: "active"})() }},
		"repair":                     {plain, apply(tagstore.Invalidation{Tenant: "acme", Tag: "active", Service: "svc", Position: tagstore.Position{Epoch: "r", Version: 1}, Repair: true})},
		"entity level, plain":        {plain, apply(tagstore.Invalidation{Tenant: "acme", Tag: "active", Refs: []string{"user/9"}, Plain: true})},
		"entity":                     {byRef, apply(tagstore.Invalidation{Tenant: "acme", Tag: "users", Refs: []string{"user/1"}})},
		"type level":                 {typeLevel, apply(tagstore.Invalidation{Tenant: "acme", Tag: "users", Keys: []string{"x"}, Refs: []string{"user"}})},
		"whole tag of a ref'd value": {byRef, apply(tagstore.Invalidation{Tenant: "acme", Tag: "users"})},
	} {
		t.Run(name, func(t *testing.T) {
			if fetchDuring(t, s, "k", tc.opt, tc.invalidate) {
				t.Error("the value loaded before the invalidation was cached after it")
			}
			must(t, s.Set(ctx, "acme", "k", []byte("x"), 0)) // then gone again
			_, err := s.InvalidateKeys(ctx, "acme", "active", "k")
			must(t, err)
		})
	}
	// An invalidation that does not cover the key leaves the fill alone.
	if !fetchDuring(t, s, "k", byRef, apply(tagstore.Invalidation{Tenant: "acme", Tag: "users", Refs: []string{"user/2"}})) {
		t.Error("an invalidation of another entity voided the fill")
	}
}

// Concurrent misses load once; the others read the holder's value.
func TestFetchHerdLoadsOnce(t *testing.T) {
	s, _ := newStore(t, tagstore.Options{})
	var loads atomic.Int32
	release := make(chan struct{})
	load := func(context.Context) ([]byte, error) {
		loads.Add(1)
		<-release
		return []byte("v"), nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := s.Fetch(context.Background(), "acme", "hot", tagstore.FetchOptions{Tags: []string{"t"}}, load)
			if err == nil && string(v) != "v" {
				err = errors.New("got " + string(v))
			}
			errs <- err
		}()
	}
	redistest.Eventually(t, 10*time.Second, "one load started", func() bool { return loads.Load() > 0 })
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		must(t, err)
	}
	if n := loads.Load(); n != 1 {
		t.Errorf("%d loads for 50 concurrent misses, want 1", n)
	}
}

// A failed or cancelled load frees the lease at once and caches nothing; a
// value above the size limit is refused naming the limit.
func TestFetchFailuresFreeTheLease(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	opt := tagstore.FetchOptions{Tags: []string{"t"}, LeaseTime: time.Hour, WaitLimit: time.Second}
	lease := names.LeaseKey("acme", "{tenant:acme}:k")
	boom := errors.New("database down")
	if _, err := s.Fetch(ctx, "acme", "k", opt, func(context.Context) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Errorf("load's error came back as %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	if _, err := s.Fetch(cctx, "acme", "k", opt, func(context.Context) ([]byte, error) { cancel(); return []byte("v"), nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled fill returned %v", err)
	}
	big := tagstore.FetchOptions{Tags: []string{"t"}, LeaseTime: time.Hour, MaxSize: 10}
	_, err := s.Fetch(ctx, "acme", "k", big, func(context.Context) ([]byte, error) { return make([]byte, 11), nil })
	if !errors.Is(err, tagstore.ErrTooLarge) || !strings.Contains(err.Error(), "MaxSize of 10 bytes") {
		t.Errorf("a value above the limit: %v", err)
	}
	func() {
		defer func() { _ = recover() }()
		_, _ = s.Fetch(ctx, "acme", "k", opt, func(context.Context) ([]byte, error) { panic("load panicked") })
	}()
	if exists(t, c, lease, "{tenant:acme}:k") != 0 || c.SCard(ctx, "{tenant:acme}:tag:t").Val() != 0 {
		t.Fatal("a failed fill left its lease or a value")
	}
	// The next miss takes the lease at once (the lease time is an hour).
	v, err := s.Fetch(ctx, "acme", "k", opt, func(context.Context) ([]byte, error) { return []byte("v"), nil })
	if err != nil || string(v) != "v" {
		t.Errorf("Fetch after failures = %q, %v", v, err)
	}
}

// A holder that never fills (it died) holds the lease for the lease time;
// then a waiter loads. A waiter gives up at its wait limit.
func TestFetchDeadHolderFreesAfterLeaseTime(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	full := "{tenant:acme}:k"
	take := func(ms int) {
		req := lua.LeaseRequest{Key: full, LeaseKey: names.LeaseKey("acme", full), Sets: []string{"{tenant:acme}:tag:t"},
			Token: "dead-holder", LeaseTime: time.Duration(ms) * time.Millisecond}
		r, err := lua.Run(ctx, c, &req)
		if err != nil || r.Status != lua.Leased {
			t.Fatalf("lease.lua = %v, %v", r, err)
		}
	}
	take(300)
	start := time.Now()
	v, err := s.Fetch(ctx, "acme", "k", tagstore.FetchOptions{Tags: []string{"t"}}, func(context.Context) ([]byte, error) { return []byte("v"), nil })
	if err != nil || string(v) != "v" {
		t.Fatalf("Fetch = %q, %v", v, err)
	}
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Errorf("the waiter loaded after %v, before the dead holder's lease ended", took)
	}
	must(t, c.Del(ctx, full).Err())
	take(60000)
	_, err = s.Fetch(ctx, "acme", "k", tagstore.FetchOptions{Tags: []string{"t"}, WaitLimit: 50 * time.Millisecond}, func(context.Context) ([]byte, error) { return []byte("v"), nil })
	if !errors.Is(err, tagstore.ErrLeaseWait) || !strings.Contains(err.Error(), "WaitLimit 50ms") {
		t.Errorf("past the wait limit: %v", err)
	}
}

func TestFetchOptionsChecked(t *testing.T) {
	s, _ := newStore(t, tagstore.Options{})
	load := func(context.Context) ([]byte, error) { return nil, nil }
	tags := []string{"t"}
	for name, opt := range map[string]tagstore.FetchOptions{
		"negative ttl":        {Tags: tags, TTL: -1},
		"lease time below ms": {Tags: tags, LeaseTime: time.Microsecond},
		"negative wait limit": {Tags: tags, WaitLimit: -1},
		"negative size":       {Tags: tags, MaxSize: -1},
		"bad tag":             {Tags: []string{"bad tag"}},
		"refs without tags":   {Tags: nil, Refs: []tagstore.Ref{{Domain: "user", Entity: "1"}}},
		"no tags":             {},
	} {
		if _, err := s.Fetch(context.Background(), "acme", "k", opt, load); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if _, err := s.Fetch(context.Background(), "acme", "lease:k", tagstore.FetchOptions{Tags: tags}, load); err == nil {
		t.Error("a key naming a lease accepted")
	}
	if _, err := s.Fetch(context.Background(), "acme", "k", tagstore.FetchOptions{Tags: tags}, nil); err == nil {
		t.Error("no load accepted")
	}
}

// Refs known only once the value is loaded (the entities a query response
// holds) are covered by the lease's type-level refs: any event of the
// domain during the load voids the fill; without one the value goes under
// its own refs, not the type level; a ref the lease did not cover is not
// cached.
func TestFetchLoadedRefs(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	opt := func(loaded ...tagstore.Ref) tagstore.FetchOptions {
		return tagstore.FetchOptions{Tags: []string{"users"}, LeaseRefs: []tagstore.Ref{{Domain: "user"}},
			LoadedRefs: func() []tagstore.Ref { return loaded }}
	}
	one := tagstore.Ref{Domain: "user", Entity: "1"}
	if fetchDuring(t, s, "q1", opt(one), func() {
		_, err := s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "users", Refs: []string{"user/5"}})
		must(t, err)
	}) {
		t.Error("an event of the domain during the load did not void a fill whose refs came with the value")
	}
	if !fetchDuring(t, s, "q2", opt(one), func() {}) {
		t.Fatal("the fill was not cached")
	}
	full := "{tenant:acme}:q2"
	if !c.SIsMember(ctx, "{tenant:acme}:ref:user/1", full).Val() || c.SIsMember(ctx, "{tenant:acme}:ref:user", full).Val() ||
		!c.SIsMember(ctx, "{tenant:acme}:tag:users#refs", full).Val() {
		t.Error("the value is not registered under its loaded ref and tag only")
	}
	if exists(t, c, names.LeaseKey("acme", full)) != 0 {
		t.Error("the lease outlived the fill")
	}
	if fetchDuring(t, s, "q3", opt(tagstore.Ref{Domain: "product", Entity: "1"}), func() {}) {
		t.Error("a value with a ref the lease did not cover was cached")
	}
}

// A value stored with Set during a load (what its writer just committed)
// voids the fill, even after an invalidation took the key out of its tag
// and Set put it back: the fill never overwrites it.
func TestFetchSetDuringLoadWins(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t, tagstore.Options{})
	v, err := s.Fetch(ctx, "acme", "k", tagstore.FetchOptions{Tags: []string{"t"}}, func(context.Context) ([]byte, error) {
		_, err := s.InvalidateKeys(ctx, "acme", "t", "k")
		must(t, err)
		must(t, s.Set(ctx, "acme", "k", []byte("new"), 0, "t"))
		return []byte("old"), nil
	})
	if err != nil || string(v) != "old" {
		t.Fatalf("Fetch = %q, %v", v, err)
	}
	if got, err := s.Get(ctx, "acme", "k"); err != nil || string(got) != "new" {
		t.Errorf("cached %q, %v; want the value Set during the load", got, err)
	}
}

// A lease key no lease.lua made — without a time to live, or of another
// type — does not hold the key's misses for ever.
func TestFetchStrayLeaseDoesNotBlock(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	lease := names.LeaseKey("acme", "{tenant:acme}:k")
	opt := tagstore.FetchOptions{Tags: []string{"t"}, WaitLimit: time.Second}
	for _, stray := range []func() error{
		func() error { return c.Set(ctx, lease, "forever", 0).Err() },
		func() error { return c.HSet(ctx, lease, "f", "v").Err() },
	} {
		must(t, c.Del(ctx, "{tenant:acme}:k").Err())
		must(t, stray())
		v, err := s.Fetch(ctx, "acme", "k", opt, func(context.Context) ([]byte, error) { return []byte("v"), nil })
		if err != nil || string(v) != "v" {
			t.Errorf("Fetch with a stray lease = %q, %v", v, err)
		}
		if got, _ := s.Get(ctx, "acme", "k"); string(got) != "v" {
			t.Errorf("not cached after a stray lease: %q", got)
		}
	}
}
