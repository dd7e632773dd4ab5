package subscriber

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// pipelineChunk bounds the commands sent in one pipeline.
const pipelineChunk = 1000

// check compares every channel's position with the channel's current epoch
// and version and recovers the channels that are behind, ahead, or whose
// cache went back.
func (s *Subscriber) check(ctx context.Context) error {
	s.m.checks.Inc()
	s.checkEviction(ctx)
	// The generation before the targets: a loss after this read is seen
	// by the next check; one before it came before any value whose
	// channel the targets then miss was cached.
	gen, err := s.generations(ctx)
	if err != nil {
		return err
	}
	tenants, err := s.targets(ctx)
	if err != nil {
		return err
	}
	// The channels in parts of checkChunk, made as they are checked: a
	// list of a million targets would be the largest thing a check makes.
	batch := make([]target, 0, checkChunk)
	flush := func() error {
		err := s.checkTargets(ctx, batch, gen, nil)
		batch = batch[:0]
		return err
	}
	for _, tenant := range tenants {
		for _, tag := range s.cur.tagList {
			batch = append(batch, target{names.Channel(s.prefix, tenant, tag), tenant, tag})
			if len(batch) == checkChunk {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	if len(batch) > 0 {
		if err := flush(); err != nil {
			return err
		}
	}
	if err := s.sawGeneration(ctx, gen); err != nil {
		return err
	}
	if gen.seen == "" && gen.bus != "" && s.store != nil && s.opt.Handler != nil {
		// The service's first look, now recorded. A channel found with
		// neither a meta nor a position is watched only by a check under
		// a generation recorded before it (recovery.Watch), and with a
		// Handler nothing else lets a new channel's first message replay
		// rather than its whole tag: check again now, before ready, not
		// at the next interval (a channel first published meanwhile went
		// whole).
		return s.check(ctx)
	}
	return nil
}

// checkChunk is how many channels a check takes at a time.
const checkChunk = 10 * pipelineChunk

// generation is the bus's generation and the one this service last saw.
type generation struct{ bus, seen string }

// lost reports whether the bus lost its data since the service last looked:
// its generation changed or is gone. A service that never looked (nothing
// seen) cannot tell.
func (g generation) lost() bool { return g.seen != "" && g.bus != g.seen }

// known reports whether the bus kept its data since the service last
// looked: its generation is the one seen.
func (g generation) known() bool { return g.seen != "" && g.bus == g.seen }

// generations reads the bus's generation and the one recorded with the cache
// (in memory without a cache) by the last complete check.
func (s *Subscriber) generations(ctx context.Context) (generation, error) {
	bus, err := s.bus.Get(ctx, names.GenerationKey(s.prefix)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return generation{}, fmt.Errorf("reading the bus generation %s from the bus Redis: %w", names.GenerationKey(s.prefix), err)
	}
	g := generation{bus: bus, seen: s.seenGeneration}
	if s.store != nil {
		seen, err := s.opt.Cache.Get(ctx, names.GenerationSeenKey(s.opt.Service)).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return generation{}, fmt.Errorf("reading the bus generation last seen, %s, from the cache Redis: %w", names.GenerationSeenKey(s.opt.Service), err)
		}
		g.seen = seen
	}
	if g.lost() {
		s.log.Warn("the bus lost its data since this service last looked (its generation changed): channels without a meta are invalidated whole",
			"seen", g.seen, "now", g.bus)
	}
	return g, nil
}

// sawGeneration records, after a complete check, the generation it was made
// against. A bus without one yet (the router has not made it again) is not
// recorded, so the next check still sees the loss.
func (s *Subscriber) sawGeneration(ctx context.Context, g generation) error {
	if g.bus == "" || g.bus == g.seen {
		return nil
	}
	if s.store != nil {
		if err := s.opt.Cache.Set(ctx, names.GenerationSeenKey(s.opt.Service), g.bus, 0).Err(); err != nil {
			return fmt.Errorf("recording the bus generation in %s in the cache Redis: %w", names.GenerationSeenKey(s.opt.Service), err)
		}
	}
	s.seenGeneration = g.bus
	return nil
}

// checkChannel checks one channel of interest, newly subscribed.
func (s *Subscriber) checkChannel(ctx context.Context, channel string) error {
	tenant, tag, err := names.ParseChannel(s.prefix, channel)
	if err != nil || !s.cur.covers(tenant, tag) {
		return nil // no longer ours (a matrix change)
	}
	return s.checkOne(ctx, target{channel, tenant, tag}, nil)
}

// verify checks the channel of a message that does not follow its position:
// the channel's meta and the position stored with the cache decide, and the
// message counts only as far as the meta confirms it.
func (s *Subscriber) verify(ctx context.Context, t target, msg *wire.Message) error {
	return s.checkOne(ctx, t, msg)
}

// checkOne checks one channel against the bus's generation as it is now.
func (s *Subscriber) checkOne(ctx context.Context, t target, msg *wire.Message) error {
	gen, err := s.generations(ctx)
	if err != nil {
		return err
	}
	if gen.seen == "" && gen.bus != "" {
		// Never recorded one: until a complete check does, every channel
		// without a position goes whole (recovery.Check). Soon, then.
		s.requestCheck()
	}
	return s.checkTargets(ctx, []target{t}, gen, msg)
}

// checkTargets reads the channels' metas and the positions stored with the
// cache, and brings each channel to its meta (recovery.Check), going by the
// bus generation gen. With msg set (one target), it is the message that made
// the check, and is reported when the meta does not confirm it.
func (s *Subscriber) checkTargets(ctx context.Context, targets []target, gen generation, msg *wire.Message) error {
	// The targets' queued work first, so the stored positions are where it
	// left them.
	var errs error
	for _, t := range targets {
		if p, ok := s.queued[t.channel]; ok {
			errs = errors.Join(errs, s.applyQueued(ctx, t.channel, p))
		}
	}
	if errs != nil {
		return errs
	}
	if err := s.flushBatch(ctx); err != nil {
		return err
	}
	var failed error
	var recoveries []pending // the part's recoveries, carried out together
	for start := 0; start < len(targets); start += pipelineChunk {
		batch := targets[start:min(start+pipelineChunk, len(targets))]
		metas, err := s.metas(ctx, batch)
		if err != nil {
			return err
		}
		stored, storedErrs, err := s.storedPositions(ctx, batch)
		if err != nil {
			return err
		}
		for i, t := range batch {
			if err := errors.Join(metas[i].err, storedErrs[i]); err != nil {
				// Counted and logged, not a failure of the check: a key of
				// the wrong type does not go away by retrying, and the
				// other channels must still settle (and the service get
				// ready) while an operator fixes it.
				s.m.positionErrors.Inc()
				s.log.Warn("unreadable channel meta or stored position; the channel is not checked until it can be read", "channel", t.channel, "err", err)
				continue
			}
			meta := metas[i].at
			if msg != nil && !recovery.Confirmed(msgPosition(msg), meta) {
				s.m.unconfirmed.Inc()
				s.log.Warn("message not confirmed by the channel's meta (forged, or lost with the bus); ignored",
					"channel", t.channel, "message", msgPosition(msg).String(), "channel_at", meta.String())
			}
			p, ok := s.pos[t.channel]
			c := recovery.Channel{Memory: stored[i], Stored: stored[i], HasStore: s.store != nil, Meta: meta,
				BusLost: gen.lost(), BusKnown: gen.known(), Announced: s.heard[t.channel], HasHandler: s.opt.Handler != nil}
			if ok {
				c.Memory, c.Watched = p.at, p.watched != "" && p.watched == gen.bus
			}
			delete(s.heard, t.channel)
			if !ok && !meta.Known() && !stored[i].Known() && !gen.lost() && !s.mustWatch(c, gen) {
				continue // never published, nothing stored: nothing to remember (a position a channel at scale)
			}
			if !ok {
				p = &position{tenant: t.tenant, tag: t.tag, at: stored[i]}
				s.pos[t.channel] = p
			}
			d := recovery.Check(c)
			if recovery.Watch(c) && gen.bus != "" {
				p.watched = gen.bus
			}
			if chain, ok := recovery.Adopt(c); ok && p.at.Epoch == meta.Epoch && p.at.Version == meta.Version {
				p.at.Chain = chain
			}
			if start, moved := recovery.Start(c); moved {
				s.m.cacheMoved.Inc()
				s.log.Warn("the cache holds another position than this subscriber applied (restored, failed over, or another instance); continuing from there",
					"channel", t.channel, "applied", p.at.String(), "cache", stored[i].String(), "from", start.String())
				// Without a Handler, the cache's position is where this
				// channel stands; with one, memory stays the Handler's (per
				// process) until the recovery has brought both to the meta.
				if !c.HasHandler {
					p.at = stored[i]
				}
			}
			if d.Action == recovery.Ignore {
				continue
			}
			var first bool
			if msg != nil {
				d, first = recovery.First(d, msgPosition(msg))
			}
			if !first {
				s.m.gaps.Inc()
				s.log.Info("channel needs recovery", "channel", t.channel, "action", d.Action.String(), "reason", d.Reason.String(),
					"at", p.at.String(), "channel_at", meta.String())
			}
			recoveries = append(recoveries, pending{t.channel, p, d, first})
		}
		failed = errors.Join(failed, s.recoverAll(ctx, recoveries))
		recoveries = recoveries[:0]
	}
	return errors.Join(failed, s.flushBatch(ctx))
}

// mustWatch reports whether a channel with neither a meta nor a position
// needs a position kept only to remember it was watched (recovery.Watch):
// not when the bus kept its data and the cache is a cache Redis alone,
// whose channels recovery.Check already takes for fresh — what keeps an
// agent of millions of channels from holding a position for each.
func (s *Subscriber) mustWatch(c recovery.Channel, gen generation) bool {
	return recovery.Watch(c) && gen.bus != "" && !(c.BusKnown && c.HasStore && !c.HasHandler)
}

type target struct{ channel, tenant, tag string }

type metaRead struct {
	at  recovery.Position // zero: no meta on the bus
	err error             // the meta exists but cannot be read
}

// metas reads the channels' metas from the bus in one pipeline.
func (s *Subscriber) metas(ctx context.Context, targets []target) ([]metaRead, error) {
	cmds, err := s.bus.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, t := range targets {
			pipe.HMGet(ctx, names.MetaKey(t.channel), "epoch", "version", "chain")
		}
		return nil
	})
	if err != nil && !isReplyError(err) {
		return nil, err // the bus did not answer: nothing can be decided
	}
	out := make([]metaRead, len(targets))
	for i, t := range targets {
		vals, err := cmds[i].(*redis.SliceCmd).Result()
		if err != nil {
			out[i].err = fmt.Errorf("%s: %w", names.MetaKey(t.channel), err)
			continue
		}
		epoch, _ := vals[0].(string)
		vs, hasVersion := vals[1].(string)
		if epoch == "" && !hasVersion {
			continue // no meta: nothing published, or the bus lost it
		}
		v, err := strconv.ParseInt(vs, 10, 64)
		if epoch == "" || err != nil || v < 0 {
			out[i].err = fmt.Errorf("%s holds epoch %q version %q", names.MetaKey(t.channel), epoch, vs)
			continue
		}
		out[i].at = recovery.Position{Epoch: epoch, Version: v}
		// The chain, when it is this version's: a router older than
		// chains leaves none, or one of a version it published past.
		if cs, _ := vals[2].(string); cs != "" {
			if c, err := tagstore.ParsePosition(cs); err == nil && c.Epoch == epoch && c.Version == v {
				out[i].at.Chain = c.Chain
			}
		}
	}
	return out, nil
}

// storedPositions reads the positions stored with the cache for the targets
// (the zero Position where none is). Without a cache, positions live in
// memory and those are returned. A stored position that cannot be parsed is
// counted and taken as none: its channel is then recovered whole. A position
// the cache refuses to read (a key of another type) is an error of its own
// target; err is for a cache that did not answer.
func (s *Subscriber) storedPositions(ctx context.Context, targets []target) (out []recovery.Position, errs []error, err error) {
	out = make([]recovery.Position, len(targets))
	errs = make([]error, len(targets))
	if s.store == nil {
		for i, t := range targets {
			if p, ok := s.pos[t.channel]; ok {
				out[i] = p.at
			}
		}
		return out, errs, nil
	}
	chans := make([]tagstore.TenantTag, len(targets))
	for i, t := range targets {
		chans[i] = tagstore.TenantTag{Tenant: t.tenant, Tag: t.tag}
	}
	pos, found, readErrs, err := s.store.ReadPositions(ctx, s.opt.Service, chans)
	if err != nil {
		return nil, nil, err
	}
	for i, t := range targets {
		switch {
		case errors.Is(readErrs[i], tagstore.ErrBadPosition):
			s.m.positionErrors.Inc()
			s.log.Warn("unreadable stored position; recovering the channel as if it had none", "channel", t.channel, "err", readErrs[i])
		case readErrs[i] != nil:
			errs[i] = readErrs[i]
		case found[i]:
			out[i] = recovery.Position{Epoch: pos[i].Epoch, Version: pos[i].Version, Chain: pos[i].Chain}
		}
	}
	return out, errs, nil
}

// isReplyError reports whether err is an error Redis answered (WRONGTYPE and
// the like) rather than a failure to reach it: such an error belongs to one
// command of a pipeline, whose others still answered.
func isReplyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}

// targets lists the tenants whose channels (of every tag) to check: the configured tenants, or for a
// service of every tenant the router's tenant registry, the tenants this
// service holds positions for (kept with the positions, so they survive a
// bus that lost its registry) and every channel seen so far.
func (s *Subscriber) targets(ctx context.Context) ([]string, error) {
	tenants := s.cur.tenants
	if s.cur.allTenants {
		var err error
		if tenants, err = s.everyTenant(ctx); err != nil {
			return nil, err
		}
		// A tenant whose announcement this subscriber missed (it was
		// reconnecting) joins now, so its messages arrive live again.
		for _, t := range tenants {
			s.announced(ctx, t)
		}
	}
	return tenants, nil
}

// everyTenant returns, for a service of every tenant, the tenants of the
// router's registry, of the service's position index, of the cache's tenant
// index (tenants with tagged values), announced, and seen so far. The two
// indexes live in the cache Redis, so they survive a bus that lost its data.
func (s *Subscriber) everyTenant(ctx context.Context) ([]string, error) {
	// Only this instance's tenants are kept from each page (a shard of k
	// reads the registry, but keeps 1/k of it).
	registered, err := scanSet(ctx, s.bus, wire.TenantsKey(s.prefix), s.cur.shard.Owns)
	if err != nil {
		return nil, fmt.Errorf("reading the tenant registry %s from the bus Redis: %w", wire.TenantsKey(s.prefix), err)
	}
	var indexed, cached []string
	if s.store != nil {
		if indexed, err = scanSet(ctx, s.opt.Cache, names.PositionIndexKey(s.opt.Service), s.cur.shard.Owns); err != nil {
			return nil, fmt.Errorf("reading the position index %s from the cache Redis: %w", names.PositionIndexKey(s.opt.Service), err)
		}
		if cached, err = scanSet(ctx, s.opt.Cache, names.CacheTenantsKey(), s.cur.shard.Owns); err != nil {
			return nil, fmt.Errorf("reading the tenant index %s from the cache Redis: %w", names.CacheTenantsKey(), err)
		}
	}
	// One list sorted and compacted rather than a set: a map of a
	// million tenants is the largest thing a check makes.
	out := slices.Grow(registered, len(indexed)+len(cached)+len(s.joined)+len(s.joinedNew))
	out = append(append(append(out, indexed...), cached...), s.joined...)
	for t := range s.joinedNew {
		out = append(out, t)
	}
	for _, p := range s.pos {
		out = append(out, p.tenant)
	}
	slices.Sort(out)
	out = slices.Compact(out)
	return slices.DeleteFunc(out, func(t string) bool { return !names.ValidTenant(t) || !s.cur.shard.Owns(t) }), nil
}

// scanSet reads the members of a set that keep accepts, in SSCAN pages:
// one SMEMBERS of a registry of a million tenants holds the Redis for the
// time it takes to answer it all. A member added or removed meanwhile may
// or may not be in it (SSCAN's guarantee); the next check sees it.
func scanSet(ctx context.Context, rdb redis.UniversalClient, key string, keep func(string) bool) ([]string, error) {
	var out []string
	var cursor uint64
	for {
		page, next, err := rdb.SScan(ctx, key, cursor, "", scanPage).Result()
		if err != nil {
			return nil, err
		}
		for _, m := range page {
			if keep(m) {
				out = append(out, m)
			}
		}
		if cursor = next; cursor == 0 {
			return out, nil
		}
	}
}

// scanPage is the COUNT of one SSCAN.
const scanPage = 1000

// index records in the cache Redis the tenants of invalidations about to
// write their first position there, before they do: a subscriber of every
// tenant finds its positions from the index even when the bus lost its
// tenant registry.
func (s *Subscriber) index(ctx context.Context, invs []Invalidation) error {
	var fresh []any
	for _, inv := range invs {
		if !s.indexed[inv.Tenant] && !slices.Contains(fresh, any(inv.Tenant)) {
			fresh = append(fresh, inv.Tenant)
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	if err := s.opt.Cache.SAdd(ctx, names.PositionIndexKey(s.opt.Service), fresh...).Err(); err != nil {
		return fmt.Errorf("recording tenants in the position index %s in the cache Redis: %w", names.PositionIndexKey(s.opt.Service), err)
	}
	for _, t := range fresh {
		s.indexed[t.(string)] = true
	}
	return nil
}
