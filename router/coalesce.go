package router

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/storm"
	"github.com/routerd/routerd/wire"
)

// maxMergedIDs bounds the event ids a message records for dedupe. A read
// batch starts another message for its channel past it, so each of its
// events is recorded; a coalesced message records the first maxMergedIDs:
// the others are still acknowledged, and a redelivery of one of them only
// sends one more (harmless) invalidation.
const maxMergedIDs = 1000

// part is one event's share of a channel message.
type part struct {
	e    *entry
	v    *event
	keys []string // the event's keys, nil for the whole tag (or above max_keys)
}

// outgoing is one channel message to publish: for one event, or for many
// merged ones — the events of one read batch for the channel, or those the
// storm limits held back. Merging unites the keys (storm.Keys: the whole tag
// above max_keys) and records every event id.
type outgoing struct {
	route matrix.Route
	msg   wire.Message // without epoch and version; fields of the first event, adjusted as events merge
	keys  *storm.Keys  // the union, once a second event merged
	parts []part       // the first one's route span is the parent of the message's span
	ids   []string     // event ids recorded (up to maxMergedIDs); the first is the message's event; set by seal
	// one holds the part and id of a message for one event.
	one   [1]part
	oneID [1]string
}

// newOutgoing starts the message of p on rt.
func newOutgoing(rt matrix.Route, p part) *outgoing {
	ev := p.v.ev
	o := &outgoing{route: rt, msg: wire.Message{Tenant: ev.Tenant, Tag: rt.Tag, Keys: p.keys, Event: p.v.id, Domain: ev.Domain,
		Origin: ev.Origin, TS: ev.TS, Traceparent: ev.Traceparent}}
	if rt.EntityRefs && ev.EntityLevel() {
		o.msg.Refs = []string{names.Ref(ev.Domain, ev.Entity)} // entity-level: not the whole tag
	}
	o.one[0] = p
	o.parts = o.one[:1:1]
	return o
}

// merge adds parts to the message, and reports whether a part naming keys
// made the union whole (above max_keys).
func (o *outgoing) merge(parts ...part) (turnedWhole bool) {
	if o.keys == nil {
		o.keys = storm.NewKeys(o.route.Limits.MaxKeys)
		for _, p := range o.parts {
			o.keys.Add(p.keys)
		}
	}
	// A merged message is key-level or whole-tag: an entity-level part
	// (refs, no keys) merges as the whole tag.
	o.msg.Refs = nil
	for _, p := range parts {
		wasWhole := o.keys.Whole()
		o.keys.Add(p.keys)
		if !wasWhole && o.keys.Whole() && len(p.keys) > 0 {
			turnedWhole = true
		}
		o.parts = append(o.parts, p)
		ev := p.v.ev
		if ev.TS > 0 && (o.msg.TS == 0 || ev.TS < o.msg.TS) {
			o.msg.TS = ev.TS // the oldest change, so delivery lag shows the delay
		}
		if o.msg.Domain != ev.Domain {
			o.msg.Domain = ""
		}
		if o.msg.Origin != ev.Origin {
			o.msg.Origin = ""
		}
	}
	return turnedWhole
}

// seal sets the message's keys and the event ids it records, once no more
// events merge into it.
func (o *outgoing) seal() {
	if o.keys != nil {
		o.msg.Keys = o.keys.List()
	}
	if len(o.parts) == 1 {
		o.oneID[0] = o.parts[0].v.id
		o.ids = o.oneID[:]
	} else {
		o.ids = make([]string, 0, min(len(o.parts), maxMergedIDs))
		for _, p := range o.parts[:min(len(o.parts), maxMergedIDs)] {
			o.ids = append(o.ids, p.v.id)
		}
	}
	o.msg.Event = o.ids[0]
}

// without splits the message by recorded (a flag per id, as the publish
// script returns them): it returns the message of the parts whose ids were
// not recorded (and those past the recorded ids), sealed, or nil when none
// is left, and the parts that were recorded.
func (o *outgoing) without(recorded []bool) (*outgoing, []part) {
	var rest *outgoing
	var old []part
	for i, p := range o.parts {
		switch {
		case i < len(recorded) && recorded[i]:
			old = append(old, p)
		case rest == nil:
			rest = newOutgoing(o.route, p)
		default:
			rest.merge(p)
		}
	}
	if rest != nil {
		rest.seal()
	}
	return rest, old
}

// coalescer enforces the storm limits. A channel's message goes out at once
// while its token bucket, its tenant's and the global one all have a token;
// beyond that, the channel's events merge into one pending message (keys
// united, the whole tag above max_keys) that goes out when the buckets allow
// and the coalescing window has passed. Nothing is dropped: the entries of a
// pending message are acknowledged only after it is published.
//
// Admission never waits, so a storm on one channel does not hold up the read
// loop or any other channel.
type coalescer struct {
	to   flushTarget
	m    *metrics
	wake chan struct{}

	mu       sync.Mutex
	pending  map[string]*pendingMsg
	queue    pendingQueue
	channels map[string]*rate.Limiter
	tenants  map[string]*rate.Limiter
	global   *rate.Limiter
}

// pendingMsg is the one pending message of a channel.
type pendingMsg struct {
	out   *outgoing
	due   time.Time
	index int
}

// flushTarget is what the coalescer needs of the router.
type flushTarget interface {
	// Matrix returns the matrix in force, whose limits apply.
	Matrix() *matrix.Matrix
	// publishMerged publishes pending messages that came due and
	// acknowledges the entries they complete.
	publishMerged(out []*outgoing)
}

func newCoalescer(to flushTarget, m *metrics) *coalescer {
	return &coalescer{
		to: to, m: m, wake: make(chan struct{}, 1),
		pending: map[string]*pendingMsg{}, channels: map[string]*rate.Limiter{}, tenants: map[string]*rate.Limiter{},
	}
}

// limiters returns the buckets a message on the route must take a token from.
func (c *coalescer) limiters(mtx *matrix.Matrix, rt matrix.Route, tenant string) (*rate.Limiter, *rate.Limiter, *rate.Limiter) {
	ch := storm.Limiter(c.channels[rt.Channel], rt.Limits.Rate, rt.Limits.Burst)
	c.channels[rt.Channel] = ch
	var tl *rate.Limiter
	if b := mtx.TenantBudget; b != nil {
		tl = storm.Limiter(c.tenants[tenant], b.Rate, b.Burst)
		c.tenants[tenant] = tl
	}
	if b := mtx.GlobalBudget; b != nil {
		c.global = storm.Limiter(c.global, b.Rate, b.Burst)
	} else {
		c.global = nil
	}
	return ch, tl, c.global
}

// admit decides for one channel message: true means publish it now; false
// means it was merged into the channel's pending message (or opened it).
func (c *coalescer) admit(now time.Time, mtx *matrix.Matrix, o *outgoing) bool {
	rt := o.route
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.pending[rt.Channel]; p != nil {
		if p.out.merge(o.parts...) {
			c.m.coalescedWhole.WithLabelValues(rt.Tag).Inc()
		}
		c.m.coalesced.WithLabelValues(rt.Tag).Add(float64(len(o.parts)))
		return false
	}
	ch, tl, gl := c.limiters(mtx, rt, o.msg.Tenant)
	if storm.Reserve(now, ch, tl, gl) == 0 {
		return true
	}
	p := &pendingMsg{out: o, due: now.Add(rt.Limits.Coalesce)}
	c.pending[rt.Channel] = p
	heap.Push(&c.queue, p)
	c.m.delayed.WithLabelValues(rt.Tag).Inc()
	c.m.pendingChannels.Set(float64(len(c.pending)))
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return false
}

// run publishes pending messages as they come due, until ctx is done; then
// it publishes everything still pending, without waiting for tokens (one
// message per channel), so a stopping router leaves nothing merged behind.
func (c *coalescer) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		c.mu.Lock()
		wait := time.Hour
		if len(c.queue) > 0 {
			wait = time.Until(c.queue[0].due)
		}
		c.mu.Unlock()
		timer.Reset(max(wait, 0))
		select {
		case <-ctx.Done():
			c.flush(true)
			return
		case <-c.wake:
		case <-timer.C:
		}
		c.flush(false)
	}
}

// flush publishes the pending messages that are due and have tokens (all of
// them when all is set) and acknowledges the entries they complete.
func (c *coalescer) flush(all bool) {
	now := time.Now()
	mtx := c.to.Matrix()
	var out []*outgoing
	c.mu.Lock()
	for len(c.queue) > 0 && (all || !c.queue[0].due.After(now)) {
		p := c.queue[0]
		if !all {
			ch, tl, gl := c.limiters(mtx, p.out.route, p.out.msg.Tenant)
			if wait := storm.Reserve(now, ch, tl, gl); wait > 0 {
				p.due = now.Add(wait)
				heap.Fix(&c.queue, 0)
				continue
			}
		}
		heap.Pop(&c.queue)
		delete(c.pending, p.out.route.Channel)
		p.out.seal()
		out = append(out, p.out)
	}
	c.m.pendingChannels.Set(float64(len(c.pending)))
	c.mu.Unlock()
	if len(out) > 0 {
		c.to.publishMerged(out)
	}
}

// publishMerged publishes the coalescer's messages that came due and
// acknowledges the entries they complete.
func (r *Router) publishMerged(out []*outgoing) {
	ctx, cancel := context.WithTimeout(context.Background(), r.opt.ShutdownTimeout)
	defer cancel()
	if err := r.settle(ctx, r.send(ctx, out)); err != nil {
		r.log.Warn("publishing coalesced messages", "err", err)
	}
}

// held returns, by stream, the ids of entries held in pending messages, so
// the claim loop can keep other instances from claiming them.
func (c *coalescer) held() map[string][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]string{}
	for _, p := range c.pending {
		for _, pt := range p.out.parts {
			out[pt.e.stream] = append(out[pt.e.stream], pt.e.id)
		}
	}
	return out
}

// forgetIdle drops the buckets of channels and tenants that are full and have
// nothing pending, so memory follows the active channels.
func (c *coalescer) forgetIdle(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch, l := range c.channels {
		if _, busy := c.pending[ch]; !busy && l.TokensAt(now) >= float64(l.Burst()) {
			delete(c.channels, ch)
		}
	}
	for t, l := range c.tenants {
		if l.TokensAt(now) >= float64(l.Burst()) {
			delete(c.tenants, t)
		}
	}
}

// pendingQueue orders pending messages by due time.
type pendingQueue []*pendingMsg

func (q pendingQueue) Len() int           { return len(q) }
func (q pendingQueue) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q pendingQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *pendingQueue) Push(x any) {
	p := x.(*pendingMsg)
	p.index = len(*q)
	*q = append(*q, p)
}
func (q *pendingQueue) Pop() any {
	old := *q
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return p
}
