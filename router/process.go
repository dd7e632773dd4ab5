package router

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/routerd/routerd/internal/shard"
	"github.com/routerd/routerd/internal/telemetry"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// Dead-letter reasons, the label values of routerd_events_dead_lettered_total.
const (
	ReasonMalformed     = "malformed"      // no event field, bad JSON, a field that breaks a rule
	ReasonUnknownDomain = "unknown_domain" // the domain is not in the matrix
)

// entry is one ingress entry on its way through a batch.
type entry struct {
	stream  string
	id      string // stream entry id
	ev      *wire.Event
	eventID string
	routes  []matrix.Route
	// dead is set when the entry goes to the dead-letter stream.
	reason, detail string
	raw            map[string]any
	// remaining counts the entry's channel messages not yet published,
	// directly or as part of a coalesced message; the entry is acknowledged
	// by whoever brings it to zero, unless a publish failed.
	remaining atomic.Int32
	failed    atomic.Bool
	// span is the context of the entry's route span, parent of its
	// channel publish spans.
	span trace.SpanContext
}

// finish records one of the entry's messages as published (or failed) and
// reports whether the entry is now complete and may be acknowledged.
func (e *entry) finish(ok bool) bool {
	if !ok {
		e.failed.Store(true)
	}
	return e.remaining.Add(-1) == 0 && !e.failed.Load()
}

// outgoing is one channel message to publish: for one event, or for many
// coalesced ones.
type outgoing struct {
	route   matrix.Route
	msg     wire.Message // without epoch and version
	ids     []string     // event ids; the first is the message's event
	entries []*entry     // the first one's route span is the parent
}

// process routes one batch of entries from stream and acknowledges those
// whose messages were all published (or that were dead-lettered). It returns
// an error when some entries could not be finished; those stay pending.
func (r *Router) process(parent context.Context, stream string, msgs []redis.XMessage) error {
	if len(msgs) == 0 {
		return nil
	}
	// A batch that has started is finished even during shutdown, so its
	// entries are acknowledged rather than left for a claim.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), r.opt.ShutdownTimeout)
	defer cancel()
	start := time.Now()
	defer func() { r.m.batchSeconds.Observe(time.Since(start).Seconds()) }()
	r.m.read.Add(float64(len(msgs)))

	mtx := r.matrix.Load()
	entries := make([]*entry, len(msgs))
	for i, msg := range msgs {
		entries[i] = r.parse(mtx, stream, msg)
	}
	if err := r.suppressOlder(ctx, entries); err != nil {
		return err
	}
	if err := r.registerTenants(ctx, entries); err != nil {
		return err
	}

	// Each route goes out now if the storm limits allow, else it merges into
	// its channel's pending message and is finished by the coalescer.
	now := time.Now()
	var direct []*outgoing
	var ack []*entry
	for _, e := range entries {
		if e.reason != "" {
			continue
		}
		e.remaining.Store(int32(len(e.routes)))
		if r.tracing {
			_, span := r.tracer.Start(telemetry.Extract(ctx, e.ev.Traceparent), "route",
				trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
					attribute.String("routerd.tenant", e.ev.Tenant), attribute.String("routerd.domain", e.ev.Domain),
					attribute.String("routerd.event", e.eventID), attribute.Int("routerd.channels", len(e.routes))))
			e.span = span.SpanContext()
			span.End()
		}
		if len(e.routes) == 0 {
			ack = append(ack, e) // nothing to publish: suppressed, or no service serves the tenant
			continue
		}
		for _, rt := range e.routes {
			msg := wire.Message{Tenant: e.ev.Tenant, Tag: rt.Tag, Keys: e.ev.Keys, Event: e.eventID, Domain: e.ev.Domain,
				Origin: e.ev.Origin, TS: e.ev.TS, Traceparent: e.ev.Traceparent}
			if r.co.admit(now, mtx, e, rt, msg) {
				direct = append(direct, &outgoing{route: rt, msg: msg, ids: []string{e.eventID}, entries: []*entry{e}})
			}
		}
	}
	ack = append(ack, r.send(ctx, direct)...)
	deadOK := r.deadLetter(ctx, stream, entries)
	if deadOK {
		for _, e := range entries {
			if e.reason != "" {
				ack = append(ack, e)
			}
		}
	}
	if err := r.ack(ctx, ack); err != nil {
		return err
	}
	var failed int
	for _, e := range entries {
		if e.failed.Load() {
			failed++
		}
	}
	if failed > 0 || !deadOK {
		r.m.publishErrors.Inc()
		return fmt.Errorf("%d of %d entries not finished", failed, len(entries))
	}
	return nil
}

// ack acknowledges complete entries, grouped by stream, and counts them.
func (r *Router) ack(ctx context.Context, entries []*entry) error {
	if len(entries) == 0 {
		return nil
	}
	byStream := map[string][]string{}
	for _, e := range entries {
		byStream[e.stream] = append(byStream[e.stream], e.id)
	}
	_, err := r.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for stream, ids := range byStream {
			pipe.XAck(ctx, stream, r.opt.Group, ids...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("XACK: %w", err)
	}
	for _, e := range entries {
		if e.ev != nil && e.reason == "" {
			r.m.routed.WithLabelValues(e.ev.Domain).Inc()
		}
	}
	return nil
}

func (r *Router) parse(mtx *matrix.Matrix, stream string, msg redis.XMessage) *entry {
	e := &entry{stream: stream, id: msg.ID, raw: msg.Values}
	raw, ok := msg.Values[wire.EventField].(string)
	if !ok {
		e.reason, e.detail = ReasonMalformed, `the entry has no "event" field`
		return e
	}
	ev, err := wire.ParseEvent([]byte(raw))
	if err != nil {
		e.reason, e.detail = ReasonMalformed, err.Error()
		return e
	}
	routes, known := mtx.Routes(ev.Tenant, ev.Domain)
	if !known {
		e.reason, e.detail = ReasonUnknownDomain, fmt.Sprintf("domain %q is not in the matrix", ev.Domain)
		return e
	}
	e.ev, e.routes, e.eventID = ev, routes, ev.ID
	if e.eventID == "" {
		e.eventID = msg.ID
	}
	return e
}

// suppressOlder drops (routes nowhere) an event whose source_version is below
// the newest one already seen for its tenant, domain and entity.
func (r *Router) suppressOlder(ctx context.Context, entries []*entry) error {
	var check []*entry
	for _, e := range entries {
		if e.ev != nil && e.ev.SourceVersion > 0 && e.ev.Entity != "" && len(e.routes) > 0 {
			check = append(check, e)
		}
	}
	if len(check) == 0 {
		return nil
	}
	ttl := r.opt.SourceVersionTTL.Milliseconds()
	cmds, err := runScripts(ctx, r.c, func(pipe redis.Pipeliner) []*redis.Cmd {
		out := make([]*redis.Cmd, len(check))
		for i, e := range check {
			key := r.prefix + ":srcver:{" + e.ev.Tenant + "}:" + e.ev.Domain + ":" + e.ev.Entity
			out[i] = lua.SourceVersion.EvalSha(ctx, pipe, []string{key}, e.ev.SourceVersion, ttl)
		}
		return out
	})
	if err != nil {
		return fmt.Errorf("source_version check: %w", err)
	}
	for i, e := range check {
		if cmds[i].Val() == int64(0) {
			e.routes = nil
			r.m.suppressed.Inc()
		}
	}
	return nil
}

// registerTenants adds tenants not yet known to the registry set, before any
// of their messages is published, so a subscriber for every tenant that
// checks positions finds them.
func (r *Router) registerTenants(ctx context.Context, entries []*entry) error {
	r.tenantsMu.Lock()
	var fresh []any
	seen := map[string]bool{}
	for _, e := range entries {
		if len(e.routes) > 0 && !r.tenants[e.ev.Tenant] && !seen[e.ev.Tenant] {
			seen[e.ev.Tenant] = true
			fresh = append(fresh, e.ev.Tenant)
		}
	}
	r.tenantsMu.Unlock()
	if len(fresh) == 0 {
		return nil
	}
	cmds, err := r.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, t := range fresh {
			pipe.SAdd(ctx, wire.TenantsKey(r.prefix), t)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("tenant registry: %w", err)
	}
	if r.opt.Sharded {
		// Sharded pub/sub has no patterns: subscribers of every tenant learn
		// of a new one from this announcement (and from the registry at
		// every position check), before its first message is published.
		for i, c := range cmds {
			if c.(*redis.IntCmd).Val() == 1 {
				if err := r.c.SPublish(ctx, wire.TenantsChannel(r.prefix), fresh[i]).Err(); err != nil {
					return fmt.Errorf("announcing tenant: %w", err)
				}
			}
		}
	}
	r.tenantsMu.Lock()
	for t := range seen {
		r.tenants[t] = true
	}
	r.tenantsMu.Unlock()
	return nil
}

// send publishes channel messages in one pipeline and returns the entries it
// completed. A message that fails marks its entries failed: they are not
// acknowledged and will be claimed and routed again.
func (r *Router) send(ctx context.Context, out []*outgoing) []*entry {
	if len(out) == 0 {
		return nil
	}
	cmd := "PUBLISH"
	if r.opt.Sharded {
		cmd = "SPUBLISH"
	}
	epoch := newEpoch()
	// With tracing on, each message gets a "channel publish" span, whose
	// context the message carries; off, the event's traceparent passes on.
	spans := make([]trace.Span, len(out))
	for i, o := range out {
		if !r.tracing {
			spans[i] = noopSpan
			continue
		}
		pctx := trace.ContextWithSpanContext(ctx, o.entries[0].span)
		var span trace.Span
		pctx, span = r.tracer.Start(pctx, "channel publish", trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(attribute.String("cache.tag", o.route.Tag), attribute.String("messaging.destination.name", o.route.Channel),
				attribute.Int("routerd.events", len(o.entries)), attribute.Int("cache.keys", len(o.msg.Keys))))
		spans[i] = span
		if tp := telemetry.Inject(pctx); tp != "" {
			o.msg.Traceparent = tp
		}
	}
	cmds := r.publishDurably(ctx, out, epoch, cmd)
	var done []*entry
	for i, o := range out {
		res, err := cmds[i].Slice()
		ok := err == nil && len(res) == 3
		if !ok {
			r.log.Warn("channel publish failed", "tag", o.route.Tag, "event", o.ids[0], "err", err)
			spans[i].SetStatus(codes.Error, fmt.Sprint(err))
		} else if dup, _ := res[2].(int64); dup == 1 {
			r.m.duplicates.Inc()
			spans[i].SetAttributes(attribute.Bool("routerd.duplicate", true))
		} else {
			r.m.published.WithLabelValues(o.route.Tag).Inc()
			if o.msg.TS > 0 {
				r.m.publishLag.Observe(time.Since(time.UnixMilli(o.msg.TS)).Seconds())
			}
			spans[i].SetAttributes(attribute.Int64("routerd.version", toInt64(res[0])))
		}
		spans[i].End()
		for _, e := range o.entries {
			if e.finish(ok) {
				done = append(done, e)
			}
		}
	}
	return done
}

// deadLetter records the refused entries of the batch with their reason. It
// reports whether all of them were recorded; those not recorded stay pending.
func (r *Router) deadLetter(ctx context.Context, stream string, entries []*entry) bool {
	var dead []*entry
	for _, e := range entries {
		if e.reason != "" {
			dead = append(dead, e)
		}
	}
	if len(dead) == 0 {
		return true
	}
	_, err := r.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, e := range dead {
			pipe.XAdd(ctx, &redis.XAddArgs{
				Stream: wire.DeadLetterStream(r.prefix), MaxLen: r.opt.DeadLetterMaxLen, Approx: true,
				Values: []any{"reason", e.reason, "error", e.detail, "stream", stream, "entry_id", e.id,
					"entry", entryJSON(e.raw), "ts", strconv.FormatInt(time.Now().UnixMilli(), 10)},
			})
		}
		return nil
	})
	if err != nil {
		r.log.Error("writing dead letters", "err", err)
		return false
	}
	for _, e := range dead {
		r.m.deadLettered.WithLabelValues(e.reason).Inc()
		r.log.Warn("dead-lettered an event", "reason", e.reason, "error", e.detail, "stream", stream, "entry", e.id)
	}
	return true
}

// scripter is what runScripts needs: the bus client, or one master of it.
type scripter interface {
	redis.Scripter
	Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error)
}

// runScripts runs a pipeline of EVALSHA calls; when Redis has lost its
// script cache (restart, failover) it loads the scripts and runs the
// pipeline again. The scripts it runs are idempotent, so running twice is safe.
func runScripts(ctx context.Context, c scripter, build func(redis.Pipeliner) []*redis.Cmd) ([]*redis.Cmd, error) {
	for attempt := 0; ; attempt++ {
		var cmds []*redis.Cmd
		_, err := c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			cmds = build(pipe)
			return nil
		})
		noScript := false
		for _, c := range cmds {
			if redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				noScript = true
			}
		}
		if !noScript || attempt > 0 {
			return cmds, err
		}
		if err := loadScripts(ctx, c); err != nil {
			return cmds, err
		}
	}
}

// publishDurably publishes the messages, one pipeline per master (run side
// by side), each with the master's replication id and, where the master has
// a replica, ending with WAIT 1: a message counts as published only when a
// replica has it too. It returns one result per message.
func (r *Router) publishDurably(ctx context.Context, out []*outgoing, epoch, cmd string) []*redis.Cmd {
	results := make([]*redis.Cmd, len(out))
	fail := func(i int, err error) {
		results[i] = redis.NewCmd(ctx)
		results[i].SetErr(err)
	}
	groups := map[*shard.Shard][]int{}
	for i, o := range out {
		sh, err := r.shards.Of(ctx, o.route.Channel)
		if err != nil {
			fail(i, err)
			continue
		}
		groups[sh] = append(groups[sh], i)
	}
	var wg sync.WaitGroup
	for sh, idx := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			replid, replicas, err := sh.Info(ctx)
			if err != nil {
				for _, i := range idx {
					fail(i, err)
				}
				return
			}
			var wait *redis.IntCmd
			cmds, _ := runScripts(ctx, sh.C, func(pipe redis.Pipeliner) []*redis.Cmd {
				all := make([]*redis.Cmd, len(idx))
				for j, i := range idx {
					all[j] = r.publishCmd(ctx, pipe, out[i], epoch, cmd, replid)
				}
				wait = nil
				if replicas > 0 {
					wait = shard.WaitCmd(ctx, 1, r.opt.ReplicaTimeout)
					_ = pipe.Process(ctx, wait)
				}
				return all
			})
			var waitErr error
			if wait != nil {
				if n, err := wait.Result(); err != nil || n < 1 {
					waitErr = fmt.Errorf("not acknowledged by a replica of %s within %v (WAIT: %d, %v)", sh.C.Options().Addr, r.opt.ReplicaTimeout, n, err)
					sh.Forget() // the replica may be gone: look again
				}
			}
			for j, i := range idx {
				c := cmds[j]
				if c.Err() != nil {
					sh.Forget() // a failover, a moved slot: look again next time
					r.shards.Moved(ctx)
				}
				if waitErr != nil && c.Err() == nil {
					fail(i, waitErr)
					continue
				}
				results[i] = c
			}
		}()
	}
	wg.Wait()
	return results
}

// publishCmd queues one channel message's publish script.
func (r *Router) publishCmd(ctx context.Context, pipe redis.Pipeliner, o *outgoing, epoch, cmd, replid string) *redis.Cmd {
	body, err := wire.MessageBody(&o.msg)
	if err != nil { // cannot happen for validated fields
		c := redis.NewCmd(ctx)
		c.SetErr(err)
		return c
	}
	args := make([]any, 0, 7+len(o.ids)-1)
	args = append(args, o.route.Channel, o.ids[0], body, o.route.Limits.History, epoch, cmd, replid)
	for _, id := range o.ids[1:] {
		args = append(args, id)
	}
	return lua.Publish.EvalSha(ctx, pipe,
		[]string{names.MetaKey(o.route.Channel), names.HistoryKey(o.route.Channel), names.EventsKey(o.route.Channel)},
		args...)
}

func loadScripts(ctx context.Context, c redis.Scripter) error {
	for _, s := range []*redis.Script{lua.Publish, lua.SourceVersion} {
		if err := s.Load(ctx, c).Err(); err != nil {
			return fmt.Errorf("load script: %w", err)
		}
	}
	return nil
}

// noopSpan stands in for a span when tracing is off.
var noopSpan = trace.SpanFromContext(context.Background())

func toInt64(v any) int64 {
	n, _ := v.(int64)
	return n
}
