package router

import (
	"container/heap"
	"context"
	"sync"
	"time"

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
	e     *entry
	v     *event
	keys  []string // the event's keys, nil for none (or above max_keys)
	refs  []string // its refs on a domain with entity_refs (newPart)
	plain bool     // with refs: the tag's plain values go too
}

// newPart is an event's share of the message of rt; keys are its keys (nil
// above max_keys). On a domain with entity_refs every event that is not
// whole-tag names refs, so that it drops the values cached under them: the
// entity's ref (and its domain's type level) when it names its entity,
// else the domain's type level, which any event of the domain drops. One
// that names no keys (entity-level) drops the tag's plain values (cached
// without refs) too, as it does not say which of them changed. Neither keys
// nor refs: the whole tag.
func newPart(e *entry, v *event, rt matrix.Route, keys []string) part {
	p := part{e: e, v: v, keys: keys}
	ev := v.ev
	if !rt.EntityRefs || ev.WholeTag || (len(keys) == 0 && !ev.EntityLevel()) {
		return p // whole tag, or key-level without refs
	}
	if ev.Entity != "" {
		p.refs = []string{names.Ref(ev.Domain, ev.Entity)}
	} else {
		p.refs = []string{ev.Domain}
	}
	p.plain = len(keys) == 0
	return p
}

// outgoing is one channel message to publish: for one event, or for many
// merged ones — the events of one read batch for the channel, or those the
// storm limits held back. Merging unites the keys and the refs
// (storm.Union: the whole tag when a part is, or above max_keys keys or
// refs) and records every event id.
type outgoing struct {
	route matrix.Route
	msg   wire.Message // without epoch and version; fields of the first event, adjusted as events merge
	union *storm.Union // the union, once a second event merged
	parts []part       // the first one's route span is the parent of the message's span
	ids   []string     // event ids recorded (up to maxMergedIDs); the first is the message's event; set by seal
	// force sends it even without tokens, taking them on credit (a
	// stopping router's last flush).
	force bool
	// one holds the part and id of a message for one event.
	one   [1]part
	oneID [1]string
}

// newOutgoing starts the message of p on rt.
func newOutgoing(rt matrix.Route, p part) *outgoing {
	ev := p.v.ev
	o := &outgoing{route: rt, msg: wire.Message{Tenant: ev.Tenant, Tag: rt.Tag, Keys: p.keys, Refs: p.refs, Plain: p.plain,
		Event: p.v.id, Domain: ev.Domain, Origin: ev.Origin, TS: ev.TS, Traceparent: ev.Traceparent}}
	o.one[0] = p
	o.parts = o.one[:1:1]
	return o
}

// merge adds parts to the message, and reports whether a part naming keys
// or refs made the union whole (above max_keys keys or refs).
func (o *outgoing) merge(parts ...part) (turnedWhole bool) {
	if o.union == nil {
		// Refs are bounded like keys: by max_keys (at most wire.MaxRefs).
		o.union = storm.NewUnion(o.route.Limits.MaxKeys, min(o.route.Limits.MaxKeys, wire.MaxRefs))
		for _, p := range o.parts {
			o.union.Add(p.keys, p.refs, p.plain)
		}
	}
	for _, p := range parts {
		wasWhole := o.union.Whole()
		o.union.Add(p.keys, p.refs, p.plain)
		if !wasWhole && o.union.Whole() && (len(p.keys) > 0 || len(p.refs) > 0) {
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
	if o.union != nil {
		o.msg.Keys, o.msg.Refs, o.msg.Plain = o.union.Keys(), o.union.Refs(), o.union.Plain()
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

// coalescer holds what the storm limits keep back. The buckets themselves
// live on the bus, shared by every router (docs/limits.md): a channel's in
// its meta, taken by the publish script; a tenant's and the global one
// taken by the budget script before it. A message they refuse comes here:
// the channel's events merge into one pending message (keys united, the
// whole tag above max_keys) that is sent again when the buckets will have a
// token and the coalescing window has passed. Nothing is dropped: the
// entries of a pending message are acknowledged only after it is published.
//
// Admission never waits, so a storm on one channel does not hold up the read
// loop or any other channel.
type coalescer struct {
	to   flushTarget
	m    *metrics
	wake chan struct{}

	mu      sync.Mutex
	pending map[string]*pendingMsg
	queue   pendingQueue
}

// pendingMsg is the one pending message of a channel.
type pendingMsg struct {
	out   *outgoing
	due   time.Time
	index int
}

// flushTarget is what the coalescer needs of the router.
type flushTarget interface {
	// publishMerged publishes pending messages that came due (force: on
	// credit, without waiting for tokens) and acknowledges the entries
	// they complete.
	publishMerged(out []*outgoing, force bool)
}

func newCoalescer(to flushTarget, m *metrics) *coalescer {
	return &coalescer{to: to, m: m, wake: make(chan struct{}, 1), pending: map[string]*pendingMsg{}}
}

// admit decides for one channel message: true means try to publish it now;
// false means it was merged into the channel's pending message, which
// holds the channel's order.
func (c *coalescer) admit(o *outgoing) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pending[o.route.Channel]
	if p == nil {
		return true
	}
	c.mergeInto(p, o)
	return false
}

func (c *coalescer) mergeInto(p *pendingMsg, o *outgoing) {
	if p.out.merge(o.parts...) {
		c.m.coalescedWhole.WithLabelValues(o.route.Tag).Inc()
	}
	c.m.coalesced.WithLabelValues(o.route.Tag).Add(float64(len(o.parts)))
}

// hold takes a message a bucket refused: it merges into the channel's
// pending message, or opens it, due when the bucket will have a token
// (wait) and the coalescing window has passed.
func (c *coalescer) hold(now time.Time, o *outgoing, wait time.Duration) {
	rt := o.route
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.pending[rt.Channel]; p != nil {
		c.mergeInto(p, o)
		if due := now.Add(wait); due.After(p.due) {
			p.due = due
			heap.Fix(&c.queue, p.index)
		}
		return
	}
	p := &pendingMsg{out: o, due: now.Add(max(wait, rt.Limits.Coalesce))}
	c.pending[rt.Channel] = p
	heap.Push(&c.queue, p)
	c.m.delayed.WithLabelValues(rt.Tag).Inc()
	c.m.pendingChannels.Set(float64(len(c.pending)))
	select {
	case c.wake <- struct{}{}:
	default:
	}
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

// flush publishes the pending messages that are due (all of them, on
// credit, when all is set) and acknowledges the entries they complete. One
// a bucket refuses again comes back through hold.
func (c *coalescer) flush(all bool) {
	now := time.Now()
	var out []*outgoing
	c.mu.Lock()
	for len(c.queue) > 0 && (all || !c.queue[0].due.After(now)) {
		p := heap.Pop(&c.queue).(*pendingMsg)
		delete(c.pending, p.out.route.Channel)
		p.out.seal()
		out = append(out, p.out)
	}
	c.m.pendingChannels.Set(float64(len(c.pending)))
	c.mu.Unlock()
	if len(out) > 0 {
		c.to.publishMerged(out, all)
	}
}

// publishMerged publishes the coalescer's messages that came due and
// acknowledges the entries they complete.
func (r *Router) publishMerged(out []*outgoing, force bool) {
	ctx, cancel := context.WithTimeout(context.Background(), r.opt.ShutdownTimeout)
	defer cancel()
	if err := r.settle(ctx, r.send(ctx, out, force)); err != nil {
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
