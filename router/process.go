package router

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

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
	id      string // stream entry id
	ev      *wire.Event
	eventID string
	routes  []matrix.Route
	// dead is set when the entry goes to the dead-letter stream.
	reason, detail string
	raw            map[string]any
	// cmds are the entry's publish commands; failed when any of them failed.
	cmds   []*redis.Cmd
	failed bool
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
		entries[i] = r.parse(mtx, msg)
	}
	if err := r.suppressOlder(ctx, entries); err != nil {
		return err
	}
	if err := r.registerTenants(ctx, entries); err != nil {
		return err
	}
	if err := r.publish(ctx, mtx, entries); err != nil {
		return err
	}
	deadOK := r.deadLetter(ctx, stream, entries)

	ack := make([]string, 0, len(entries))
	var failed int
	for _, e := range entries {
		switch {
		case e.reason != "":
			if deadOK {
				ack = append(ack, e.id)
			}
		case e.failed:
			failed++
		default:
			ack = append(ack, e.id)
		}
	}
	if len(ack) > 0 {
		if err := r.c.XAck(ctx, stream, r.opt.Group, ack...).Err(); err != nil {
			return fmt.Errorf("XACK: %w", err)
		}
	}
	for _, e := range entries {
		if e.reason == "" && !e.failed && e.ev != nil {
			r.m.routed.WithLabelValues(e.ev.Domain).Inc()
		}
	}
	if failed > 0 || !deadOK {
		r.m.publishErrors.Inc()
		return fmt.Errorf("%d of %d entries not finished", len(entries)-len(ack), len(entries))
	}
	return nil
}

func (r *Router) parse(mtx *matrix.Matrix, msg redis.XMessage) *entry {
	e := &entry{id: msg.ID, raw: msg.Values}
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
	cmds, err := r.runScripts(ctx, func(pipe redis.Pipeliner) []*redis.Cmd {
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
	if err := r.c.SAdd(ctx, wire.TenantsKey(r.prefix), fresh...).Err(); err != nil {
		return fmt.Errorf("tenant registry: %w", err)
	}
	r.tenantsMu.Lock()
	for t := range seen {
		r.tenants[t] = true
	}
	r.tenantsMu.Unlock()
	return nil
}

// publish sends every channel message of the batch in one pipeline.
func (r *Router) publish(ctx context.Context, mtx *matrix.Matrix, entries []*entry) error {
	var n int
	for _, e := range entries {
		n += len(e.routes)
	}
	if n == 0 {
		return nil
	}
	cmd := "PUBLISH"
	if r.opt.Sharded {
		cmd = "SPUBLISH"
	}
	epoch := newEpoch()
	type sent struct {
		e   *entry
		tag string
	}
	var order []sent
	_, err := r.runScripts(ctx, func(pipe redis.Pipeliner) []*redis.Cmd {
		order = order[:0]
		var all []*redis.Cmd
		for _, e := range entries {
			e.cmds = e.cmds[:0]
			for _, rt := range e.routes {
				body, err := wire.MessageBody(&wire.Message{
					Tenant: e.ev.Tenant, Tag: rt.Tag, Keys: e.ev.Keys, Event: e.eventID, Domain: e.ev.Domain,
					Origin: e.ev.Origin, TS: e.ev.TS, Traceparent: e.ev.Traceparent,
				})
				if err != nil { // cannot happen for a validated event; keep the entry pending
					e.failed = true
					continue
				}
				c := lua.Publish.EvalSha(ctx, pipe,
					[]string{names.MetaKey(rt.Channel), names.HistoryKey(rt.Channel), names.EventsKey(rt.Channel)},
					rt.Channel, e.eventID, body, rt.Limits.History, epoch, cmd)
				e.cmds = append(e.cmds, c)
				all = append(all, c)
				order = append(order, sent{e, rt.Tag})
			}
		}
		return all
	})
	if err != nil && len(order) == 0 {
		return err
	}
	for _, s := range order {
		c := s.e.cmds[0]
		s.e.cmds = s.e.cmds[1:]
		res, err := c.Slice()
		if err != nil || len(res) != 3 {
			s.e.failed = true
			r.log.Warn("channel publish failed", "tag", s.tag, "event", s.e.eventID, "err", err)
			continue
		}
		if dup, _ := res[2].(int64); dup == 1 {
			r.m.duplicates.Inc()
		} else {
			r.m.published.WithLabelValues(s.tag).Inc()
		}
	}
	return nil
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

// runScripts runs a pipeline of EVALSHA calls; when Redis has lost its
// script cache (restart, failover) it loads the scripts and runs the
// pipeline again. The scripts it runs are idempotent, so running twice is safe.
func (r *Router) runScripts(ctx context.Context, build func(redis.Pipeliner) []*redis.Cmd) ([]*redis.Cmd, error) {
	for attempt := 0; ; attempt++ {
		var cmds []*redis.Cmd
		_, err := r.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
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
		if err := loadScripts(ctx, r.c); err != nil {
			return cmds, err
		}
	}
}

func loadScripts(ctx context.Context, c redis.UniversalClient) error {
	for _, s := range []*redis.Script{lua.Publish, lua.SourceVersion} {
		if err := s.Load(ctx, c).Err(); err != nil {
			return fmt.Errorf("load script: %w", err)
		}
	}
	return nil
}
