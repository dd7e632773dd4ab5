package subscriber

import (
	"context"
	"errors"
	"fmt"
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
	bus, err := s.busGeneration(ctx)
	if err != nil {
		return err
	}
	targets, err := s.targets(ctx)
	if err != nil {
		return err
	}
	if err := s.applyTargets(ctx, targets); err != nil {
		return err
	}
	gen, err := s.checkTargets(ctx, targets, bus, nil)
	if err != nil {
		return err
	}
	return s.sawGeneration(ctx, gen)
}

// generation is the bus's generation and the one this service last saw.
type generation struct{ bus, seen string }

// lost reports whether the bus lost its data since the service last looked:
// its generation changed or is gone. A service that never looked (nothing
// seen) cannot tell.
func (g generation) lost() bool { return g.seen != "" && g.bus != g.seen }

// known reports whether the bus kept its data since the service last
// looked: its generation is the one seen.
func (g generation) known() bool { return g.seen != "" && g.bus == g.seen }

// busGeneration reads the bus's generation ("" when the router has not
// made it again since a loss).
func (s *Subscriber) busGeneration(ctx context.Context) (string, error) {
	bus, err := s.bus.Get(ctx, names.GenerationKey(s.prefix)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("reading the bus generation %s from the bus Redis: %w", names.GenerationKey(s.prefix), err)
	}
	return bus, nil
}

// sawGeneration records, after a complete check, the generation it was made
// against. A bus without one yet (the router has not made it again) is not
// recorded, so the next check still sees the loss.
func (s *Subscriber) sawGeneration(ctx context.Context, g generation) error {
	if g.bus == "" || g.bus == g.seen {
		return nil
	}
	if s.store != nil {
		if err := s.store.RecordGeneration(ctx, s.opt.Service, g.bus); err != nil {
			return err
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
	bus, err := s.busGeneration(ctx)
	if err != nil {
		return err
	}
	if err := s.applyTargets(ctx, []target{t}); err != nil {
		return err
	}
	gen, err := s.checkTargets(ctx, []target{t}, bus, msg)
	if gen.seen == "" && gen.bus != "" {
		// Never recorded one: until a complete check does, every channel
		// without a position goes whole (recovery.Check). Soon, then.
		s.requestCheck()
	}
	return err
}

// applyTargets applies the targets' queued and staged work before they
// are checked, so the stored positions are where it left them.
func (s *Subscriber) applyTargets(ctx context.Context, targets []target) error {
	var errs error
	for _, t := range targets {
		if p, ok := s.queued[t.channel]; ok {
			errs = errors.Join(errs, s.applyQueued(ctx, t.channel, p))
		}
	}
	if errs != nil {
		return errs
	}
	return s.flushBatch(ctx)
}

// checkTargets checks channels one way: for each pipeline of targets it
// reads their state (readState: metas from the bus; positions and the
// generation seen from the cache, in one call), asks internal/recovery
// what to do (recovery.Decide), and carries the plan out (carryOut). bus is
// the bus's generation, read before the targets were listed; their work
// is applied (applyTargets). With msg set
// (one target), it is the message that made the check, inside the burst
// that received it. It returns the generations the check went by.
func (s *Subscriber) checkTargets(ctx context.Context, targets []target, bus string, msg *wire.Message) (generation, error) {
	var gen generation
	var failed error
	for start := 0; start == 0 || start < len(targets); start += pipelineChunk {
		batch := targets[start:min(start+pipelineChunk, len(targets))]
		st, err := s.readState(ctx, batch)
		if err != nil {
			return generation{}, err
		}
		if start == 0 {
			gen = generation{bus: bus, seen: st.seen}
			if gen.lost() {
				s.log.Warn("the bus lost its data since this service last looked (its generation changed): channels without a meta are invalidated whole",
					"seen", gen.seen, "now", gen.bus)
			}
		}
		for i, t := range batch {
			if err := st.errs[i]; err != nil {
				// Counted and logged, not a failure of the check: a key of
				// the wrong type does not go away by retrying, and the
				// other channels must still settle (and the service get
				// ready) while an operator fixes it.
				s.m.positionErrors.Inc()
				s.log.Warn("unreadable channel meta or stored position; the channel is not checked until it can be read", "channel", t.channel, "err", err)
				continue
			}
			p, ok := s.pos[t.channel]
			if !ok {
				p = &position{tenant: t.tenant, tag: t.tag, at: st.stored[i]}
				s.pos[t.channel] = p
			}
			c := recovery.Channel{Memory: p.at, Stored: st.stored[i], HasStore: s.store != nil, Meta: st.metas[i],
				BusLost: gen.lost(), BusKnown: gen.known(), Watched: p.watched != "" && p.watched == gen.bus,
				Announced: s.heard[t.channel], HasHandler: s.opt.Handler != nil}
			if msg != nil {
				c.Message = msgPosition(msg)
			}
			delete(s.heard, t.channel)
			if err := s.carryOut(ctx, t.channel, p, c, recovery.Decide(c), gen, msg != nil); err != nil {
				failed = errors.Join(failed, fmt.Errorf("%s: %w", t.channel, err))
			}
		}
	}
	return gen, errors.Join(failed, s.flushBatch(ctx))
}

// carryOut applies a check's plan for one channel, whose state was c: it
// counts and logs what the plan found, stands the channel where the plan
// says, and executes the decision. live: the check was made for a message
// of the burst being handled, whose pipeline the replay joins.
func (s *Subscriber) carryOut(ctx context.Context, channel string, p *position, c recovery.Channel, pl recovery.Plan, gen generation, live bool) error {
	if pl.Unconfirmed {
		s.m.unconfirmed.Inc()
		s.log.Warn("message not confirmed by the channel's meta (forged, or lost with the bus); ignored",
			"channel", channel, "message", c.Message.String(), "channel_at", c.Meta.String())
	}
	if pl.Watch && gen.bus != "" {
		p.watched = gen.bus
	}
	if pl.Moved {
		s.m.cacheMoved.Inc()
		s.log.Warn("the cache holds another position than this subscriber applied (restored, failed over, or another instance); continuing from there",
			"channel", channel, "applied", c.Memory.String(), "cache", c.Stored.String(), "from", pl.Start.String())
	}
	p.at = pl.At
	if pl.Action == recovery.Ignore {
		return nil
	}
	if !pl.First {
		s.m.gaps.Inc()
		s.log.Info("channel needs recovery", "channel", channel, "action", pl.Action.String(), "reason", pl.Reason.String(),
			"at", p.at.String(), "channel_at", c.Meta.String())
	}
	d, msgs, at, err := s.resolve(ctx, channel, p.at, pl.Decision)
	if err != nil {
		return err
	}
	return s.execute(ctx, channel, p, d, msgs, at, pl.First, live)
}

// resolve reads the history a replay needs and settles the decision
// against it (recovery.Resolve): the messages to replay with where the
// channel stands after each, or the whole tag when the history no longer
// reaches back or its chain does not follow from start.
func (s *Subscriber) resolve(ctx context.Context, channel string, start recovery.Position, d recovery.Decision) (recovery.Decision, []*wire.Message, []recovery.Position, error) {
	if d.Action != recovery.Replay {
		return d, nil, nil, nil
	}
	msgs, payloads, ok, err := s.history(ctx, channel, d.To.Epoch, d.From, d.To.Version)
	if err != nil {
		return d, nil, nil, err
	}
	got := make([]recovery.Position, len(msgs))
	for i, m := range msgs {
		got[i] = msgPosition(m)
	}
	r, at := recovery.Resolve(d, start, ok, got, payloads)
	if ok && r.Action == recovery.WholeTag && r.Reason == recovery.Diverged {
		s.m.unconfirmed.Inc()
		s.log.Warn("the channel's chain does not follow from the position: a forged message was applied in place of the channel's own; invalidating the whole tag",
			"channel", channel, "position", start.String(), "channel_at", d.To.String())
	}
	return r, msgs, at, nil
}

// history returns the messages from..to of the channel's history, with
// each one's JSON as published, and false when the history does not hold
// all of them in this epoch.
func (s *Subscriber) history(ctx context.Context, channel, epoch string, from, to int64) ([]*wire.Message, [][]byte, bool, error) {
	entries, err := s.bus.XRange(ctx, names.HistoryKey(channel), strconv.FormatInt(from, 10)+"-0", strconv.FormatInt(to, 10)+"-0").Result()
	if err != nil {
		return nil, nil, false, err
	}
	msgs := make([]*wire.Message, 0, len(entries))
	payloads := make([][]byte, 0, len(entries))
	got := make([]recovery.Position, 0, len(entries))
	for _, e := range entries {
		raw, _ := e.Values[names.HistoryField].(string)
		m, err := wire.ParseMessage([]byte(raw))
		if err != nil {
			s.m.positionErrors.Inc()
			s.log.Warn("unreadable history entry; the whole tag closes the gap", "channel", channel, "id", e.ID, "err", err)
			return nil, nil, false, nil
		}
		msgs = append(msgs, m)
		payloads = append(payloads, []byte(raw))
		got = append(got, msgPosition(m))
	}
	return msgs, payloads, recovery.Contiguous(got, epoch, from, to), nil
}

type target struct{ channel, tenant, tag string }

// state is what a check reads of its targets, one each: the metas on the
// bus, the positions stored with the cache (in memory without one), an
// error for a target whose meta or position cannot be read; and the bus
// generation the service last saw.
type state struct {
	metas, stored []recovery.Position
	errs          []error
	seen          string
}

// readState reads the targets' state: their metas from the bus in one
// pipeline, and what the cache holds for them in one call (cacheState).
func (s *Subscriber) readState(ctx context.Context, targets []target) (state, error) {
	metas, err := s.metas(ctx, targets)
	if err != nil {
		return state{}, err
	}
	stored, errs, seen, err := s.cacheState(ctx, targets)
	if err != nil {
		return state{}, err
	}
	st := state{metas: make([]recovery.Position, len(targets)), stored: stored, errs: errs, seen: seen}
	for i := range targets {
		st.metas[i] = metas[i].at
		st.errs[i] = errors.Join(metas[i].err, errs[i])
	}
	return st, nil
}

type metaRead struct {
	at  recovery.Position // zero: no meta on the bus
	err error             // the meta exists but cannot be read
}

// metas reads the channels' metas from the bus in one pipeline.
func (s *Subscriber) metas(ctx context.Context, targets []target) ([]metaRead, error) {
	out := make([]metaRead, len(targets))
	if len(targets) == 0 {
		return out, nil
	}
	cmds, err := s.bus.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, t := range targets {
			pipe.HMGet(ctx, names.MetaKey(t.channel), "epoch", "version", "chain")
		}
		return nil
	})
	if err != nil && !isReplyError(err) {
		return nil, err // the bus did not answer: nothing can be decided
	}
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

// cacheState reads what the cache holds for the targets in one call
// (tagstore.ReadState): their positions (the zero Position where none is)
// and the bus generation the service last saw. Without a cache, positions
// and that generation live in memory and those are returned. A stored
// position that cannot be parsed is counted and taken as none: its channel
// is then recovered whole. A position the cache refuses to read (a key of
// another type) is an error of its own target; err is for a cache that did
// not answer.
func (s *Subscriber) cacheState(ctx context.Context, targets []target) (out []recovery.Position, errs []error, seen string, err error) {
	out = make([]recovery.Position, len(targets))
	errs = make([]error, len(targets))
	if s.store == nil {
		for i, t := range targets {
			if p, ok := s.pos[t.channel]; ok {
				out[i] = p.at
			}
		}
		return out, errs, s.seenGeneration, nil
	}
	chans := make([]tagstore.TenantTag, len(targets))
	for i, t := range targets {
		chans[i] = tagstore.TenantTag{Tenant: t.tenant, Tag: t.tag}
	}
	st, err := s.store.ReadState(ctx, s.opt.Service, chans)
	if err != nil {
		return nil, nil, "", err
	}
	for i, t := range targets {
		switch {
		case errors.Is(st.Errs[i], tagstore.ErrBadPosition):
			s.m.positionErrors.Inc()
			s.log.Warn("unreadable stored position; recovering the channel as if it had none", "channel", t.channel, "err", st.Errs[i])
		case st.Errs[i] != nil:
			errs[i] = st.Errs[i]
		case st.Found[i]:
			p := st.Positions[i]
			out[i] = recovery.Position{Epoch: p.Epoch, Version: p.Version, Chain: p.Chain}
		}
	}
	return out, errs, st.GenerationSeen, nil
}

// isReplyError reports whether err is an error Redis answered (WRONGTYPE and
// the like) rather than a failure to reach it: such an error belongs to one
// command of a pipeline, whose others still answered.
func isReplyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}

// targets lists the channels to check: the configured tenants, or for a
// service of every tenant the router's tenant registry, the tenants this
// service holds positions for (kept with the positions, so they survive a
// bus that lost its registry) and every channel seen so far.
func (s *Subscriber) targets(ctx context.Context) ([]target, error) {
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
	out := make([]target, 0, len(tenants)*len(s.cur.tagList))
	for _, tenant := range tenants {
		for _, tag := range s.cur.tagList {
			out = append(out, target{names.Channel(s.prefix, tenant, tag), tenant, tag})
		}
	}
	return out, nil
}

// everyTenant returns, for a service of every tenant, the tenants of the
// router's registry, of the service's position index, of the cache's tenant
// index (tenants with tagged values), announced, and seen so far. The two
// indexes live in the cache Redis, so they survive a bus that lost its data.
func (s *Subscriber) everyTenant(ctx context.Context) ([]string, error) {
	registered, err := s.bus.SMembers(ctx, names.TenantsKey(s.prefix)).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the tenant registry %s from the bus Redis: %w", names.TenantsKey(s.prefix), err)
	}
	var indexed, cached []string
	if s.store != nil {
		if indexed, err = s.store.IndexedTenants(ctx, s.opt.Service); err != nil {
			return nil, err
		}
		if cached, err = s.opt.Cache.SMembers(ctx, names.CacheTenantsKey()).Result(); err != nil {
			return nil, fmt.Errorf("reading the tenant index %s from the cache Redis: %w", names.CacheTenantsKey(), err)
		}
	}
	seen := map[string]bool{}
	var out []string
	add := func(t string) {
		if names.ValidTenant(t) && !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	for _, list := range [][]string{registered, indexed, cached} {
		for _, t := range list {
			add(t)
		}
	}
	for t := range s.joined {
		add(t)
	}
	for _, p := range s.pos {
		add(p.tenant)
	}
	return out, nil
}
