package router

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// Re-driving dead letters.
//
// A dead letter can be sent back to the routers: appended to the re-drive
// stream names.RedriveStream (every router reads it in the consumer group,
// like an ingress partition) with the stream, entry id and index the event
// first had, and deleted from the dead letters. A router routes a re-driven
// event as if it came from its first stream: the same grant, and the same
// derived id when it had none, so a dead letter re-driven twice (a crash
// between the append and the delete) publishes nothing twice.
//
// Every router re-drives, each housekeeping round, the new unknown_domain
// dead letters of the domains it knows (all of them at start and after a
// reload that adds domains: those written while no live router knew the
// domain), naming itself in the re-driven entry ("for"). A router that reads
// an entry named for another live router and does not know its domain, or
// runs another matrix (handover.go writes such entries), hands it over to
// that router (XCLAIM), which routes what it is handed on its next round.
// One that no router knows stays a dead letter until `routerd deadletter
// replay`.

// Fields of a re-driven entry, besides its event or events.
const (
	redriveStream = "stream"     // the ingress stream the entry first came on
	redriveEntry  = "entry_id"   // its entry id there
	redriveIndex  = "index"      // the event's place in that packed entry, when only it is re-driven
	redriveFrom   = "deadletter" // the dead letter it was
	redriveFor    = "for"        // the router (consumer name) that re-drove it because it knows the domain
)

// RedriveFilter selects the dead letters to re-drive. The zero value
// selects every one.
type RedriveFilter struct {
	Reason string    // only this reason ("unknown_domain", …)
	Domain string    // only dead letters with an event of this domain
	Since  time.Time // only those written at or after
	// domains keeps only dead letters with an event of one of them (a
	// router's own re-drive of the domains it knows).
	domains map[string]bool
	// For names the router that re-drives (empty for routerd deadletter replay).
	For string
}

// Redriven says what a re-drive did.
type Redriven struct {
	Redriven int // dead letters appended to the re-drive stream and deleted
	// Invalid counts those of Redriven that came from
	// names.InvalidDeadLetterStream (malformed, too_large): the routers
	// refuse them again unless they now accept what was refused.
	Invalid int
	// Skipped counts dead letters that matched the reason but cannot be
	// re-driven: their copy of the entry was cut (a value cut when read,
	// or an entry far above MaxEventBytes), or it holds neither an event
	// nor events.
	Skipped int
	// Last is the id of the last dead letter of names.DeadLetterStream
	// looked at ("" when none).
	Last string
}

// Redrive re-drives the dead letters that match f, oldest first: each is
// appended to the re-drive stream, which the routers read, and deleted from
// the dead letters, so running it again re-drives nothing twice. A router
// that does not know a re-driven event's domain dead-letters it again. A
// dead letter is deleted only once its XADD succeeded: one Redis refused
// (out of memory, a re-drive key of another type) stays, and the error
// says how many.
func Redrive(ctx context.Context, c redis.UniversalClient, prefix string, f RedriveFilter) (Redriven, error) {
	start := "-"
	if !f.Since.IsZero() {
		start = strconv.FormatInt(f.Since.UnixMilli(), 10)
	}
	return redrive(ctx, c, prefix, f, start)
}

// redriveChunk is how many dead letters one XRANGE reads.
const redriveChunk = 500

func redrive(ctx context.Context, c redis.UniversalClient, prefix string, f RedriveFilter, start string) (Redriven, error) {
	var res Redriven
	if f.Reason == "" || replayable(f.Reason) {
		last, err := redriveLetters(ctx, c, names.DeadLetterStream(prefix), names.RedriveStream(prefix), f, start, &res)
		res.Last = last
		if err != nil {
			return res, err
		}
	}
	if f.Reason == "" || !replayable(f.Reason) {
		// Malformed and too_large letters (those of older routers are in
		// the stream above): an operator may ask for them; they are
		// refused again unless a newer router accepts them.
		before := res.Redriven
		_, err := redriveLetters(ctx, c, names.InvalidDeadLetterStream(prefix), names.RedriveStream(prefix), f, start, &res)
		res.Invalid = res.Redriven - before
		return res, err
	}
	return res, nil
}

// redriveLetters re-drives the dead letters of dl that match f from start on
// to the re-drive stream to, counting in res, and returns the id of the
// last one it looked at ("" when none).
func redriveLetters(ctx context.Context, c redis.UniversalClient, dl, to string, f RedriveFilter, start string, res *Redriven) (string, error) {
	last := ""
	for {
		msgs, err := c.XRangeN(ctx, dl, start, "+", redriveChunk).Result()
		if err != nil {
			return last, fmt.Errorf("reading the dead letters %s: %w", dl, err)
		}
		// The XADDs first, each checked: a dead letter is deleted only once
		// its re-driven entry is appended. A pipeline of the XADDs with the
		// XDEL would delete them whatever the XADDs answered (OOM on a bus
		// out of memory, WRONGTYPE on a re-drive key of another type).
		var ids []string
		var adds []*redis.StringCmd
		_, _ = c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, m := range msgs {
				values, skip := f.match(m)
				if skip {
					res.Skipped++
				}
				if values == nil {
					continue
				}
				adds = append(adds, pipe.XAdd(ctx, &redis.XAddArgs{Stream: to, Values: values}))
				ids = append(ids, m.ID)
			}
			return nil
		})
		var appended []string
		var addErr error
		for i, cmd := range adds {
			if err := cmd.Err(); err != nil {
				if addErr == nil {
					addErr = fmt.Errorf("appending dead letter %s to the re-drive stream %s: %w", ids[i], to, err)
				}
				continue
			}
			appended = append(appended, ids[i])
		}
		if len(appended) > 0 {
			if err := c.XDel(ctx, dl, appended...).Err(); err != nil {
				// Re-driven but still dead letters: a replay re-drives them
				// again, which publishes nothing twice (same event ids).
				return last, fmt.Errorf("deleting %d re-driven dead letters: %w", len(appended), err)
			}
		}
		res.Redriven += len(appended)
		if addErr != nil {
			return last, fmt.Errorf("re-driving dead letters: %d of %d not re-driven, left in the dead letters: %w", len(ids)-len(appended), len(ids), addErr)
		}
		if len(msgs) > 0 {
			res.Last = msgs[len(msgs)-1].ID
		}
		if len(msgs) < redriveChunk {
			return last, nil
		}
		start = "(" + res.Last
	}
}

// match returns the fields of the re-driven entry of dead letter m, or nil
// when m is not to be re-driven; skip is set when m matches the reason but
// cannot be re-driven.
func (f *RedriveFilter) match(m redis.XMessage) (values []any, skip bool) {
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	if f.Reason != "" && str("reason") != f.Reason {
		return nil, false
	}
	var fields map[string]any
	if err := json.Unmarshal([]byte(str("entry")), &fields); err != nil {
		return nil, true // cut at the dead letters' limit: the event is not whole
	}
	event, single := fields[wire.EventField].(string)
	events, many := fields[wire.EventsField].(string)
	if single == many {
		return nil, true
	}
	doms := domainsOf(event, events)
	if f.Domain != "" && !slices.Contains(doms, f.Domain) {
		return nil, false
	}
	if f.domains != nil && !slices.ContainsFunc(doms, func(d string) bool { return f.domains[d] }) {
		return nil, false
	}
	values = []any{redriveStream, str("stream"), redriveEntry, str("entry_id"), redriveFrom, m.ID}
	if single {
		values = append(values, wire.EventField, event)
	} else {
		values = append(values, wire.EventsField, events)
	}
	if i := str("index"); i != "" {
		values = append(values, redriveIndex, i)
	}
	if f.For != "" {
		values = append(values, redriveFor, f.For)
	}
	return values, false
}

// domainsOf returns the domains of an entry's event or events that decode.
func domainsOf(event, events string) []string {
	if event != "" {
		if ev, err := wire.ParseEventString(event); err == nil {
			return []string{ev.Domain}
		}
		return nil
	}
	list, err := wire.ParseEventsString(events)
	if err != nil {
		return nil
	}
	var doms []string
	for _, p := range list {
		if p.Err == nil && !slices.Contains(doms, p.Event.Domain) {
			doms = append(doms, p.Event.Domain)
		}
	}
	return doms
}

// redriven reads where a re-driven entry first came from into e. A field
// that breaks its rule makes the entry malformed (only routers write the
// re-drive stream: this is damage, not input).
func (r *Router) redriven(e *entry, values map[string]any) bool {
	str := func(k string) string { s, _ := values[k].(string); return s }
	from, id := str(redriveStream), str(redriveEntry)
	_, perr := names.ParseIngressStream(r.prefix, from)
	switch {
	case perr != nil && names.StreamPublisher(r.prefix, from) == "":
		e.reason, e.detail = ReasonMalformed, fmt.Sprintf("re-driven entry: %s %q is no ingress stream", redriveStream, from)
		return false
	case !validEntryID(id):
		e.reason, e.detail = ReasonMalformed, fmt.Sprintf("re-driven entry: %s %q is no stream entry id", redriveEntry, id)
		return false
	}
	e.from, e.fromID, e.handTo = from, id, str(redriveFor)
	if i := str(redriveIndex); i != "" {
		n, err := strconv.Atoi(i)
		if err != nil || n < 0 || strconv.Itoa(n) != i {
			e.reason, e.detail = ReasonMalformed, fmt.Sprintf("re-driven entry: %s %q is no index", redriveIndex, i)
			return false
		}
		e.fromIndex = n
	}
	return true
}

// validEntryID reports whether id has the form of a stream entry id, "<ms>-<seq>".
func validEntryID(id string) bool {
	ms, seq, ok := strings.Cut(id, "-")
	_, err1 := strconv.ParseUint(ms, 10, 64)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return ok && err1 == nil && err2 == nil
}

// unknownDomain reports whether an event of e was refused because the
// matrix does not know its domain.
func (e *entry) unknownDomain() bool {
	return slices.ContainsFunc(e.events, func(v event) bool { return v.reason == ReasonUnknownDomain })
}

// handOver takes out of a batch of the re-drive stream the entries re-driven
// for another router that is alive and routes them otherwise (it knows a
// domain this one does not, or runs another matrix), and gives them to that
// router (XCLAIM, one per router), which routes them on its next round.
// The others are returned, to be routed (or dead-lettered) here; an entry
// whose XCLAIM failed is tried again.
func (r *Router) handOver(ctx context.Context, entries []*entry) []*entry {
	var keep []*entry
	give := map[string][]*entry{}
	var alive map[string]bool
	for _, e := range entries {
		to := e.handTo
		if to == "" || to == r.opt.Consumer || e.reason != "" || !r.takenElsewhere(e) {
			keep = append(keep, e)
			continue
		}
		if alive == nil {
			alive = r.liveConsumers(ctx)
		}
		// Alive: it read the re-drive stream lately, or its registration
		// lasts (it may not have read the stream yet: it just started).
		if !alive[to] && r.peers.digestOf(to, time.Now()) == "" {
			// Its router is gone: routed here, and handed over again to
			// the live routers on other matrices like a new entry (or
			// dead-lettered again, for the next one that knows the domain).
			e.handTo = ""
			keep = append(keep, e)
			continue
		}
		give[to] = append(give[to], e)
	}
	if len(give) == 0 {
		return keep
	}
	cmds := map[string]*redis.StringSliceCmd{}
	_, _ = r.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for to, list := range give {
			ids := make([]string, len(list))
			for i, e := range list {
				ids[i] = e.id
			}
			cmds[to] = pipe.XClaimJustID(ctx, &redis.XClaimArgs{Stream: r.redrive, Group: r.opt.Group, Consumer: to, Messages: ids})
		}
		return nil
	})
	var handed []*entry
	for to, list := range give {
		if err := cmds[to].Err(); err != nil {
			r.log.Warn("handing re-driven entries over to the router they are for; tried again", "entries", len(list), "to", to, "err", err)
			for _, e := range list {
				r.retryLater(e, err)
			}
			continue
		}
		r.m.handedOver.Add(float64(len(list)))
		r.log.Debug("handed re-driven entries over to the router they are for", "entries", len(list), "to", to)
		handed = append(handed, list...)
	}
	r.retryDone(handed)
	return keep
}

// liveConsumers returns the consumers of the re-drive stream that read it
// (or were touched) within DeadAfter: the routers that are alive. Not
// within ClaimIdle: a hand-over starts the idle time of the router it
// gives to again, and the others, taking it for dead after DeadAfter,
// claimed the entries and gave them back, for ever.
func (r *Router) liveConsumers(ctx context.Context) map[string]bool {
	alive := map[string]bool{}
	consumers, err := r.c.XInfoConsumers(ctx, r.redrive, r.opt.Group).Result()
	if err != nil {
		r.log.Warn("listing the routers of the re-drive stream", "err", err)
		return alive
	}
	for _, c := range consumers {
		if c.Idle < r.opt.DeadAfter {
			alive[c.Name] = true
		}
	}
	return alive
}

// takeHandedOver routes the entries of the re-drive stream that other
// routers handed over to this one: those pending for it that it does not
// hold already.
func (r *Router) takeHandedOver(ctx context.Context) error {
	res, _, err := r.claimPending(ctx, r.redrive, 0, "-", r.opt.Consumer, r.opt.ReadBytes)
	if err != nil {
		if redis.HasErrorPrefix(err, "NOGROUP") {
			return nil // made again by the stream's read loop
		}
		return err
	}
	held := r.heldOn(r.redrive)
	var msgs []redis.XMessage
	for _, m := range res {
		if !held[m.ID] {
			msgs = append(msgs, m)
		}
	}
	return r.process(ctx, r.redrive, msgs)
}

// redriveKnown re-drives the unknown_domain dead letters of the domains the
// matrix knows that were written since the last round (all of them after
// start or a reload that added domains), naming this router.
func (r *Router) redriveKnown(ctx context.Context) error {
	start := "-"
	if r.rescanDead.Swap(false) {
		r.deadCursor = ""
	}
	if r.deadCursor != "" {
		start = "(" + r.deadCursor
	}
	domains := map[string]bool{}
	for _, d := range r.matrix.Load().DomainNames() {
		domains[d] = true
	}
	res, err := redrive(ctx, r.c, r.prefix, RedriveFilter{Reason: ReasonUnknownDomain, domains: domains, For: r.opt.Consumer}, start)
	if res.Last != "" {
		r.deadCursor = res.Last
	}
	if res.Redriven > 0 {
		r.m.redriven.Add(float64(res.Redriven))
		r.log.Info("re-driving dead letters of domains this router knows", "dead_letters", res.Redriven)
	}
	return err
}
