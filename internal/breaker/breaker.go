// Package breaker guards a dependency (the cache Redis, the --deliver
// target, the bus) with a circuit breaker (sony/gobreaker): after a few
// failures in a row it opens, and calls fail at once with ErrOpen instead of
// dialling a dependency that is down; a probe (a call let through after a
// short open period, paced by Backoff) closes it again as soon as the
// dependency answers. It logs one line when the dependency starts failing
// and one when it is back, and exports its state as a gauge.
package breaker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// ErrOpen is the error of a call refused because the dependency is failing.
var ErrOpen = errors.New("breaker: the dependency is failing; calls wait for a probe to succeed")

// Defaults.
const (
	// DefaultFailures is how many failures in a row open the breaker.
	DefaultFailures = 2
	// OpenFor is how long the breaker stays open before it lets one call
	// through as a probe. Probes are paced by Backoff on top of it.
	OpenFor = 250 * time.Millisecond
	// MaxBackoff caps the wait between probes: a dependency that comes
	// back is used again within about this long.
	MaxBackoff = time.Second
)

// Options configure a Breaker.
type Options struct {
	// Dependency names what is guarded ("cache", "deliver", "bus"): the
	// metric's label value and the logs' "dependency".
	Dependency string
	// Metric is the name of the state gauge (labelled dependency); empty
	// for none. Several breakers may share one name in a registry.
	Metric string
	// Failures in a row that open the breaker (DefaultFailures).
	Failures int
	// IsFailure tells which errors count against the dependency (default:
	// every error but a cancelled context; see RedisFailure).
	IsFailure func(error) bool
	// OnChange is called (from the caller whose call changed the state)
	// when the breaker opens or closes.
	OnChange   func(open bool)
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Breaker guards one dependency. Its methods are safe for concurrent use.
type Breaker struct {
	opt Options
	cb  *gobreaker.TwoStepCircuitBreaker[struct{}]

	mu      sync.Mutex
	lastErr error
	opened  time.Time
	open    bool // as last logged: closed -> open is "failing", back to closed "back"
	// calls in flight: when each started, so that a dependency that takes
	// calls and never answers (a paused Redis, a hung receiver) is seen
	// long before a timeout fails them (Waiting).
	next     uint64
	inFlight map[uint64]time.Time
}

// New makes a breaker, closed.
func New(opt Options) *Breaker {
	if opt.Failures <= 0 {
		opt.Failures = DefaultFailures
	}
	if opt.IsFailure == nil {
		opt.IsFailure = func(err error) bool { return err != nil && !errors.Is(err, context.Canceled) }
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	b := &Breaker{opt: opt}
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        opt.Dependency,
		MaxRequests: 1,
		Timeout:     OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= uint32(opt.Failures) },
		IsSuccessful: func(err error) bool {
			return !opt.IsFailure(err)
		},
		IsExcluded:    func(err error) bool { return errors.Is(err, context.Canceled) },
		OnStateChange: func(_ string, _, to gobreaker.State) { b.changed(to) },
	})
	if opt.Metric != "" {
		promauto.With(opt.Registerer).NewGaugeFunc(prometheus.GaugeOpts{
			Name: opt.Metric, ConstLabels: prometheus.Labels{"dependency": opt.Dependency},
			Help: "State of the circuit breaker guarding a dependency: 0 closed (in use), 1 half-open (a probe is let through), 2 open (failing: calls refused without trying).",
		}, func() float64 { return float64(b.cb.State()) })
	}
	return b
}

// changed logs (once per outage and once per recovery) and reports a change.
func (b *Breaker) changed(to gobreaker.State) {
	b.mu.Lock()
	var open, was bool
	var lastErr error
	var down time.Duration
	switch to {
	case gobreaker.StateOpen:
		open, was = true, b.open
		if !b.open {
			b.opened = time.Now()
		}
		b.open = true
	case gobreaker.StateClosed:
		open, was = false, b.open
		down = time.Since(b.opened)
		b.open = false
	default:
		b.mu.Unlock()
		return
	}
	lastErr = b.lastErr
	b.mu.Unlock()
	if open == was {
		return // a failed probe: still down, already said
	}
	if open {
		b.opt.Logger.Warn("dependency failing: circuit breaker open; calls are refused until a probe succeeds", "dependency", b.opt.Dependency, "err", lastErr)
	} else {
		b.opt.Logger.Info("dependency back: circuit breaker closed", "dependency", b.opt.Dependency, "down_for", down.Round(time.Millisecond))
	}
	if b.opt.OnChange != nil {
		b.opt.OnChange(open)
	}
}

// Do runs call through the breaker: refused with ErrOpen while it is open,
// counted otherwise.
func (b *Breaker) Do(call func() error) error {
	done, err := b.cb.Allow()
	if err != nil {
		return b.refused(err)
	}
	id := b.started()
	err = call()
	b.finished(id)
	b.record(err)
	done(err)
	return err
}

func (b *Breaker) started() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inFlight == nil {
		b.inFlight = map[uint64]time.Time{}
	}
	b.next++
	b.inFlight[b.next] = time.Now()
	return b.next
}

func (b *Breaker) finished(id uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.inFlight, id)
}

// Waiting is how long the oldest call in flight has waited for the
// dependency (0 when none is in flight). A dependency that accepts calls
// and does not answer them (CLIENT PAUSE, a receiver stuck in a lock)
// fails nothing until a timeout, but its calls wait: readiness reports it
// once this passes a deadline.
func (b *Breaker) Waiting() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	var oldest time.Time
	for _, t := range b.inFlight {
		if oldest.IsZero() || t.Before(oldest) {
			oldest = t
		}
	}
	if oldest.IsZero() {
		return 0
	}
	return time.Since(oldest)
}

func (b *Breaker) refused(err error) error {
	b.mu.Lock()
	last := b.lastErr
	b.mu.Unlock()
	if last != nil {
		return fmt.Errorf("%w (%s: %v)", ErrOpen, b.opt.Dependency, last)
	}
	return fmt.Errorf("%w (%s: %v)", ErrOpen, b.opt.Dependency, err)
}

func (b *Breaker) record(err error) {
	if b.opt.IsFailure(err) {
		b.mu.Lock()
		b.lastErr = err
		b.mu.Unlock()
	}
}

// State is the breaker's state.
func (b *Breaker) State() gobreaker.State { return b.cb.State() }

// Failing reports whether the dependency is failing (the breaker is not
// closed) and the last error it gave.
func (b *Breaker) Failing() (bool, error) {
	if b.cb.State() == gobreaker.StateClosed {
		return false, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return true, b.lastErr
}

// Backoff is the wait before the attempt'th probe (from 1): doubling from
// 100ms up to MaxBackoff, with ±20% jitter so that many clients of one
// dependency do not probe in step.
func Backoff(attempt int) time.Duration {
	d := min(100*time.Millisecond<<min(max(attempt-1, 0), 10), MaxBackoff)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// RedisFailure tells the errors of a Redis call that count against the
// server: it did not answer (a network error, a timeout, a closed
// connection) or answered that it cannot serve (LOADING, MASTERDOWN, BUSY).
// Any other reply (WRONGTYPE, NOPERM, NOSCRIPT) is an answer: the server is
// up.
func RedisFailure(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, ErrOpen) {
		return false
	}
	var re redis.Error
	if errors.As(err, &re) {
		return redis.HasErrorPrefix(err, "LOADING") || redis.HasErrorPrefix(err, "MASTERDOWN") || redis.HasErrorPrefix(err, "BUSY")
	}
	return true
}

// guardKey marks a context whose Redis calls the breaker guards.
type guardKey struct{ b *Breaker }

// Guard returns a context whose calls through a client with b's Hook go
// through the breaker. Calls with other contexts (the service's own use of
// a client it shares) are not touched.
func (b *Breaker) Guard(ctx context.Context) context.Context {
	return context.WithValue(ctx, guardKey{b}, true)
}

func (b *Breaker) guarded(ctx context.Context) bool {
	v, _ := ctx.Value(guardKey{b}).(bool)
	return v
}

// Hook is a go-redis hook that runs the commands and pipelines made with a
// Guard context through the breaker: refused at once while it is open (no
// dial), counted by RedisFailure otherwise.
func (b *Breaker) Hook() redis.Hook { return hook{b} }

type hook struct{ b *Breaker }

func (h hook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (h hook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !h.b.guarded(ctx) {
			return next(ctx, cmd)
		}
		err := h.b.Do(func() error { return next(ctx, cmd) })
		if errors.Is(err, ErrOpen) {
			cmd.SetErr(err)
		}
		return err
	}
}

func (h hook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !h.b.guarded(ctx) {
			return next(ctx, cmds)
		}
		err := h.b.Do(func() error { return next(ctx, cmds) })
		if errors.Is(err, ErrOpen) {
			for _, c := range cmds {
				c.SetErr(err)
			}
		}
		return err
	}
}
