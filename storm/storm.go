// Package storm holds two rules of storm protection: in-memory token
// buckets taken together (the subscriber's local limit; the router's
// buckets are on the bus, shared by every router, see docs/limits.md) and
// the coalescing of keys, which the router and the subscriber share: it
// never drops a key but turns into a whole-tag invalidation above a bound.
package storm

import (
	"math"
	"time"

	"golang.org/x/time/rate"
)

// Keys is the union of the keys of merged invalidations. An invalidation
// without keys (the whole tag), or a union above max keys, makes it whole.
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

// Whole reports whether the union is the whole tag.
func (k *Keys) Whole() bool { return k.whole }

// List returns the keys in first-seen order, or nil for the whole tag.
func (k *Keys) List() []string {
	if k.whole {
		return nil
	}
	return k.order
}

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

// Limiter returns a token bucket of rate per second and burst, or updates
// l to them when it exists and differs (a reloaded matrix).
func Limiter(l *rate.Limiter, perSecond float64, burst int) *rate.Limiter {
	if l == nil {
		return rate.NewLimiter(rate.Limit(perSecond), burst)
	}
	if l.Limit() != rate.Limit(perSecond) {
		l.SetLimit(rate.Limit(perSecond))
	}
	if l.Burst() != burst {
		l.SetBurst(burst)
	}
	return l
}
