package router

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ReasonPoison is the dead-letter reason of an entry whose routing failed
// DeadLetterAfter times with an error that will not pass.
const ReasonPoison = "poison"

// Backoff between the tries of a failed entry: it doubles from retryMin up
// to retryMax, less up to a fifth at random so routers do not retry in step.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 2 * time.Second
)

func retryBackoff(tries int) time.Duration {
	d := retryMax
	if tries < 6 {
		d = min(retryMin<<max(tries-1, 0), retryMax)
	}
	return d - rand.N(d/5)
}

// passingErrors are the Redis errors of a server or a cluster in
// transition: they pass by themselves.
var passingErrors = []string{
	"CLUSTERDOWN", "MOVED", "ASK", "TRYAGAIN", "LOADING", "READONLY", "MASTERDOWN",
	"BUSY", "NOREPLICAS", "OOM", "NOSCRIPT", "NOGROUP", "UNBLOCKED",
}

// settingErrors are the Redis errors of an operator's setting (ACL,
// password, persistence): they pass once the operator fixes it.
var settingErrors = []string{"MISCONF", "NOPERM", "NOAUTH", "WRONGPASS"}

// transientErrors pass without the entry changing, so an entry failing
// with them is retried for as long as it takes.
var transientErrors = append(append([]string{}, passingErrors...), settingErrors...)

// hasPrefix reports whether err is a Redis reply starting with one of prefixes.
func hasPrefix(err error, prefixes []string) bool {
	for _, p := range prefixes {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// fatalAtSetup reports whether a Redis reply to setting up the ingress will
// not pass by itself (WRONGTYPE on a stream key, NOPERM, WRONGPASS, …): the
// daemon stops and says so rather than retry in silence.
func fatalAtSetup(err error) bool {
	var reply redis.Error
	if !errors.As(err, &reply) || errors.Is(err, redis.Nil) {
		return false
	}
	return !hasPrefix(err, passingErrors)
}

// permanent reports whether err will come back however often the entry is
// tried: Redis refused the entry's own commands (WRONGTYPE on a key of one
// of its channels, a value too large, a script error), as opposed to a
// connection, a timeout, or a server or cluster state that passes.
func permanent(err error) bool {
	var rerr redis.Error
	if err == nil || !errors.As(err, &rerr) {
		return false // no answer from Redis: network, timeout, context, WAIT
	}
	if hasPrefix(rerr, transientErrors) {
		return false
	}
	msg := rerr.Error()
	// Inside a script Redis answers ERR, not NOPERM, for what the user's
	// ACL forbids: an operator's setting too.
	return !strings.Contains(msg, "max number of clients") && !strings.Contains(msg, "The user executing the script can't")
}

// retryItem is an ingress entry whose routing failed, waiting for its next try.
type retryItem struct {
	msg   redis.XMessage
	tries int       // failed tries
	alone int       // tries that failed alone (a batch of one) with a permanent error
	err   error     // the last failure
	due   time.Time // of the next try
	// running is set while a try is under way (or its entry waits in a
	// coalesced message), so the item is not tried twice at once.
	running bool
}

// retryQueue holds the failed entries of one ingress stream. Its read loop
// tries them again when they are due, in between reading new entries, so a
// failed batch is routed as soon as its cause passes, without waiting for a
// claim (that is for the entries of dead routers).
type retryQueue struct {
	mu    sync.Mutex
	items map[string]*retryItem // by entry id
}

// retryQueue returns the stream's retry queue.
func (r *Router) retryQueue(stream string) *retryQueue {
	r.retryMu.Lock()
	defer r.retryMu.Unlock()
	q := r.retries[stream]
	if q == nil {
		q = &retryQueue{items: map[string]*retryItem{}}
		r.retries[stream] = q
	}
	return q
}

// retryLater records a failed try of e and schedules the next one.
func (r *Router) retryLater(e *entry, err error) {
	q := r.retryQueue(e.stream)
	q.mu.Lock()
	defer q.mu.Unlock()
	it := q.items[e.id]
	if it == nil {
		it = &retryItem{msg: redis.XMessage{ID: e.id, Values: e.raw}}
		q.items[e.id] = it
	}
	it.tries++
	it.err = err
	it.running = false
	if e.alone && permanent(err) {
		it.alone++
	}
	it.due = time.Now().Add(retryBackoff(it.tries))
	if it.alone >= r.opt.DeadLetterAfter {
		it.due = time.Now() // to the dead letters at once
	}
	r.m.retried.Inc()
}

// retryDone forgets the entries that were acknowledged.
// Entries come in runs of one stream (a batch is one stream's): its queue
// is found and locked once a run, and nothing is looked for in an empty one.
func (r *Router) retryDone(entries []*entry) {
	for run := entries; len(run) > 0; {
		stream, n := run[0].stream, 1
		for n < len(run) && run[n].stream == stream {
			n++
		}
		r.retryMu.Lock()
		q := r.retries[stream]
		r.retryMu.Unlock()
		if q != nil {
			q.mu.Lock()
			if len(q.items) > 0 {
				for _, e := range run[:n] {
					delete(q.items, e.id)
				}
			}
			q.mu.Unlock()
		}
		run = run[n:]
	}
}

// held returns the ids of the entries waiting for a try, for the claim loop
// to keep other instances from claiming them.
func (q *retryQueue) held() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	ids := make([]string, 0, len(q.items))
	for id := range q.items {
		ids = append(ids, id)
	}
	return ids
}

// size is how many entries wait.
func (q *retryQueue) size() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// next returns when the next try is due, or false when none waits.
func (q *retryQueue) next() (time.Time, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var at time.Time
	found := false
	for _, it := range q.items {
		if !it.running && (!found || it.due.Before(at)) {
			at, found = it.due, true
		}
	}
	return at, found
}

// take returns the items due now, marked running: those to dead-letter,
// those whose last failure will not pass (each to be tried alone, so the
// failure shows whose it is), and the others (tried together); up to limit
// of each of the last two.
func (q *retryQueue) take(now time.Time, deadAfter, limit int) (poison, alone, together []*retryItem) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, it := range q.items {
		if it.running || it.due.After(now) {
			continue
		}
		to := &together
		switch {
		case it.alone >= deadAfter:
			to = &poison
		case permanent(it.err):
			to = &alone
		}
		if to != &poison && len(*to) >= limit {
			continue // the rest next time round
		}
		*to = append(*to, it)
		it.running = true
	}
	// In stream order, so a tenant's events are retried in order.
	byID := func(a, b *retryItem) int {
		if lessID(a.msg.ID, b.msg.ID) {
			return -1
		}
		return 1
	}
	slices.SortFunc(alone, byID)
	slices.SortFunc(together, byID)
	return poison, alone, together
}

// retryDue tries again the stream's failed entries that are due.
func (r *Router) retryDue(ctx context.Context, stream string, q *retryQueue) {
	poison, alone, together := q.take(time.Now(), r.opt.DeadLetterAfter, r.opt.BatchSize)
	if len(poison) == 0 && len(alone) == 0 && len(together) == 0 {
		return
	}
	// Out of the queue, they are in hand until tried (claimForgotten).
	inHand := r.hand.take(stream, time.Time{})
	defer r.hand.drop(stream, inHand)
	// Look again where the slots are before the next try: a failover or a
	// moved slot is the usual cause of a failed batch on a cluster.
	r.shards.Moved(ctx)
	for _, it := range poison {
		r.deadLetterPoison(ctx, stream, q, it)
	}
	if len(together) > 0 {
		msgs := make([]redis.XMessage, len(together))
		for i, it := range together {
			msgs[i] = it.msg
		}
		if err := r.process(ctx, stream, msgs); err != nil {
			r.log.Warn("retrying failed entries", "stream", stream, "entries", len(msgs), "err", err)
		}
	}
	for _, it := range alone {
		if err := r.process(ctx, stream, []redis.XMessage{it.msg}); err != nil {
			r.log.Warn("retrying a failed entry", "stream", stream, "entry", it.msg.ID, "err", err)
		}
	}
}

// deadLetterPoison sends an entry that keeps failing with an error that will
// not pass to the dead letters and acknowledges it; until both are done it
// stays in the queue, pending.
func (r *Router) deadLetterPoison(ctx context.Context, stream string, q *retryQueue, it *retryItem) {
	e := &entry{stream: stream, id: it.msg.ID, raw: it.msg.Values, from: stream, fromID: it.msg.ID, fromIndex: -1}
	if stream == r.redrive {
		r.redriven(e, it.msg.Values) // where it first came from
	}
	e.reason = ReasonPoison
	e.detail = fmt.Sprintf("routing failed %d tries with an error that will not pass (fix its cause, then replay the entry): %v", it.alone, it.err)
	err := r.deadLetter(ctx, stream, []*entry{e})
	if err == nil {
		err = r.ack(ctx, []*entry{e})
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err != nil {
		r.log.Error("dead-lettering a poison entry; trying again", "stream", stream, "entry", it.msg.ID, "err", err)
		it.running = false
		it.due = time.Now().Add(retryBackoff(it.tries))
		return
	}
	delete(q.items, it.msg.ID)
}
