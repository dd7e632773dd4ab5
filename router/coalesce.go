package router

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/storm"
	"github.com/routerd/routerd/wire"
)

// maxMergedIDs bounds the event ids a coalesced message records for dedupe.
// Ids beyond it are still acknowledged; a redelivery of one of them only
// sends one more (harmless) invalidation.
const maxMergedIDs = 1000

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
	route   matrix.Route
	tenant  string
	keys    *storm.Keys
	msg     wire.Message // fields of the first event, adjusted as events merge
	ids     []string
	entries []*entry
	due     time.Time
	index   int
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

// admit decides for one (entry, route): true means publish it now; false
// means it was merged into the channel's pending message.
func (c *coalescer) admit(now time.Time, mtx *matrix.Matrix, e *entry, rt matrix.Route, msg wire.Message) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.pending[rt.Channel]; p != nil {
		c.merge(p, e, msg)
		c.m.coalesced.WithLabelValues(rt.Tag).Inc()
		return false
	}
	ch, tl, gl := c.limiters(mtx, rt, e.ev.Tenant)
	if storm.Reserve(now, ch, tl, gl) == 0 {
		return true
	}
	p := &pendingMsg{route: rt, tenant: e.ev.Tenant, keys: storm.NewKeys(rt.Limits.MaxKeys), msg: msg, due: now.Add(rt.Limits.Coalesce)}
	p.msg.Keys = nil
	p.msg.Refs = nil // a merged message is key-level or whole-tag: refs merge as a whole tag (storm.Keys)
	c.merge(p, e, msg)
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

func (c *coalescer) merge(p *pendingMsg, e *entry, msg wire.Message) {
	wasWhole := p.keys.Whole()
	p.keys.Add(msg.Keys)
	if !wasWhole && p.keys.Whole() && len(msg.Keys) > 0 {
		c.m.coalescedWhole.WithLabelValues(p.route.Tag).Inc()
	}
	if len(p.ids) < maxMergedIDs {
		p.ids = append(p.ids, msg.Event)
	}
	p.entries = append(p.entries, e)
	if msg.TS > 0 && (p.msg.TS == 0 || msg.TS < p.msg.TS) {
		p.msg.TS = msg.TS // the oldest change, so delivery lag shows the delay
	}
	if p.msg.Domain != msg.Domain {
		p.msg.Domain = ""
	}
	if p.msg.Origin != msg.Origin {
		p.msg.Origin = ""
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
			ch, tl, gl := c.limiters(mtx, p.route, p.tenant)
			if wait := storm.Reserve(now, ch, tl, gl); wait > 0 {
				p.due = now.Add(wait)
				heap.Fix(&c.queue, 0)
				continue
			}
		}
		heap.Pop(&c.queue)
		delete(c.pending, p.route.Channel)
		p.msg.Keys = p.keys.List()
		out = append(out, &outgoing{route: p.route, msg: p.msg, ids: p.ids, entries: p.entries})
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
		for _, e := range p.entries {
			out[e.stream] = append(out[e.stream], e.id)
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
