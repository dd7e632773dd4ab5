// Package storm holds two rules of storm protection: in-memory token
// buckets taken together (the subscriber's local limit; the router's
// buckets are on the bus, shared by every router, see docs/limits.md) and
// the coalescing of keys, which the router and the subscriber share: it
// never drops a key. A union takes an invalidation while it stays within
// its bounds (Fits); callers start another union past them, so that a
// merge splits into several key-level invalidations instead of turning
// into the whole tag (docs/limits.md).
package storm

import (
	"math"
	"time"

	"golang.org/x/time/rate"
)

// Keys is the union of the keys of merged invalidations. An invalidation
// without keys (the whole tag) makes it whole, and so does a union above
// max keys (callers ask Fits first and start another union instead).
type Keys struct {
	max   int
	set   map[string]struct{}
	order []string
	whole bool
}

// NewKeys returns an empty union that becomes whole above max keys.
func NewKeys(max int) *Keys { return &Keys{max: max, set: map[string]struct{}{}} }

// Add merges the keys of one invalidation; none means the whole tag.
func (k *Keys) Add(keys []string) {
	if k.whole {
		return
	}
	if len(keys) == 0 {
		k.makeWhole()
		return
	}
	for _, key := range keys {
		if _, ok := k.set[key]; ok {
			continue
		}
		if len(k.order) >= k.max {
			k.makeWhole()
			return
		}
		k.set[key] = struct{}{}
		k.order = append(k.order, key)
	}
}

func (k *Keys) makeWhole() { k.whole, k.set, k.order = true, nil, nil }

// fits reports whether keys can be added without going above max keys.
func (k *Keys) fits(keys []string) bool {
	if k.whole {
		return true
	}
	n := len(k.order)
	for _, key := range keys {
		if _, ok := k.set[key]; !ok {
			n++ // a key repeated within keys counts twice: erring towards another union
		}
	}
	return n <= k.max
}

// Whole reports whether the union is the whole tag.
func (k *Keys) Whole() bool { return k.whole }

// List returns the keys in first-seen order, or nil for the whole tag.
func (k *Keys) List() []string {
	if k.whole {
		return nil
	}
	return k.order
}

// Union is the union of merged invalidations that may name keys, entity
// references (refs) or both, and say that the tag's plain values go
// (plain, an entity-level invalidation naming no keys): keys united, refs
// united, plain if any part says it. It is whole — the whole tag — when a
// part is whole (names neither keys nor refs) or the keys or the refs go
// above their bound. Nothing is ever dropped: the whole tag covers it all.
type Union struct {
	keys, refs *Keys
	plain      bool
	named      bool // keys or refs were added
}

// NewUnion returns an empty union that becomes whole above maxKeys keys or
// maxRefs refs.
func NewUnion(maxKeys, maxRefs int) *Union {
	return &Union{keys: NewKeys(maxKeys), refs: NewKeys(maxRefs)}
}

// NewUnionSized is NewUnion with room made for about keys keys, so that a
// union of that many is not grown key by key.
func NewUnionSized(maxKeys, maxRefs, keys int) *Union {
	keys = max(min(keys, maxKeys), 0)
	k := &Keys{max: maxKeys, set: make(map[string]struct{}, keys), order: make([]string, 0, keys)}
	return &Union{keys: k, refs: NewKeys(maxRefs)}
}

// Add merges one invalidation; neither keys nor refs means the whole tag.
// plain counts only with refs.
func (u *Union) Add(keys, refs []string, plain bool) {
	if len(keys) == 0 && len(refs) == 0 {
		u.keys.makeWhole()
		return
	}
	if len(keys) > 0 {
		u.keys.Add(keys)
	}
	if len(refs) > 0 {
		u.refs.Add(refs)
		u.plain = u.plain || plain
	}
	u.named = true
}

// Fits reports whether one invalidation can be added without taking the
// keys or the refs above their bounds: true for a union that is already
// whole (it covers anything) and for an invalidation of the whole tag.
func (u *Union) Fits(keys, refs []string) bool {
	return u.Whole() && u.named || u.keys.fits(keys) && u.refs.fits(refs)
}

// SetWhole makes the union the whole tag (a merge its budget cannot carry
// key-level).
func (u *Union) SetWhole() { u.keys.makeWhole(); u.named = true }

// Whole reports whether the union is the whole tag.
func (u *Union) Whole() bool { return !u.named || u.keys.Whole() || u.refs.Whole() }

// Keys returns the united keys in first-seen order (nil for the whole tag).
func (u *Union) Keys() []string {
	if u.Whole() {
		return nil
	}
	return u.keys.List()
}

// Refs returns the united refs in first-seen order (nil for the whole tag).
func (u *Union) Refs() []string {
	if u.Whole() {
		return nil
	}
	return u.refs.List()
}

// Plain reports whether the tag's plain values go too (false for the whole
// tag, which takes them all anyway).
func (u *Union) Plain() bool { return !u.Whole() && u.plain }

// Reserve takes one token from every limiter (nil ones are skipped) if all
// of them have one now, and returns 0. Otherwise it takes none and returns
// how long until all of them will. It allocates nothing (rate.Limiter's
// ReserveN would, on every event); callers serialize their calls on the
// same limiters.
func Reserve(now time.Time, lims ...*rate.Limiter) time.Duration {
	var wait time.Duration
	for _, l := range lims {
		if l == nil || l.Limit() == rate.Inf {
			continue
		}
		if t := l.TokensAt(now); t < 1 {
			if l.Limit() <= 0 {
				wait = max(wait, time.Second) // cannot happen with a valid rate; be safe
				continue
			}
			wait = max(wait, time.Duration(math.Ceil((1-t)/float64(l.Limit())*float64(time.Second))))
		}
	}
	if wait > 0 {
		return wait
	}
	for _, l := range lims {
		if l != nil {
			l.AllowN(now, 1)
		}
	}
	return 0
}

// Chunks is a merge that splits: the union of invalidations as a list of
// unions, in order, each within maxKeys keys and maxRefs refs. An
// invalidation goes into the last one while it fits, else into a new one;
// one naming more than the bounds alone (a message from a router with a
// larger max_keys) is never cut: it is a union of its own, which takes
// nothing more. So each invalidation adds at most one union. One of the
// whole tag makes the list one whole union, which covers them all.
type Chunks struct {
	maxKeys, maxRefs int
	list             []*Union
	closed           int // the unions before it take nothing more
}

// NewChunks returns an empty list of unions bounded by maxKeys and maxRefs.
func NewChunks(maxKeys, maxRefs int) *Chunks {
	return &Chunks{maxKeys: max(maxKeys, 1), maxRefs: max(maxRefs, 1)}
}

// Add merges one invalidation; neither keys nor refs means the whole tag.
// plain counts only with refs.
func (c *Chunks) Add(keys, refs []string, plain bool) {
	switch n := len(c.list); {
	case len(keys) == 0 && len(refs) == 0:
		c.Collapse()
	case len(keys) > c.maxKeys || len(refs) > c.maxRefs:
		u := NewUnion(max(len(keys), c.maxKeys), max(len(refs), c.maxRefs))
		u.Add(keys, refs, plain)
		c.list = append(c.list, u)
		c.closed = len(c.list)
	case n > c.closed && c.list[n-1].Fits(keys, refs):
		c.list[n-1].Add(keys, refs, plain)
	default:
		u := NewUnion(c.maxKeys, c.maxRefs)
		u.Add(keys, refs, plain)
		c.list = append(c.list, u)
	}
}

// Collapse makes the list one union of the whole tag (a merge its budget
// cannot carry key-level).
func (c *Chunks) Collapse() {
	u := NewUnion(c.maxKeys, c.maxRefs)
	u.SetWhole()
	c.list, c.closed = []*Union{u}, 0
}

// Len is the number of unions: the invalidations the merge takes.
func (c *Chunks) Len() int { return len(c.list) }

// List returns the unions in order.
func (c *Chunks) List() []*Union { return c.list }

// Drop removes the first n unions (applied).
func (c *Chunks) Drop(n int) { c.list, c.closed = c.list[n:], max(c.closed-n, 0) }

// Carries is how much merged work a budget of rate per second and burst
// may hold and still carry it key-level, in invalidations: refused, those
// it refused and that wait for its next token — that one and what it
// refills during the coalescing window, 1 + ⌊rate × window⌋ —, and
// pending, everything merged at once — refused and a full burst. Beyond
// either, the work would wait longer than one refill interval and the
// window: it becomes one whole-tag invalidation (docs/limits.md).
func Carries(perSecond float64, burst int, window time.Duration) (refused, pending int) {
	refused = 1
	if perSecond > 0 && window > 0 {
		refused += int(perSecond * window.Seconds())
	}
	return refused, refused + max(burst, 1)
}
