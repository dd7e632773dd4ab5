package subscriber

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/names"
)

// cacheIdentityEvery is how often the subscriber reads its cache Redis's
// identity (one INFO server, replication and commandstats per master, and
// one INCR of its identity counter).
const cacheIdentityEvery = time.Second

// cacheIDs is what the cache Redis was when last read: each master's
// address and identity.
type cacheIDs map[string]cacheID

// cacheID is one master's identity: the server (serverIDs: its run_id, and
// its flushes and the master it followed since it started), and the count
// its identity counter (names.IdentityKey, key) answered to this read's
// INCR, 0 when unknown (refused: NOPERM, OOM on a full cache).
//
// The counter is what tells a server whose data went back while the rest
// stayed the same: a FLUSHALL or FLUSHDB followed by CONFIG RESETSTAT
// (flushes counted as before: a FLUSHALL after the reset when one was
// counted before it), and DEBUG RELOAD NOSAVE (or a DEBUG RELOAD of any
// dump, MERGE, NOFLUSH), which loads the dump on disk into the running
// server, run_id unchanged. A flush alone loses no invalidation (every
// value goes with the positions; a channel's next strict apply finds its
// position gone and asks for a check, as the check finds it gone), but a
// reload brings back values invalidated since the dump, with the older
// positions, readable until a check. A reload is seen when a read came
// between the dump's save and the reload: a reload of a dump saved after
// this subscriber's last read (within cacheIdentityEvery before it) brings
// back a count above that read's and goes unseen; what it loses then is
// what was applied since that save, less than a second's worth, until the
// next check (or the channel's next message, whose position no longer
// follows).
type cacheID struct {
	server  string
	key     string
	count   int64
	carried bool // count is the last read's (carry), not this one's
}

// readCacheIDs reads the identity of every master of the cache Redis, and
// counts one on each master's identity counter. It returns within
// probeTimeout, or as soon as ctx ends, whatever the client's timeouts
// (untilDone): a cache that does not answer holds neither the start nor
// the stop.
func (s *Subscriber) readCacheIDs(ctx context.Context) (cacheIDs, error) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var ids cacheIDs
	err := untilDone(ctx, func(ctx context.Context) error {
		runs, addrs, err := serverIDs(ctx, s.opt.Cache, "cache")
		if err != nil {
			return err
		}
		read := make(cacheIDs, len(runs))
		for i, a := range addrs {
			read[a] = cacheID{server: runs[i]}
		}
		masters, err := redisconn.Masters(ctx, s.opt.Cache)
		if err != nil {
			return err
		}
		for _, m := range masters {
			id, ok := read[m.Options().Addr]
			if !ok {
				continue // a master that came between the two lists: next read
			}
			id.key, id.count = s.countIdentity(ctx, m)
			read[m.Options().Addr] = id
		}
		ids = read
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// countIdentity increments the identity counter on master m and returns
// its key and count (0 when it could not be counted: refused, or no key
// of m's slots found). A NOPERM is warned of once.
func (s *Subscriber) countIdentity(ctx context.Context, m *redis.Client) (string, int64) {
	key, err := s.identityKey(ctx, m)
	if err != nil {
		return "", 0
	}
	mctx, mc := redisconn.OnNode(ctx, s.opt.Cache, m) // the cache client's hooks see it
	n, err := mc.Incr(mctx, key).Result()
	if err != nil {
		if redis.HasErrorPrefix(err, "NOPERM") && s.identityRefused.CompareAndSwap(false, true) {
			s.log.Warn("cannot count the cache Redis's identity: a flush after CONFIG RESETSTAT, or a DEBUG RELOAD, is noticed at the next position check only (grant the cache user the key: routerd acl --role cache)", "key", key, "err", err)
		}
		return key, 0
	}
	return key, n
}

// identityKey is the identity counter's key on master m: one name on one
// server; on a cluster the first of IdentityKey's hash tags "0", "1", …
// whose slot m serves (found again when m no longer serves it).
func (s *Subscriber) identityKey(ctx context.Context, m *redis.Client) (string, error) {
	cc := redisconn.Cluster(s.opt.Cache)
	if cc == nil {
		return names.IdentityKey(s.opt.Service, ""), nil
	}
	addr := m.Options().Addr
	s.identityMu.Lock()
	key := s.identityKeys[addr]
	s.identityMu.Unlock()
	if key != "" {
		if n, err := cc.MasterForKey(ctx, key); err == nil && n.Options().Addr == addr {
			return key, nil
		}
	}
	// A master that serves a single slot of the 16384 is found within
	// 1<<18 tags but once in nine million.
	for i := range 1 << 18 {
		key := names.IdentityKey(s.opt.Service, strconv.Itoa(i))
		n, err := cc.MasterForKey(ctx, key)
		if err != nil {
			return "", err
		}
		if n.Options().Addr == addr {
			s.identityMu.Lock()
			s.identityKeys[addr] = key
			s.identityMu.Unlock()
			return key, nil
		}
	}
	return "", fmt.Errorf("no identity key found on the slots of %s", addr)
}

// changed lists the masters of now that were not in ids, or were another
// server (restarted, failed over to a replica, flushed, or made to follow
// another master), or whose identity counter did not grow (their data went
// back): a cache that may hold again what was invalidated on it, with the
// positions from before.
func (ids cacheIDs) changed(now cacheIDs) []string {
	var out []string
	for addr, id := range now {
		was, ok := ids[addr]
		switch {
		case !ok || was.server != id.server:
			out = append(out, addr+" "+shortID(was.server)+"→"+shortID(id.server))
		case !id.carried && was.key == id.key && was.count > 0 && id.count > 0 && id.count <= was.count:
			out = append(out, fmt.Sprintf("%s %s counted %d→%d (its data went back)", addr, id.key, was.count, id.count))
		}
	}
	return out
}

// carry keeps, for a master whose counter now could not be counted, the
// count last read (same server, same key): the next count is compared
// with it.
func (ids cacheIDs) carry(last cacheIDs) {
	for addr, id := range ids {
		if was, ok := last[addr]; ok && id.count == 0 && was.server == id.server && was.key == id.key {
			id.count, id.carried = was.count, true
			ids[addr] = id
		}
	}
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
// an older snapshot, say), a replica was promoted that missed the last
// invalidations, or its data went back under the same server (its identity
// counter did not grow: cacheID) — the values deleted since are readable
// again and the
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
			now.carry(last)
			if changed := last.changed(now); len(changed) > 0 {
				s.presenceLost() // before the check: it waits for the presence
				s.health.cacheChanges.Add(1)
				s.m.cacheChanged.Inc()
				s.log.Warn("the cache Redis restarted or failed over (or its data went back: reloaded, flushed): it may hold again values invalidated since; not ready until the positions are checked (now)", "changed", changed)
				s.requestCheck()
			}
		}
		last = now
	}
}
