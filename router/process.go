package router

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	ReasonTooLarge      = "too_large"      // the event's JSON is above Options.MaxEventBytes
	ReasonNotGranted    = "not_granted"    // the event came from a publisher's own stream, outside its grant
)

// sizeDefaults fills and checks the size bounds of the options.
func (o *Options) sizeDefaults() error {
	if o.MaxEventBytes == 0 {
		o.MaxEventBytes = wire.DefaultMaxEventBytes
	}
	if o.DeadLetterEntryBytes == 0 {
		o.DeadLetterEntryBytes = 16 << 10
	}
	if o.MaxEventBytes < 0 || o.DeadLetterEntryBytes < 0 {
		return fmt.Errorf("router: negative MaxEventBytes (%d) or DeadLetterEntryBytes (%d)", o.MaxEventBytes, o.DeadLetterEntryBytes)
	}
	return nil
}

// entry is one ingress entry on its way through a batch.
type entry struct {
	stream  string
	id      string // stream entry id
	ev      *wire.Event
	eventID string
	// publisher is the publisher whose own stream the entry is on, "" for
	// the shared ingress.
	publisher string
	routes    []matrix.Route
	// dead is set when the entry goes to the dead-letter stream.
	reason, detail string
	raw            map[string]any
	// remaining counts the entry's channel messages not yet published,
	// directly or as part of a coalesced message; whoever brings it to zero
	// settles the entry: acknowledges it, or queues it for another try when
	// a publish failed.
	remaining atomic.Int32
	mu        sync.Mutex
	err       error // why the entry failed; nil while it has not
	// alone is set when the entry was routed in a batch of one, so a
	// failure that will not pass is its own and counts towards the dead letters.
	alone bool
	// span is the entry's route span (nil when tracing is off), parent of
	// its channel publish spans: it runs from routing the event until the
	// last of its messages is published, coalescing delay included.
	span trace.Span
}

// finish records one of the entry's messages as published (err nil) or
// failed, and reports whether it was the entry's last. The last one ends
// the route span.
func (e *entry) finish(err error) bool {
	if err != nil {
		e.fail(err)
	}
	last := e.remaining.Add(-1) == 0
	if last {
		e.endSpan()
	}
	return last
}

// endSpan ends the route span, marked failed when a message was not published.
func (e *entry) endSpan() {
	if e.span == nil {
		return
	}
	if e.failure() != nil {
		e.span.SetStatus(codes.Error, "a channel message was not published; the entry is tried again")
	}
	e.span.End()
}

// fail records why the entry failed; an error that will not pass outweighs
// one that will.
func (e *entry) fail(err error) {
	e.mu.Lock()
	if e.err == nil || permanent(err) && !permanent(e.err) {
		e.err = err
	}
	e.mu.Unlock()
}

// failure returns why the entry failed, or nil.
func (e *entry) failure() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// outgoing is one channel message to publish: for one event, or for many
// coalesced ones.
type outgoing struct {
	route   matrix.Route
	msg     wire.Message // without epoch and version
	ids     []string     // event ids; the first is the message's event
	entries []*entry     // the first one's route span is the parent of the message's span
	// one holds the single id and entry of a message for one event.
	one struct {
		id    [1]string
		entry [1]*entry
	}
}

// single returns the message of one event.
func single(rt matrix.Route, msg wire.Message, e *entry) *outgoing {
	o := &outgoing{route: rt, msg: msg}
	o.one.id[0], o.one.entry[0] = e.eventID, e
	o.ids, o.entries = o.one.id[:], o.one.entry[:]
	return o
}

// process routes one batch of entries from stream and acknowledges those
// whose messages were all published (or that were dead-lettered). Entries
// that failed stay pending and go to the stream's retry queue; the error
// returned says how many and why.
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
	all := make([]entry, len(msgs)) // one allocation for the batch
	for i, msg := range msgs {
		entries[i] = &all[i]
		r.parse(entries[i], mtx, stream, msg)
		entries[i].alone = len(msgs) == 1
	}
	if err := r.suppressOlder(ctx, entries); err != nil {
		return r.failBatch(entries, err)
	}
	if err := r.registerTenants(ctx, entries); err != nil {
		return r.failBatch(entries, err)
	}

	// Each route goes out now if the storm limits allow, else it merges into
	// its channel's pending message and is finished by the coalescer.
	now := time.Now()
	var direct []*outgoing
	var done []*entry // complete: published, failed, or nothing to publish
	for _, e := range entries {
		if e.reason != "" {
			continue
		}
		e.remaining.Store(int32(len(e.routes)))
		if r.tracing {
			_, e.span = r.tracer.Start(telemetry.Extract(ctx, e.ev.Traceparent), "route",
				trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
					attribute.String("routerd.tenant", e.ev.Tenant), attribute.String("routerd.domain", e.ev.Domain),
					attribute.String("routerd.event", e.eventID), attribute.Int("routerd.channels", len(e.routes))))
		}
		if len(e.routes) == 0 {
			e.endSpan()
			done = append(done, e) // nothing to publish: suppressed, or no service serves the tenant
			continue
		}
		for _, rt := range e.routes {
			keys := e.ev.Keys
			if len(keys) > rt.Limits.MaxKeys {
				keys = nil // no message carries more than max_keys keys: the whole tag covers them
				r.m.wholeTag.WithLabelValues(rt.Tag).Inc()
			}
			msg := wire.Message{Tenant: e.ev.Tenant, Tag: rt.Tag, Keys: keys, Event: e.eventID, Domain: e.ev.Domain,
				Origin: e.ev.Origin, TS: e.ev.TS, Traceparent: e.ev.Traceparent}
			if rt.EntityRefs && e.ev.EntityLevel() {
				msg.Refs = []string{names.Ref(e.ev.Domain, e.ev.Entity)} // entity-level: not the whole tag
			}
			if r.co.admit(now, mtx, e, rt, msg) {
				direct = append(direct, single(rt, msg, e))
			}
		}
	}
	done = append(done, r.send(ctx, direct)...)
	deadErr := r.deadLetter(ctx, stream, entries)
	for _, e := range entries {
		if e.reason != "" {
			if deadErr != nil {
				e.fail(deadErr)
			}
			done = append(done, e)
		}
	}
	return r.settle(ctx, done)
}

// failBatch queues every entry of a batch that failed as a whole for
// another try.
func (r *Router) failBatch(entries []*entry, err error) error {
	for _, e := range entries {
		e.fail(err)
	}
	return r.settle(context.Background(), nil, entries...)
}

// settle acknowledges the complete entries that succeeded and queues those
// that failed (or whose acknowledgement failed) for another try. It returns
// an error saying how many failed and the first reason.
func (r *Router) settle(ctx context.Context, done []*entry, failed ...*entry) error {
	var ok []*entry
	for _, e := range done {
		if e.failure() != nil {
			failed = append(failed, e)
		} else {
			ok = append(ok, e)
		}
	}
	if err := r.ack(ctx, ok); err != nil {
		for _, e := range ok {
			e.fail(err)
		}
		failed = append(failed, ok...)
	} else {
		r.retryDone(ok)
	}
	if len(failed) == 0 {
		return nil
	}
	r.m.publishErrors.Inc()
	for _, e := range failed {
		r.retryLater(e, e.failure())
	}
	return fmt.Errorf("%d entries failed, retried shortly: %w", len(failed), failed[0].failure())
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

// parse fills e from an ingress entry: the event and its routes, or the
// reason it goes to the dead letters.
func (r *Router) parse(e *entry, mtx *matrix.Matrix, stream string, msg redis.XMessage) {
	e.stream, e.id, e.raw = stream, msg.ID, msg.Values
	raw, ok := msg.Values[wire.EventField].(string)
	if !ok {
		e.reason, e.detail = ReasonMalformed, `the entry has no "event" field`
		return
	}
	if len(raw) > r.opt.MaxEventBytes {
		e.reason = ReasonTooLarge
		e.detail = fmt.Sprintf("event of %d bytes is above the limit of %d bytes (max event bytes)", len(raw), r.opt.MaxEventBytes)
		return
	}
	ev, err := wire.ParseEvent([]byte(raw))
	if err != nil {
		e.reason, e.detail = ReasonMalformed, err.Error()
		return
	}
	routes, known := mtx.Routes(ev.Tenant, ev.Domain)
	if !known {
		e.reason, e.detail = ReasonUnknownDomain, fmt.Sprintf("domain %q is not in the matrix", ev.Domain)
		return
	}
	// An event from a publisher's own stream (which a Redis ACL binds to
	// that publisher) is routed only within the publisher's grant.
	pub := names.StreamPublisher(r.prefix, stream)
	if pub != "" && !mtx.Granted(pub, ev.Domain, ev.Tenant) {
		e.reason = ReasonNotGranted
		e.detail = fmt.Sprintf("publisher %q is not granted domain %q for tenant %q", pub, ev.Domain, ev.Tenant)
		return
	}
	e.ev, e.routes, e.eventID, e.publisher = ev, routes, ev.ID, pub
	switch {
	case e.eventID == "":
		e.eventID = RawEventID(stream, msg.ID)
	case pub != "":
		// A publisher's ids are its own: another publisher granted the
		// same channel cannot make this event a duplicate by taking its id
		// first.
		e.eventID = boundedID(pub + "/" + e.eventID)
	}
}

// RawEventID is the id of an event published without one: its stream name and
// entry id. An entry id alone is unique only within its stream (two XADDs at
// the same millisecond on two partitions get the same one), and the publish
// script drops a message whose event id it has seen on the channel. An id
// that would be longer than an event id may be is replaced by its SHA-256.
func RawEventID(stream, entryID string) string {
	return boundedID(stream + ":" + entryID)
}

// boundedID is id, or its SHA-256 when it is longer than an event id may be.
func boundedID(id string) string {
	if len(id) <= wire.MaxIDLen {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Bounds of the source_version bookkeeping: an event naming more keys is
// neither suppressed nor recorded (routing it is always safe), and an entity
// remembers at most srcverEntityKeys keys.
const (
	srcverEventKeys  = 500 // the script's HSET unpacks two items a key: ≤ lua.MaxUnpack
	srcverEntityKeys = 1000
)

// suppressOlder drops (routes nowhere) an event whose source_version is below
// that of newer events already routed for its tenant, domain and entity, when
// those covered everything it names: each of its keys, or, for a whole-tag
// event, the whole tag. An older event naming a key the newer ones did not
// invalidate (a retry, a late partition) is routed.
func (r *Router) suppressOlder(ctx context.Context, entries []*entry) error {
	var check []*entry
	for _, e := range entries {
		// An entity-level event of a domain with entity_refs is not checked:
		// recorded as whole-tag it would suppress an older whole-tag event
		// it does not cover.
		refs := e.ev != nil && e.ev.EntityLevel() && len(e.routes) > 0 && e.routes[0].EntityRefs
		if e.ev != nil && e.ev.SourceVersion > 0 && e.ev.Entity != "" && len(e.routes) > 0 && len(e.ev.Keys) <= srcverEventKeys && !refs {
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
			entity := e.ev.Entity
			if e.publisher != "" {
				// Each publisher orders its own changes: another one
				// granted the domain cannot claim a version far ahead
				// and suppress this one's events.
				entity = e.publisher + "/" + entity
			}
			key := names.SourceVersionKey(r.prefix, e.ev.Tenant, e.ev.Domain, entity)
			args := make([]any, 0, 3+len(e.ev.Keys))
			args = append(args, e.ev.SourceVersion, ttl, srcverEntityKeys)
			for _, k := range e.ev.Keys {
				args = append(args, k)
			}
			out[i] = lua.SourceVersion.EvalSha(ctx, pipe, []string{key}, args...)
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
	// Subscribers of every tenant subscribe to exact channels, never to
	// patterns (a pattern taxes every PUBLISH on the bus): they learn of a
	// new tenant from this announcement (and from the registry at every
	// position check), before its first message is published.
	announce := r.c.Publish
	if r.cluster {
		announce = r.c.SPublish
	}
	for i, c := range cmds {
		if c.(*redis.IntCmd).Val() == 1 {
			if err := announce(ctx, wire.TenantsChannel(r.prefix), fresh[i]).Err(); err != nil {
				return fmt.Errorf("announcing tenant: %w", err)
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
// completed. A message that fails marks its entries failed: settle will not
// acknowledge them but queue them for another try.
func (r *Router) send(ctx context.Context, out []*outgoing) []*entry {
	if len(out) == 0 {
		return nil
	}
	cmd := "PUBLISH"
	if r.cluster {
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
		pctx := trace.ContextWithSpan(ctx, o.entries[0].span)
		var span trace.Span
		pctx, span = r.tracer.Start(pctx, "channel publish", trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(attribute.String("cache.tag", o.route.Tag), attribute.String("messaging.destination.name", o.route.Channel),
				attribute.Int("routerd.events", len(o.entries)), attribute.Int("cache.keys", len(o.msg.Keys))))
		spans[i] = span
		if tp := telemetry.Inject(pctx); tp != "" {
			o.msg.Traceparent = tp
		}
	}
	results := r.publishDurably(ctx, out, epoch, cmd)
	var done []*entry
	for i, o := range out {
		res := results[i]
		ok := res.err == nil
		if !ok {
			r.log.Warn("channel publish failed", "tag", o.route.Tag, "event", o.ids[0], "err", res.err)
			spans[i].SetStatus(codes.Error, res.err.Error())
		} else if res.duplicate {
			r.m.duplicates.Inc()
			spans[i].SetAttributes(attribute.Bool("routerd.duplicate", true))
		} else {
			r.m.published.WithLabelValues(o.route.Tag).Inc()
			if o.msg.TS > 0 {
				r.m.publishLag.Observe(time.Since(time.UnixMilli(o.msg.TS)).Seconds())
			}
			spans[i].SetAttributes(attribute.Int64("routerd.version", res.version))
		}
		spans[i].End()
		for _, e := range o.entries {
			if e.finish(res.err) {
				done = append(done, e)
			}
		}
	}
	return done
}

// deadLetter records the refused entries of the batch with their reason. An
// error means none was recorded; they stay pending.
func (r *Router) deadLetter(ctx context.Context, stream string, entries []*entry) error {
	var dead []*entry
	for _, e := range entries {
		if e.reason != "" {
			dead = append(dead, e)
		}
	}
	if len(dead) == 0 {
		return nil
	}
	_, err := r.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, e := range dead {
			pipe.XAdd(ctx, &redis.XAddArgs{
				Stream: wire.DeadLetterStream(r.prefix), MaxLen: r.opt.DeadLetterMaxLen, Approx: true,
				Values: []any{"reason", e.reason, "error", e.detail, "stream", stream, "entry_id", e.id,
					"entry", entryCopy(e.raw, r.opt.DeadLetterEntryBytes), "ts", strconv.FormatInt(time.Now().UnixMilli(), 10)},
			})
		}
		return nil
	})
	if err != nil {
		r.log.Error("writing dead letters", "err", err)
		return fmt.Errorf("writing dead letters: %w", err)
	}
	for _, e := range dead {
		r.m.deadLettered.WithLabelValues(e.reason).Inc()
		r.log.Warn("dead-lettered an event", "reason", e.reason, "err", e.detail, "stream", stream, "entry", e.id)
	}
	return nil
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
	return lua.RunPipeline(ctx, c, routerScripts, build)
}

// published is the outcome of one channel message's publish.
type published struct {
	version   int64
	duplicate bool // every event id of it was published before; nothing sent
	err       error
}

// Bounds of one publish script call: it blocks its Redis while it runs, so
// it takes a bounded number of messages (a few microseconds each).
const (
	maxCallMessages = 100
	maxCallArgs     = 4000
)

// publishDurably publishes the messages, one pipeline per master (run side
// by side), each with the master's replication id and, where the master has
// a replica, ending with WAIT 1: a message counts as published only when a
// replica has it too. It returns one result per message.
func (r *Router) publishDurably(ctx context.Context, out []*outgoing, epoch, cmd string) []published {
	results := make([]published, len(out))
	groups := map[*shard.Shard][]int{}
	for i, o := range out {
		sh, err := r.shards.Of(ctx, o.route.Channel)
		if err != nil {
			results[i].err = err
			continue
		}
		groups[sh] = append(groups[sh], i)
	}
	if len(groups) == 1 { // one server, or one master: no goroutine needed
		for sh, idx := range groups {
			r.publishShard(ctx, sh, out, idx, results, epoch, cmd)
		}
		return results
	}
	var wg sync.WaitGroup
	for sh, idx := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.publishShard(ctx, sh, out, idx, results, epoch, cmd)
		}()
	}
	wg.Wait()
	return results
}

// publishShard publishes the messages out[idx] on one master and records
// their results.
func (r *Router) publishShard(ctx context.Context, sh *shard.Shard, out []*outgoing, idx []int, results []published, epoch, cmd string) {
	fail := func(err error) {
		for _, i := range idx {
			results[i].err = err
		}
	}
	replid, replicas, err := sh.Info(ctx)
	if err != nil {
		fail(err)
		return
	}
	calls := publishCalls(out, idx, r.cluster)
	split := r.runCalls(ctx, sh, out, calls, results, epoch, cmd, replid, replicas)
	if len(split) > 0 {
		// A call of several channels failed with an error that will not
		// pass (a key of one channel has the wrong type): run each of its
		// channels alone, so the error lands on the channel that has it and
		// not on the others that shared the call. Those were published, or
		// are now; the script is idempotent per event id.
		var alone []publishCall
		for _, call := range split {
			for _, channel := range call.channels {
				alone = append(alone, publishCall{channels: [][]int{channel}, messages: len(channel)})
			}
		}
		r.runCalls(ctx, sh, out, alone, results, epoch, cmd, replid, replicas)
	}
}

// runCalls runs publish script calls on one master in one pipeline (ending
// with WAIT 1 when it has replicas) and records their results. It returns
// the calls of more than one channel that failed with an error that will
// not pass.
func (r *Router) runCalls(ctx context.Context, sh *shard.Shard, out []*outgoing, calls []publishCall, results []published, epoch, cmd, replid string, replicas int64) (split []publishCall) {
	var wait *redis.IntCmd
	cmds, err := runScripts(ctx, sh.C, func(pipe redis.Pipeliner) []*redis.Cmd {
		all := make([]*redis.Cmd, len(calls))
		for j, call := range calls {
			all[j] = publishCmd(ctx, pipe, out, call, epoch, cmd, replid)
		}
		wait = nil
		if replicas > 0 {
			wait = shard.WaitCmd(ctx, 1, r.opt.ReplicaTimeout)
			_ = pipe.Process(ctx, wait)
		}
		return all
	})
	if err != nil && !permanent(err) {
		sh.Forget() // a failover, a moved slot: look again next time
		r.shards.Moved(ctx)
	}
	var waitErr error
	if wait != nil {
		if n, err := wait.Result(); err != nil || n < 1 {
			waitErr = fmt.Errorf("not acknowledged by a replica of %s within %v (WAIT: %d, %v)", sh.C.Options().Addr, r.opt.ReplicaTimeout, n, err)
			sh.Forget() // the replica may be gone: look again
		}
	}
	for j, call := range calls {
		res, err := cmds[j].Int64Slice()
		if err == nil && len(res) != 2*call.messages {
			err = fmt.Errorf("publish script: %d results for %d messages", len(res), call.messages)
		}
		if permanent(err) && len(call.channels) > 1 {
			split = append(split, call)
		}
		if err == nil {
			err = waitErr
		}
		k := 0
		for _, channel := range call.channels {
			for _, i := range channel {
				if err != nil {
					results[i].err = err
				} else {
					results[i] = published{version: res[k], duplicate: res[k+1] == 1}
				}
				k += 2
			}
		}
	}
	return split
}

// publishCall is one publish script call: indexes of out, by channel.
type publishCall struct {
	channels [][]int
	messages int
}

// publishCalls splits one master's messages into script calls of bounded
// size. A channel's messages keep their order (across calls too: a pipeline
// runs in order). On a cluster a call holds one channel, whose keys share a
// slot; on one server it holds as many channels as fit.
func publishCalls(out []*outgoing, idx []int, cluster bool) []publishCall {
	// Group by channel, in the order channels first appear.
	order := map[string]int{}
	var byChannel [][]int
	for _, i := range idx {
		ch := out[i].route.Channel
		j, ok := order[ch]
		if !ok {
			j = len(byChannel)
			order[ch] = j
			byChannel = append(byChannel, nil)
		}
		byChannel[j] = append(byChannel[j], i)
	}
	var calls []publishCall
	var cur publishCall
	args := 0
	flush := func() {
		if cur.messages > 0 {
			calls = append(calls, cur)
		}
		cur, args = publishCall{}, 0
	}
	for _, msgs := range byChannel {
		if cluster {
			flush()
		}
		open := false // msgs has a group in cur
		for _, i := range msgs {
			cost := 2 + len(out[i].ids)
			if cur.messages > 0 && (cur.messages >= maxCallMessages || args+cost+3 > maxCallArgs) {
				flush()
				open = false
			}
			if !open {
				cur.channels = append(cur.channels, nil)
				args += 3
				open = true
			}
			last := len(cur.channels) - 1
			cur.channels[last] = append(cur.channels[last], i)
			cur.messages++
			args += cost
		}
	}
	flush()
	return calls
}

// publishCmd queues one publish script call.
func publishCmd(ctx context.Context, pipe redis.Pipeliner, out []*outgoing, call publishCall, epoch, cmd, replid string) *redis.Cmd {
	keys := make([]string, 0, 3*len(call.channels))
	args := make([]any, 0, 3+3*len(call.channels)+3*call.messages)
	args = append(args, cmd, replid, epoch)
	for _, channel := range call.channels {
		rt := out[channel[0]].route
		keys = append(keys, names.MetaKey(rt.Channel), names.HistoryKey(rt.Channel), names.EventsKey(rt.Channel))
		args = append(args, rt.Channel, rt.Limits.History, len(channel))
		for _, i := range channel {
			o := out[i]
			args = append(args, len(o.ids))
			for _, id := range o.ids {
				args = append(args, id)
			}
			args = append(args, wire.MessageBody(&o.msg))
		}
	}
	return lua.Publish.EvalSha(ctx, pipe, keys, args...)
}

// routerScripts are the scripts the router runs on the bus.
var routerScripts = []*redis.Script{lua.Publish, lua.SourceVersion}

func loadScripts(ctx context.Context, c redis.Scripter) error {
	return lua.Load(ctx, c, routerScripts...)
}

// noopSpan stands in for a span when tracing is off.
var noopSpan = trace.SpanFromContext(context.Background())

// entryCopy is the JSON of a refused entry's fields as its dead letter keeps
// it: whole up to limit bytes; beyond, its first limit bytes and a note, so a
// huge entry cannot make the dead-letter stream huge.
func entryCopy(values map[string]any, limit int) string {
	s := entryJSON(values)
	if len(s) <= limit {
		return s
	}
	return s[:limit] + fmt.Sprintf("… [truncated: the entry is %d bytes, the first %d are kept]", len(s), limit)
}
