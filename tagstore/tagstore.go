// Package tagstore is the write side of tagged caching and the engine of local
// tag invalidation: store a value and register its key under tags in one
// atomic script, invalidate a tag or some of its keys (recording a
// subscriber's position in the same script), take large tags down in bounded
// chunks, and compact tag sets whose keys have expired.
//
// Cache keys are named by a template, "{tenant:${tenant}}:${key}" by default,
// so a tenant's keys and tag sets share one cluster slot.
package tagstore

import (
	"context"
	"errors"
	"fmt"
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

// Outcomes of an invalidation.
const (
	Success             Status = "SUCCESS"
	EmptyTagSet         Status = "EMPTY_TAG_SET"
	CardinalityExceeded Status = "TAG_CARDINALITY_EXCEEDED"
	Duplicate           Status = "DUPLICATE"
	Gap                 Status = "GAP" // strict, and the position is behind the previous version
	Failed              Status = "ERROR"
)

// Observer is told of every invalidation, for metrics. It must be cheap. A
// tag that went the chunked path is reported as CardinalityExceeded.
type Observer func(tag string, status Status, keys int64, took time.Duration)

// Options configure a Store. The zero value is usable.
type Options struct {
	// KeyTemplate turns a tenant and a key into a cache key name. It must
	// contain ${key}; ${tenant} is replaced by the tenant.
	KeyTemplate string
	// CardinalityGuard: tags with more members are deleted in chunks.
	CardinalityGuard int
	// ChunkSize is the batch of the chunked path, at most 1000.
	ChunkSize int
	// Observe, when set, is called after each invalidation.
	Observe Observer
}

// Store works on one cache Redis (standalone or cluster).
type Store struct {
	c       redis.UniversalClient
	opt     Options
	cluster bool
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
	if opt.ChunkSize == 0 {
		opt.ChunkSize = lua.MaxUnpack
	}
	if opt.ChunkSize < 1 || opt.ChunkSize > lua.MaxUnpack {
		return nil, fmt.Errorf("tagstore: chunk size must be 1 to %d, not %d", lua.MaxUnpack, opt.ChunkSize)
	}
	st := &Store{c: c, opt: opt, cluster: cluster}
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
	if s.cluster && hashTag(full) != "tenant:"+tenant {
		return "", fmt.Errorf("tagstore: key %q hashes by {%s}, not by its tenant's {tenant:%s}: on Redis Cluster it would live in another slot than its tag sets", full, hashTag(full), tenant)
	}
	return full, nil
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
// and registers the key under every tag, in one atomic script.
func (s *Store) Set(ctx context.Context, tenant, key string, value []byte, ttl time.Duration, tags ...string) error {
	full, err := s.Key(tenant, key)
	if err != nil {
		return err
	}
	if ttl < 0 {
		return fmt.Errorf("tagstore: negative ttl %v", ttl)
	}
	keys := make([]string, 0, 1+len(tags))
	keys = append(keys, full)
	for _, t := range tags {
		if err := names.Tag(t); err != nil {
			return err
		}
		keys = append(keys, names.TagSetKey(tenant, t))
	}
	return lua.Set.Run(ctx, s.c, keys, value, ttl.Milliseconds()).Err()
}

// Get returns the value of a tenant's key, or redis.Nil when it is not cached.
func (s *Store) Get(ctx context.Context, tenant, key string) ([]byte, error) {
	full, err := s.Key(tenant, key)
	if err != nil {
		return nil, err
	}
	return s.c.Get(ctx, full).Bytes()
}

// Position is how far a service's subscriber has applied a channel.
type Position struct {
	Epoch   string
	Version int64
}

// String is the stored form, "epoch:version".
func (p Position) String() string { return p.Epoch + ":" + strconv.FormatInt(p.Version, 10) }

// ParsePosition reads the stored form.
func ParsePosition(s string) (Position, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return Position{}, fmt.Errorf("tagstore: position %q is not epoch:version", s)
	}
	v, err := strconv.ParseInt(s[i+1:], 10, 64)
	if err != nil || v < 0 {
		return Position{}, fmt.Errorf("tagstore: position %q has no valid version", s)
	}
	return Position{Epoch: s[:i], Version: v}, nil
}

// Invalidation is one unit of work: the listed keys of a tag, or the whole
// tag when Keys is empty. With Service set, the service's position on the
// channel is checked and advanced in the same script: an invalidation at or
// behind the position is a Duplicate and does nothing.
type Invalidation struct {
	Tenant   string
	Tag      string
	Keys     []string
	Service  string
	Position Position
	// Strict refuses (status Gap) a version that does not directly follow
	// the stored position of the same epoch, for callers that pipeline
	// consecutive versions.
	Strict bool
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

// Apply runs one invalidation. Keys are deleted in batches of at most 1000 per
// Redis command; a whole tag above the cardinality guard is first taken down
// in chunks, and the final script then deletes the rest and writes the
// position. Errors leave the position where it was, so the work is retried.
func (s *Store) Apply(ctx context.Context, inv Invalidation) (Result, error) {
	start := time.Now()
	res, err := s.apply(ctx, inv)
	if err != nil {
		res.Status = Failed
	}
	if s.opt.Observe != nil {
		status := res.Status
		if res.Chunked && err == nil {
			status = CardinalityExceeded // done, but by the chunked path
		}
		s.opt.Observe(inv.Tag, status, res.Deleted, time.Since(start))
	}
	return res, err
}

func (s *Store) apply(ctx context.Context, inv Invalidation) (Result, error) {
	keys, args, err := s.scriptArgs(inv)
	if err != nil {
		return Result{}, err
	}
	var res Result
	for {
		status, n, err := s.runInvalidate(ctx, keys, args)
		if err != nil {
			return res, err
		}
		if status != CardinalityExceeded {
			if res.Chunked && status == EmptyTagSet {
				status = Success // the chunks took it all
			}
			res.Status = status
			res.Deleted += n
			return res, nil
		}
		// Too large for one call: chunk it down below the guard, then let
		// the script finish the rest and record the position.
		res.Chunked = true
		deleted, err := s.chunk(ctx, keys[0])
		res.Deleted += deleted
		if err != nil {
			return res, err
		}
	}
}

// scriptArgs validates an invalidation and returns the invalidate script's
// keys and arguments.
func (s *Store) scriptArgs(inv Invalidation) ([]string, []any, error) {
	keys, err := s.scriptKeys(inv, nil)
	if err != nil {
		return nil, nil, err
	}
	s.headKeys(inv, keys)
	return keys, singleArgs(inv, s.opt.CardinalityGuard), nil
}

// scriptKeys validates an invalidation and returns the keys of its script
// call: two slots for the tag set and the position key (see headKeys), then
// the cache keys. They are appended to buf when it has room.
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
	}
	if cap(buf)-len(buf) < 2+len(inv.Keys) {
		buf = make([]string, 0, 2+len(inv.Keys))
	}
	keys := append(buf[len(buf):len(buf):len(buf)+2+len(inv.Keys)], "", "")
	for _, k := range inv.Keys {
		if err := names.Key(k); err != nil {
			return nil, err
		}
		keys = append(keys, s.key(inv.Tenant, k))
	}
	return keys, nil
}

// headKeys fills the tag set and position key slots (the tag set twice when
// no position is kept).
func (s *Store) headKeys(inv Invalidation, keys []string) {
	keys[0] = names.TagSetKey(inv.Tenant, inv.Tag)
	keys[1] = keys[0]
	if inv.Service != "" {
		keys[1] = names.PositionKey(inv.Tenant, inv.Service, inv.Tag)
	}
}

// singleArgs are invalidate.lua's arguments.
func singleArgs(inv Invalidation, guard int) []any {
	epoch := ""
	if inv.Service != "" {
		epoch = inv.Position.Epoch
	}
	return []any{guard, epoch, inv.Position.Version, strictFlag(inv)}
}

func strictFlag(inv Invalidation) string {
	if inv.Strict {
		return "1"
	}
	return "0"
}

// ApplyMany runs several invalidations in one pipeline, in order per tag
// (a tag above the guard then takes the chunked path on its own). Runs of
// key-level invalidations go in batched script calls — on a cluster, one
// tenant's per call, as they share a slot. It returns a result and an error
// for each.
func (s *Store) ApplyMany(ctx context.Context, invs []Invalidation) ([]Result, []error) {
	start := time.Now()
	results := make([]Result, len(invs))
	errs := make([]error, len(invs))
	keys := make([][]string, len(invs))
	n := 0
	for _, inv := range invs {
		n += 2 + len(inv.Keys)
	}
	buf := make([]string, 0, n) // one allocation for every invalidation's keys
	for i, inv := range invs {
		keys[i], errs[i] = s.scriptKeys(inv, buf)
		buf = buf[:len(buf)+len(keys[i])]
	}
	calls := s.applyCalls(invs, keys, errs)
	for _, call := range calls {
		for _, g := range call.groups {
			i := g.invs[0] // the tag set and position key of a group
			s.headKeys(invs[i], keys[i])
		}
	}
	var cmds []*redis.Cmd
	run := func() error {
		_, err := s.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			cmds = make([]*redis.Cmd, len(calls))
			for j, call := range calls {
				if call.single {
					i := call.groups[0].invs[0]
					cmds[j] = lua.Invalidate.EvalSha(ctx, pipe, keys[i], singleArgs(invs[i], s.opt.CardinalityGuard)...)
				} else {
					cmds[j] = lua.InvalidateKeys.EvalSha(ctx, pipe, call.keys(keys), call.args(invs)...)
				}
			}
			return nil
		})
		return err
	}
	_ = run()
	for _, c := range cmds {
		if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
			// The script cache is empty (restart, failover): load it and run
			// again; what already ran is now a DUPLICATE.
			if lua.Invalidate.Load(ctx, s.c).Err() == nil && lua.InvalidateKeys.Load(ctx, s.c).Err() == nil {
				_ = run()
			}
			break
		}
	}
	took := time.Since(start) / time.Duration(max(1, len(invs)))
	for j, call := range calls {
		replies, err := call.replies(keys, cmds[j])
		n := 0
		for _, g := range call.groups {
			for _, i := range g.invs {
				switch {
				case err != nil:
					errs[i] = err
					results[i].Status = Failed
				case replies[n].status == CardinalityExceeded:
					results[i], errs[i] = s.Apply(ctx, invs[i]) // observed there
					n++
					continue
				default:
					results[i] = Result{Status: replies[n].status, Deleted: replies[n].deleted}
				}
				n++
				if s.opt.Observe != nil {
					s.opt.Observe(invs[i].Tag, results[i].Status, results[i].Deleted, took)
				}
			}
		}
	}
	return results, errs
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

// applyCalls plans ApplyMany's script calls in pipeline order. A channel's
// invalidations keep their order: before a whole-tag one runs, the open
// call holding earlier ones of its tenant is closed (and queued first).
func (s *Store) applyCalls(invs []Invalidation, keys [][]string, errs []error) []applyCall {
	var calls []applyCall
	open := map[string]*applyCall{} // by slot group: the tenant on a cluster, else ""
	var order []string              // open calls, in the order they were opened
	closeCall := func(group string) {
		if c := open[group]; c != nil {
			calls = append(calls, *c)
			delete(open, group)
		}
	}
	for i, inv := range invs {
		if errs[i] != nil {
			continue
		}
		group := ""
		if s.cluster {
			group = inv.Tenant
		}
		nkeys := len(keys[i]) - 2
		if nkeys == 0 || nkeys > maxCallKeys/2 {
			closeCall(group)
			calls = append(calls, applyCall{single: true, groups: []applyGroup{{invs: []int{i}}}, n: 1})
			continue
		}
		c := open[group]
		if c != nil && (c.n >= maxCallInvalidations || c.nkeys+nkeys+2 > maxCallKeys) {
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
			last := invs[c.groups[g].invs[0]]
			if last.Tenant != inv.Tenant || last.Tag != inv.Tag || last.Service != inv.Service {
				continue
			}
			if last.Position.Epoch == inv.Position.Epoch && last.Strict == inv.Strict {
				c.groups[g].invs = append(c.groups[g].invs, i)
				joined = true
			}
			break
		}
		if !joined {
			c.groups = append(c.groups, applyGroup{invs: []int{i}})
			c.nkeys += 2
		}
		c.n++
		c.nkeys += nkeys
	}
	for _, group := range order {
		closeCall(group)
	}
	return calls
}

// keys are the batched call's KEYS: per group the tag set and position key,
// then every invalidation's cache keys.
func (c applyCall) keys(keys [][]string) []string {
	out := make([]string, 0, c.nkeys)
	for _, g := range c.groups {
		out = append(out, keys[g.invs[0]][:2]...)
		for _, i := range g.invs {
			out = append(out, keys[i][2:]...)
		}
	}
	return out
}

// args are the batched call's ARGV: per group the epoch, the strict flag and
// the count, then each invalidation's version and number of keys.
func (c applyCall) args(invs []Invalidation) []any {
	out := make([]any, 0, 3*len(c.groups)+2*c.n)
	for _, g := range c.groups {
		first := invs[g.invs[0]]
		epoch := ""
		if first.Service != "" {
			epoch = first.Position.Epoch
		}
		out = append(out, epoch, strictFlag(first), len(g.invs))
		for _, i := range g.invs {
			out = append(out, invs[i].Position.Version, len(invs[i].Keys))
		}
	}
	return out
}

// letterStatus reads invalidate_keys.lua's status letters.
var letterStatus = map[byte]Status{'S': Success, 'D': Duplicate, 'G': Gap}

type reply struct {
	status  Status
	deleted int64
}

// replies reads a call's outcome, one per invalidation.
func (c applyCall) replies(keys [][]string, cmd *redis.Cmd) ([]reply, error) {
	first := keys[c.groups[0].invs[0]][0]
	if c.single {
		status, n, err := parseReply(first, cmd)
		return []reply{{status, n}}, err
	}
	v, err := cmd.Slice()
	if err != nil {
		return nil, fmt.Errorf("tagstore: invalidate %s and more: %w", first, err)
	}
	var letters string
	if len(v) > 0 {
		letters, _ = v[0].(string)
	}
	if len(v) != 1+c.n || len(letters) != c.n {
		return nil, fmt.Errorf("tagstore: invalidate %s and more: reply %v for %d invalidations", first, v, c.n)
	}
	out := make([]reply, c.n)
	for i := range out {
		status, ok := letterStatus[letters[i]]
		if !ok {
			return nil, fmt.Errorf("tagstore: invalidate %s and more: unknown status %q", first, letters[i])
		}
		n, _ := v[1+i].(int64)
		out[i] = reply{status, n}
	}
	return out, nil
}

func (s *Store) runInvalidate(ctx context.Context, keys []string, args []any) (Status, int64, error) {
	return parseReply(keys[0], lua.Invalidate.Run(ctx, s.c, keys, args...))
}

func parseReply(tagSet string, c *redis.Cmd) (Status, int64, error) {
	v, err := c.Slice()
	if err != nil {
		return "", 0, fmt.Errorf("tagstore: invalidate %s: %w", tagSet, err)
	}
	if len(v) != 2 {
		return "", 0, fmt.Errorf("tagstore: invalidate %s: unexpected reply %v", tagSet, v)
	}
	status, _ := v[0].(string)
	n, _ := v[1].(int64)
	return Status(status), n, nil
}

// chunk deletes a tag's members in batches until it is at or below the guard.
func (s *Store) chunk(ctx context.Context, tagSet string) (int64, error) {
	var deleted int64
	for {
		v, err := lua.Chunk.Run(ctx, s.c, []string{tagSet}, s.opt.ChunkSize).Int64Slice()
		if err != nil {
			return deleted, fmt.Errorf("tagstore: chunked delete of %s: %w", tagSet, err)
		}
		deleted += v[0]
		if v[1] <= int64(s.opt.CardinalityGuard) {
			return deleted, nil
		}
	}
}

// ReadPosition returns a service's position on a tenant's tag, with false
// when none is recorded.
func (s *Store) ReadPosition(ctx context.Context, tenant, service, tag string) (Position, bool, error) {
	v, err := s.c.Get(ctx, names.PositionKey(tenant, service, tag)).Result()
	if errors.Is(err, redis.Nil) {
		return Position{}, false, nil
	}
	if err != nil {
		return Position{}, false, err
	}
	p, err := ParsePosition(v)
	return p, err == nil, err
}

// Compact removes from a tag set the members whose keys no longer exist,
// in batches of at most 1000, and returns how many it removed. It works
// through the set with SSCAN, so it never blocks Redis for long.
func (s *Store) Compact(ctx context.Context, tenant, tag string) (int64, error) {
	if err := names.Tenant(tenant); err != nil {
		return 0, err
	}
	if err := names.Tag(tag); err != nil {
		return 0, err
	}
	tagSet := names.TagSetKey(tenant, tag)
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
			args := make([]any, len(batch))
			for i, m := range batch {
				args[i] = m
			}
			n, err := lua.Compact.Run(ctx, s.c, []string{tagSet}, args...).Int64()
			if err != nil {
				return removed, err
			}
			removed += n
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
