// Package deliver hands a subscriber's invalidations to another process —
// the service whose in-process cache they are for — as JSON objects: by HTTP
// POST to a URL, or as JSON lines on a writer (a parent process reading the
// agent's stdout). It is what `routerd agent --deliver URL|-` runs.
//
// A Deliverer is a subscriber.Handler: the subscriber calls it for every
// invalidation, after deduplication and recovery, strictly in order per
// channel, from one goroutine. A delivery that fails (a network error, an
// answer other than 2xx, a write error) is retried with capped backoff until
// it succeeds; nothing after it is handed on meanwhile, so the order holds
// across retries and nothing is skipped. Handle returns an error only when
// its context ends (the agent stops) with the delivery not made: the
// Deliverer is then not Clean, and the next start must begin with a reset.
//
// A circuit breaker (internal/breaker) guards the target: after two failed
// attempts in a row it opens — one log line, Failing reports it (the agent's
// /readyz says deliver_failing) — and the delivery waits, probing the
// target about once a second, until an attempt succeeds.
//
// The objects (see docs/protocol.md):
//
//	{"reset":true}
//	{"tenant":"acme","tag":"active","keys":["user:1"],"version":42,"epoch":"9f2c1a","event":"01JD…","traceparent":"00-…-01"}
//	{"tenant":"acme","tag":"active","whole_tag":true,"version":43,"epoch":"9f2c1a"}
//
// A reset means "drop everything cached": the agent cannot tell what the
// process missed (it started without stored positions, or a previous run
// stopped with a delivery not made). It is delivered before anything else.
package deliver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/routerd/routerd/internal/breaker"
	"github.com/routerd/routerd/internal/telemetry"
	"github.com/routerd/routerd/subscriber"
)

// Stdout is the target that writes JSON lines to Options.Stdout.
const Stdout = "-"

// Default backoff between attempts of one delivery: it doubles from
// DefaultMinBackoff up to DefaultMaxBackoff.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = breaker.MaxBackoff
	// DefaultTimeout bounds one HTTP attempt.
	DefaultTimeout = 10 * time.Second
)

// Invalidation is the JSON object delivered for one invalidation. Keys,
// Refs (or both), or WholeTag is set.
type Invalidation struct {
	Tenant string   `json:"tenant"`
	Tag    string   `json:"tag"`
	Keys   []string `json:"keys,omitempty"`
	// Refs and Plain mean what wire.Message's do (docs/protocol.md); with
	// Keys, both go.
	Refs        []string `json:"refs,omitempty"`
	Plain       bool     `json:"plain,omitempty"`
	WholeTag    bool     `json:"whole_tag,omitempty"`
	Version     int64    `json:"version"`
	Epoch       string   `json:"epoch"`
	Event       string   `json:"event,omitempty"`
	Traceparent string   `json:"traceparent,omitempty"`
}

// resetObject is the JSON of a reset.
var resetObject = []byte(`{"reset":true}`)

// Encode returns the JSON object of an invalidation; traceparent is the
// trace context to carry ("" for none).
func Encode(inv subscriber.Invalidation, traceparent string) ([]byte, error) {
	out := Invalidation{Tenant: inv.Tenant, Tag: inv.Tag, Version: inv.Version, Epoch: inv.Epoch, Traceparent: traceparent}
	if len(inv.Keys) == 0 && len(inv.Refs) == 0 {
		out.WholeTag = true
	} else {
		out.Keys, out.Refs, out.Plain = inv.Keys, inv.Refs, inv.Plain
	}
	if inv.Message != nil {
		out.Event = inv.Message.Event
		if out.Traceparent == "" {
			out.Traceparent = inv.Message.Traceparent
		}
	}
	return json.Marshal(out)
}

// Options configure a Deliverer.
type Options struct {
	// Target is an http:// or https:// URL to POST each object to, or "-"
	// for JSON lines on Stdout (required).
	Target string
	// Stdout receives the JSON lines when Target is "-".
	Stdout io.Writer
	// Client makes the POSTs (default: one with Timeout).
	Client *http.Client
	// Timeout bounds one HTTP attempt (DefaultTimeout).
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts of one
	// delivery (DefaultMinBackoff, DefaultMaxBackoff).
	MinBackoff, MaxBackoff time.Duration
	// Reset makes the first delivery a reset.
	Reset      bool
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Redacted is target as it may be logged: a URL's password replaced by
// xxxxx, its query (which may hold a token) by "?xxxxx", and a target that
// does not parse cut before any "@".
func Redacted(target string) string {
	if target == Stdout {
		return target
	}
	if u, err := url.Parse(target); err == nil {
		if u.RawQuery != "" || u.ForceQuery {
			u.RawQuery, u.ForceQuery = "xxxxx", false
		}
		return u.Redacted()
	}
	if at := strings.LastIndex(target, "@"); at >= 0 {
		return "***" + target[at:]
	}
	return target
}

// Deliverer delivers invalidations in order. Its methods are safe for
// concurrent use; deliveries are made one at a time.
type Deliverer struct {
	opt    Options
	log    *slog.Logger
	client *http.Client
	m      *metrics
	br     *breaker.Breaker

	mu sync.Mutex // held for a whole delivery, retries included
	// writing, when not nil, is the write to Stdout left blocked by a
	// delivery abandoned (see write): none other starts before it ends.
	writing   chan error
	needReset bool
	abandoned bool
	delivered int64
}

// New checks the options.
func New(opt Options) (*Deliverer, error) {
	if opt.Target == "" {
		return nil, errors.New("deliver: a target is required: a URL, or - for stdout")
	}
	if opt.Target == Stdout {
		if opt.Stdout == nil {
			return nil, errors.New("deliver: target - needs a Stdout writer")
		}
	} else {
		u, err := url.Parse(opt.Target)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("deliver: target %q: want an http:// or https:// URL, or - for stdout", Redacted(opt.Target))
		}
	}
	if opt.Timeout < 0 || opt.MinBackoff < 0 || opt.MaxBackoff < 0 {
		return nil, errors.New("deliver: Timeout, MinBackoff and MaxBackoff must not be negative")
	}
	if opt.Timeout == 0 {
		opt.Timeout = DefaultTimeout
	}
	if opt.MinBackoff == 0 {
		opt.MinBackoff = DefaultMinBackoff
	}
	if opt.MaxBackoff == 0 {
		opt.MaxBackoff = max(DefaultMaxBackoff, opt.MinBackoff)
	}
	if opt.MaxBackoff < opt.MinBackoff {
		return nil, fmt.Errorf("deliver: MaxBackoff %v is below MinBackoff %v", opt.MaxBackoff, opt.MinBackoff)
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	client := &http.Client{Timeout: opt.Timeout}
	if opt.Client != nil {
		c := *opt.Client
		client = &c
	}
	// A redirect is not an acceptance. Followed, a 301, 302 or 303 turns the
	// POST into a GET without the body, whose 200 would count as delivered
	// although the service applied nothing: every 3xx is retried instead.
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	br := breaker.New(breaker.Options{Dependency: "deliver", Metric: "subscriber_breaker_state", Logger: opt.Logger, Registerer: opt.Registerer})
	return &Deliverer{opt: opt, log: opt.Logger, client: client, m: newMetrics(opt.Registerer), br: br, needReset: opt.Reset}, nil
}

// Handle delivers one invalidation (after a pending reset). It is a
// subscriber.Handler: it returns only once the invalidation is delivered, or
// with an error when ctx ends first.
func (d *Deliverer) Handle(ctx context.Context, inv subscriber.Invalidation) error {
	body, err := Encode(inv, telemetry.Inject(ctx))
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.resetLocked(ctx); err != nil {
		return err
	}
	return d.deliverLocked(ctx, body, fmt.Sprintf("%s:%s version %d", inv.Tenant, inv.Tag, inv.Version))
}

// SkipReset drops the reset asked for at start when it is not delivered
// yet: the caller learnt that the process missed nothing.
func (d *Deliverer) SkipReset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.needReset = false
}

// Flush delivers a pending reset now.
func (d *Deliverer) Flush(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.resetLocked(ctx)
}

func (d *Deliverer) resetLocked(ctx context.Context) error {
	if !d.needReset {
		return nil
	}
	if err := d.deliverLocked(ctx, resetObject, "reset"); err != nil {
		return err
	}
	d.needReset = false
	return nil
}

// Clean reports whether every delivery asked for was made (and a reset
// asked for at start): false once one was abandoned because its context
// ended.
func (d *Deliverer) Clean() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.abandoned && !d.needReset
}

// Delivered is the number of objects delivered, resets included.
func (d *Deliverer) Delivered() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.delivered
}

// Failing reports whether the target is failing (its breaker is not
// closed: deliveries wait), and the last error it gave.
func (d *Deliverer) Failing() (bool, error) { return d.br.Failing() }

// Waiting is how long the delivery in flight has waited for the target's
// answer (0 when none is in flight): a target that takes a request and
// does not answer fails nothing until Timeout, but delivers nothing either.
func (d *Deliverer) Waiting() time.Duration { return d.br.Waiting() }

// deliverLocked makes one delivery, retrying until it succeeds or ctx ends.
// The attempts go through the breaker: while it is open they wait for its
// probe, so a target that is down is tried about once a second, and one
// that comes back is used within about a second.
func (d *Deliverer) deliverLocked(ctx context.Context, body []byte, what string) error {
	wait := d.opt.MinBackoff
	for attempt := 1; ; attempt++ {
		err := d.br.Do(func() error { return d.attempt(ctx, body) })
		if err == nil {
			d.m.deliveries.WithLabelValues("delivered").Inc()
			d.delivered++
			if attempt > 1 {
				d.log.Debug("delivered after retries", "what", what, "attempts", attempt)
			}
			return nil
		}
		if ctx.Err() != nil {
			d.abandoned = true
			d.m.deliveries.WithLabelValues("failed").Inc()
			d.log.Warn("stopping with a delivery not made; the next start delivers a reset", "what", what, "err", err)
			return fmt.Errorf("deliver: %s not delivered: %w", what, errors.Join(ctx.Err(), err))
		}
		if !errors.Is(err, breaker.ErrOpen) {
			d.m.deliveries.WithLabelValues("retried").Inc()
			if attempt == 1 {
				d.log.Warn("delivery failed; retrying", "what", what, "retry_in", wait, "err", err)
			}
		}
		// Jittered, so that agents of one target do not retry in step.
		t := time.NewTimer(time.Duration(float64(wait) * (0.8 + 0.4*rand.Float64())))
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		wait = min(2*wait, d.opt.MaxBackoff)
	}
}

// attempt makes one try of a delivery.
func (d *Deliverer) attempt(ctx context.Context, body []byte) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if d.opt.Target == Stdout {
		return d.write(ctx, body)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.opt.Target, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // reuse the connection
	if resp.StatusCode >= 300 && resp.StatusCode <= 399 {
		return fmt.Errorf("%s answered %s to %s: redirects are not followed, give --deliver the final URL", Redacted(d.opt.Target), resp.Status, Redacted(resp.Header.Get("Location")))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s answered %s: %q", Redacted(d.opt.Target), resp.Status, bytes.TrimSpace(snippet))
	}
	return nil
}

// write writes body as one line to Stdout, returning when it is written or
// ctx ends. A reader that stops reading (a pipe nobody drains) blocks the
// write for as long as it does, and the stop must not wait for it: the
// write is left to end (or to die with the process), the delivery counts
// as not made, and a later one first waits for it, so lines never mix.
func (d *Deliverer) write(ctx context.Context, body []byte) error {
	if d.writing != nil {
		select {
		case <-d.writing:
			d.writing = nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	line := make([]byte, 0, len(body)+1)
	line = append(append(line, body...), '\n')
	done := make(chan error, 1)
	go func() {
		_, err := d.opt.Stdout.Write(line)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		d.writing = done
		return fmt.Errorf("the write to stdout did not end (nothing reads it?): %w", ctx.Err())
	}
}

type metrics struct {
	deliveries *prometheus.CounterVec // outcome
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{deliveries: promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
		Name: "subscriber_deliveries_total",
		Help: "Deliveries to the service's process (--deliver) by outcome: delivered (accepted: 2xx, or written), retried (an attempt failed and is made again), failed (the agent stopped before it was made; the next start delivers a reset).",
	}, []string{"outcome"})}
	for _, o := range []string{"delivered", "retried", "failed"} {
		m.deliveries.WithLabelValues(o)
	}
	return m
}
