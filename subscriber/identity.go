package subscriber

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// cacheIdentityEvery is how often the subscriber reads its cache Redis's
// identity (one INFO server, replication and commandstats per master).
const cacheIdentityEvery = time.Second

// cacheIDs is what the cache Redis was when last read: each master's
// address and identity (serverIDs: its run_id, and its flushes and the
// master it followed since it started).
type cacheIDs map[string]string

// readCacheIDs reads the identity of every master of the cache Redis. It
// returns within probeTimeout, or as soon as ctx ends, whatever the
// client's timeouts (untilDone): a cache that does not answer holds
// neither the start nor the stop.
func (s *Subscriber) readCacheIDs(ctx context.Context) (cacheIDs, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var runs, addrs []string
	err := untilDone(ctx, func(ctx context.Context) (err error) {
		runs, addrs, err = serverIDs(ctx, s.opt.Cache, "cache")
		return err
	})
	if err != nil {
		return nil, err
	}
	ids := make(cacheIDs, len(runs))
	for i, a := range addrs {
		ids[a] = runs[i]
	}
	return ids, nil
}

// changed lists the masters of now that were not in ids, or were another
// server (restarted, failed over to a replica, flushed, or made to follow
// another master): a cache that may hold again what was invalidated on it,
// with the positions from before.
func (ids cacheIDs) changed(now cacheIDs) []string {
	var out []string
	for addr, id := range now {
		if was, ok := ids[addr]; !ok || was != id {
			out = append(out, addr+" "+shortID(was)+"→"+shortID(id))
		}
	}
	return out
}

func shortID(id string) string {
	if id == "" {
		return "none"
	}
	run, rest, _ := strings.Cut(id, "+")
	if len(run) > 12 {
		run = run[:12]
	}
	if rest != "" {
		return run + "+" + rest
	}
	return run
}

// watchCache reads the cache Redis's identity every cacheIdentityEvery
// until ctx ends, from first (read before the first check; nil when it
// could not be read). When a master's changed — its server restarted (from
// an older snapshot, say), or a replica was promoted that missed the last
// invalidations — the values deleted since are readable again and the
// positions stored with them are the older ones: the subscriber asks for a
// position check at once, which finds those positions behind the ones it
// applied and replays the channels from there, and is not ready until that
// check completes (ReasonCacheChanged). A cluster master that changed has
// every position checked, not only those on it. A read that fails (the
// cache down, failing over) keeps the last identity: the one read once it
// answers again is compared with it.
func (s *Subscriber) watchCache(ctx context.Context, first cacheIDs) {
	last := first
	t := time.NewTicker(cacheIdentityEvery)
	defer t.Stop()
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now, err := s.readCacheIDs(ctx)
		if err != nil {
			if redis.HasErrorPrefix(err, "NOPERM") && !warned {
				warned = true
				s.log.Warn("cannot read the cache Redis's identity: a restart or failover of it is noticed at the next position check only (grant the cache user +info: routerd acl --role cache)", "err", err)
			}
			continue
		}
		if last != nil {
			if changed := last.changed(now); len(changed) > 0 {
				s.health.cacheChanges.Add(1)
				s.m.cacheChanged.Inc()
				s.log.Warn("the cache Redis restarted or failed over: it may hold again values invalidated since; not ready until the positions are checked (now)", "changed", changed)
				s.requestCheck()
			}
		}
		last = now
	}
}
