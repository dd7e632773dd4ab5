package router

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
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
	stream string
	id     string // stream entry id
	raw    map[string]any
	// events are the entry's events: one for an entry with the field event,
	// several for one with events (a packed entry).
	events []event
	one    [1]event
	// reason and detail are set when the entry itself goes to the dead
	// letters (no event, a packed array that is no array of events).
	reason, detail string
	// remaining counts the entry's parts (an event's share of a channel
	// message) not yet published, directly or as part of a merged message,
	// and one more while the dead letters of its refused events are not
	// written; whoever brings it to zero settles the entry: acknowledges
	// it, or queues it for another try when something failed.
	remaining atomic.Int32
	// alone is set when the entry was routed in a batch of one, so a
	// failure that will not pass is its own and counts towards the dead letters.
	// (The two flags sit beside remaining: an entry is 16 bytes smaller.)
	alone bool
	// handed is set when the entry was handed over to routers on other
	// matrices (handover.go): they write the dead letters of its events.
	handed bool
	mu     sync.Mutex
	err    error // why the entry failed; nil while it has not
	// from and fromID are the stream and entry id the entry first came on:
	// its own, or for a re-driven entry (redrive.go) the ones it had then,
	// with fromIndex the event's place in that packed entry (-1: none) and
	// handTo the router that re-drove it.
	from, fromID string
	fromIndex    int
	handTo       string
}

// event is one event of an entry.
type event struct {
	ev     *wire.Event
	id     string // the event's id, or the one derived for it
	routes []matrix.Route
	// publisher is the publisher whose own stream the event came on, ""
	// for the shared ingress.
	publisher string
	// index is the event's place in a packed entry's array, -1 for the
	// event field.
	index int
	// reason and detail are set when the event goes to the dead letters;
	// json is then a packed event's own JSON.
	reason, detail string
	json           []byte
	// span is the event's route span (nil when tracing is off), parent of
	// its channel publish spans: it runs from routing the event until the
	// entry's last message is published, coalescing delay included.
	span trace.Span
}

// routed reports whether the event is valid and goes somewhere.
func (v *event) routed() bool { return v.reason == "" && len(v.routes) > 0 }

// refusedEvents reports whether some events of the entry (not the entry
// itself) go to the dead letters.
func (e *entry) refusedEvents() bool {
	for i := range e.events {
		if e.events[i].reason != "" {
			return true
		}
	}
	return false
}

// finish records one of the entry's parts as published (err nil) or
// failed, and reports whether it was the entry's last. The last one ends
// the route spans.
func (e *entry) finish(err error) bool {
	if err != nil {
		e.fail(err)
	}
	last := e.remaining.Add(-1) == 0
	if last {
		e.endSpans()
	}
	return last
}

// endSpans ends the route spans, marked failed when a message was not published.
func (e *entry) endSpans() {
	for i := range e.events {
		span := e.events[i].span
		if span == nil {
			continue
		}
		if e.failure() != nil {
			span.SetStatus(codes.Error, "a channel message was not published; the entry is tried again")
		}
		span.End()
	}
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

// process routes one batch of entries from stream and acknowledges those
// whose messages were all published (or that were dead-lettered). Entries
// that failed stay pending and go to the stream's retry queue; the error
// returned says how many and why.
//
// The events of the batch that go to the same channel make one message
// (see outgoing): one version, one history entry and one PUBLISH for them.
//
// It runs the three stages of a batch one after the other; a stream's
// routing loop (routeStages) runs them side by side for consecutive batches.
func (r *Router) process(parent context.Context, stream string, msgs []redis.XMessage) error {
	b := r.prepare(parent, stream, msgs)
	if b == nil {
		return nil
	}
	r.publishBatch(b)
	return r.settleBatch(b)
}

// batch is one read's entries on their way through the stages of routing:
// prepare (parse, route, merge per channel), publishBatch (admit, publish,
// dead letters) and settleBatch (acknowledge, or queue for another try).
type batch struct {
	ctx    context.Context // bounds the batch's calls, even during shutdown
	cancel context.CancelFunc
	start  time.Time
	stream string
	// entries of the batch; done, those complete (nothing left to
	// publish); failed, set when the batch failed as a whole.
	entries []*entry
	done    []*entry
	failed  error
	// channels in the order they first appear, and their merged messages.
	channels []string
	open     map[string]*channelWork
	// published are closed once the batch is published: its read loop
	// waits for them after a short read (routeStages).
	published []chan struct{}
	// hand are the tokens of its reads in Router.hand, dropped once it is
	// settled.
	hand []uint64
}

// channelWork is a batch's messages on one channel, in order, and how many
// of the batch's parts are left to place on it: a new message is made to
// hold them (outgoing.reserve), not grown part by part.
type channelWork struct {
	msgs []*outgoing
	left int
}

// prepare parses and routes a batch and merges its events into messages
// per channel. It publishes nothing, so it may run while the stream's
// batch before is being published. It returns nil when there is nothing
// to do.
func (r *Router) prepare(parent context.Context, stream string, msgs []redis.XMessage) *batch {
	if len(msgs) == 0 {
		return nil
	}
	// A batch that has started is finished even during shutdown, so its
	// entries are acknowledged rather than left for a claim.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), r.opt.ShutdownTimeout)
	b := &batch{ctx: ctx, cancel: cancel, start: time.Now(), stream: stream}
	r.m.read.Add(float64(len(msgs)))

	entries := r.parseAll(stream, msgs)
	if stream == r.redrive {
		if entries = r.handOver(ctx, entries); len(entries) == 0 {
			cancel()
			return nil
		}
	}
	b.entries = entries
	if err := r.suppressOlder(ctx, entries); err != nil {
		b.failed = err
		return b
	}
	if err := r.registerTenants(ctx, entries); err != nil {
		b.failed = err
		return b
	}
	if err := r.handOverToOthers(ctx, entries); err != nil {
		b.failed = err
		return b
	}
	b.open = map[string]*channelWork{}
	b.add(r, entries)
	return b
}

// parseAll parses the entries of a read (parse).
func (r *Router) parseAll(stream string, msgs []redis.XMessage) []*entry {
	mtx := r.matrix.Load()
	entries := make([]*entry, len(msgs))
	all := make([]entry, len(msgs)) // one allocation for the batch
	ids := new(idBlocks)
	for i, msg := range msgs {
		entries[i] = &all[i]
		r.parse(entries[i], mtx, stream, msg, ids)
		entries[i].alone = len(msgs) == 1
	}
	return entries
}

// add merges the events of entries, which follow the batch's in the
// stream, into its messages per channel (place: a new one past max_keys
// keys, or after maxMergedIDs events, so that every id is recorded), in the
// order the channels first appear.
func (b *batch) add(r *Router, entries []*entry) {
	// Each channel is looked up once per event: first its parts are
	// counted, in the order of the placing below.
	var work []*channelWork
	for _, e := range entries {
		if e.reason != "" {
			continue
		}
		for i := range e.events {
			v := &e.events[i]
			if !v.routed() {
				continue
			}
			for _, rt := range v.routes {
				w := b.open[rt.Channel]
				if w == nil {
					w = &channelWork{}
					b.open[rt.Channel] = w
					b.channels = append(b.channels, rt.Channel)
				}
				w.left += sharesOf(v, rt)
				work = append(work, w)
			}
		}
	}
	for _, e := range entries {
		if e.reason != "" {
			continue
		}
		n := 0
		for i := range e.events {
			for _, rt := range e.events[i].routes {
				n += sharesOf(&e.events[i], rt)
			}
		}
		if e.refusedEvents() {
			n++ // settled once the dead letters are written
		}
		e.remaining.Store(int32(n))
		if n == 0 {
			b.done = append(b.done, e) // nothing to publish: suppressed, or no service serves the tenant
			continue
		}
		for i := range e.events {
			v := &e.events[i]
			if !v.routed() {
				continue
			}
			if r.tracing {
				_, v.span = r.tracer.Start(telemetry.Extract(b.ctx, v.ev.Traceparent), "route",
					trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
						attribute.String("routerd.tenant", v.ev.Tenant), attribute.String("routerd.domain", v.ev.Domain),
						attribute.String("routerd.event", v.id), attribute.Int("routerd.channels", len(v.routes))))
			}
			for _, rt := range v.routes {
				w := work[0]
				work = work[1:]
				for s := range sharesOf(v, rt) {
					w.place(rt, keyShare(e, v, rt, s))
				}
			}
		}
	}
}

// place places p on the channel (place) and makes a new message large
// enough for the channel's parts left, up to maxMergedIDs and max_keys (a
// part names a key or more: more parts are rare, and grow the message).
func (w *channelWork) place(rt matrix.Route, p part) {
	w.msgs = place(w.msgs, rt, p, maxMergedIDs)
	w.left--
	n := min(w.left+1, maxMergedIDs)
	if rt.Limits.MaxKeys > 0 {
		n = min(n, rt.Limits.MaxKeys)
	}
	w.msgs[len(w.msgs)-1].reserve(n)
}

// join merges next, the batch read after b on the same stream, into b
// while b waits for the batch before it to be published: under load a
// stream's batches grow, and its channels get fewer, larger messages
// (fewer publish calls on the bus per event), without waiting for it. It
// reports false, and merges nothing, when next failed as a whole.
func (b *batch) join(next *batch) bool {
	if next.failed != nil {
		return false
	}
	for _, e := range b.entries {
		e.alone = false
	}
	for _, e := range next.entries {
		e.alone = false
	}
	b.entries = append(b.entries, next.entries...)
	b.done = append(b.done, next.done...)
	b.published = append(b.published, next.published...)
	b.hand = append(b.hand, next.hand...)
	for _, ch := range next.channels {
		nw := next.open[ch]
		w := b.open[ch]
		if w == nil {
			// Placed again in an empty channel, its parts would make
			// the same messages.
			b.open[ch] = nw
			b.channels = append(b.channels, ch)
			continue
		}
		for _, o := range nw.msgs {
			nw.left += len(o.parts)
		}
		w.left += nw.left
		for _, o := range nw.msgs {
			for _, p := range o.parts {
				w.place(o.route, p)
			}
		}
	}
	next.cancel()
	return true
}

// publishBatch publishes a prepared batch's messages and writes its dead
// letters. A stream's batches are published one after the other, in the
// order they were read, so a channel's messages keep the stream's order.
func (r *Router) publishBatch(b *batch) {
	if b.failed != nil {
		return
	}
	ctx := b.ctx
	// Each message goes out now if its channel holds nothing back and the
	// buckets allow (send asks them), else it merges into its channel's
	// pending work and is finished by the coalescer.
	var direct []*outgoing
	for _, ch := range b.channels {
		for _, o := range b.open[ch].msgs {
			o.seal()
			if r.co.admit(o) {
				direct = append(direct, o)
			}
		}
	}
	b.done = append(b.done, r.send(ctx, direct, false)...)
	deadErr := r.deadLetter(ctx, b.stream, b.entries)
	for _, e := range b.entries {
		switch {
		case e.reason != "":
			if deadErr != nil {
				e.fail(deadErr)
			}
			b.done = append(b.done, e)
		case e.refusedEvents():
			if e.finish(deadErr) {
				b.done = append(b.done, e)
			}
		}
	}
}

// settleBatch acknowledges the batch's complete entries and queues the
// failed ones for another try (settle). It may run while the stream's next
// batch is being published: an entry is acknowledged only once its
// messages were published.
func (r *Router) settleBatch(b *batch) error {
	defer b.cancel()
	defer r.hand.drop(b.stream, b.hand...)
	defer func() { r.m.batchSeconds.Observe(time.Since(b.start).Seconds()) }()
	if b.failed != nil {
		return r.failBatch(b.entries, b.failed)
	}
	return r.settle(b.ctx, b.done)
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
	var busErr error // the first failure that is not the entry's own
	for _, e := range failed {
		if err := e.failure(); busErr == nil && !permanent(err) && !errors.Is(err, context.Canceled) {
			busErr = err
		}
	}
	if len(ok) > 0 || len(failed) > 0 {
		r.settled(busErr)
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

// ack acknowledges complete entries, grouped by stream, and counts their events.
func (r *Router) ack(ctx context.Context, entries []*entry) error {
	if len(entries) == 0 {
		return nil
	}
	// Entries come in runs of one stream (a batch is one stream's): the
	// map is looked up once a run, not once an entry.
	byStream := map[string][]string{}
	for run := entries; len(run) > 0; {
		stream, n := run[0].stream, 1
		for n < len(run) && run[n].stream == stream {
			n++
		}
		ids := slices.Grow(byStream[stream], n)
		for _, e := range run[:n] {
			ids = append(ids, e.id)
		}
		byStream[stream] = ids
		run = run[n:]
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
	// Counted per domain, then added: a label lookup per event is not free;
	// nor is a map's, so a run of one domain is counted before it is added.
	routed := map[string]int{}
	domain, run := "", 0
	for _, e := range entries {
		for i := range e.events {
			if v := &e.events[i]; v.ev != nil && v.reason == "" {
				if v.ev.Domain != domain {
					if run > 0 {
						routed[domain] += run
					}
					domain, run = v.ev.Domain, 0
				}
				run++
			}
		}
	}
	if run > 0 {
		routed[domain] += run
	}
	for domain, n := range routed {
		r.m.routed.WithLabelValues(domain).Add(float64(n))
	}
	return nil
}

// parse fills e from an ingress entry: its events and their routes, or the
// reason it, or one of its events, goes to the dead letters. The ids of raw
// events are made in ids (nil: a string each).
func (r *Router) parse(e *entry, mtx *matrix.Matrix, stream string, msg redis.XMessage, ids *idBlocks) {
	e.stream, e.id, e.raw = stream, msg.ID, msg.Values
	e.from, e.fromID, e.fromIndex = stream, msg.ID, -1
	if stream == r.redrive && !r.redriven(e, msg.Values) {
		return
	}
	event, events := msg.Values[wire.EventField], msg.Values[wire.EventsField]
	if why := r.cutEvent(msg.Values, event, events); why != "" {
		e.reason, e.detail = ReasonTooLarge, why // cut when read: never held whole (read.go)
		return
	}
	raw, single := event.(string)
	packed, many := events.(string)
	switch {
	case single && many:
		e.reason, e.detail = ReasonMalformed, `the entry has both an "event" and an "events" field; it carries one or the other`
		return
	case many:
		r.parsePacked(e, mtx, e.from, e.fromID, packed)
		return
	case !single:
		e.reason, e.detail = ReasonMalformed, `the entry has no "event" field (nor "events")`
		return
	}
	e.events = e.one[:]
	v := &e.events[0]
	v.index = -1
	if len(raw) > r.opt.MaxEventBytes {
		v.reason = ReasonTooLarge
		v.detail = fmt.Sprintf("event of %d bytes is above the limit of %d bytes (max event bytes)", len(raw), r.opt.MaxEventBytes)
		return
	}
	ev, err := wire.ParseEventString(raw)
	if err != nil {
		v.reason, v.detail = ReasonMalformed, err.Error()
		return
	}
	if r.route(v, mtx, ev, names.StreamPublisher(r.prefix, e.from)) && v.id == "" {
		v.id = ids.raw(e.from, e.fromID)
		if e.fromIndex >= 0 {
			v.id = PackedEventID(e.from, e.fromID, e.fromIndex) // one event of a packed entry, re-driven alone
		}
	}
}

// parsePacked fills e from the JSON array of a packed entry: each event is
// decoded, validated and routed on its own.
func (r *Router) parsePacked(e *entry, mtx *matrix.Matrix, stream, entryID, packed string) {
	if len(packed) > r.opt.MaxEventBytes {
		e.reason = ReasonTooLarge
		e.detail = fmt.Sprintf("events of %d bytes are above the limit of %d bytes (max event bytes)", len(packed), r.opt.MaxEventBytes)
		return
	}
	list, err := wire.ParseEventsString(packed)
	if err != nil {
		e.reason, e.detail = ReasonMalformed, err.Error()
		return
	}
	e.events = make([]event, len(list))
	pub := names.StreamPublisher(r.prefix, stream)
	for i, p := range list {
		v := &e.events[i]
		v.index = i
		if p.Err != nil {
			v.reason, v.detail, v.json = ReasonMalformed, fmt.Sprintf("events[%d]: %v", i, p.Err), p.JSON
			continue
		}
		if r.route(v, mtx, p.Event, pub) && v.id == "" {
			v.id = PackedEventID(stream, entryID, i)
		}
	}
}

// route fills v with a valid event, its id and its routes, and reports
// whether it is routed: the matrix knows its domain, and an event from a
// publisher's own stream (pub, which a Redis ACL binds to that publisher)
// is within the publisher's grant.
func (r *Router) route(v *event, mtx *matrix.Matrix, ev *wire.Event, pub string) bool {
	v.ev = ev
	routes, known := mtx.Routes(ev.Tenant, ev.Domain)
	switch {
	case !known:
		v.reason, v.detail = ReasonUnknownDomain, fmt.Sprintf("domain %q is not in the matrix", ev.Domain)
	case pub != "" && !mtx.Granted(pub, ev.Domain, ev.Tenant):
		v.reason = ReasonNotGranted
		v.detail = fmt.Sprintf("publisher %q is not granted domain %q for tenant %q", pub, ev.Domain, ev.Tenant)
	case ev.ID != "":
		// A publisher's own ids are its own, but not those of the forms
		// the router makes itself (wire.ReservedID).
		if why := wire.ReservedID(r.prefix, ev.ID, pub != ""); why != "" {
			v.reason, v.detail = ReasonMalformed, "id: "+why
		}
	}
	if v.reason != "" {
		if v.index >= 0 {
			v.detail = fmt.Sprintf("events[%d]: %s", v.index, v.detail)
			v.json, _ = ev.Marshal() // valid: it encodes
		}
		return false
	}
	v.routes, v.id, v.publisher = routes, ev.ID, pub
	if pub != "" && v.id != "" {
		// A publisher's ids are its own: another publisher granted the
		// same channel cannot make this event a duplicate by taking its id
		// first.
		v.id = boundedID(pub + "/" + v.id)
	}
	return true
}

// PackedEventID is the id of the event at index i of a packed entry
// published without one: unique per stream, entry and place.
func PackedEventID(stream, entryID string, i int) string {
	return RawEventID(stream, entryID+":"+strconv.Itoa(i))
}

// RawEventID is the id of an event published without one: its stream name and
// entry id. An entry id alone is unique only within its stream (two XADDs at
// the same millisecond on two partitions get the same one), and the publish
// script drops a message whose event id it has seen on the channel. An id
// that would be longer than an event id may be is replaced by its SHA-256.
func RawEventID(stream, entryID string) string {
	return boundedID(stream + ":" + entryID)
}

// idBlocks makes the ids of a read's raw events (RawEventID) in blocks of
// idBlock bytes, each id a string sliced from its block, rather than a
// string each: a strings.Builder never changes what it has written, so each
// id stays as it was made. An id kept (a held message, an entry to retry)
// keeps its block.
type idBlocks struct{ b strings.Builder }

const idBlock = 16 << 10

// raw is RawEventID(stream, entryID).
func (a *idBlocks) raw(stream, entryID string) string {
	n := len(stream) + 1 + len(entryID)
	if a == nil || n > wire.MaxIDLen {
		return RawEventID(stream, entryID)
	}
	if a.b.Cap()-a.b.Len() < n {
		a.b = strings.Builder{}
		a.b.Grow(idBlock)
	}
	from := a.b.Len()
	a.b.WriteString(stream)
	a.b.WriteByte(':')
	a.b.WriteString(entryID)
	return a.b.String()[from:]
}

// reservedID says why an id supplied on the shared ingress is refused
// (wire.ReservedID), "" for any other id.
func reservedID(prefix string, id string) string { return wire.ReservedID(prefix, id, false) }

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
	var check []*event
	for _, e := range entries {
		for i := range e.events {
			v := &e.events[i]
			// An entity-level event of a domain with entity_refs is not
			// checked: recorded as whole-tag it would suppress an older
			// whole-tag event it does not cover.
			refs := v.ev != nil && v.ev.EntityLevel() && len(v.routes) > 0 && v.routes[0].EntityRefs
			if v.routed() && v.ev.SourceVersion > 0 && v.ev.Entity != "" && len(v.ev.Keys) <= srcverEventKeys && !refs {
				check = append(check, v)
			}
		}
	}
	if len(check) == 0 {
		return nil
	}
	reqs := make([]lua.SourceVersionRequest, len(check))
	for i, v := range check {
		// Each publisher orders its own changes, apart from the shared
		// ingress's: neither another publisher granted the domain nor an
		// event on the shared ingress can claim a version far ahead and
		// suppress this one's events.
		reqs[i] = lua.SourceVersionRequest{
			Key:     names.SourceVersionKey(r.prefix, v.ev.Tenant, v.ev.Domain, v.publisher, v.ev.Entity),
			Version: v.ev.SourceVersion, TTL: r.opt.SourceVersionTTL, MaxKeys: srcverEntityKeys, Keys: v.ev.Keys,
		}
	}
	cmds, err := runScripts(ctx, r.c, func(pipe redis.Pipeliner) []*redis.Cmd {
		out := make([]*redis.Cmd, len(reqs))
		for i := range reqs {
			out[i] = lua.Queue(ctx, pipe, &reqs[i])
		}
		return out
	})
	if err != nil {
		return fmt.Errorf("source_version check: %w", err)
	}
	for i, v := range check {
		if st, err := reqs[i].Reply(cmds[i]); err == nil && st == lua.Suppressed {
			v.routes = nil
			r.m.suppressed.Inc()
		}
	}
	return nil
}

// registerTenants adds the tenants of a batch to the registry set, before
// any of their messages is published, so a subscriber for every tenant that
// checks positions finds them. Every batch registers its tenants again (one
// SADD each, in one script call): a registry emptied on the bus (an
// operator's DEL, FLUSHALL) is filled again by the next event of each
// tenant, and the tenant announced again, where a router that remembered
// what it had registered left a service of every tenant that started
// meanwhile without the tenant's channels.
func (r *Router) registerTenants(ctx context.Context, entries []*entry) error {
	var tenants []string
	seen := map[string]bool{}
	for _, e := range entries {
		for i := range e.events {
			v := &e.events[i]
			if v.routed() && !seen[v.ev.Tenant] {
				seen[v.ev.Tenant] = true
				tenants = append(tenants, v.ev.Tenant)
			}
		}
	}
	if len(tenants) == 0 {
		return nil
	}
	// Subscribers of every tenant subscribe to exact channels, never to
	// patterns (a pattern taxes every PUBLISH on the bus): they learn of a
	// new tenant from this announcement (and from the registry at every
	// position check), before its first message is published. The script
	// registers and announces in one step, so an entry never lacks its
	// announcement.
	cmd := "PUBLISH"
	if r.cluster {
		cmd = "SPUBLISH"
	}
	req := lua.TenantsRequest{Key: names.TenantsKey(r.prefix), Command: cmd, Tenants: tenants}
	register := func() error {
		_, err := runScripts(ctx, r.c, func(pipe redis.Pipeliner) []*redis.Cmd {
			return []*redis.Cmd{lua.Queue(ctx, pipe, &req)}
		})
		return err
	}
	err := register()
	if redis.HasErrorPrefix(err, "WRONGTYPE") {
		// The registry is the router's own (names reserves it): a key of
		// another type there is an operator's mistake or a client's
		// attack, not the events' fault. Replace it rather than refuse
		// every new tenant's events; subscribers fill their view of it
		// again from the announcements and the router's registrations.
		r.log.Warn("the tenant registry is of another type: replacing it", "key", req.Key, "err", err)
		if err := r.c.Del(ctx, req.Key).Err(); err != nil {
			return fmt.Errorf("tenant registry: replacing %s: %w", req.Key, err)
		}
		r.m.replaced.WithLabelValues(KeyTenantRegistry).Inc()
		err = register()
	}
	if err != nil {
		return fmt.Errorf("tenant registry: %w", err)
	}
	return nil
}

// send publishes channel messages in one pipeline and returns the entries it
// completed. A message that fails marks its entries failed: settle will not
// acknowledge them but queue them for another try. A message some of whose
// events were published before (a redelivery that grouped events otherwise)
// is not sent: it goes again without them and their keys. A message a
// bucket refuses (its tenant's, the global one, its channel's) goes to the
// coalescer, which sends it again when the bucket will have a token. With
// force, every bucket gives its tokens on credit: a stopping router leaves
// nothing merged behind.
func (r *Router) send(ctx context.Context, out []*outgoing, force bool) []*entry {
	cmd := "PUBLISH"
	if r.cluster {
		cmd = "SPUBLISH"
	}
	for _, o := range out {
		o.force = force
	}
	publishing := r.health.begin(&call{reason: ReasonPublishingFailing, n: len(out)}, 0)
	defer r.health.done(publishing)
	b := r.newBudgets()
	out, done := r.takeBudgets(ctx, b, out)
	for len(out) > 0 {
		var again []*outgoing
		done, again = r.sendOnce(ctx, b, out, cmd, done)
		out = again
	}
	r.giveBack(ctx, b)
	return done
}

// sendOnce publishes out once; it appends the entries it completed to done
// and returns the messages to send again without their recorded events.
func (r *Router) sendOnce(ctx context.Context, b *budgets, out []*outgoing, cmd string, done []*entry) ([]*entry, []*outgoing) {
	epoch := newEpoch()
	// With tracing on, each message gets a "channel publish" span, whose
	// context the message carries; off, the event's traceparent passes on.
	spans := make([]trace.Span, len(out))
	for i, o := range out {
		if !r.tracing {
			spans[i] = noopSpan
			continue
		}
		pctx := trace.ContextWithSpan(ctx, o.parts[0].v.span)
		var span trace.Span
		pctx, span = r.tracer.Start(pctx, "channel publish", trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(attribute.String("cache.tag", o.route.Tag), attribute.String("messaging.destination.name", o.route.Channel),
				attribute.Int("routerd.events", len(o.parts)), attribute.Int("cache.keys", len(o.msg.Keys))))
		spans[i] = span
		if tp := telemetry.Inject(pctx); tp != "" {
			o.msg.Traceparent = tp
		}
	}
	results := r.publishDurably(ctx, out, epoch, cmd)
	var again []*outgoing
	held := map[string]time.Duration{} // channels a bucket refused a message of, and the wait
	for i, o := range out {
		res := results[i]
		switch {
		case res.err != nil:
			r.log.Warn("channel publish failed", "tag", o.route.Tag, "event", o.ids[0], "err", res.err)
			spans[i].SetStatus(codes.Error, res.err.Error())
		case res.recorded != nil && !slices.Contains(res.recorded, true):
			res.err = errors.New("publish script: a message answered as partly recorded names no recorded event")
			r.log.Error("channel publish failed", "tag", o.route.Tag, "event", o.ids[0], "err", res.err)
			spans[i].SetStatus(codes.Error, res.err.Error())
		case res.wait > 0:
			// The channel's bucket has no token: nothing was sent. The
			// tokens taken for it from the shared budgets go back.
			spans[i].SetAttributes(attribute.Int64("routerd.held_ms", res.wait.Milliseconds()))
			spans[i].End()
			b.unused(o)
			r.co.hold(time.Now(), o, res.wait)
			held[o.route.Channel] = res.wait
			continue
		case res.behind:
			// Nothing was sent: it goes again after the rest of the
			// channel's message before it, with the shared tokens it took.
			spans[i].End()
			again = append(again, o)
			continue
		case res.recorded != nil:
			// Nothing was sent: the events recorded before are done, the
			// others go again in a message of their own.
			rest, old := o.without(res.recorded)
			r.m.duplicates.Add(float64(len(old)))
			spans[i].SetAttributes(attribute.Int("routerd.recorded_before", len(old)))
			spans[i].End()
			for _, p := range old {
				if p.e.finish(nil) {
					done = append(done, p.e)
				}
			}
			if rest != nil {
				rest.force = o.force // and the shared tokens o took
				again = append(again, rest)
			} else {
				b.unused(o)
			}
			continue
		case res.duplicate:
			r.m.duplicates.Inc()
			b.unused(o) // nothing sent: the shared tokens go back
			spans[i].SetAttributes(attribute.Bool("routerd.duplicate", true))
		default:
			r.m.published.WithLabelValues(o.route.Tag).Inc()
			if o.whole != "" {
				r.m.wholeTag.WithLabelValues(o.route.Tag, o.whole).Inc()
			}
			if o.msg.TS > 0 {
				r.m.publishLag.Observe(time.Since(time.UnixMilli(o.msg.TS)).Seconds())
			}
			spans[i].SetAttributes(attribute.Int64("routerd.version", res.version))
		}
		spans[i].End()
		for _, p := range o.parts {
			if p.e.finish(res.err) {
				done = append(done, p.e)
			}
		}
	}
	// What goes again of a channel a bucket refused must not overtake
	// what was refused: it is held too.
	if len(held) > 0 {
		kept := again[:0]
		for _, o := range again {
			if wait, ok := held[o.route.Channel]; ok {
				b.unused(o)
				r.co.hold(time.Now(), o, wait)
				continue
			}
			kept = append(kept, o)
		}
		again = kept
	}
	return done, again
}

// deadLetter records the refused entries and events of the batch with
// their reason, each in the dead-letter stream of its reason
// (deadLetterStream), once: lua/deadletter.lua writes none for an entry,
// or an event of a packed entry (by stream, entry id and index), that has
// one already — the batch routed again after its router was killed before
// it acknowledged it, or a reply lost. An error means none was recorded;
// they stay pending.
//
// A refused packed event's dead letter names its index and keeps, as
// entry, the fields of an entry that would carry it alone.
func (r *Router) deadLetter(ctx context.Context, stream string, entries []*entry) error {
	type dead struct {
		e *entry
		v *event // nil: the entry itself
	}
	var list []dead
	for _, e := range entries {
		if e.reason != "" {
			list = append(list, dead{e: e})
			continue
		}
		for i := range e.events {
			if e.events[i].reason != "" && !e.handed {
				list = append(list, dead{e, &e.events[i]})
			}
		}
	}
	if len(list) == 0 {
		return nil
	}
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	reqs := make([]lua.DeadLetterRequest, len(list))
	for i, d := range list {
		reason, detail, fields := d.e.reason, d.e.detail, d.e.raw
		var index []any
		at := -1
		if d.v != nil {
			reason, detail = d.v.reason, d.v.detail
			at = d.v.index
			if d.v.index >= 0 {
				fields = map[string]any{wire.EventField: string(d.v.json)}
				index = []any{"index", strconv.Itoa(d.v.index)}
			}
		}
		if index == nil && d.e.fromIndex >= 0 {
			index = []any{"index", strconv.Itoa(d.e.fromIndex)}
		}
		// A re-driven entry's dead letter names where it first came
		// from, so re-driving it again derives the same event ids.
		values := []any{"reason", reason, "error", detail, "stream", d.e.from, "entry_id", d.e.fromID}
		values = append(values, index...)
		values = append(values, "entry", entryCopy(fields, r.deadLetterCopyBytes(reason, fields)), "ts", ts)
		dl := deadLetterStream(r.prefix, reason)
		// Its origin is where this router read it: a re-driven entry
		// dead-lettered again is another entry of the re-drive stream.
		reqs[i] = lua.DeadLetterRequest{Stream: dl, Written: names.DeadLetterWrittenKey(dl),
			Origin: stream + " " + d.e.id + " " + strconv.Itoa(at), MaxLen: r.opt.DeadLetterMaxLen, Values: values}
	}
	cmds, err := runScripts(ctx, r.c, func(pipe redis.Pipeliner) []*redis.Cmd {
		cmds := make([]*redis.Cmd, len(reqs))
		for i := range reqs {
			cmds[i] = lua.Queue(ctx, pipe, &reqs[i])
		}
		return cmds
	})
	written := make([]bool, len(list))
	if len(cmds) == len(reqs) {
		err = nil
		for i, cmd := range cmds {
			got, e := reqs[i].Reply(cmd)
			fresh := got.ID != ""
			// WRONGTYPE: the record, or the stream, is a key of another
			// type (a client wrote it); written without the record, rather
			// than retried for as long as the key stays, which would hold
			// the entry neither routed nor dead-lettered (the XADD fails
			// too when it is the stream).
			if e != nil && (scriptRefused(e) || redis.HasErrorPrefix(e, "WRONGTYPE")) {
				e, fresh = r.deadLetterUnrecorded(ctx, &reqs[i], e), true
			}
			if e != nil && err == nil {
				err = e
			}
			written[i] = e == nil && fresh
		}
	}
	if err != nil {
		r.log.Error("writing dead letters", "err", err)
		return fmt.Errorf("writing dead letters: %w", err)
	}
	for i, d := range list {
		reason, detail := d.e.reason, d.e.detail
		if d.v != nil {
			reason, detail = d.v.reason, d.v.detail
		}
		if !written[i] {
			r.log.Info("the event has its dead letter already (its batch was routed again)", "reason", reason, "stream", stream, "entry", d.e.id)
			continue
		}
		r.m.deadLettered.WithLabelValues(reason).Inc()
		r.log.Warn("dead-lettered an event", "reason", reason, "err", detail, "stream", stream, "entry", d.e.id)
	}
	return nil
}

// scriptRefused reports whether err says the Redis user may not run a
// command or reach a key of a script: a user made by an older routerd acl.
func scriptRefused(err error) bool {
	return redis.HasErrorPrefix(err, "NOPERM") || strings.Contains(err.Error(), "The user executing the script can't")
}

// deadLetterUnrecorded writes the dead letter of req with a plain XADD, as
// routers did before lua/deadletter.lua, for a Redis user that may not run
// the script or reach its record (an older routerd acl: why, in err), or
// whose record is a key of another type: with no record, a batch routed
// again writes its dead letters again. A user
// that may not write names.InvalidDeadLetterStream writes there to
// names.DeadLetterStream. Each is said once.
func (r *Router) deadLetterUnrecorded(ctx context.Context, req *lua.DeadLetterRequest, err error) error {
	if r.deadLetterRecordOnce.CompareAndSwap(false, true) {
		r.log.Warn("the router cannot record the dead letters written ("+req.Written+": its Redis user may not, or the key is of another type): a batch routed again after its router was killed writes them again; apply the line of routerd acl --role router again, or delete the key", "err", err)
	}
	err = r.c.XAdd(ctx, &redis.XAddArgs{Stream: req.Stream, MaxLen: req.MaxLen, Approx: true, Values: req.Values}).Err()
	invalid := names.InvalidDeadLetterStream(r.prefix)
	if redis.HasErrorPrefix(err, "NOPERM") && req.Stream == invalid {
		if r.deadLetterOnce.CompareAndSwap(false, true) {
			r.log.Warn("the router's Redis user may not write "+invalid+": malformed and too_large dead letters go to "+names.DeadLetterStream(r.prefix)+", capped with the others; apply the line of routerd acl --role router again", "err", err)
		}
		err = r.c.XAdd(ctx, &redis.XAddArgs{Stream: names.DeadLetterStream(r.prefix), MaxLen: req.MaxLen, Approx: true, Values: req.Values}).Err()
	}
	return err
}

// runScripts runs a pipeline of EVALSHA calls; when Redis has lost its
// script cache (restart, failover) it loads the scripts and runs the
// pipeline again. The scripts it runs are idempotent, so running twice is safe.
func runScripts(ctx context.Context, c lua.Pipeliner, build func(redis.Pipeliner) []*redis.Cmd) ([]*redis.Cmd, error) {
	return lua.RunPipeline(ctx, c, routerScripts, build)
}

// shardScripts is a shard's master for runScripts: its pipelines through
// the router's client (shard.Shard.Pipelined, whose hooks see them), its
// script loads (after NOSCRIPT) on the master's node client.
type shardScripts struct {
	*redis.Client
	sh *shard.Shard
}

func (s shardScripts) Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error) {
	return s.sh.Pipelined(ctx, fn)
}

// published is the outcome of one channel message's publish.
type published struct {
	version   int64
	duplicate bool // every event id of it was published before; nothing sent
	// recorded is set when some of the message's event ids were published
	// before and others not: nothing was sent, and recorded[i] tells
	// whether ids[i] was.
	recorded []bool
	// wait is set when the channel's bucket had no token: nothing was
	// sent or recorded, and the bucket has one after wait.
	wait time.Duration
	// behind is set when an earlier message of the channel in the call was
	// partly recorded (recorded): nothing was sent or recorded, and the
	// message goes again after that one's rest.
	behind bool
	err    error
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
	replicas, err := sh.Replicas(ctx)
	if err != nil {
		fail(err)
		return
	}
	calls, deferred := publishCalls(out, idx, r.cluster)
	for _, i := range deferred {
		results[i].behind = true
	}
	split := r.runCalls(ctx, sh, out, calls, results, epoch, cmd, replicas)
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
		r.runCalls(ctx, sh, out, alone, results, epoch, cmd, replicas)
	}
}

// runCalls runs publish script calls on one master in one pipeline (ending
// with WAIT 1 when it has replicas) and records their results. It returns
// the calls of more than one channel that failed with an error that will
// not pass.
func (r *Router) runCalls(ctx context.Context, sh *shard.Shard, out []*outgoing, calls []publishCall, results []published, epoch, cmd string, replicas int64) (split []publishCall) {
	reqs := make([]lua.PublishRequest, len(calls))
	for j, call := range calls {
		reqs[j] = publishRequest(out, call, epoch, cmd)
	}
	var wait *redis.IntCmd
	cmds, err := runScripts(ctx, shardScripts{sh.C, sh}, func(pipe redis.Pipeliner) []*redis.Cmd {
		all := make([]*redis.Cmd, len(reqs))
		for j := range reqs {
			all[j] = lua.Queue(ctx, pipe, &reqs[j])
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
		n, err := wait.Result()
		switch {
		case err != nil:
			waitErr = fmt.Errorf("not acknowledged by a replica of %s within %v (WAIT: %d, %v)", sh.C.Options().Addr, r.opt.ReplicaTimeout, n, err)
			sh.Forget() // the replica may be gone: look again
		case n < 1:
			// The count may be the old master's, a failover ago: a master
			// without replica now has nothing to wait for.
			if now, cerr := sh.Recount(ctx); cerr != nil || now > 0 {
				waitErr = fmt.Errorf("not acknowledged by a replica of %s within %v (WAIT: %d)", sh.C.Options().Addr, r.opt.ReplicaTimeout, n)
			}
		}
	}
	for j, call := range calls {
		got, err := reqs[j].Reply(cmds[j])
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
					results[i] = publishedAs(got[k])
				}
				k++
			}
		}
	}
	return split
}

// publishedAs is a message's outcome as the publish script answered it.
func publishedAs(p lua.PublishResult) published {
	return published{
		version:   p.Version,
		duplicate: p.Status == lua.PublishDuplicate,
		recorded:  p.Recorded,
		wait:      p.Wait,
		behind:    p.Status == lua.PublishBehind,
	}
}

// publishCall is one publish script call: indexes of out, by channel.
type publishCall struct {
	channels [][]int
	messages int
}

// publishCalls splits one master's messages into script calls of bounded
// size. A channel's messages keep their order and stay in one call, which
// stops at the first of them it does not send (the publish script's
// statuses 2 to 4): the messages of a channel beyond what one call takes
// are returned as deferred, to go after the others. On a cluster a call
// holds one channel, whose keys share a slot; on one server it holds as
// many channels as fit.
func publishCalls(out []*outgoing, idx []int, cluster bool) (calls []publishCall, deferred []int) {
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
	var cur publishCall
	args := 0
	flush := func() {
		if cur.messages > 0 {
			calls = append(calls, cur)
		}
		cur, args = publishCall{}, 0
	}
	for _, msgs := range byChannel {
		cost := lua.PublishChannelArgs
		for _, i := range msgs {
			cost += lua.MessageArgs(len(out[i].ids))
		}
		if cluster || cur.messages > 0 && (cur.messages+len(msgs) > maxCallMessages || args+cost > maxCallArgs) {
			flush()
		}
		cur.channels = append(cur.channels, nil)
		last := len(cur.channels) - 1
		args += lua.PublishChannelArgs
		for n, i := range msgs {
			c := lua.MessageArgs(len(out[i].ids))
			if n > 0 && (cur.messages >= maxCallMessages || args+c > maxCallArgs) {
				deferred = append(deferred, msgs[n:]...)
				break
			}
			cur.channels[last] = append(cur.channels[last], i)
			cur.messages++
			args += c
		}
	}
	flush()
	return calls, deferred
}

// publishRequest is one publish script call.
func publishRequest(out []*outgoing, call publishCall, epoch, cmd string) lua.PublishRequest {
	req := lua.PublishRequest{Command: cmd, Epoch: epoch, Channels: make([]lua.PublishChannel, len(call.channels))}
	msgs := make([]lua.PublishMessage, 0, call.messages)
	for c, channel := range call.channels {
		rt := out[channel[0]].route
		ch := lua.PublishChannel{Channel: rt.Channel, History: rt.Limits.History, HistoryTTL: rt.Limits.HistoryTTL, Rate: rt.Limits.Rate, Burst: rt.Limits.Burst}
		start := len(msgs)
		for _, i := range channel {
			o := out[i]
			ch.Force = ch.Force || o.force
			msgs = append(msgs, lua.PublishMessage{IDs: o.ids, Body: wire.MessageBody(&o.msg)})
		}
		ch.Messages = msgs[start:len(msgs):len(msgs)]
		req.Channels[c] = ch
	}
	return req
}

// routerScripts are the scripts the router runs on the bus.
var routerScripts = lua.RouterScripts()

func loadScripts(ctx context.Context, c redis.Scripter) error {
	return lua.Load(ctx, c, routerScripts...)
}

// noopSpan stands in for a span when tracing is off.
var noopSpan = trace.SpanFromContext(context.Background())

// deadLetterStream is the dead-letter stream of reason: the entries that can
// never be re-driven (malformed, too_large) have their own, capped apart, so
// a client flooding the shared ingress with junk cannot trim another
// publisher's dead letters, which can be replayed after a fix.
func deadLetterStream(prefix, reason string) string {
	if replayable(reason) {
		return names.DeadLetterStream(prefix)
	}
	return names.InvalidDeadLetterStream(prefix)
}

// replayable reports whether a dead letter of reason can be re-driven after
// a fix (a matrix reload, a bus key repaired).
func replayable(reason string) bool {
	return reason != ReasonMalformed && reason != ReasonTooLarge
}

// deadLetterCopyBytes bounds the copy of an entry kept in its dead letter
// for reason. An entry that can be re-driven after a fix (unknown_domain,
// not_granted, poison) and was read whole is kept whole: its event or
// events are at most MaxEventBytes, and a copy cut anywhere could never be
// replayed. An entry that can never be replayed (malformed, too_large) or
// whose value was cut when read (or that holds more than an event at its
// largest and a few small fields) keeps its first DeadLetterEntryBytes.
func (r *Router) deadLetterCopyBytes(reason string, fields map[string]any) int {
	if !replayable(reason) {
		return r.opt.DeadLetterEntryBytes
	}
	size := 0
	for k, v := range fields {
		s, ok := v.(string)
		if !ok { // a cutValue: cut when read
			return r.opt.DeadLetterEntryBytes
		}
		size += len(k) + len(s)
	}
	if size > r.opt.MaxEventBytes+r.opt.DeadLetterEntryBytes {
		// More than an event at its largest and a few small fields.
		return r.opt.DeadLetterEntryBytes
	}
	return math.MaxInt // whole, however its JSON escapes it
}

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
