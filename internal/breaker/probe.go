package breaker

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNoAnswer is what a probe that did not answer within its timeout
// counts as.
var ErrNoAnswer = errors.New("breaker: no answer to a probe in time")

// Probe pings a dependency on a schedule and tells how long ago it last
// answered. One ping is in flight at a time, and one that hangs counts as
// a failure for each timeout it hangs, whether or not the client honours
// the context's deadline (go-redis does not, without
// ContextTimeoutEnabled): a silent dependency shows within the timeout.
type Probe struct {
	last atomic.Int64 // unix nanos of the last answer
}

// NewProbe makes a probe that counts as answered now.
func NewProbe() *Probe {
	p := &Probe{}
	p.last.Store(time.Now().UnixNano())
	return p
}

// Answered counts the dependency as answering now (a fresh start).
func (p *Probe) Answered() { p.last.Store(time.Now().UnixNano()) }

// Silent is how long the dependency has not answered.
func (p *Probe) Silent() time.Duration { return time.Since(time.Unix(0, p.last.Load())) }

// Run pings every `every` until ctx ends, and returns then without waiting
// for a ping in flight: one that hangs ends within the client's own
// timeouts (or when the client is closed), not its context's. With a
// breaker, a ping that fails or hangs past timeout is reported to it, and
// while it is open the pings follow Backoff instead, so the dependency is
// used again soon after it answers.
func (p *Probe) Run(ctx context.Context, every, timeout time.Duration, b *Breaker, ping func(context.Context) error) {
	var inflight chan error // buffered: a ping left in flight at the end ends on its own
	var counted time.Time   // the ping in flight was counted up to here
	attempt := 0
	for {
		wait := every
		if b != nil {
			if failing, _ := b.Failing(); failing {
				attempt++
				wait = Backoff(attempt)
			} else {
				attempt = 0
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case err := <-inflight:
			t.Stop()
			inflight = nil
			if !Silence(err) {
				p.last.Store(time.Now().UnixNano())
			}
			continue
		case <-t.C:
		}
		if inflight != nil {
			// Each timeout it hangs counts as one failure.
			if time.Since(counted) > timeout && b != nil {
				counted = time.Now()
				b.Report(ErrNoAnswer)
			}
			continue
		}
		inflight, counted = make(chan error, 1), time.Now()
		go func(done chan<- error) {
			pctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			done <- ping(pctx)
		}(inflight)
	}
}

// Report counts a failure of the dependency seen outside Do (a probe that
// hangs).
func (b *Breaker) Report(err error) {
	done, aerr := b.cb.Allow()
	if aerr != nil {
		return // already open
	}
	b.record(err)
	done(err)
}

// Silence reports whether a probe's error means the dependency did not
// answer: any error but an answer of Redis's (NOPERM to a user without
// +ping is an answer) and a cancelled probe.
func Silence(err error) bool {
	var re redis.Error
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) || (errors.As(err, &re) && !RedisFailure(err)) {
		return false
	}
	return true
}
