package router

import (
	"container/heap"
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/routerd/routerd/internal/storm"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// maxMergedIDs bounds the event ids a message records for dedupe. A read
// batch starts another message for its channel past it, so each of its
// events is recorded; a coalesced message records the first maxMergedIDs:
// the others are still acknowledged, and a redelivery of one of them only
// sends one more (harmless) invalidation.
const maxMergedIDs = 1000

// Whole-tag reasons, the label values of routerd_whole_tag_messages_total.
// A merge never turns whole for naming more than max_keys keys: it splits
// into several key-level messages (place).
const (
	WholeNoKeys     = "no_keys"     // an event named neither keys nor refs: it asked for the whole tag
	WholeOverBudget = "over_budget" // the channel's budget could not carry its pending keys key-level (docs/limits.md)
)

// part is one event's share of a channel message.
type part struct {
	e     *entry
	v     *event
	id    string   // the id the message records for it: the event's, or its share's (keyShare)
	keys  []string // the event's keys (at most max_keys: keyShare), nil for none
	refs  []string // its refs on a domain with entity_refs (newPart)
	plain bool     // with refs: the tag's plain values go too
}

// newPart is an event's share of the message of rt; keys are its keys (at
// most max_keys). On a domain with entity_refs every event that is not
// whole-tag names refs, so that it drops the values cached under them: the
// entity's ref (and its domain's type level) when it names its entity,
// else the domain's type level, which any event of the domain drops. One
// that names no keys (entity-level) drops the tag's plain values (cached
// without refs) too, as it does not say which of them changed. Neither keys
// nor refs: the whole tag.
func newPart(e *entry, v *event, rt matrix.Route, keys []string) part {
	p := part{e: e, v: v, id: v.id, keys: keys}
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

// shareMark separates an event id from the key range of one share of it
// (keyShare). No ingress's ids may contain it, a publisher's own streams
// included (wire.ReservedID).
const shareMark = wire.ShareMark

// keyShare returns the i-th of the parts of an event on rt (sharesOf says
// how many): the event, or, when it names more keys than the channel's
// max_keys, the i-th max_keys of them, in order, recording its own id,
// <event id>#keys:<from>-<to> (the range of the event's keys it carries),
// so that a redelivery split the same way sends none twice, and one split
// otherwise (a reloaded max_keys) carries other ranges, sent again rather
// than lost.
func keyShare(e *entry, v *event, rt matrix.Route, i int) part {
	keys, limit := v.ev.Keys, rt.Limits.MaxKeys
	if len(keys) <= limit || limit <= 0 {
		return newPart(e, v, rt, keys)
	}
	from := i * limit
	to := min(from+limit, len(keys))
	p := newPart(e, v, rt, keys[from:to:to])
	p.id = boundedID(v.id + shareMark + strconv.Itoa(from) + "-" + strconv.Itoa(to))
	return p
}

// sharesOf is how many parts the event has on rt (keyShare).
func sharesOf(v *event, rt matrix.Route) int {
	if limit := rt.Limits.MaxKeys; limit > 0 && len(v.ev.Keys) > limit {
		return (len(v.ev.Keys) + limit - 1) / limit
	}
	return 1
}

// outgoing is one channel message to publish: for one event, or for many
// merged ones — the events of one read batch for the channel, or those the
// storm limits held back. Merging unites the keys and the refs
// (storm.Union) and records every event id; place keeps each message
// within max_keys keys and refs by starting another.
type outgoing struct {
	route matrix.Route
	msg   wire.Message // without epoch and version; fields of the first event, adjusted as events merge
	union *storm.Union // the union, once a second event merged
	parts []part       // the first one's route span is the parent of the message's span
	ids   []string     // event ids recorded (up to maxMergedIDs); the first is the message's event; set by seal
	// whole is why the message is the whole tag (a Whole… reason): set by
	// collapse; seal sets WholeNoKeys for a part that named nothing.
	whole string
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
		Event: p.id, Domain: ev.Domain, Origin: ev.Origin, TS: ev.TS, Traceparent: ev.Traceparent}}
	o.one[0] = p
	o.parts = o.one[:1:1]
	return o
}

// reserve makes room for n parts in a message of one part, so that merging
// them does not grow it part by part.
func (o *outgoing) reserve(n int) {
	if cap(o.parts) != 1 || n <= 1 {
		return
	}
	parts := make([]part, 1, n)
	parts[0] = o.parts[0]
	o.parts = parts
}

// unite makes the message's union from its parts, once.
func (o *outgoing) unite() {
	if o.union != nil {
		return
	}
	// Refs are bounded like keys: by max_keys (at most wire.MaxRefs).
	// Room for a key a part it has room for (reserve), when the parts
	// name keys: what single-key events need.
	room := 0
	if len(o.parts[0].keys) > 0 {
		room = cap(o.parts)
	}
	o.union = storm.NewUnionSized(o.route.Limits.MaxKeys, min(o.route.Limits.MaxKeys, wire.MaxRefs), room)
	for _, p := range o.parts {
		o.union.Add(p.keys, p.refs, p.plain)
	}
}

// fits reports whether p can merge into the message without taking its keys
// or refs above max_keys.
func (o *outgoing) fits(p part) bool {
	o.unite()
	return o.union.Fits(p.keys, p.refs)
}

// merge adds parts to the message.
func (o *outgoing) merge(parts ...part) {
	o.unite()
	for _, p := range parts {
		o.union.Add(p.keys, p.refs, p.plain)
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
}

// isWhole reports whether the message, as merged so far, is the whole tag.
func (o *outgoing) isWhole() bool {
	if o.union != nil {
		return o.union.Whole()
	}
	return len(o.msg.Keys) == 0 && len(o.msg.Refs) == 0
}

// collapse merges the messages of one channel into the first, which
// becomes the whole tag for reason: it covers every key of the others.
func collapse(msgs []*outgoing, reason string) *outgoing {
	first := msgs[0]
	for _, o := range msgs[1:] {
		first.merge(o.parts...)
	}
	first.unite()
	first.union.SetWhole()
	first.whole = reason
	return first
}

// place adds p to a channel's messages (in order, nil for none) and returns
// them: into the last one while the keys and refs stay within max_keys
// (and it records fewer than maxParts events, when maxParts > 0), else
// into a new one after it — a merge splits, it never turns whole for its
// size. A part that names neither keys nor refs asks for the whole tag,
// which covers all of them: they collapse into one whole-tag message (the
// last of them, as many as record at most maxParts events with it).
func place(msgs []*outgoing, rt matrix.Route, p part, maxParts int) []*outgoing {
	if len(msgs) == 0 {
		return []*outgoing{newOutgoing(rt, p)}
	}
	if len(p.keys) == 0 && len(p.refs) == 0 {
		// The last messages that, with p, record at most maxParts events.
		from, parts := len(msgs), 1
		for from > 0 && (maxParts <= 0 || parts+len(msgs[from-1].parts) <= maxParts) {
			from--
			parts += len(msgs[from].parts)
		}
		if from == len(msgs) {
			o := newOutgoing(rt, p)
			o.whole = WholeNoKeys
			return append(msgs, o)
		}
		collapse(msgs[from:], WholeNoKeys).merge(p)
		return msgs[:from+1]
	}
	last := msgs[len(msgs)-1]
	if last.fits(p) && (maxParts <= 0 || len(last.parts) < maxParts) {
		last.merge(p)
		return msgs
	}
	return append(msgs, newOutgoing(rt, p))
}

// seal sets the message's keys and the event ids it records, once no more
// events merge into it.
func (o *outgoing) seal() {
	if o.union != nil {
		o.msg.Keys, o.msg.Refs, o.msg.Plain = o.union.Keys(), o.union.Refs(), o.union.Plain()
	}
	if o.whole == "" && o.msg.WholeTag() {
		o.whole = WholeNoKeys
	}
	if len(o.parts) == 1 {
		o.oneID[0] = o.parts[0].id
		o.ids = o.oneID[:]
	} else {
		o.ids = make([]string, 0, min(len(o.parts), maxMergedIDs))
		for _, p := range o.parts[:min(len(o.parts), maxMergedIDs)] {
			o.ids = append(o.ids, p.id)
		}
	}
	o.msg.Event = o.ids[0]
}

// without splits the message by recorded (a flag per id, as the publish
// script returns them): it returns the message of the parts whose ids were
// not recorded (and those past the recorded ids), sealed, or nil when none
// is left, and the parts that were recorded. The rest of a whole-tag
// message keeps its reason.
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
		switch {
		case o.whole == WholeOverBudget:
			collapse([]*outgoing{rest}, WholeOverBudget)
		case rest.isWhole():
			rest.whole = o.whole // the rest of a collapse may unite more than max_keys keys
		}
		rest.seal()
	}
	return rest, old
}

// coalescer holds what the storm limits keep back. The buckets themselves
// live on the bus, shared by every router (docs/limits.md): a channel's in
// its meta, taken by the publish script; a tenant's and the global one
// taken by the budget script before it. A message they refuse comes here:
// the channel's events merge into its pending messages (keys united, a
// new message past max_keys: place) that are sent again when the buckets
// will have a token and the coalescing window has passed. Nothing is
// dropped: the entries of pending messages are acknowledged only after
// they are published.
//
// Pending work stays key-level while the channel's budget can carry it
// (storm.Carries): past that it collapses into one whole-tag message
// (WholeOverBudget).
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
	// sending holds, for each channel whose pending work is being sent,
	// the messages admitted meanwhile: they go after it (what the buckets
	// refuse of it comes back first), so the channel's order holds.
	sending map[string][]*outgoing
}

// pendingMsg is the pending work of a channel: its messages, in order.
type pendingMsg struct {
	msgs []*outgoing
	due  time.Time
	// refused counts the messages a bucket refused since the work opened:
	// what the budget could not carry when it was asked.
	refused int
	index   int
}

// flushTarget is what the coalescer needs of the router.
type flushTarget interface {
	// publishMerged publishes pending messages that came due (force: on
	// credit, without waiting for tokens) and acknowledges the entries
	// they complete.
	publishMerged(out []*outgoing, force bool)
}

func newCoalescer(to flushTarget, m *metrics) *coalescer {
	return &coalescer{to: to, m: m, wake: make(chan struct{}, 1), pending: map[string]*pendingMsg{}, sending: map[string][]*outgoing{}}
}

// admit decides for one channel message: true means try to publish it now;
// false means it was merged into the channel's pending work, or waits
// behind the work being sent, which holds the channel's order.
func (c *coalescer) admit(o *outgoing) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := o.route.Channel
	if p := c.pending[ch]; p != nil {
		c.mergeInto(p, o)
		return false
	}
	if behind, ok := c.sending[ch]; ok {
		c.sending[ch] = append(behind, o)
		return false
	}
	return true
}

// mergeInto merges the parts of o into the channel's pending work, and
// collapses it into one whole-tag message once the budget cannot carry it.
func (c *coalescer) mergeInto(p *pendingMsg, o *outgoing) {
	for _, pt := range o.parts {
		p.msgs = place(p.msgs, o.route, pt, 0)
	}
	c.m.coalesced.WithLabelValues(o.route.Tag).Add(float64(len(o.parts)))
	c.bound(p, o.route.Limits)
}

// bound collapses a channel's pending work into one whole-tag message when
// its budget cannot carry it key-level (storm.Carries): more messages
// refused than its bucket will pay for when they are due, or more pending
// than a full bucket could.
func (c *coalescer) bound(p *pendingMsg, l matrix.Limits) {
	refused, pending := storm.Carries(l.Rate, l.Burst, l.Coalesce)
	if len(p.msgs) > 1 && (p.refused > refused || len(p.msgs) > pending) {
		p.msgs = []*outgoing{collapse(p.msgs, WholeOverBudget)}
	}
}

// hold takes a message a bucket refused: it merges into the channel's
// pending work, or opens it, due when the bucket will have a token (wait)
// and the coalescing window has passed.
func (c *coalescer) hold(now time.Time, o *outgoing, wait time.Duration) {
	rt := o.route
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.pending[rt.Channel]; p != nil {
		p.refused++
		c.mergeInto(p, o)
		if due := now.Add(wait); due.After(p.due) {
			p.due = due
			heap.Fix(&c.queue, p.index)
		}
		return
	}
	p := &pendingMsg{msgs: []*outgoing{o}, refused: 1, due: now.Add(max(wait, rt.Limits.Coalesce))}
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
// it publishes everything still pending, without waiting for tokens, so a
// stopping router leaves nothing merged behind.
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
	for range 10 { // with all, what waited behind the last send goes too
		if !c.flushOnce(all) || !all {
			return
		}
	}
}

// flushOnce is one round of flush; it reports whether it sent something.
func (c *coalescer) flushOnce(all bool) bool {
	now := time.Now()
	var out []*outgoing
	var channels []string
	c.mu.Lock()
	for len(c.queue) > 0 && (all || !c.queue[0].due.After(now)) {
		p := heap.Pop(&c.queue).(*pendingMsg)
		ch := p.msgs[0].route.Channel
		delete(c.pending, ch)
		c.sending[ch] = nil
		channels = append(channels, ch)
		for _, o := range p.msgs {
			o.seal()
			out = append(out, o)
		}
	}
	c.m.pendingChannels.Set(float64(len(c.pending)))
	c.mu.Unlock()
	if len(out) == 0 {
		return false
	}
	c.to.publishMerged(out, all)
	// What was admitted while the work was sent follows it: merged into
	// what the buckets refused of it, or pending on its own, due now.
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range channels {
		behind := c.sending[ch]
		delete(c.sending, ch)
		for _, o := range behind {
			if p := c.pending[ch]; p != nil {
				c.mergeInto(p, o)
				continue
			}
			p := &pendingMsg{msgs: []*outgoing{o}, due: now}
			c.pending[ch] = p
			heap.Push(&c.queue, p)
		}
	}
	c.m.pendingChannels.Set(float64(len(c.pending)))
	if len(c.queue) > 0 {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	return true
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
	add := func(o *outgoing) {
		for _, pt := range o.parts {
			out[pt.e.stream] = append(out[pt.e.stream], pt.e.id)
		}
	}
	for _, p := range c.pending {
		for _, o := range p.msgs {
			add(o)
		}
	}
	for _, behind := range c.sending {
		for _, o := range behind {
			add(o)
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
