package router

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/breaker"
	"github.com/routerd/routerd/internal/readiness"
)

// The reasons a router is not ready (Problem.Reason).
const (
	// ReasonStarting: not running, or still setting up the ingress
	// (consumer groups, scripts).
	ReasonStarting = "starting"
	// ReasonBusUnreachable: the bus did not answer a ping within
	// probeTimeout, twice in a row.
	ReasonBusUnreachable = "bus_unreachable"
	// ReasonReadsFailing: the last read of an ingress stream failed (up
	// to three are named).
	ReasonReadsFailing = "ingress_reads_failing"
	// ReasonPublishingFailing: for publishingFailingAfter or longer every
	// batch settled had entries fail for a reason that is not their own
	// (the bus refused or did not answer: an ACL without PUBLISH, a bus out
	// of memory, a timeout): nothing reaches the channels. Ready again once
	// a batch settles without such a failure.
	ReasonPublishingFailing = "publishing_failing"
)

// Reasons lists every reason a router reports, for metrics.
var Reasons = []string{ReasonStarting, ReasonBusUnreachable, ReasonReadsFailing, ReasonPublishingFailing}

const (
	probeEvery   = 500 * time.Millisecond
	probeTimeout = time.Second
	// unreachableAfter is how long the bus may leave pings unanswered.
	unreachableAfter = 3 * time.Second
	// publishingFailingAfter is how long batches may keep failing (with no
	// batch routed meanwhile) before it is a readiness problem: a failure
	// that a retry (100 ms later) gets past is not one.
	publishingFailingAfter = 2 * time.Second
	// overdueAfter is how long a read or a publish may wait for the bus
	// beyond what it asked to wait (a blocking read's block).
	overdueAfter = 2 * time.Second
)

// A Problem is one reason the router is not ready, with what was seen.
type Problem = readiness.Problem

// health is what Problems is computed from.
type health struct {
	probe    *breaker.Probe         // of the bus
	pingErr  atomic.Pointer[string] // the last ping's error
	readErrs sync.Map               // stream -> why its last read failed
	// publishing is set while the batches settled since the last one
	// routed failed for reasons not their own: since the first, and why the
	// last one failed.
	publishing atomic.Pointer[publishFailure]
	// calls are the reads and publishes in flight on the bus: one the bus
	// holds past its due time (CLIENT PAUSE … WRITE answers pings but
	// holds every read, script and PUBLISH; so does a long script) shows
	// before the client's timeout and the retries after it.
	calls sync.Map // *call -> struct{}
}

// call is a read of a stream (reason ReasonReadsFailing) or a publish of n
// messages (ReasonPublishingFailing) in flight on the bus.
type call struct {
	reason, stream string
	n              int
	start, due     time.Time
}

// begin records a call to the bus that should answer within wait (a
// blocking read's block) and overdueAfter more; end it with done.
func (h *health) begin(c *call, wait time.Duration) *call {
	c.start = time.Now()
	c.due = c.start.Add(wait + overdueAfter)
	h.calls.Store(c, struct{}{})
	return c
}

func (h *health) done(c *call) { h.calls.Delete(c) }

// overdue returns, per reason, the oldest call in flight past its due time.
func (h *health) overdue(now time.Time) map[string]*call {
	var out map[string]*call
	h.calls.Range(func(k, _ any) bool {
		c := k.(*call)
		if now.Before(c.due) {
			return true
		}
		if out == nil {
			out = map[string]*call{}
		}
		if o := out[c.reason]; o == nil || c.start.Before(o.start) {
			out[c.reason] = c
		}
		return true
	})
	return out
}

// publishFailure is a streak of batches that failed to publish.
type publishFailure struct {
	since time.Time
	err   string
}

// Problems lists why the router is not ready, nothing when it is.
func (r *Router) Problems() []Problem {
	if !r.ready.Load() {
		return []Problem{{Reason: ReasonStarting, Detail: "setting up the ingress (consumer groups, scripts), or not running"}}
	}
	var out []Problem
	if silent := r.health.probe.Silent(); silent > unreachableAfter {
		detail := fmt.Sprintf("the bus has not answered a ping for %v", silent.Round(100*time.Millisecond))
		if e := r.health.pingErr.Load(); e != nil {
			detail += " (last error: " + *e + ")"
		}
		out = append(out, Problem{Reason: ReasonBusUnreachable, Detail: detail})
	}
	var failing []string
	r.health.readErrs.Range(func(_, v any) bool {
		failing = append(failing, v.(string))
		return len(failing) < 3
	})
	if len(failing) > 0 {
		sort.Strings(failing)
		out = append(out, Problem{Reason: ReasonReadsFailing, Detail: "reading the ingress failed: " + strings.Join(failing, "; ")})
	}
	now := time.Now()
	stuck := r.health.overdue(now)
	if c := stuck[ReasonReadsFailing]; c != nil && len(failing) == 0 {
		out = append(out, Problem{Reason: ReasonReadsFailing, Detail: c.waited(now)})
	}
	if f := r.health.publishing.Load(); f != nil {
		if d := time.Since(f.since); d >= publishingFailingAfter {
			out = append(out, Problem{Reason: ReasonPublishingFailing,
				Detail: fmt.Sprintf("no batch routed for %v: each failed, retried (last error: %s)", d.Round(100*time.Millisecond), f.err)})
		}
	} else if c := stuck[ReasonPublishingFailing]; c != nil {
		out = append(out, Problem{Reason: ReasonPublishingFailing, Detail: c.waited(now)})
	}
	return out
}

// settled records the outcome of a settled batch: err is why some of its
// entries failed for a reason not their own, nil when none did. A failure
// starts or continues the streak; a batch without one (the bus took it, or
// answered with an error of an entry's own) ends it.
func (r *Router) settled(err error) {
	if err == nil {
		if r.health.publishing.Load() != nil {
			r.health.publishing.Store(nil)
		}
		return
	}
	f := &publishFailure{since: time.Now(), err: err.Error()}
	if old := r.health.publishing.Load(); old != nil {
		f.since = old.since
	}
	r.health.publishing.Store(f)
}

// waited says what the call is and how long it has waited for the bus.
func (c *call) waited(now time.Time) string {
	what := "a read of " + c.stream
	if c.reason == ReasonPublishingFailing {
		what = fmt.Sprintf("a publish of %d messages", c.n)
	}
	return fmt.Sprintf("%s has waited %v for the bus to answer (paused for writes, or blocked by a long script?)", what, now.Sub(c.start).Round(100*time.Millisecond))
}

// Ready reports whether the router is routing: Problems is empty.
func (r *Router) Ready() bool { return len(r.Problems()) == 0 }

// readDone records the outcome of an ingress read.
func (r *Router) readDone(stream string, err error) {
	if err == nil {
		r.health.readErrs.Delete(stream)
		return
	}
	r.health.readErrs.Store(stream, fmt.Sprintf("%s: %v", stream, err))
}

// probe pings the bus until ctx ends, so a silent bus shows in Problems
// within a few seconds even while reads block.
func (r *Router) probe(ctx context.Context) {
	r.health.probe.Answered()
	r.health.probe.Run(ctx, probeEvery, probeTimeout, nil, func(ctx context.Context) error {
		err := r.c.Ping(ctx).Err()
		if err != nil {
			msg := err.Error()
			r.health.pingErr.Store(&msg)
		}
		return err
	})
}

// newHealthMetrics exports Problems as routerd_not_ready{reason}.
func (r *Router) newHealthMetrics(reg prometheus.Registerer) {
	readiness.NotReadyGauges(reg, "routerd_not_ready",
		"1 while the router is not ready for this reason (see docs/operations.md#readiness), else 0.", Reasons, r.Problems)
}

// redisFailure is err unless it means the read worked: nothing to read, or
// the router stopping.
func redisFailure(err error) error {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
