package tagstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
)

// Defaults of FetchOptions.
const (
	DefaultLeaseTime = 5 * time.Second
	DefaultMaxSize   = 1 << 20
)

// Bounds of a waiting Fetch's polls.
const (
	firstPoll = 2 * time.Millisecond
	maxPoll   = 50 * time.Millisecond
)

// releaseTimeout bounds giving a lease back after the caller's ctx ended.
const releaseTimeout = 2 * time.Second

// ErrLeaseWait is wrapped by Fetch's error when another fill held the
// key's lease for longer than FetchOptions.WaitLimit.
var ErrLeaseWait = errors.New("tagstore: another fill held the lease past the wait limit")

// ErrTooLarge is wrapped by Fetch's error when load returned a value above
// FetchOptions.MaxSize (nothing is cached).
var ErrTooLarge = errors.New("tagstore: loaded value above the size limit")

// FetchOptions say how Fetch caches what it loads.
type FetchOptions struct {
	// TTL is the value's time to live, 0 for none.
	TTL time.Duration
	// Tags and Refs register the value as Set (Refs empty) or SetRefs do.
	// Tags are required, and must be those of the key's domain in the
	// matrix: the invalidations that void a fill find the key through its
	// sets, from the moment the lease is taken.
	Tags []string
	Refs []Ref
	// LoadedRefs, when set, is called after a successful load for the
	// value's refs known only then (the entities a query response turned
	// out to hold); the value is registered under them too. Each must be
	// covered by the lease — itself, or its domain's type level, in Refs
	// or LeaseRefs — so that an event of it during the load voided the
	// fill; a value with a ref not covered is returned, not cached.
	LoadedRefs func() []Ref
	// LeaseRefs are refs the key is registered under during the load
	// only, not with the value: the type level of each domain whose
	// entities LoadedRefs may name, so that any event of the domain during
	// the load voids the fill.
	LeaseRefs []Ref
	// LeaseTime is how long one miss may load before another may take the
	// lease (a holder that died frees it after this): longer than a load
	// takes. Default DefaultLeaseTime.
	LeaseTime time.Duration
	// WaitLimit bounds how long a miss waits for another's fill before it
	// gives up with ErrLeaseWait (ctx bounds it too). Default twice the
	// lease time, so a waiter outlives a dead holder's lease.
	WaitLimit time.Duration
	// MaxSize is the largest value cached, in bytes; a larger one is an
	// error (ErrTooLarge). Default DefaultMaxSize.
	MaxSize int
}

func (o FetchOptions) withDefaults() (FetchOptions, error) {
	if o.TTL < 0 {
		return o, fmt.Errorf("tagstore: negative ttl %v", o.TTL)
	}
	if o.LeaseTime == 0 {
		o.LeaseTime = DefaultLeaseTime
	}
	if o.LeaseTime < time.Millisecond {
		return o, fmt.Errorf("tagstore: lease time %v is below 1ms", o.LeaseTime)
	}
	if o.WaitLimit == 0 {
		o.WaitLimit = 2 * o.LeaseTime
	}
	if o.WaitLimit < 0 {
		return o, fmt.Errorf("tagstore: negative wait limit %v", o.WaitLimit)
	}
	if o.MaxSize == 0 {
		o.MaxSize = DefaultMaxSize
	}
	if o.MaxSize < 0 {
		return o, fmt.Errorf("tagstore: negative size limit %d", o.MaxSize)
	}
	return o, nil
}

// Fetch returns the tenant's cached value of key, or loads, caches and
// returns it: a read-through cache that no invalidation can race
// (docs/protocol.md#32-reading-through-a-lease).
//
// A hit costs one round trip, as Get. A miss takes the key's lease,
// registers the key in its tag and reference sets, and runs load once; the
// value is cached (as Set and SetRefs register it) only if no invalidation
// covering the key — key-level, entity-level, type level, whole tag, a
// recovery's whole tag or repair — was applied since the lease was taken,
// which each does by taking the key out of one of those sets, and no Set of
// the key came in between. Otherwise the loaded value is returned and not
// cached: it may predate the change the invalidation announced, and the
// next Fetch loads again.
//
// Concurrent misses of the key, in this process or any other, wait for the
// holder's value instead of loading too, polling with backoff, up to
// WaitLimit and ctx. A holder whose load fails, panics or outlives ctx gives
// the lease back at once, caching nothing; one that dies frees it after
// LeaseTime, and a waiter then loads.
//
// A full cache Redis (maxmemory under noeviction: OOM) caches nothing: a
// miss it refuses a lease loads without one, and a fill it refuses returns
// the loaded value, uncached, as a voided fill does.
//
// Use Fetch to cache what was read from the source of truth; Set and
// SetRefs are for values a service has just committed itself.
func (s *Store) Fetch(ctx context.Context, tenant, key string, opt FetchOptions, load func(context.Context) ([]byte, error)) ([]byte, error) {
	full, err := s.Key(tenant, key)
	if err != nil {
		return nil, err
	}
	if load == nil {
		return nil, errors.New("tagstore: Fetch needs a load function")
	}
	if opt, err = opt.withDefaults(); err != nil {
		return nil, err
	}
	if len(opt.Tags) == 0 {
		return nil, errors.New("tagstore: Fetch needs the tags of the key's domain: the invalidations that void a fill find it through them")
	}
	v, err := s.c.Get(ctx, full).Bytes()
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("tagstore: fetch %s: %w", full, err)
	}
	leaseRefs := opt.Refs
	if len(opt.LeaseRefs) > 0 {
		leaseRefs = append(slices.Clip(opt.Refs), opt.LeaseRefs...)
	}
	sets, err := s.valueSets(tenant, opt.Tags, leaseRefs)
	if err != nil {
		return nil, err
	}
	f := &fill{s: s, tenant: tenant, full: full, lease: names.LeaseKey(tenant, full), token: newToken(), sets: sets, opt: opt}
	return f.run(ctx, load)
}

// RefGuard is the most refs a value is registered under by entity
// (Options.RefGuard); above it, at the type level of their domains.
func (s *Store) RefGuard() int { return s.opt.RefGuard }

// fill is one miss of Fetch.
type fill struct {
	s           *Store
	tenant      string
	full, lease string
	token       string
	sets        valueSets // the lease's
	opt         FetchOptions
}

func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

func (f *fill) take(ctx context.Context) (lua.LeaseReply, error) {
	req := lua.LeaseRequest{Key: f.full, LeaseKey: f.lease, Sets: f.sets.keys, Token: f.token,
		LeaseTime: f.opt.LeaseTime, Expiring: f.sets.expiring}
	r, err := lua.Run(ctx, f.s.c, &req)
	if err != nil {
		return r, fmt.Errorf("tagstore: lease %s: %w", f.full, err)
	}
	return r, nil
}

func (f *fill) run(ctx context.Context, load func(context.Context) ([]byte, error)) ([]byte, error) {
	start := time.Now()
	poll := firstPoll
	for {
		r, err := f.take(ctx)
		if full(err) {
			return f.loadUncached(ctx, load)
		}
		if err != nil {
			return nil, err
		}
		switch r.Status {
		case lua.LeaseHit:
			return r.Value, nil
		case lua.Leased:
			return f.load(ctx, load)
		}
		waited := time.Since(start)
		if waited >= f.opt.WaitLimit {
			return nil, fmt.Errorf("%w: %s waited %v (FetchOptions.WaitLimit %v)", ErrLeaseWait, f.full, waited.Round(time.Millisecond), f.opt.WaitLimit)
		}
		// Poll again soon, and no later than the lease's end or the
		// wait limit.
		d := min(poll, f.opt.WaitLimit-waited)
		if r.Left > 0 {
			d = min(d, r.Left+time.Millisecond)
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		poll = min(2*poll, maxPoll)
	}
}

// load runs the caller's load under the lease and fills the key, or gives
// the lease back.
func (f *fill) load(ctx context.Context, load func(context.Context) ([]byte, error)) ([]byte, error) {
	done := false
	defer func() {
		if !done {
			f.release(ctx)
		}
	}()
	v, err := load(ctx)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := f.tooLarge(v); err != nil {
		return nil, err
	}
	value, covered, err := f.valueSets()
	if err != nil {
		return nil, err
	}
	if !covered {
		return v, nil // released: a change during the load may not have voided it
	}
	req := lua.SetRequest{Key: f.full, LeaseKey: f.lease, Value: v, TTL: f.opt.TTL, Sets: value.keys, Expiring: value.expiring,
		Lease: &lua.Fill{Key: f.lease, Token: f.token, Sets: f.sets.keys}}
	if _, err := f.s.setIndexed(ctx, f.tenant, &req); err != nil {
		if full(err) {
			return v, nil // not cached, the lease given back (release)
		}
		return nil, fmt.Errorf("tagstore: fill %s: %w", f.full, err)
	}
	f.s.guarded(value)
	// A fill an invalidation voided (lua.FillVoid) stored nothing: the
	// value is the caller's, uncached.
	done = true
	return v, nil
}

// full says whether err is a full cache Redis's refusal (OOM: at maxmemory
// under noeviction), which refuses a lease and a fill but still serves
// reads and invalidations.
func full(err error) bool { return redis.HasErrorPrefix(err, "OOM") }

// loadUncached loads for a miss that a full cache Redis gave no lease: the
// value is the caller's, and nothing is cached (concurrent misses load too).
func (f *fill) loadUncached(ctx context.Context, load func(context.Context) ([]byte, error)) ([]byte, error) {
	v, err := load(ctx)
	if err != nil {
		return nil, err
	}
	if err := f.tooLarge(v); err != nil { // as when it would be cached
		return nil, err
	}
	return v, nil
}

// tooLarge is the error of a loaded value above FetchOptions.MaxSize.
func (f *fill) tooLarge(v []byte) error {
	if len(v) > f.opt.MaxSize {
		return fmt.Errorf("%w: %s loaded %d bytes, above FetchOptions.MaxSize of %d bytes", ErrTooLarge, f.full, len(v), f.opt.MaxSize)
	}
	return nil
}

// valueSets are the sets the loaded value goes in; covered is false when a
// ref of LoadedRefs was not covered by the lease.
func (f *fill) valueSets() (value valueSets, covered bool, err error) {
	refs := f.opt.Refs
	if f.opt.LoadedRefs != nil {
		loaded := f.opt.LoadedRefs()
		for _, r := range loaded {
			if !f.covers(r) {
				return value, false, nil
			}
		}
		refs = append(slices.Clip(refs), loaded...)
	} else if len(f.opt.LeaseRefs) == 0 {
		return f.sets, true, nil
	}
	if value, err = f.s.valueSets(f.tenant, f.opt.Tags, refs); err != nil {
		return value, false, fmt.Errorf("tagstore: fill %s: %w", f.full, err)
	}
	return value, true, nil
}

// covers says whether an event of r voids the lease: the lease is
// registered under r or its domain's type level (or, above the ref guard,
// the type level of every domain).
func (f *fill) covers(r Ref) bool {
	for _, list := range [][]Ref{f.opt.Refs, f.opt.LeaseRefs} {
		for _, l := range list {
			if l == r || (l.Entity == "" && l.Domain == r.Domain) || (f.sets.typeLevel && l.Domain == r.Domain) {
				return true
			}
		}
	}
	return false
}

// release gives the lease back, even when ctx has ended.
func (f *fill) release(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	req := lua.ReleaseRequest{Key: f.full, Lease: lua.Fill{Key: f.lease, Token: f.token, Sets: f.sets.keys}}
	_, _ = lua.Run(ctx, f.s.c, &req) // else it expires after the lease time
}
