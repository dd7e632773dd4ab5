// Package tagstore is the cache side of tagged caching and the engine of
// local tag invalidation: read through the cache under a lease that every
// invalidation covering the key voids (Fetch), store a value and register
// its key under tags in one atomic script, invalidate a tag or some of its
// keys (recording a subscriber's position in the same script), take large
// tags down in bounded chunks, and compact tag sets whose keys have
// expired.
//
// Cache keys are named by a template, "{tenant:${tenant}}:${key}" by default,
// so a tenant's keys and tag sets share one cluster slot.
package tagstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
)

// DefaultKeyTemplate names a tenant's cache key.
const DefaultKeyTemplate = "{tenant:${tenant}}:${key}"

// DefaultCardinalityGuard is the largest tag deleted by one script call.
const DefaultCardinalityGuard = 5000

// Status is the outcome of one invalidation, as in the metric label.
type Status string

// Outcomes of an invalidation: the scripts' (lua.InvalidateStatus), and
// Failed.
const (
	Success                    = Status(lua.InvalidateSuccess)
	EmptyTagSet                = Status(lua.EmptyTagSet)
	CardinalityExceeded        = Status(lua.CardinalityExceeded)
	Duplicate                  = Status(lua.InvalidateDuplicate)
	Gap                        = Status(lua.InvalidateGap) // strict, and the position is behind the previous version
	Failed              Status = "ERROR"

	// waiting: in ApplyMany, the channel's previous invalidation in the
	// batch was still to be applied (deferred to the chunked path, or
	// failed). ApplyMany runs it again once that one is done, or reports
	// an error: callers never see it.
	waiting = Status(lua.InvalidateWait)
)

// Observer is told of every invalidation, for metrics. It must be cheap. A
// tag that went the chunked path is reported with its final status (Success
// when the chunks and the final script took it all; Result.Chunked says
// so). took is the time from the call (Apply, ApplyMany) until this
// invalidation was done: the invalidations of one ApplyMany share its
// pipeline's round trip, so each reports the whole of it, not a share.
type Observer func(tag string, status Status, keys int64, took time.Duration)

// Options configure a Store. The zero value is usable.
type Options struct {
	// KeyTemplate turns a tenant and a key into a cache key name. It must
	// contain ${key}; ${tenant} is replaced by the tenant. A key the
	// template renders as a key routerd keeps (a tag set, a position,
	// routerd:…) is refused (names.CacheKey).
	KeyTemplate string
	// CardinalityGuard: tags with more members are deleted in chunks.
	CardinalityGuard int
	// ChunkSize is the batch of the chunked path, at most 1000.
	ChunkSize int
	// Observe, when set, is called after each invalidation.
	Observe Observer
	// RefGuard is the most entity references one value is registered
	// under (SetRefs); a value with more is registered under the
	// type-level reference of each of their domains instead. Default
	// DefaultRefGuard.
	RefGuard int
	// Guarded, when set, is told of every value SetRefs registered at type
	// level because it had more than RefGuard references, for metrics.
	Guarded func(refs int)
}

// DefaultRefGuard is the most entity references one value is registered
// under by default.
const DefaultRefGuard = 500

// Store works on one cache Redis (standalone or cluster).
type Store struct {
	c       redis.UniversalClient
	opt     Options
	cluster bool
	// custom: the key template is not the default one, so what it renders
	// is checked against routerd's own keys (names.Key alone rules them
	// out under the default template).
	custom bool
	// The key template split at its placeholders: literal parts, with a
	// tenant or a key between each two.
	parts []string
	fills []bool // fills[i] after parts[i]: true for the tenant, false for the key
}

// New checks the options and fills the defaults.
func New(c redis.UniversalClient, opt Options) (*Store, error) {
	if c == nil {
		return nil, errors.New("tagstore: nil Redis client")
	}
	if opt.KeyTemplate == "" {
		opt.KeyTemplate = DefaultKeyTemplate
	}
	if !strings.Contains(opt.KeyTemplate, "${key}") {
		return nil, fmt.Errorf("tagstore: key template %q must contain ${key}", opt.KeyTemplate)
	}
	cluster := redisconn.IsCluster(c)
	if cluster {
		// Keys, tag sets and positions must share a slot for the scripts.
		head, _, _ := strings.Cut(opt.KeyTemplate, "${key}")
		if hashTag(strings.ReplaceAll(head, "${tenant}", "t")) != "tenant:t" {
			return nil, fmt.Errorf("tagstore: on Redis Cluster the key template %q must have {tenant:${tenant}} as its first {…}, before ${key}, so cache keys share their tenant's slot with its tag sets", opt.KeyTemplate)
		}
	}
	if opt.CardinalityGuard == 0 {
		opt.CardinalityGuard = DefaultCardinalityGuard
	}
	if opt.CardinalityGuard < 1 {
		return nil, fmt.Errorf("tagstore: cardinality guard must be positive, not %d", opt.CardinalityGuard)
	}
	if opt.RefGuard == 0 {
		opt.RefGuard = DefaultRefGuard
	}
	if opt.RefGuard < 1 {
		return nil, fmt.Errorf("tagstore: ref guard must be positive, not %d", opt.RefGuard)
	}
	if opt.ChunkSize == 0 {
		opt.ChunkSize = lua.MaxUnpack
	}
	if opt.ChunkSize < 1 || opt.ChunkSize > lua.MaxUnpack {
		return nil, fmt.Errorf("tagstore: chunk size must be 1 to %d, not %d", lua.MaxUnpack, opt.ChunkSize)
	}
	st := &Store{c: c, opt: opt, cluster: cluster, custom: opt.KeyTemplate != DefaultKeyTemplate}
	rest := opt.KeyTemplate
	for {
		t, k := strings.Index(rest, "${tenant}"), strings.Index(rest, "${key}")
		switch {
		case t < 0 && k < 0:
			st.parts = append(st.parts, rest)
			return st, nil
		case t >= 0 && (k < 0 || t < k):
			st.parts, st.fills = append(st.parts, rest[:t]), append(st.fills, true)
			rest = rest[t+len("${tenant}"):]
		default:
			st.parts, st.fills = append(st.parts, rest[:k]), append(st.fills, false)
			rest = rest[k+len("${key}"):]
		}
	}
}

// Key returns the cache key name of a tenant's key.
func (s *Store) Key(tenant, key string) (string, error) {
	if err := names.Tenant(tenant); err != nil {
		return "", err
	}
	if err := names.Key(key); err != nil {
		return "", err
	}
	full := s.key(tenant, key)
	if err := s.checkRendered(full); err != nil {
		return "", err
	}
	if s.cluster && hashTag(full) != "tenant:"+tenant {
		return "", fmt.Errorf("tagstore: key %q hashes by {%s}, not by its tenant's {tenant:%s}: on Redis Cluster it would live in another slot than its tag sets", full, hashTag(full), tenant)
	}
	return full, nil
}

// checkRendered refuses a cache key name that a custom template made into
// one of routerd's own keys.
func (s *Store) checkRendered(full string) error {
	if !s.custom {
		return nil
	}
	return names.CacheKey(full)
}

func (s *Store) key(tenant, key string) string {
	n := 0
	for i, p := range s.parts {
		n += len(p)
		if i < len(s.fills) {
			n += len(key)
			if s.fills[i] {
				n += len(tenant) - len(key)
			}
		}
	}
	var b strings.Builder
	b.Grow(n)
	for i, p := range s.parts {
		b.WriteString(p)
		if i < len(s.fills) {
			if s.fills[i] {
				b.WriteString(tenant)
			} else {
				b.WriteString(key)
			}
		}
	}
	return b.String()
}

// Set stores value under the tenant's key with a time to live (0 for none)
// and registers the key under every tag, in one atomic script. It is for a
// value the caller has just committed itself; to cache what was read from
// the source of truth on a miss, use Fetch: a value read before a change and
// Set after the change's invalidation stays cached, stale.
func (s *Store) Set(ctx context.Context, tenant, key string, value []byte, ttl time.Duration, tags ...string) error {
	full, err := s.Key(tenant, key)
	if err != nil {
		return err
	}
	if ttl < 0 {
		return fmt.Errorf("tagstore: negative ttl %v", ttl)
	}
	sets := make([]string, 0, len(tags))
	for _, t := range tags {
		if err := names.Tag(t); err != nil {
			return err
		}
		sets = append(sets, names.TagSetKey(tenant, t))
	}
	req := lua.SetRequest{Key: full, LeaseKey: names.LeaseKey(tenant, full), Value: value, TTL: ttl, Sets: sets}
	_, err = s.setIndexed(ctx, tenant, &req)
	return err
}

// setIndexed runs set.lua with keys and args, pipelined after an SADD of
// the tenant to the cache's tenant index (names.CacheTenantsKey), and
// returns set.lua's reply: a subscriber of every tenant finds there the
// tenants whose tags it must invalidate when the bus has lost its data, even
// those it never received a message for. The SADD goes with every value
// written, in the same round trip, not once per Store: a cache Redis that
// lost its data (FLUSHALL, a restart without persistence) while the service
// runs has its index back with the next value written under each tenant. It
// is a command of its own, as the index lives in no tenant's slot; when
// it fails while set.lua stored the value, the value is removed again (a
// value cached without its tenant indexed could be missed for good; one
// not cached is a miss), and the error says which.
func (s *Store) setIndexed(ctx context.Context, tenant string, req *lua.SetRequest) (lua.SetReply, error) {
	var index *redis.IntCmd
	cmds, err := lua.RunPipeline(ctx, s.c, lua.CacheScripts(), func(p redis.Pipeliner) []*redis.Cmd {
		index = p.SAdd(ctx, names.CacheTenantsKey(), tenant)
		return []*redis.Cmd{lua.Queue(ctx, p, req)}
	})
	if len(cmds) != 1 || index == nil {
		return lua.SetReply{}, err
	}
	reply, err := req.Reply(cmds[0])
	if e := index.Err(); e != nil {
		e = fmt.Errorf("tagstore: recording tenant %s in %s: %w", tenant, names.CacheTenantsKey(), e)
		if err != nil || reply.Status != lua.Stored {
			return lua.SetReply{}, errors.Join(e, err)
		}
		if derr := s.c.Del(ctx, req.Key).Err(); derr != nil {
			return lua.SetReply{}, fmt.Errorf("%w; %s was cached, and removing it failed (%v): it stays cached without its tenant indexed", e, req.Key, derr)
		}
		return lua.SetReply{}, fmt.Errorf("%w; %s was not kept cached", e, req.Key)
	}
	return reply, err
}

// Ref is an entity a cached value was derived from: an entity of a domain
// (user 1042). With no Entity it is the domain's type-level reference,
// which every entity-level invalidation of the domain drops: for a value
// derived from an entity whose id it does not know. See SetRefs.
type Ref struct {
	Domain string
	Entity string
}

// String is the ref as messages carry it, "<domain>/<entity>" (names.Ref),
// or the domain alone for a type-level ref.
func (r Ref) String() string {
	if r.Entity == "" {
		return r.Domain
	}
	return names.Ref(r.Domain, r.Entity)
}

// check validates a ref.
func (r Ref) check() error {
	if r.Entity == "" {
		return names.Domain(r.Domain)
	}
	if d, _, err := names.ParseRef(r.String()); err != nil || d != r.Domain {
		return &names.Error{Field: "ref", Value: r.String(), Rule: fmt.Sprintf("domain %q and entity %q do not make a <domain>/<entity>: the domain must be valid and cannot hold '/'", r.Domain, r.Entity)}
	}
	return nil
}

// SetResult says how SetRefs registered a value.
type SetResult struct {
	// TypeLevel: the value had more references than the guard allows and
	// was registered under the type-level reference of each of their
	// domains instead, so any entity-level invalidation of those domains
	// drops it.
	TypeLevel bool
}

// SetRefs stores value under the tenant's key with a time to live (0 for
// none) and registers it, in one atomic script, under every tag and under
// an entity reference for every ref. Like Set, it is for a value the caller
// has just committed; Fetch with FetchOptions.Refs reads through. An
// entity-level invalidation of one of them (a message with "refs") then
// drops it, and nothing else of its tags
// registered by ref. In each tag it goes to the tag's ref-registered set
// (names.TagRefsKey), not among the plain values (Set), which an
// entity-level invalidation that names no keys drops whole; without refs it
// is a plain value, as with Set.
//
// The tags must include the tags of every ref's domain (in the matrix):
// whole-tag invalidations — of events without an entity, and of every
// recovery that cannot replay — reach values through their tags only. A
// value with refs and no tags is refused.
//
// With more distinct refs than Options.RefGuard, the value is registered
// under the type-level reference of each of their domains instead, which
// every entity-level invalidation of the domain drops (SetResult.TypeLevel,
// and Options.Guarded is told the number of distinct refs).
func (s *Store) SetRefs(ctx context.Context, tenant, key string, value []byte, ttl time.Duration, tags []string, refs []Ref) (SetResult, error) {
	var res SetResult
	full, err := s.Key(tenant, key)
	if err != nil {
		return res, err
	}
	if ttl < 0 {
		return res, fmt.Errorf("tagstore: negative ttl %v", ttl)
	}
	sets, err := s.valueSets(tenant, tags, refs)
	if err != nil {
		return res, err
	}
	res.TypeLevel = sets.typeLevel
	s.guarded(sets)
	req := lua.SetRequest{Key: full, LeaseKey: names.LeaseKey(tenant, full), Value: value, TTL: ttl, Sets: sets.keys, Expiring: sets.expiring}
	_, err = s.setIndexed(ctx, tenant, &req)
	return res, err
}

// valueSets are the sets a value is registered in (set.lua's KEYS after
// the cache key), and so its lease (lease.lua).
type valueSets struct {
	keys []string
	// expiring: how many of the last keys are reference sets, which
	// expire with their values.
	expiring  int
	typeLevel bool // above the ref guard: registered at type level
	distinct  int  // distinct refs
}

// guarded tells Options.Guarded of a value registered at type level.
func (s *Store) guarded(v valueSets) {
	if v.typeLevel && s.opt.Guarded != nil {
		s.opt.Guarded(v.distinct)
	}
}

// valueSets validates a value's tags and refs and names its sets: a tag set
// each without refs; with refs, the tags' ref-registered sets and a
// reference set each, or the type-level sets of their domains above the
// ref guard.
func (s *Store) valueSets(tenant string, tags []string, refs []Ref) (valueSets, error) {
	var v valueSets
	if len(refs) > 0 && len(tags) == 0 {
		return v, errors.New("tagstore: a value registered under refs needs the tags of their domains too (whole-tag invalidations and recoveries reach it only through them)")
	}
	keys := make([]string, 0, len(tags)+min(len(refs), s.opt.RefGuard))
	for _, t := range tags {
		if err := names.Tag(t); err != nil {
			return v, err
		}
		if len(refs) > 0 {
			// Not among the tag's plain values, which an entity-level
			// invalidation drops whole: it goes by ref.
			keys = append(keys, names.TagRefsKey(tenant, t))
		} else {
			keys = append(keys, names.TagSetKey(tenant, t))
		}
	}
	distinct := make(map[Ref]bool, len(refs))
	for _, r := range refs {
		if err := r.check(); err != nil {
			return v, err
		}
		distinct[r] = true
	}
	v.typeLevel = len(distinct) > s.opt.RefGuard
	seen := make(map[string]bool, min(len(distinct), s.opt.RefGuard))
	for _, r := range refs {
		ref := r.String()
		if v.typeLevel {
			ref = r.Domain
		}
		if !seen[ref] {
			seen[ref] = true
			keys = append(keys, names.RefKey(tenant, ref))
		}
	}
	v.distinct = len(distinct)
	// The reference sets expire with their values (set.lua), so the sets
	// of entities that never change do not keep the names of expired
	// values for ever. The tags' ref-registered sets do not, like the plain
	// tag sets: a whole-tag invalidation is the last resort of recovery,
	// and under a volatile-* eviction policy a set with a time to live may
	// be evicted while its values stay (routerd compact drops the names of
	// expired values from both).
	v.keys, v.expiring = keys, len(seen)
	return v, nil
}

// Get returns the value of a tenant's key, or redis.Nil when it is not cached.
func (s *Store) Get(ctx context.Context, tenant, key string) ([]byte, error) {
	full, err := s.Key(tenant, key)
	if err != nil {
		return nil, err
	}
	return s.c.Get(ctx, full).Bytes()
}

// Position is how far a service's subscriber has applied a channel, as the
// cache stores it ("epoch:version", String and ParsePosition). The recovery
// rules reason on internal/recovery's Position, which adds "none" (the zero
// value, Known false); this one stays apart because it is part of this
// public package's API, which cannot expose an internal type, and the pure
// rules must not depend on the cache's package. The subscriber converts
// between the two where it reads and applies.
type Position struct {
	Epoch   string
	Version int64
	// Chain is the channel's chain at Version (recovery.Link: lowercase
	// hex), "" when unknown. It is stored with the position and not
	// checked by the scripts.
	Chain string
}

// String is the stored form, "epoch:version" or "epoch:version:chain"
// (docs/protocol.md 5.2): the epoch, and the version argument the scripts
// store after it (lua.InvalidateRequest).
func (p Position) String() string { return p.Epoch + ":" + lua.VersionArg(p.Version, p.Chain) }

// ParsePosition reads the stored form: "epoch:version" (also what versions
// before chains wrote) or "epoch:version:chain". An epoch holds no ':'.
func ParsePosition(s string) (Position, error) {
	epoch, rest, ok := strings.Cut(s, ":")
	if !ok || epoch == "" {
		return Position{}, fmt.Errorf("tagstore: position %q is not epoch:version", s)
	}
	vs, chain, _ := strings.Cut(rest, ":")
	v, err := strconv.ParseInt(vs, 10, 64)
	if err != nil || v < 0 {
		return Position{}, fmt.Errorf("tagstore: position %q has no valid version", s)
	}
	if strings.Contains(rest, ":") && !validChain(chain) {
		return Position{}, fmt.Errorf("tagstore: position %q has no valid chain (1 to 64 lowercase hex digits)", s)
	}
	return Position{Epoch: epoch, Version: v, Chain: chain}, nil
}

// validChain reports whether s is a chain as stored: 1 to 64 lowercase hex
// digits.
func validChain(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Invalidation is one unit of work: the listed keys of a tag, the values
// registered under the listed entity references (Refs), both, or the whole
// tag when Keys and Refs are empty. With Service set, the service's position on the
// channel is checked and advanced in the same script: an invalidation at or
// behind the position is a Duplicate and does nothing.
type Invalidation struct {
	Tenant string
	Tag    string
	Keys   []string
	// Refs and Plain mean what wire.Message's do: the values registered
	// under the refs (SetRefs) go, with the reference sets; with Plain the
	// tag's values stored without refs (Set) too.
	Refs     []string
	Plain    bool
	Service  string
	Position Position
	// Strict refuses (status Gap) a version that does not directly follow
	// the stored position of the same epoch, for callers that pipeline
	// consecutive versions.
	Strict bool
	// Repair, for a whole-tag invalidation (Keys empty) with a Service,
	// deletes the whole tag (through the chunked path above the guard, as
	// always) and sets the position to Position whatever it was, even
	// ahead of it in the same epoch (where it would be a Duplicate): to
	// repair a position found ahead of the channel's meta (a forged
	// version, or a bus that went back). Not with Strict.
	Repair bool
}

// mode is the invalidation's mode argument of the scripts.
func (inv *Invalidation) mode() lua.Mode {
	switch {
	case inv.Repair:
		return lua.Repair
	case inv.Strict:
		return lua.Strict
	}
	return lua.MayJump
}

// Result says what an invalidation did.
type Result struct {
	Status  Status
	Deleted int64 // cache keys removed
	Chunked bool  // the tag was above the guard and went the chunked path
}

// InvalidateTag deletes every key registered under the tag, and the tag set.
func (s *Store) InvalidateTag(ctx context.Context, tenant, tag string) (Result, error) {
	return s.Apply(ctx, Invalidation{Tenant: tenant, Tag: tag})
}

// InvalidateKeys deletes the tenant's listed keys and drops them from the tag.
func (s *Store) InvalidateKeys(ctx context.Context, tenant, tag string, keys ...string) (Result, error) {
	if len(keys) == 0 {
		return Result{}, errors.New("tagstore: InvalidateKeys needs at least one key (use InvalidateTag for the whole tag)")
	}
	return s.Apply(ctx, Invalidation{Tenant: tenant, Tag: tag, Keys: keys})
}

// Apply runs one invalidation. Keys are deleted in batches of at most
// lua.MaxUnpack per Redis command; a whole tag above the cardinality guard is
// first taken down in chunks, and the final script then deletes the rest and
// writes the position. Errors leave the position where it was, so the work
// is retried.
func (s *Store) Apply(ctx context.Context, inv Invalidation) (Result, error) {
	start := time.Now()
	keys, err := s.scriptKeys(inv, nil)
	var res Result
	if err == nil {
		lua.SetHead(keys, inv.Tenant, inv.Tag, inv.Service)
		res, err = s.apply(ctx, inv, s.invalidateRequest(inv, keys, ""))
	}
	if err != nil {
		res.Status = Failed
	}
	if s.opt.Observe != nil {
		s.opt.Observe(inv.Tag, res.Status, res.Deleted, time.Since(start))
	}
	return res, err
}

// apply runs invalidate.lua, and the chunked path when the tag is above the
// guard, until the invalidation is done or refused.
func (s *Store) apply(ctx context.Context, inv Invalidation, req lua.InvalidateRequest) (Result, error) {
	var res Result
	keys := req.Keys
	for {
		r, err := lua.Run(ctx, s.c, &req)
		if err != nil {
			return res, fmt.Errorf("tagstore: invalidate %s: %w", keys[0], err)
		}
		status, n := Status(r.Status), r.Deleted
		if status == waiting {
			return res, fmt.Errorf("tagstore: invalidate %s at %s: unexpected WAIT without a batch", keys[0], inv.Position)
		}
		if status != CardinalityExceeded {
			if res.Chunked && status == EmptyTagSet {
				status = Success // the chunks took it all
			}
			res.Status = status
			res.Deleted += n
			return res, nil
		}
		// Too large for one call: chunk it down below the guard (its
		// sets to a share of it each: the tag set and the ref-registered
		// set of a whole tag; the reference sets of an entity-level one,
		// and the tag set when its plain values go too), then let the
		// script finish the rest and record the position.
		res.Chunked = true
		sets := []string{keys[0], keys[3]}
		if n := refCount(inv, keys); n > 0 {
			sets = keys[len(keys)-n:]
			if inv.Plain {
				sets = append(sets[:n:n], keys[0])
			}
		}
		limit := s.opt.CardinalityGuard / len(sets)
		for _, set := range sets {
			deleted, err := s.chunk(ctx, set, limit)
			res.Deleted += deleted
			if err != nil {
				return res, err
			}
		}
	}
}

// scriptKeys validates an invalidation and returns the keys of its script
// call: lua.HeadKeys slots for the tag set, the position key, the batch
// mark and the ref-registered set (lua.SetHead), then the cache keys, then the
// reference sets. They are appended to buf when it has
// room.
func (s *Store) scriptKeys(inv Invalidation, buf []string) ([]string, error) {
	if err := names.Tenant(inv.Tenant); err != nil {
		return nil, err
	}
	if err := names.Tag(inv.Tag); err != nil {
		return nil, err
	}
	if inv.Service != "" {
		if err := names.Service(inv.Service); err != nil {
			return nil, err
		}
		if inv.Position.Epoch == "" || strings.ContainsRune(inv.Position.Epoch, ':') {
			return nil, fmt.Errorf("tagstore: position epoch %q is empty or holds ':'", inv.Position.Epoch)
		}
		if inv.Position.Chain != "" && !validChain(inv.Position.Chain) {
			return nil, fmt.Errorf("tagstore: position chain %q is not 1 to 64 lowercase hex digits", inv.Position.Chain)
		}
	}
	if inv.Plain && len(inv.Refs) == 0 {
		return nil, errors.New("tagstore: Plain needs Refs (without refs and keys the whole tag goes)")
	}
	if inv.Repair {
		switch {
		case len(inv.Keys) > 0 || len(inv.Refs) > 0:
			return nil, errors.New("tagstore: a repair invalidates the whole tag: it takes no keys")
		case inv.Service == "":
			return nil, errors.New("tagstore: a repair sets a service's position: it needs the service")
		case inv.Strict:
			return nil, errors.New("tagstore: a repair sets the position whatever it is: it cannot be strict")
		}
	}
	var refKeys []string
	if len(inv.Refs) > 0 {
		var err error
		if refKeys, err = refSets(inv.Tenant, inv.Refs); err != nil {
			return nil, err
		}
	}
	size := lua.HeadKeys + len(inv.Keys) + len(refKeys)
	if cap(buf)-len(buf) < size {
		buf = make([]string, 0, size)
	}
	keys := append(buf[len(buf):len(buf):len(buf)+size], "", "", "", "")
	for _, k := range inv.Keys {
		if err := names.Key(k); err != nil {
			return nil, err
		}
		full := s.key(inv.Tenant, k)
		if err := s.checkRendered(full); err != nil {
			return nil, err
		}
		keys = append(keys, full)
	}
	return append(keys, refKeys...), nil
}

// refSets are the reference sets an entity-level invalidation empties: the
// set of each ref, then the type-level set of each of their domains (a ref
// that is a domain alone names only that).
func refSets(tenant string, refs []string) ([]string, error) {
	out := make([]string, 0, len(refs)+1)
	seen := make(map[string]bool, len(refs)+1)
	var domains []string
	for _, ref := range refs {
		if err := names.RefOrDomain(ref); err != nil {
			return nil, err
		}
		domain, _, entity := strings.Cut(ref, "/")
		if entity && !seen[ref] {
			seen[ref] = true
			out = append(out, names.RefKey(tenant, ref))
		}
		if !seen[domain] {
			seen[domain] = true
			domains = append(domains, domain)
		}
	}
	for _, d := range domains {
		out = append(out, names.RefKey(tenant, d))
	}
	return out, nil
}

// refCount is the number of reference sets at the end of an invalidation's
// script keys.
func refCount(inv Invalidation, keys []string) int {
	if len(inv.Refs) == 0 {
		return 0
	}
	return len(keys) - lua.HeadKeys - len(inv.Keys)
}

// invalidateRequest is the invalidate.lua call of an invalidation; token is
// the pipeline's token when the invalidation is ordered after or before a
// whole tag of its channel in the pipeline, else "".
func (s *Store) invalidateRequest(inv Invalidation, keys []string, token string) lua.InvalidateRequest {
	return lua.InvalidateRequest{Keys: keys, RefSets: refCount(inv, keys), Guard: s.opt.CardinalityGuard,
		Epoch: inv.scriptEpoch(), Version: inv.Position.Version, Chain: inv.Position.Chain, Mode: inv.mode(), Token: token, Plain: inv.Plain}
}

// scriptEpoch is the epoch the scripts record: "" (no position) without a
// service.
func (inv *Invalidation) scriptEpoch() string {
	if inv.Service == "" {
		return ""
	}
	return inv.Position.Epoch
}

// ApplyMany runs several invalidations in one pipeline, in order per tag,
// with the results applying them one by one in order would have. Runs of
// key-level invalidations go in batched script calls — on a cluster, one
// tenant's per call, as they share a slot. A whole tag above the guard takes
// the chunked path on its own after the pipeline; the later invalidations of
// its channel (with a Service) wait for it in the pipeline (the scripts
// refuse them: see lua/position.lua) and run after it, in one more
// pipeline. It returns a result and an error for each.
func (s *Store) ApplyMany(ctx context.Context, invs []Invalidation) ([]Result, []error) {
	start := time.Now()
	b := &batch{s: s, invs: invs, results: make([]Result, len(invs)), errs: make([]error, len(invs)),
		keys: make([][]string, len(invs)), token: make([]string, len(invs)), took: make([]time.Duration, len(invs)), start: start}
	n := 0
	for _, inv := range invs {
		n += lua.HeadKeys + len(inv.Keys) + 2*len(inv.Refs) // a ref's set, and at most one type-level set
	}
	buf := make([]string, 0, n) // one allocation for every invalidation's keys
	idx := make([]int, 0, len(invs))
	for i, inv := range invs {
		b.keys[i], b.errs[i] = s.scriptKeys(inv, buf)
		buf = buf[:len(buf)+len(b.keys[i])]
		if b.errs[i] == nil {
			idx = append(idx, i)
		} else {
			b.results[i].Status = Failed
		}
	}
	b.run(ctx, idx)
	if s.opt.Observe != nil {
		for i, inv := range invs {
			took := b.took[i]
			if took == 0 {
				took = time.Since(start) // refused before any round trip
			}
			s.opt.Observe(inv.Tag, b.results[i].Status, b.results[i].Deleted, took)
		}
	}
	return b.results, b.errs
}

// batch is one ApplyMany.
type batch struct {
	s       *Store
	invs    []Invalidation
	results []Result
	errs    []error
	keys    [][]string
	token   []string // each invalidation's pipeline token, "" for none
	took    []time.Duration
	start   time.Time
}

// channelKey is a channel of a service: what a position and a batch mark
// belong to.
type channelKey struct{ tenant, tag, service string }

// run applies the invalidations idx (in order) in one pipeline, then the
// whole tags among them that were above the guard, then (in one more
// pipeline, and so on) those that waited for one of these.
func (b *batch) run(ctx context.Context, idx []int) {
	if len(idx) == 0 {
		return
	}
	b.tokens(idx)
	s := b.s
	calls := s.applyCalls(b.invs, b.keys, idx)
	for _, call := range calls {
		for _, g := range call.groups {
			i := g.invs[0] // the tag set and position key of a group
			inv := &b.invs[i]
			lua.SetHead(b.keys[i], inv.Tenant, inv.Tag, inv.Service)
		}
	}
	reqs := make([]callRequest, len(calls))
	for j, call := range calls {
		if call.single {
			i := call.groups[0].invs[0]
			reqs[j].single = s.invalidateRequest(b.invs[i], b.keys[i], b.token[i])
		} else {
			reqs[j].keys = call.request(b.invs, b.keys, b.token)
		}
	}
	cmds, _ := lua.RunPipeline(ctx, s.c, lua.CacheScripts(), func(pipe redis.Pipeliner) []*redis.Cmd {
		out := make([]*redis.Cmd, len(calls))
		for j, call := range calls {
			if call.single {
				out[j] = lua.Queue(ctx, pipe, &reqs[j].single)
			} else {
				out[j] = lua.Queue(ctx, pipe, &reqs[j].keys)
			}
		}
		return out
	})
	took := time.Since(b.start)
	var deferred []int // whole tags above the guard, in order
	for j, call := range calls {
		replies, err := call.replies(reqs[j], b.keys, cmds[j])
		n := 0
		for _, g := range call.groups {
			for _, i := range g.invs {
				b.took[i] = took
				switch {
				case err != nil:
					b.errs[i] = err
					b.results[i].Status = Failed
				case Status(replies[n].Status) == CardinalityExceeded:
					deferred = append(deferred, i)
				default:
					b.results[i] = Result{Status: Status(replies[n].Status), Deleted: replies[n].Deleted}
				}
				n++
			}
		}
	}
	// The chunked path, one tag after the other: everything before such a
	// tag in the pipeline has run, and everything of its channel after it
	// waited.
	done := map[channelKey]bool{}
	for _, i := range deferred {
		inv := b.invs[i]
		b.results[i], b.errs[i] = s.apply(ctx, inv, s.invalidateRequest(inv, b.keys[i], ""))
		if b.errs[i] != nil {
			b.results[i].Status = Failed
		}
		b.took[i] = time.Since(b.start)
		if b.token[i] != "" {
			_ = s.c.SRem(ctx, b.keys[i][2], b.token[i]).Err() // else it expires
		}
		done[channelKey{inv.Tenant, inv.Tag, inv.Service}] = b.errs[i] == nil
	}
	// Those that waited run again, in order; when what they waited for
	// failed they fail too, so none is skipped over.
	var again []int
	for _, i := range idx {
		if b.errs[i] != nil || b.results[i].Status != waiting {
			continue
		}
		inv := &b.invs[i]
		if !done[channelKey{inv.Tenant, inv.Tag, inv.Service}] {
			b.errs[i] = fmt.Errorf("tagstore: invalidation of %s at %s not applied: an earlier whole-tag invalidation of the tag in the batch failed", b.keys[i][0], inv.Position)
			b.results[i].Status = Failed
			continue
		}
		again = append(again, i)
	}
	b.run(ctx, again)
}

// tokens gives the invalidations idx of one pipeline its token where the
// order matters: a whole tag that more of its channel follows (it marks the
// channel when it is deferred) and everything of a channel after a whole
// tag (it reads the mark). The others need not read it.
func (b *batch) tokens(idx []int) {
	token := strconv.FormatUint(rand.Uint64(), 36)
	whole := map[channelKey]int{} // the channel's first whole tag in idx
	for _, i := range idx {
		b.token[i] = ""
		inv := &b.invs[i]
		if inv.Service == "" {
			continue
		}
		ch := channelKey{inv.Tenant, inv.Tag, inv.Service}
		if first, ok := whole[ch]; ok {
			b.token[i], b.token[first] = token, token
		} else if len(inv.Keys) == 0 || len(inv.Refs) > 0 {
			whole[ch] = i // may be deferred above the guard
		}
	}
}

// Bounds of one batched invalidate call, which blocks its Redis while it runs.
const (
	maxCallInvalidations = 100
	maxCallKeys          = 4000
)

// applyCall is one script call of ApplyMany: a whole-tag (or very large)
// invalidation on its own, or groups of key-level ones, each group one tag
// and position.
type applyCall struct {
	single   bool
	groups   []applyGroup
	n, nkeys int
}

type applyGroup struct {
	invs []int // indexes into ApplyMany's invalidations, in order
}

// applyCalls plans the script calls of the invalidations idx in pipeline
// order. A channel's invalidations keep their order: before a whole-tag one
// runs, the open call holding earlier ones of its tenant is closed (and
// queued first).
func (s *Store) applyCalls(invs []Invalidation, keys [][]string, idx []int) []applyCall {
	var calls []applyCall
	open := map[string]*applyCall{} // by slot group: the tenant on a cluster, else ""
	var order []string              // open calls, in the order they were opened
	closeCall := func(group string) {
		if c := open[group]; c != nil {
			calls = append(calls, *c)
			delete(open, group)
		}
	}
	for _, i := range idx {
		inv := &invs[i]
		group := ""
		if s.cluster {
			group = inv.Tenant
		}
		nkeys := len(keys[i]) - lua.HeadKeys
		if nkeys == 0 || len(inv.Refs) > 0 || nkeys > maxCallKeys/2 {
			closeCall(group)
			calls = append(calls, applyCall{single: true, groups: []applyGroup{{invs: []int{i}}}, n: 1})
			continue
		}
		c := open[group]
		if c != nil && (c.n >= maxCallInvalidations || c.nkeys+nkeys+lua.HeadKeys > maxCallKeys) {
			closeCall(group)
			c = nil
		}
		if c == nil {
			c = &applyCall{}
			open[group] = c
			order = append(order, group)
		}
		// Join the last group of the same tag, position and mode in this
		// call when it is the tag's last group; else start a group.
		joined := false
		for g := len(c.groups) - 1; g >= 0; g-- {
			last := &invs[c.groups[g].invs[0]]
			if last.Tenant != inv.Tenant || last.Tag != inv.Tag || last.Service != inv.Service {
				continue
			}
			if last.Position.Epoch == inv.Position.Epoch && last.mode() == inv.mode() {
				c.groups[g].invs = append(c.groups[g].invs, i)
				joined = true
			}
			break
		}
		if !joined {
			c.groups = append(c.groups, applyGroup{invs: []int{i}})
			c.nkeys += lua.HeadKeys
		}
		c.n++
		c.nkeys += nkeys
	}
	for _, group := range order {
		closeCall(group)
	}
	return calls
}

// callRequest is one script call of ApplyMany: invalidate.lua's or
// invalidate_keys.lua's.
type callRequest struct {
	single lua.InvalidateRequest
	keys   lua.InvalidateKeysRequest
}

// request is the batched call's invalidate_keys.lua request: per group the
// head keys, epoch, mode and pipeline token, then each invalidation's
// version and cache keys.
func (c applyCall) request(invs []Invalidation, keys [][]string, token []string) lua.InvalidateKeysRequest {
	req := lua.InvalidateKeysRequest{Groups: make([]lua.InvalidateGroup, len(c.groups))}
	all := make([]lua.KeyInvalidation, 0, c.n)
	for x, g := range c.groups {
		first := &invs[g.invs[0]]
		start := len(all)
		for _, i := range g.invs {
			all = append(all, lua.KeyInvalidation{Version: invs[i].Position.Version, Chain: invs[i].Position.Chain, Keys: keys[i][lua.HeadKeys:]})
		}
		req.Groups[x] = lua.InvalidateGroup{Head: keys[g.invs[0]][:lua.HeadKeys], Epoch: first.scriptEpoch(),
			Mode: first.mode(), Token: token[g.invs[0]], Invs: all[start:len(all):len(all)]}
	}
	return req
}

// replies reads a call's outcome, one per invalidation.
func (c applyCall) replies(req callRequest, keys [][]string, cmd *redis.Cmd) ([]lua.InvalidateResult, error) {
	first := keys[c.groups[0].invs[0]][0]
	if c.single {
		r, err := req.single.Reply(cmd)
		if err != nil {
			return nil, fmt.Errorf("tagstore: invalidate %s: %w", first, err)
		}
		return []lua.InvalidateResult{r}, nil
	}
	out, err := req.keys.Reply(cmd)
	if err != nil {
		return nil, fmt.Errorf("tagstore: invalidate %s and more: %w", first, err)
	}
	return out, nil
}

// chunk deletes a set's members (and their keys) in batches until it is at
// or below limit.
func (s *Store) chunk(ctx context.Context, tagSet string, limit int) (int64, error) {
	var deleted int64
	for {
		req := lua.ChunkRequest{Set: tagSet, Batch: s.opt.ChunkSize}
		v, err := lua.Run(ctx, s.c, &req)
		if err != nil {
			return deleted, fmt.Errorf("tagstore: chunked delete of %s: %w", tagSet, err)
		}
		deleted += v.Deleted
		if v.Left <= int64(limit) {
			return deleted, nil
		}
	}
}

// ReadPosition returns a service's position on a tenant's tag, with false
// when none is recorded.
func (s *Store) ReadPosition(ctx context.Context, tenant, service, tag string) (Position, bool, error) {
	pos, found, errs, err := s.ReadPositions(ctx, service, []TenantTag{{tenant, tag}})
	if err != nil {
		return Position{}, false, err
	}
	if err = errs[0]; err != nil {
		return Position{}, false, err
	}
	return pos[0], found[0], nil
}

// TenantTag names a channel of a service: a tenant and a tag.
type TenantTag struct{ Tenant, Tag string }

// readPositionsPipeline bounds the GETs of one ReadPositions pipeline.
const readPositionsPipeline = 1000

// ErrBadPosition is wrapped by the error of a stored position that does not
// parse as epoch:version, or is a key of another type.
var ErrBadPosition = errors.New("tagstore: stored position is not epoch:version")

// ReadPositions returns a service's positions on many channels, found[i]
// false where none is recorded, with pipelined GETs (at most 1000 per
// pipeline). A position that is a key of another type or does not parse
// (errors.Is ErrBadPosition) is never taken for none silently: errs[i] says
// so, and the other channels are still read. (The invalidation scripts take
// such a key for none and write the position over it.) err is for invalid
// names or a cache Redis that did not answer.
func (s *Store) ReadPositions(ctx context.Context, service string, chans []TenantTag) (pos []Position, found []bool, errs []error, err error) {
	st, err := s.readState(ctx, service, chans, false)
	if err != nil {
		return nil, nil, nil, err
	}
	return st.Positions, st.Found, st.Errs, nil
}

// Compact removes from a tag's sets (its plain values' and its
// ref-registered values') the members whose keys no longer exist, in
// batches of at most 1000, and returns how many it removed. It works
// through the sets with SSCAN, so it never blocks Redis for long.
func (s *Store) Compact(ctx context.Context, tenant, tag string) (int64, error) {
	if err := names.Tenant(tenant); err != nil {
		return 0, err
	}
	if err := names.Tag(tag); err != nil {
		return 0, err
	}
	var removed int64
	for _, set := range []string{names.TagSetKey(tenant, tag), names.TagRefsKey(tenant, tag)} {
		n, err := s.compact(ctx, set)
		removed += n
		if err != nil {
			return removed, err
		}
	}
	return removed, nil
}

func (s *Store) compact(ctx context.Context, tagSet string) (int64, error) {
	var removed int64
	var cursor uint64
	for {
		members, next, err := s.c.SScan(ctx, tagSet, cursor, "", int64(s.opt.ChunkSize)).Result()
		if err != nil {
			return removed, err
		}
		for len(members) > 0 {
			batch := members[:min(len(members), lua.MaxUnpack)]
			members = members[len(batch):]
			req := lua.CompactRequest{Set: tagSet, Members: batch}
			n, err := lua.Run(ctx, s.c, &req)
			if err != nil {
				return removed, err
			}
			removed += n.Removed
		}
		if next == 0 {
			return removed, nil
		}
		cursor = next
	}
}

// hashTag returns what Redis Cluster hashes of a key: the part between the
// first '{' and the next '}' when that is not empty, else the whole key.
func hashTag(key string) string {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return key
	}
	j := strings.IndexByte(key[i+1:], '}')
	if j <= 0 {
		return key
	}
	return key[i+1 : i+1+j]
}
