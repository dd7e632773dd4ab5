package subscriber

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/internal/redisconn"
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
	if err := s.startErr(); err != nil {
		return err // the start's reads first: their error names the Redis
	}
	if err := s.presenceErr(); err != nil {
		return err // its recovery would apply
	}
	s.checkEviction(ctx)
	// Channels a matrix took whose leaving failed: their values stay
	// cached with nothing keeping them fresh until it is done. The check
	// fails while it is not (so it is tried again within seconds, and
	// readiness says so), but checks the positions all the same.
	leaveErr := s.retryLeave(ctx)
	if s.unmarked {
		// Waiting for a router to mark the bus: the generation alone is
		// read until it is there.
		gen, err := s.bus.Get(ctx, names.GenerationKey(s.prefix)).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("reading the bus generation %s from the bus Redis: %w", names.GenerationKey(s.prefix), err)
		}
		if gen == "" {
			return s.errNotMarked()
		}
		s.unmarked = false
	}
	var bus string
	err := redoIfBusChanged(func() (err error) {
		bus, err = s.checkAll(ctx)
		return err
	})
	if err == nil && bus == "" && !s.ready.Load() {
		// No router ever marked this bus, or it lost its data and none
		// is up yet: nothing tells which channels published before, so
		// every first message would go whole. Not ready until one does.
		s.unmarked = true
		return s.errNotMarked()
	}
	if err == nil {
		err = leaveErr
	}
	return err
}

// errNotMarked: the subscriber's first checks found no bus generation.
var errNotMarked = errors.New("no router has marked the bus yet")

func (s *Subscriber) errNotMarked() error {
	return fmt.Errorf("%w (no %s)", errNotMarked, names.GenerationKey(s.prefix))
}

// errBusChanged: the bus's identity changed while a check read it (it
// restarted, failed over, or lost its data): what the check read may mix
// two runs, so it decides nothing on it and starts again.
var errBusChanged = errors.New("the bus restarted or lost its data during the check")

// redoIfBusChanged runs a check again when the bus's identity changed
// during it; the next one sees the change as a loss (generation.lost). A
// bus that keeps changing fails the check, which is retried.
func redoIfBusChanged(check func() error) error {
	var err error
	for range 3 {
		if err = check(); !errors.Is(err, errBusChanged) {
			return err
		}
	}
	return err
}

// checkAll checks every channel; it returns the bus identity it went by.
func (s *Subscriber) checkAll(ctx context.Context) (string, error) {
	// The identity before the targets: a loss after this read is seen
	// by the next check (or, during this one, redoes it: checkTargets);
	// one before it came before any value whose channel the targets then
	// miss was cached.
	bus, err := s.busGeneration(ctx)
	if err != nil {
		return "", err
	}
	tenants, err := s.targets(ctx)
	if err != nil {
		return "", err
	}
	// The channels in parts of checkChunk, made as they are checked: a
	// list of a million targets would be the largest thing a check makes.
	batch := make([]target, 0, checkChunk)
	var gen generation
	var failed error // channels of the parts so far that could not be recovered
	parts := 0
	flush := func() error {
		checked, refused, err := s.applyTargets(ctx, batch)
		if err != nil {
			return err
		}
		g, err := s.checkTargets(ctx, checked, bus, nil)
		if parts == 0 {
			gen = g
		}
		parts++
		batch = batch[:0]
		if err = joinChannels(refused, err); isChannels(err) {
			// Those channels alone: the later parts are checked all the
			// same (a channel that keeps failing must not keep the gaps
			// of every channel after it from being recovered). Readiness
			// hears of it now, not once every part is checked.
			if failed == nil {
				s.checked(boundChannels(err))
			}
			failed = errors.Join(failed, err)
			return nil
		}
		return err
	}
	for _, tenant := range tenants {
		for _, tag := range s.cur.tagList {
			batch = append(batch, target{names.Channel(s.prefix, tenant, tag), tenant, tag})
			if len(batch) == checkChunk {
				if err := flush(); err != nil {
					return "", boundChannels(errors.Join(failed, err))
				}
			}
		}
	}
	if len(batch) > 0 || parts == 0 {
		// Once at least: the state read gives the generation seen.
		if err := flush(); err != nil {
			return "", boundChannels(errors.Join(failed, err))
		}
	}
	if failed != nil {
		return "", boundChannels(failed)
	}
	if err := s.sawGeneration(ctx, gen); err != nil {
		return "", err
	}
	if gen.seen == "" && gen.bus != "" && s.store != nil && s.opt.Handler != nil {
		// The service's first look, now recorded. A channel found with
		// neither a meta nor a position is watched only by a check under
		// a generation recorded before it (recovery.Watch), and with a
		// Handler nothing else lets a new channel's first message replay
		// rather than its whole tag: check again now, before ready, not
		// at the next interval (a channel first published meanwhile went
		// whole).
		return s.checkAll(ctx)
	}
	return bus, nil
}

// checkChunk is how many channels a check takes at a time.
const checkChunk = 10 * pipelineChunk

// generation is the bus's identity (tagstore.BusIdentity: the router's
// generation and the bus servers' run_ids) and the one this service last
// saw.
type generation struct{ bus, seen string }

// lost reports whether the bus may have lost data since the service last
// looked: its generation changed or is gone, or a bus server restarted or
// failed over (a restart may lose the last writes, a failover what was not
// replicated, a restore everything since its snapshot). A service that
// never looked (nothing seen) cannot tell.
func (g generation) lost() bool { return g.seen != "" && g.bus != g.seen }

// known reports whether the bus kept its data since the service last
// looked: its identity is the one seen.
func (g generation) known() bool { return g.seen != "" && g.bus == g.seen }

// busGeneration reads the bus's identity (tagstore.BusIdentity), "" when
// the router has not marked it since it lost its data.
func (s *Subscriber) busGeneration(ctx context.Context) (string, error) {
	gen, err := s.bus.Get(ctx, names.GenerationKey(s.prefix)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("reading the bus generation %s from the bus Redis: %w", names.GenerationKey(s.prefix), err)
	}
	if gen == "" {
		return "", nil
	}
	runs, err := runIDs(ctx, s.bus)
	if err != nil {
		return "", err
	}
	return tagstore.BusIdentity(gen, runs), nil
}

// runIDs returns the run_id of every server holding the bus's data (every
// master of a cluster), each followed by "+flushes=<n>" once the server ran
// FLUSHALL, FLUSHDB or SWAPDB since it started (INFO commandstats): on a cluster a
// FLUSHALL on a master that does not hold the generation neither restarts
// it nor touches the generation, yet takes the metas and the histories of
// its channels. CONFIG RESETSTAT changes the count too, which counts as a
// possible loss: safe, and rare. And by "+followed=<replid2>" once the
// server followed another master since it started (INFO replication's
// master_replid2): REPLICAOF of an older copy and REPLICAOF NO ONE bring
// that copy's data back under the same run_id.
func runIDs(ctx context.Context, bus redis.UniversalClient) ([]string, error) {
	runs, _, err := serverIDs(ctx, bus, "bus")
	return runs, err
}

// serverIDs is runIDs of the servers behind rdb (the bus or the cache
// Redis, as role says in errors), with each one's address.
func serverIDs(ctx context.Context, rdb redis.UniversalClient, role string) (runs, addrs []string, err error) {
	masters, err := redisconn.Masters(ctx, rdb)
	if err != nil {
		return nil, nil, fmt.Errorf("listing the %s masters: %w", role, err)
	}
	runs, addrs = make([]string, len(masters)), make([]string, len(masters))
	for i, m := range masters {
		addrs[i] = m.Options().Addr
		var server, repl, stats *redis.InfoCmd
		mctx, mc := redisconn.OnNode(ctx, rdb, m) // rdb's hooks see it
		if _, err := mc.Pipelined(mctx, func(p redis.Pipeliner) error {
			server, repl, stats = p.InfoMap(ctx, "server"), p.InfoMap(ctx, "replication"), p.InfoMap(ctx, "commandstats")
			return nil
		}); err != nil {
			return nil, nil, fmt.Errorf("reading the run_id of the %s server %s (INFO server, replication, commandstats): %w", role, m.Options().Addr, err)
		}
		if runs[i] = server.Item("Server", "run_id"); runs[i] == "" {
			return nil, nil, fmt.Errorf("the %s server %s reports no run_id in INFO server", role, m.Options().Addr)
		}
		if n := flushes(stats); n > 0 {
			runs[i] += fmt.Sprintf("+flushes=%d", n)
		}
		if followed := repl.Item("Replication", "master_replid2"); strings.Trim(followed, "0") != "" {
			// The server followed another master since it started (a
			// REPLICAOF, a failover it took part in): its data may be
			// that master's, older than what it held.
			runs[i] += "+followed=" + followed
		}
	}
	return runs, addrs, nil
}

// flushes is how many FLUSHALL, FLUSHDB and SWAPDB a server ran, from its
// INFO commandstats ("cmdstat_flushall:calls=1,usec=…"): a SWAPDB empties
// (or replaces) the database as a flush does.
func flushes(stats *redis.InfoCmd) int64 {
	var n int64
	for _, cmd := range []string{"cmdstat_flushall", "cmdstat_flushdb", "cmdstat_swapdb"} {
		for _, f := range strings.Split(stats.Item("Commandstats", cmd), ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				c, _ := strconv.ParseInt(v, 10, 64)
				n += c
			}
		}
	}
	return n
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

// checkChannels checks channels of interest, newly subscribed, together.
func (s *Subscriber) checkChannels(ctx context.Context, channels []string) error {
	targets := make([]target, 0, len(channels))
	for _, ch := range channels {
		tenant, tag, err := names.ParseChannel(s.prefix, ch)
		if err != nil || !s.cur.covers(tenant, tag) {
			continue // no longer ours (a matrix change)
		}
		targets = append(targets, target{ch, tenant, tag})
	}
	if len(targets) == 0 {
		return nil
	}
	return s.checkMany(ctx, targets, nil)
}

// checkMany checks channels against the bus's generation as it is now:
// newly subscribed ones (msgs nil), or the channels of a burst's messages
// that do not follow their positions, msgs holding each one's, which
// counts only as far as the meta confirms it.
func (s *Subscriber) checkMany(ctx context.Context, targets []target, msgs map[string]*wire.Message) error {
	return redoIfBusChanged(func() error { return s.checkManyOnce(ctx, targets, msgs) })
}

func (s *Subscriber) checkManyOnce(ctx context.Context, targets []target, msgs map[string]*wire.Message) error {
	bus, err := s.busGeneration(ctx)
	if err != nil {
		return err
	}
	targets, refused, err := s.applyTargets(ctx, targets)
	if err != nil {
		return err
	}
	gen, err := s.checkTargets(ctx, targets, bus, msgs)
	if gen.seen == "" && gen.bus != "" {
		// Never recorded one: until a complete check does, every channel
		// without a position goes whole (recovery.Check). Soon, then.
		s.requestCheck()
	}
	return boundChannels(joinChannels(refused, err))
}

// applyTargets applies the targets' queued and staged work before they
// are checked, so the stored positions are where it left them. It returns
// the targets to check: one whose queued work failed is left out — its
// work stays queued, retried when due, and its position is not where the
// work would leave it — and its failure returned as refused, a
// channelsError. err is the staged work's failure, which fails the check.
func (s *Subscriber) applyTargets(ctx context.Context, targets []target) (checked []target, refused, err error) {
	// The staged work first: applyQueued would flush it, and its failure
	// would be taken for the first queued channel's.
	if err := s.flushBatch(ctx); err != nil {
		return nil, nil, err
	}
	checked = targets
	for i, t := range targets {
		if p, ok := s.queued[t.channel]; ok {
			if err := s.applyQueued(ctx, t.channel, p); err != nil {
				if refused == nil {
					checked = slices.Clone(targets[:i])
				}
				refused = errors.Join(refused, err)
				continue
			}
		}
		if refused != nil {
			checked = append(checked, t)
		}
	}
	if refused != nil {
		refused = channelsError{refused}
	}
	return checked, refused, nil
}

// joinChannels joins the failures of some channels (a channelsError) to a
// check's error: a channelsError while the check failed for channels alone
// too, a failure of the check otherwise.
func joinChannels(channels, err error) error {
	switch {
	case channels == nil:
		return err
	case err == nil:
		return channels
	case isChannels(err):
		return channelsError{errors.Join(channels, err)}
	}
	return errors.Join(channels, err)
}

// maxNamedFailures bounds the failures a check's error names: it is
// readiness's detail and a log line, and a million channels refused must
// not make either a megabyte.
const maxNamedFailures = 5

// boundChannels keeps an error joining many failures to its first
// maxNamedFailures and their count, a channelsError still when it was one.
func boundChannels(err error) error {
	var all []error
	var flatten func(error)
	flatten = func(err error) {
		switch e := err.(type) {
		case channelsError:
			flatten(e.error)
		case interface{ Unwrap() []error }:
			for _, x := range e.Unwrap() {
				flatten(x)
			}
		default:
			all = append(all, err)
		}
	}
	if err == nil {
		return nil
	}
	flatten(err)
	if len(all) <= maxNamedFailures {
		return err
	}
	out := fmt.Errorf("%w (and %d more failures)", errors.Join(all[:maxNamedFailures]...), len(all)-maxNamedFailures)
	if isChannels(err) {
		return channelsError{out}
	}
	return out
}

// isChannels reports whether a check's error is the failure of some of its
// channels alone (channelsError), not of the check.
func isChannels(err error) bool {
	_, ok := err.(channelsError)
	return ok
}

// checkTargets checks channels one way: for each pipeline of targets it
// reads their state (readState: metas from the bus; positions and the
// generation seen from the cache, in one call), asks internal/recovery
// what to do (recovery.Decide, taken by plan), and carries the pipeline's
// plans out together (recoverAll). bus is
// the bus's generation, read before the targets were listed; their work
// is applied (applyTargets). msgs holds, for each channel a received
// message made the check for, that message, inside the burst that received
// it. It returns the generations the check went by.
func (s *Subscriber) checkTargets(ctx context.Context, targets []target, bus string, msgs map[string]*wire.Message) (generation, error) {
	var gen generation
	var failed error
	var recoveries []pending // the part's recoveries, carried out together
	for start := 0; start == 0 || start < len(targets); start += pipelineChunk {
		batch := targets[start:min(start+pipelineChunk, len(targets))]
		st, err := s.readState(ctx, batch)
		if err != nil {
			return generation{}, err
		}
		// The identity again, after the metas: unchanged, they are of the
		// run the check went by; changed, they may be of a bus that came
		// back without what the service saw (a new epoch at version 1
		// hiding a lost one), and nothing may be replayed or recorded on
		// them. The parts before were read under the run they were
		// decided by.
		if now, err := s.busGeneration(ctx); err != nil {
			return generation{}, errors.Join(failed, err)
		} else if now != bus {
			s.log.Warn("the bus restarted or lost its data during a position check; checking again", "was", bus, "now", now)
			return generation{}, errors.Join(failed, errBusChanged)
		}
		if start == 0 {
			gen = generation{bus: bus, seen: st.seen}
			if gen.lost() {
				s.log.Warn("the bus may have lost data since this service last looked (its generation changed, or a bus server restarted or failed over): channels without a meta or a position are invalidated whole",
					"seen", gen.seen, "now", gen.bus)
			}
		}
		for i, t := range batch {
			if err := st.errs[i]; err != nil {
				// Counted and logged, not a failure of the check: a key of
				// the wrong type (isChannelError, the only error left
				// here) does not go away by retrying, and the other
				// channels must still settle (and the service get ready)
				// while an operator fixes it.
				s.m.positionErrors.Inc()
				s.log.Warn("unreadable channel meta or stored position; the channel is not checked until it can be read", "channel", t.channel, "err", err)
				continue
			}
			p, ok := s.pos[t.channel]
			c := recovery.Channel{Memory: st.stored[i], Stored: st.stored[i], HasStore: s.store != nil, Meta: st.metas[i], MetaRestarted: st.restarted[i],
				BusLost: gen.lost(), BusKnown: gen.known(), Announced: s.heard[t.channel], HasHandler: s.opt.Handler != nil}
			if ok {
				c.Memory, c.Watched = p.at, p.watched != "" && p.watched == gen.bus
			}
			msg := msgs[t.channel]
			if msg != nil {
				c.Message = msgPosition(msg)
			}
			delete(s.heard, t.channel)
			if !ok && msg == nil && !c.Meta.Known() && !c.Stored.Known() && !gen.lost() && !s.mustWatch(c, gen) {
				continue // never published, nothing stored: nothing to remember (a position a channel at scale)
			}
			if !ok {
				p = &position{tenant: t.tenant, tag: t.tag, at: st.stored[i]}
				s.pos[t.channel] = p
			}
			if r, ok := s.plan(t.channel, p, c, recovery.Decide(c), gen); ok {
				recoveries = append(recoveries, r)
			}
		}
		failed = errors.Join(failed, s.recoverAll(ctx, recoveries))
		recoveries = recoveries[:0]
	}
	if err := errors.Join(failed, s.flushBatch(ctx)); err != nil {
		return gen, channelsError{err}
	}
	return gen, nil
}

// channelsError is a check's failure to recover some of its channels (a
// history of another type, the cache or the Handler refusing their
// invalidations), each decided on what the check read: the check goes on
// with its other channels, and fails.
type channelsError struct{ error }

func (e channelsError) Unwrap() error { return e.error }

// plan takes a check's plan for one channel, whose state was c: it counts
// and logs what the plan found and stands the channel where the plan says;
// it returns the decision to carry out (recoverAll), false for none.
func (s *Subscriber) plan(channel string, p *position, c recovery.Channel, pl recovery.Plan, gen generation) (pending, bool) {
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
		return pending{}, false
	}
	if !pl.First {
		s.m.gaps.Inc()
		s.log.Info("channel needs recovery", "channel", channel, "action", pl.Action.String(), "reason", pl.Reason.String(),
			"at", p.at.String(), "channel_at", c.Meta.String())
	}
	return pending{channel, p, pl.Decision, pl.First, pl.Start}, true
}

// settle settles a replay against the history read for it
// (recovery.Resolve), ok when the history holds all its messages.
func (s *Subscriber) settle(channel string, start recovery.Position, d recovery.Decision, msgs []*wire.Message, payloads [][]byte, ok bool) (recovery.Decision, []recovery.Position) {
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
	return r, at
}

// history returns the messages from..to of the channel's history, with
// each one's JSON as published, and false when the history does not hold
// all of them in this epoch.
func (s *Subscriber) history(ctx context.Context, channel, epoch string, from, to int64) ([]*wire.Message, [][]byte, bool, error) {
	entries, err := s.bus.XRange(ctx, names.HistoryKey(channel), strconv.FormatInt(from, 10)+"-0", strconv.FormatInt(to, 10)+"-0").Result()
	if err != nil {
		return nil, nil, false, err
	}
	msgs, payloads, ok := s.parseHistory(channel, epoch, from, to, entries)
	return msgs, payloads, ok, nil
}

// parseHistory reads the messages of history entries from..to, with each
// one's JSON as published, and whether they are all there (contiguous, of
// the epoch).
func (s *Subscriber) parseHistory(channel, epoch string, from, to int64, entries []redis.XMessage) ([]*wire.Message, [][]byte, bool) {
	msgs := make([]*wire.Message, 0, len(entries))
	payloads := make([][]byte, 0, len(entries))
	got := make([]recovery.Position, 0, len(entries))
	for _, e := range entries {
		raw, _ := e.Values[names.HistoryField].(string)
		m, err := wire.ParseMessageString(raw)
		if err != nil {
			s.m.positionErrors.Inc()
			s.log.Warn("unreadable history entry; the whole tag closes the gap", "channel", channel, "id", e.ID, "err", err)
			return nil, nil, false
		}
		msgs = append(msgs, m)
		payloads = append(payloads, []byte(raw))
		got = append(got, msgPosition(m))
	}
	return msgs, payloads, recovery.Contiguous(got, epoch, from, to)
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

// state is what a check reads of its targets, one each: the metas on the
// bus, the positions stored with the cache (in memory without one), an
// error for a target whose meta or position cannot be read; and the bus
// generation the service last saw.
type state struct {
	metas, stored []recovery.Position
	restarted     []bool
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
	st := state{metas: make([]recovery.Position, len(targets)), restarted: make([]bool, len(targets)), stored: stored, errs: errs, seen: seen}
	for i := range targets {
		st.metas[i], st.restarted[i] = metas[i].at, metas[i].restarted
		st.errs[i] = errors.Join(metas[i].err, errs[i])
	}
	return st, nil
}

type metaRead struct {
	at        recovery.Position // zero: no meta on the bus
	restarted bool              // the epoch started where only the meta was lost
	err       error             // the meta exists but cannot be read
}

// metas reads the channels' metas from the bus in one pipeline.
func (s *Subscriber) metas(ctx context.Context, targets []target) ([]metaRead, error) {
	out := make([]metaRead, len(targets))
	if len(targets) == 0 {
		return out, nil
	}
	cmds, err := s.bus.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, t := range targets {
			pipe.HMGet(ctx, names.MetaKey(t.channel), "epoch", "version", "chain", "restarted")
		}
		return nil
	})
	if err != nil && !isReplyError(err) {
		return nil, err // the bus did not answer: nothing can be decided
	}
	for i, t := range targets {
		vals, err := cmds[i].(*redis.SliceCmd).Result()
		if err != nil && !isChannelError(err) {
			return nil, fmt.Errorf("reading %s from the bus Redis: %w", names.MetaKey(t.channel), err)
		}
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
		out[i].restarted = vals[3] != nil
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
		case st.Errs[i] != nil: // a key of another type (tagstore.ReadState fails on any other error)
			errs[i] = st.Errs[i]
		case st.Found[i]:
			p := st.Positions[i]
			out[i] = recovery.Position{Epoch: p.Epoch, Version: p.Version, Chain: p.Chain}
		}
	}
	return out, errs, st.GenerationSeen, nil
}

// isReplyError reports whether err is an error Redis answered rather than
// a failure to reach it: such an error belongs to one command of a
// pipeline, whose others still answered (each is then looked at alone).
func isReplyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}

// isChannelError reports whether a channel's read failed for that channel
// alone, for good: WRONGTYPE, a user key of another type under one of its
// names, which retrying does not fix — the channel is skipped (counted and
// logged) while the others settle. Any other answer (LOADING, BUSY,
// TRYAGAIN, CLUSTERDOWN, MASTERDOWN, MOVED or ASK left after go-redis's
// retries, NOPERM) says the server cannot answer for now, or not to this
// user: the check fails and is retried, and the service is not ready.
func isChannelError(err error) bool {
	return redis.HasErrorPrefix(err, "WRONGTYPE")
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
	registered, err := scanSet(ctx, s.bus, names.TenantsKey(s.prefix), s.cur.shard.Owns)
	if err != nil {
		return nil, fmt.Errorf("reading the tenant registry %s from the bus Redis: %w", names.TenantsKey(s.prefix), err)
	}
	var indexed, cached []string
	if s.store != nil {
		if indexed, err = s.store.IndexedTenants(ctx, s.opt.Service); err != nil {
			return nil, err
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
