package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/deliver"
	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/subscriber"
)

// agentOut is the agent's subscriber.Handler: it delivers each invalidation
// to the service's process (--deliver) and counts what was applied, for the
// agent's summary lines.
//
// The rule that keeps a delivery from being lost when there is a cache
// Redis: the cache applies an invalidation and records its position before
// the process is given it, so the cache's position can run ahead of
// delivery — when the agent stops (or dies) while a delivery is not made.
// The agent therefore marks the cache "clean" (names.DeliveryKey) only when
// it stops with every delivery made, and replaces the mark with its run's
// token when it starts: a start that does not find it delivers a reset
// first, and a stop that no longer finds the token (another subscriber
// started meanwhile and took it away) leaves no mark. Without a cache
// Redis positions live in memory, and every start delivers a reset.
type agentOut struct {
	d       *deliver.Deliverer // nil without --deliver
	cache   redis.UniversalClient
	service string
	log     *slog.Logger
	// taken: the clean mark was taken at start (or there is no cache), so
	// the mark this run leaves, if any, is its own.
	taken atomic.Bool
	// token is what the mark holds while this run goes on: a subscriber
	// without --deliver that starts on the cache Redis takes it away, and
	// the stop then leaves no clean mark (its positions moved past the
	// process), even when that subscriber stopped before this one.
	token string
	// lost: the start found another subscriber's presence, or holdMark
	// found the mark other than the token (taken away, or the cache Redis
	// restored from a snapshot holding an older mark) and wrote the token
	// again: this run's stop leaves no clean mark.
	lost atomic.Bool

	invalidations, keys, wholeTags, recovered atomic.Int64
	total                                     atomic.Int64
}

func newAgentOut(target string, env *Env, cache redis.UniversalClient, service string, log *slog.Logger, reg prometheus.Registerer) (*agentOut, error) {
	a := &agentOut{cache: cache, service: service, log: log, token: fmt.Sprintf("running:%d-%x", os.Getpid(), rand.Uint64())}
	if target == "" {
		return a, nil
	}
	d, err := deliver.New(deliver.Options{Target: target, Stdout: env.Stdout, Reset: true, Logger: log.With("deliver", deliver.Redacted(target)), Registerer: reg})
	if err != nil {
		return nil, err
	}
	a.d = d
	// Beside the subscriber's own reasons (the same help, so one metric).
	promauto.With(reg).NewGaugeFunc(prometheus.GaugeOpts{
		Name: "subscriber_not_ready", ConstLabels: prometheus.Labels{"reason": ReasonDeliverFailing},
		Help: "1 while the subscriber is not ready for this reason (see docs/operations.md#readiness), else 0.",
	}, func() float64 {
		if len(a.problems()) > 0 {
			return 1
		}
		return 0
	})
	return a, nil
}

// start takes the cache's clean mark (waiting for the cache Redis to
// answer) and delivers the reset unless the mark was there.
func (a *agentOut) start(ctx context.Context) error {
	if a.d == nil {
		// Without --deliver the subscriber moves the cache's positions
		// without delivering: it takes the clean mark away and records its
		// presence itself (subscriber/presence.go).
		return nil
	}
	if a.cache == nil {
		a.taken.Store(true)
		a.log.Info("delivering a reset first: without --cache-redis the agent keeps no positions, so it cannot tell what the process missed")
		return a.flush(ctx)
	}
	wait := 100 * time.Millisecond
	for {
		// A script, so that the token lands on a full cache Redis.
		r, err := a.take(ctx)
		if err == nil {
			a.taken.Store(true)
			// A subscriber without --deliver there now may move the
			// cache's positions past what the process is given while
			// this run goes on, and be killed before a renewal of its
			// presence takes the token away: its presence expired, the
			// token still there, the stop would find nothing amiss. One
			// that starts after this read takes the token away.
			plain := a.undelivering(ctx)
			if plain > 0 {
				a.lost.Store(true)
			}
			if r.Was == lua.DeliveryClean {
				if plain > 0 {
					a.log.Info("delivering a reset first: the last agent stopped with everything delivered, but another subscriber (an agent without --deliver, a service embedding the subscriber) applies to this cache Redis, so the cache's positions may be ahead of the process", "subscribers_without_deliver", plain)
					return a.flush(ctx)
				}
				a.d.SkipReset()
				a.log.Info("the last agent stopped with everything delivered; continuing from the cache's positions")
				return nil
			}
			a.log.Info("delivering a reset first: the last agent did not stop with everything delivered (or none ran with --deliver), so the cache's positions may be ahead of the process")
			return a.flush(ctx)
		}
		if ctx.Err() != nil {
			return nil
		}
		if re := redis.Error(nil); errors.As(err, &re) { // an answer (NOPERM, WRONGTYPE): retrying will not help
			return fmt.Errorf("taking the delivery mark %s from the cache Redis: %w", names.DeliveryKey(a.service), err)
		}
		a.log.Warn("reading the delivery mark from the cache Redis; retrying", "retry_in", wait, "err", err)
		sleep(ctx, wait)
		wait = min(2*wait, 5*time.Second)
	}
}

func (a *agentOut) flush(ctx context.Context) error {
	if err := a.d.Flush(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// markEvery is how often a running agent with --deliver and a cache Redis
// makes sure the mark holds its token (holdMark).
const markEvery = time.Second

// holdMark makes sure, every markEvery until ctx ends, that the mark holds
// this run's token, writing it again when it does not: a cache Redis
// restored from a snapshot taken after an earlier clean stop holds "clean"
// again, which a kill of this agent (no stop writes anything then) would
// leave for the next start to skip the reset by. Any other value (a
// subscriber without --deliver took the token away) is written over too,
// remembered (lost) so that the stop leaves no clean mark.
func (a *agentOut) holdMark(ctx context.Context) {
	if a.d == nil || a.cache == nil {
		return
	}
	t := time.NewTicker(markEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !a.taken.Load() {
			continue
		}
		r, err := a.take(ctx) // bounded by ctx: a cache that does not answer does not hold the stop
		if err != nil || r.Was == a.token {
			continue
		}
		if !a.lost.Swap(true) || r.Was == lua.DeliveryClean {
			a.log.Info("the delivery mark no longer held this agent's token (another subscriber started on the cache Redis, or the cache was restored from a snapshot): written again; this run's stop leaves no clean mark, and the next start delivers a reset", "key", names.DeliveryKey(a.service), "was", r.Was)
		}
	}
}

// stopWait bounds stopped's calls on the cache Redis, together.
var stopWait = 5 * time.Second

// stopped leaves the clean mark when every delivery was made and no other
// subscriber applies to the cache (moving its positions past what the
// process was given).
func (a *agentOut) stopped() {
	if a.d == nil || a.cache == nil || !a.taken.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopWait)
	defer cancel()
	if !a.d.Clean() {
		a.log.Warn("stopping with a delivery not made: the next start delivers a reset")
		a.unmark(ctx)
		return
	}
	if a.lost.Load() {
		a.log.Warn("stopping with everything delivered, but another subscriber applied to the cache Redis while this agent ran (it was there at the start, or took the delivery mark's token away), or the cache was restored from a snapshot: the next start delivers a reset")
		a.unmark(ctx)
		return
	}
	if plain := a.undelivering(ctx); plain != 0 {
		a.log.Warn("stopping with everything delivered, but another subscriber (an agent without --deliver, a service embedding the subscriber) applies to this cache Redis and moves its positions past what the process was given: the next start delivers a reset", "subscribers_without_deliver", plain)
		a.unmark(ctx)
		return
	}
	// A script, so that the mark lands on a full cache Redis (lua/delivery.lua).
	var r lua.DeliveryMarkReply
	_, err := redisconn.UntilDone(ctx, func(ctx context.Context) error {
		var err error
		r, err = lua.Run(ctx, a.cache, &lua.DeliveryMarkRequest{Service: a.service, Token: a.token})
		return err
	})
	switch {
	case err != nil:
		a.log.Warn("could not mark the cache clean: the next start delivers a reset", "err", err)
	case !r.Marked:
		a.log.Warn("stopping with everything delivered, but another subscriber (an agent without --deliver, a service embedding the subscriber) started on this cache Redis while this agent ran and may have moved its positions past what the process was given: the next start delivers a reset", "key", names.DeliveryKey(a.service))
	}
}

// take writes the run's token over the mark (lua/delivery.lua), returning
// at ctx's end whatever the cache Redis does: go-redis waits for a reply
// until its ReadTimeout whatever ctx says. A take left behind may land
// later, even after the stop marked the cache clean: it writes the token
// over the mark, and the next start delivers a reset (the safe side). So
// do the stop's other calls (the mark checks the token it replaces).
func (a *agentOut) take(ctx context.Context) (lua.DeliveryTakeReply, error) {
	var r lua.DeliveryTakeReply
	_, err := redisconn.UntilDone(ctx, func(ctx context.Context) error {
		var err error
		r, err = lua.Run(ctx, a.cache, &lua.DeliveryTakeRequest{Service: a.service, Token: a.token})
		return err
	})
	return r, err
}

// unmark writes the run's token over the mark at a stop that leaves the
// cache not clean: the mark may be "clean" again although this run took
// it (the cache restored from a snapshot taken after an earlier clean
// stop), and left so the next start would skip the reset.
func (a *agentOut) unmark(ctx context.Context) {
	if _, err := a.take(ctx); err != nil {
		a.log.Warn("could not take the clean mark away; if the cache Redis holds one (restored from a snapshot), the next start skips the reset", "key", names.DeliveryKey(a.service), "err", err)
	}
}

// undelivering counts the subscribers other than this one that apply to the
// cache (subscriber.Undelivering); an error counts as one (a reset is the
// safe side).
func (a *agentOut) undelivering(ctx context.Context) int {
	var n int
	_, err := redisconn.UntilDone(ctx, func(ctx context.Context) error {
		var err error
		n, err = subscriber.Undelivering(ctx, a.cache, a.service)
		return err
	})
	if err != nil {
		a.log.Warn("could not read which subscribers without --deliver apply to the cache Redis; taking it that one does", "key", names.DeliveryPlainKey(a.service), "err", err)
		return 1
	}
	return n
}

// problems is the deliver target's part of the agent's readiness.
func (a *agentOut) problems() []string {
	if a.d == nil {
		return nil
	}
	if failing, err := a.d.Failing(); failing {
		return []string{fmt.Sprintf("%s: the --deliver target refuses invalidations (%v); they wait and are delivered in order once it takes them", ReasonDeliverFailing, err)}
	}
	if waiting := a.d.Waiting(); waiting > subscriber.LinkDeadline {
		return []string{fmt.Sprintf("%s: the --deliver target has not answered a delivery for %v; invalidations wait and are delivered in order once it does", ReasonDeliverFailing, waiting.Round(100*time.Millisecond))}
	}
	return nil
}

// ReasonDeliverFailing is the agent's readiness reason for a failing
// --deliver target (its breaker is open).
const ReasonDeliverFailing = "deliver_failing"

// handler is the subscriber's Handler: the --deliver target's, which holds
// a cache of the service's process; nil without one (the agent's counts
// are then an Observe, which holds none).
func (a *agentOut) handler() subscriber.Handler {
	if a.d == nil {
		return nil
	}
	return a.d.Handle
}

// count is the subscriber's Observe: the counts behind the summary lines.
func (a *agentOut) count(inv subscriber.Invalidation) {
	a.invalidations.Add(1)
	a.total.Add(1)
	if len(inv.Keys) == 0 && len(inv.Refs) == 0 {
		a.wholeTags.Add(1)
	} else {
		a.keys.Add(int64(len(inv.Keys)))
	}
	if inv.Recovered {
		a.recovered.Add(1)
	}
}

// summarize logs one line per interval with invalidations applied in it.
func (a *agentOut) summarize(ctx context.Context, every time.Duration) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n := a.invalidations.Swap(0)
			keys, whole, rec := a.keys.Swap(0), a.wholeTags.Swap(0), a.recovered.Swap(0)
			if n == 0 {
				continue
			}
			attrs := []any{"invalidations", n, "keys", keys, "whole_tags", whole, "recovered", rec, "interval", every}
			if a.d != nil {
				attrs = append(attrs, "delivered", a.d.Delivered())
			}
			a.log.Info("applied", attrs...)
		}
	}
}

// summary is the agent's last line.
func (a *agentOut) summary(started time.Time) []any {
	attrs := []any{"invalidations", a.total.Load(), "uptime", time.Since(started).Round(time.Millisecond)}
	if a.d != nil {
		attrs = append(attrs, "delivered", a.d.Delivered(), "all_delivered", a.d.Clean())
	}
	return attrs
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
