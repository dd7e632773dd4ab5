package router

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/redis/go-redis/v9"
)

// The reasons a router is not ready (Problem.Reason).
const (
	// ReasonStarting: not running, or still setting up the ingress
	// (consumer groups, scripts).
	ReasonStarting = "starting"
	// ReasonBusUnreachable: the bus did not answer a ping within
	// probeTimeout, twice in a row.
	ReasonBusUnreachable = "bus_unreachable"
	// ReasonReadsFailing: the last read of an ingress stream failed.
	ReasonReadsFailing = "ingress_reads_failing"
)

// Reasons lists every reason a router reports, for metrics.
var Reasons = []string{ReasonStarting, ReasonBusUnreachable, ReasonReadsFailing}

const (
	probeEvery   = 500 * time.Millisecond
	probeTimeout = time.Second
)

// A Problem is one reason the router is not ready, with what was seen.
type Problem struct {
	Reason string
	Detail string
}

func (p Problem) String() string { return p.Reason + ": " + p.Detail }

// health is what Problems is computed from.
type health struct {
	pingFailures atomic.Int32
	pingErr      atomic.Pointer[string]
	readErr      atomic.Pointer[string] // the last read of some stream failed
}

// Problems lists why the router is not ready, nothing when it is.
func (r *Router) Problems() []Problem {
	if !r.ready.Load() {
		return []Problem{{ReasonStarting, "setting up the ingress (consumer groups, scripts), or not running"}}
	}
	var out []Problem
	if r.health.pingFailures.Load() >= 2 {
		detail := "the bus does not answer"
		if e := r.health.pingErr.Load(); e != nil {
			detail += ": " + *e
		}
		out = append(out, Problem{ReasonBusUnreachable, detail})
	}
	if e := r.health.readErr.Load(); e != nil {
		out = append(out, Problem{ReasonReadsFailing, "reading the ingress failed: " + *e})
	}
	return out
}

// Ready reports whether the router is routing: Problems is empty.
func (r *Router) Ready() bool { return len(r.Problems()) == 0 }

// readDone records the outcome of an ingress read.
func (r *Router) readDone(stream string, err error) {
	if err == nil {
		r.health.readErr.Store(nil)
		return
	}
	msg := fmt.Sprintf("%s: %v", stream, err)
	r.health.readErr.Store(&msg)
}

// probe pings the bus until ctx ends, so a silent bus shows in Problems
// within a few seconds even while reads block.
func (r *Router) probe(ctx context.Context) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := r.c.Ping(pctx).Err()
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			msg := err.Error()
			r.health.pingErr.Store(&msg)
			r.health.pingFailures.Add(1)
			continue
		}
		r.health.pingFailures.Store(0)
	}
}

// newHealthMetrics exports Problems as routerd_not_ready{reason}.
func (r *Router) newHealthMetrics(reg prometheus.Registerer) {
	f := promauto.With(reg)
	for _, reason := range Reasons {
		f.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "routerd_not_ready", ConstLabels: prometheus.Labels{"reason": reason},
			Help: "1 while the router is not ready for this reason (see docs/operations.md#readiness), else 0.",
		}, func() float64 {
			for _, p := range r.Problems() {
				if p.Reason == reason {
					return 1
				}
			}
			return 0
		})
	}
}

// redisFailure is err unless it means the read worked: nothing to read, or
// the router stopping.
func redisFailure(err error) error {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
