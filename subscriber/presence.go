package subscriber

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
)

// A subscriber with a Cache moves the cache's positions as it applies. An
// agent with --deliver on the same cache Redis and service (routerd agent
// --deliver --cache-redis: Options.Delivers) continues, at its start, from
// those positions only when the process it delivers to was given
// everything they stand for: the clean mark (names.DeliveryKey) it leaves
// when it stops with everything delivered, and no other subscriber
// applying meanwhile. So every other subscriber with a Cache — an agent
// without --deliver, a service embedding the subscriber — takes the clean
// mark away when it starts, and records its presence in
// names.DeliveryPlainKey while it runs: "<id>@<unix seconds it expires>"
// on the cache Redis's clock (TIME, read by lua/delivery.lua when it writes
// and counts: the hosts' clocks may disagree), renewed every presenceEvery, counted for presenceFor (so a subscriber
// killed counts a while longer), taken away when it stops.
const (
	presenceFor   = 30 * time.Second
	presenceEvery = 10 * time.Second
)

// presence is one run's member of names.DeliveryPlainKey.
//
// It is written beside the start, not before it (a cache Redis that does
// not answer would hold the start for the client's timeouts), and nothing
// is applied to the cache until it is: the presence is recorded, then the
// clean mark taken away, both retried every second until they land, and
// only then does the gate (recorded) open. In that order, an agent with
// --deliver that stops sees the presence and leaves no mark, or leaves one
// that is then taken away; one that starts takes no mark, or sees the
// presence: either way it delivers a reset, and no invalidation this
// subscriber applies is skipped. Until the gate opens the position checks
// fail (not ready) and invalidations wait, as on a cache that does not
// answer; a cache that refuses the writes for good (NOPERM, WRONGTYPE) is
// warned of and the gate opens without them, as before.
type presence struct {
	s        *Subscriber
	id       string
	recorded chan struct{} // closed once the presence is recorded and the mark taken away

	// lost counts the changes of the cache Redis seen (watchCache: it
	// may have come back without the presence, with a clean mark);
	// announced is the count the last announce that landed began after.
	// The gate is closed again while lost > announced, and nudge has the
	// presence recorded again at once.
	lost, announced atomic.Int64
	nudge           chan struct{}

	mu      sync.Mutex
	member  string // the member written last ("" when none is)
	failing bool   // the last write failed
	lastErr error  // its error, told until the gate opens
}

// errUnrecorded: the subscriber's presence is not recorded yet.
var errUnrecorded = errors.New("not applying to the cache Redis until this subscriber's presence is recorded in it (" +
	"an agent with --deliver on it could skip what this one applies); retried every second")

// presenceErr returns errUnrecorded until the presence is recorded (nil
// without a presence to record).
func (s *Subscriber) presenceErr() error {
	if s.presence == nil {
		return nil
	}
	if s.presence.open() {
		return nil
	}
	s.presence.mu.Lock()
	defer s.presence.mu.Unlock()
	if s.presence.lastErr != nil {
		// Say why: a wrong password or a cache Redis that does not
		// answer is the operator's to fix.
		return fmt.Errorf("%w; the last answer from the cache Redis: %v", errUnrecorded, s.presence.lastErr)
	}
	return errUnrecorded
}

// open reports whether the gate is open: the presence recorded, and
// recorded again since the last change of the cache Redis seen.
func (p *presence) open() bool {
	select {
	case <-p.recorded:
		return p.lost.Load() <= p.announced.Load()
	default:
		return false
	}
}

// presenceLost closes the gate until the presence is recorded again and
// the mark taken away again: the cache Redis changed (restarted from a
// snapshot, failed over to a replica that missed the last writes, its data
// went back), and may hold the clean mark of an agent with --deliver again,
// without this subscriber's presence, while the check the change asks for
// moves the positions: that agent, starting then, would skip the reset.
func (s *Subscriber) presenceLost() {
	p := s.presence
	if p == nil {
		return
	}
	p.lost.Add(1)
	select {
	case p.nudge <- struct{}{}:
	default:
	}
}

// runPresence records the subscriber's presence and takes the clean mark
// away, then renews the presence until ctx ends, all beside the caller;
// the returned function stops that and takes the presence away. None for
// the agent with --deliver, and without a Cache.
func (s *Subscriber) runPresence(ctx context.Context) (stop func()) {
	s.presence = nil
	if s.opt.Cache == nil || s.opt.Delivers {
		return func() {}
	}
	p := &presence{s: s, id: fmt.Sprintf("%d-%x", os.Getpid(), rand.Uint64()), recorded: make(chan struct{}), nudge: make(chan struct{}, 1)}
	s.presence = p
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if p.record(rctx) {
			p.renew(rctx)
		}
	}()
	return func() {
		cancel()
		<-done
		p.withdraw()
	}
}

// record writes the presence and takes the clean mark away (announce),
// tried every second until both land, and opens the gate. False when ctx
// ended first.
func (p *presence) record(ctx context.Context) bool {
	for {
		lost := p.lost.Load()
		if p.announce(ctx) {
			p.announced.Store(lost)
			break
		}
		if sleepCtx(ctx, time.Second); ctx.Err() != nil {
			return false
		}
	}
	close(p.recorded)
	p.s.requestCheck() // what waited for it
	return true
}

// refused reports whether err is the cache Redis refusing a write for good
// (NOPERM, WRONGTYPE), not failing it for a while.
func refused(err error) bool {
	return redis.HasErrorPrefix(err, "NOPERM") || redis.HasErrorPrefix(err, "WRONGTYPE")
}

// announce writes (or renews) the presence, through lua/delivery.lua so
// that it lands on a full cache Redis, then takes the clean mark (or the
// running agent's token) away: every time, not only at the start, so that
// an agent with --deliver that started since finds its token gone when it
// stops. It reports whether both are done (or refused for good, while the
// gate is closed). A failure is warned of at the first of a streak. It
// returns once ctx ends, whatever the client's timeouts: a write left
// behind may land later, and counts for presenceFor (the safe side).
func (p *presence) announce(ctx context.Context) bool {
	p.mu.Lock()
	replaced := p.member
	p.mu.Unlock()
	// The member's expiry is the cache Redis's clock's (the script reads
	// TIME): this host's may disagree with the agent's by more than
	// presenceFor. m is for a user that may not run TIME.
	m := fmt.Sprintf("%s@%d", p.id, p.s.clock().Add(presenceFor).Unix())
	key := names.DeliveryPlainKey(p.s.opt.Service)
	err := untilDone(ctx, func(ctx context.Context) error {
		r, err := lua.Run(ctx, p.s.opt.Cache, &lua.PresenceRequest{Service: p.s.opt.Service, ID: p.id, Member: m, Replaced: replaced, For: presenceFor})
		if err == nil {
			m = r.Member
		}
		return err
	})
	if err == nil {
		p.mu.Lock()
		p.member = m
		p.mu.Unlock()
		// Apart from the presence: the two keys are in different slots
		// of a cluster.
		key = names.DeliveryKey(p.s.opt.Service)
		err = untilDone(ctx, func(ctx context.Context) error { return p.s.opt.Cache.Del(ctx, key).Err() })
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.failing, p.lastErr = false, nil
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	first := !p.failing
	p.failing, p.lastErr = true, err
	if p.open() {
		if first {
			p.s.log.Warn("could not renew in the cache Redis that this subscriber applies to it (its presence, and the clean mark of an agent with --deliver taken away): that agent may skip what this one applies once the presence expires (retried every second; grant the keys: routerd acl --role cache)", "key", key, "err", err)
		}
		return false
	}
	if refused(err) {
		p.s.log.Warn("the cache Redis refuses to record that this subscriber applies to it (its presence, and the clean mark of an agent with --deliver taken away): that agent may skip what this one applies (grant the keys: routerd acl --role cache)", "key", key, "err", err)
		return true
	}
	if first {
		p.s.log.Warn("could not record in the cache Redis that this subscriber applies to it (its presence, and the clean mark of an agent with --deliver taken away); not applying until it is (retried every second)", "key", key, "err", err)
	}
	return false
}

// renew writes the presence afresh every presenceEvery (every second while
// writing it fails, at once after a change of the cache Redis) until ctx
// ends, and opens the gate again once a write that began after the last
// change lands.
func (p *presence) renew(ctx context.Context) {
	for {
		p.mu.Lock()
		wait := presenceEvery
		if p.failing {
			wait = time.Second
		}
		p.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-p.nudge:
			t.Stop()
		}
		lost := p.lost.Load()
		if p.announce(ctx) && p.announced.Swap(lost) < lost {
			p.s.requestCheck() // what waited for it
		}
	}
}

// withdrawWait bounds how long a stop waits for the presence to be taken
// away: a cache that does not answer keeps it for presenceFor.
const withdrawWait = probeTimeout

// withdraw takes the presence away, and the clean mark (or the running
// agent's token) once more: this run may have applied before any renewal
// took it.
func (p *presence) withdraw() {
	p.mu.Lock()
	member := p.member
	p.member = ""
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), withdrawWait)
	defer cancel()
	mark := names.DeliveryKey(p.s.opt.Service)
	if err := untilDone(ctx, func(ctx context.Context) error { return p.s.opt.Cache.Del(ctx, mark).Err() }); err != nil {
		p.s.log.Warn("could not take the clean mark of an agent with --deliver away at the stop: it may skip what this subscriber applied", "key", mark, "err", err)
	}
	if member == "" {
		return
	}
	key := names.DeliveryPlainKey(p.s.opt.Service)
	if err := untilDone(ctx, func(ctx context.Context) error { return p.s.opt.Cache.SRem(ctx, key, member).Err() }); err != nil {
		p.s.log.Debug("could not take this subscriber's presence away", "key", key, "err", err)
	}
}

// untilDone returns call's error, or ctx's as soon as ctx is done
// (redisconn.UntilDone): the subscriber must not stop or start late
// because the cache Redis does not answer. The call left behind ends
// within the client's timeouts, or when the client is closed.
func untilDone(ctx context.Context, call func(context.Context) error) error {
	_, err := redisconn.UntilDone(ctx, call)
	return err
}

// Undelivering counts the subscribers that apply to the cache Redis c for
// service without delivering to the process of its agent with --deliver
// (their members of names.DeliveryPlainKey not expired), taking expired
// members away: expired on the cache Redis's clock, on which they were
// written (lua/delivery.lua), not this host's.
func Undelivering(ctx context.Context, c redis.UniversalClient, service string) (int, error) {
	r, err := lua.Run(ctx, c, &lua.PresenceCountRequest{Service: service, Now: time.Now()})
	return r.N, err
}
