package router

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// Reads bounded in bytes.
//
// XREADGROUP and XAUTOCLAIM bound a read by a count of entries only: forty
// entries of 7 MB (refused as too large, but read first) took a router from
// 26 MB to 658 MB. So new entries are read through a connection that cuts a
// reply above the read's bounds on the way in (bounded.go), and the
// entries of a cut reply, claims and a restarted router's own pending
// entries are read through a script (lua/claim.lua) that looks at the
// entries on the server before they are sent: one read returns at most
// Options.ReadBytes of field names and values (and at least one entry), and
// a value above MaxEventBytes — which the router refuses anyway — comes back
// cut to its first DeadLetterEntryBytes, with its length (a field name so
// long comes back cut too, its length noted in the name), so it is
// dead-lettered as too_large without ever being held. When the bounded
// connection cannot serve, new entries are read through lua/read.lua,
// bounded the same way (what it read beyond the budget is given back to the
// group); only a read that then waits for the next entry (XREADGROUP COUNT
// 1 BLOCK: a script cannot block) returns one entry whole.

// maxStreamID is the largest id a stream entry can have.
const maxStreamID = "18446744073709551615-18446744073709551615"

// cutValue is a field value of an entry that was cut on the server: its
// first bytes and its full length. It marshals as those bytes and a note,
// so a dead letter's copy of the entry says so.
type cutValue struct {
	kept string
	size int
}

func (c cutValue) MarshalJSON() ([]byte, error) {
	return json.Marshal(fmt.Sprintf("%s… [cut when read: the value is %d bytes]", c.kept, c.size))
}

// readNew reads the group's new entries of stream: what fits the byte
// budget now, or, when nothing is new, the next entry within block. With
// pending true, entries were delivered to this consumer and not returned
// (a reply cut for its bounds, a connection lost): the read loop takes its
// pending entries next.
func (r *Router) readNew(ctx context.Context, s *streamReader, count int, block time.Duration) (msgs []redis.XMessage, pending bool, err error) {
	msgs, outcome, err := s.read(ctx, count, block)
	switch outcome {
	case readDone:
		if len(msgs) > 0 {
			// The live routers, read after the entries (handover.go).
			r.notePeers(r.c.HGetAll(ctx, names.RoutersKey(r.prefix)))
		}
		return msgs, false, err
	case readPending:
		return nil, true, nil
	}
	stream := s.stream
	wait := 1
	count = min(count, maxScriptReadBatches*r.opt.BatchSize) // a read that fell back here (bound)
	req := lua.ReadRequest{Stream: stream, Group: r.opt.Group, Consumer: r.opt.Consumer, Count: count,
		Bytes: s.size.scale(r.opt.ReadBytes), MaxValue: r.opt.MaxEventBytes, Keep: r.opt.DeadLetterEntryBytes}
	reply, err := readWithPeers(ctx, r, &req)
	switch {
	case r.refused(err):
		wait = count // unbounded, as routers before the read script
	case err != nil:
		return nil, false, err
	case reply.Status == lua.ReadEntries:
		return withCuts(reply.Entries), false, nil
	}
	res, err := r.c.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: r.opt.Group, Consumer: r.opt.Consumer, Streams: []string{stream, ">"}, Count: int64(wait), Block: block,
	}).Result()
	if err != nil || len(res) == 0 {
		return nil, false, err
	}
	// The live routers, read after the entries (handover.go); not in a
	// pipeline with the blocking read, whose wait a pipeline's read
	// timeout would cut.
	r.notePeers(r.c.HGetAll(ctx, names.RoutersKey(r.prefix)))
	// Cut what is too large here too, so the whole value is not kept.
	for _, m := range res[0].Messages {
		for k, v := range m.Values {
			if s, ok := v.(string); ok && len(s) > r.opt.MaxEventBytes {
				m.Values[k] = cutValue{kept: strings.Clone(s[:min(len(s), r.opt.DeadLetterEntryBytes)]), size: len(s)}
			}
		}
	}
	return res[0].Messages, false, nil
}

// claimPending claims the group's entries of stream pending for at least
// idle from start on — those pending for the consumer of only, unless of
// is "" (this router's own are claimed whatever idle) — as many as fit
// bytes (at least one). It returns them and the start of the next call
// ("0-0" when every pending entry was looked at).
// Pending entries it finds deleted from the stream are acknowledged,
// counted and logged (deletedPending).
func (r *Router) claimPending(ctx context.Context, stream string, idle time.Duration, start string, of string, bytes int) ([]redis.XMessage, string, error) {
	msgs, next, deleted, err := r.claimPendingOn(ctx, r.c, stream, idle, start, of, bytes)
	r.deletedPending(stream, deleted)
	return msgs, next, err
}

// deletedPending logs that n entries of stream pending for a router were
// found deleted (a client's XDEL or trim) by a claim round, which
// acknowledged them (lua/claim.lua): lost, never routed. claimPendingOn
// has counted them already.
func (r *Router) deletedPending(stream string, n int64) {
	if n > 0 {
		r.log.Warn("pending ingress entries deleted before they were routed (XDEL or XTRIM by a client while a router held them): they are lost, acknowledged",
			"stream", stream, "entries", n)
	}
}

// claims is the client claims of other routers' and forgotten entries
// run through (Router.claimC).
func (r *Router) claims() redis.UniversalClient {
	if r.claimC == nil {
		return r.c
	}
	return r.claimC
}

// claimPendingOn is claimPending through the client c, which also returns
// how many pending entries it found deleted from the stream and
// acknowledged: those are counted in routerd_ingress_entries_lost_total
// here, and the caller logs them once for its round (deletedPending).
func (r *Router) claimPendingOn(ctx context.Context, c redis.UniversalClient, stream string, idle time.Duration, start string, of string, bytes int) ([]redis.XMessage, string, int64, error) {
	if start == "("+maxStreamID {
		// Nothing follows the largest id (a stream a client exhausted,
		// XADD … 18446744073709551615-18446744073709551615), and Redis
		// refuses it as an exclusive start.
		return nil, "0-0", 0, nil
	}
	req := lua.ClaimRequest{Stream: stream, Group: r.opt.Group, Consumer: r.opt.Consumer, MinIdle: idle, Start: start,
		Count: r.opt.BatchSize, Bytes: bytes, MaxValue: r.opt.MaxEventBytes, Keep: r.opt.DeadLetterEntryBytes, Of: of}
	reply, err := readWithPeersOn(ctx, r, c, &req)
	if r.refused(err) {
		msgs, next, err := r.claimUnbounded(ctx, stream, idle, start, of)
		return msgs, next, 0, err
	}
	if err != nil {
		return nil, "", 0, err
	}
	r.m.lost.Add(float64(reply.Deleted))
	return withCuts(reply.Entries), reply.Next, reply.Deleted, nil
}

// refused reports whether err says the Redis user may not run a command of
// the read or claim script: a user made by an older routerd acl. The router
// then reads as routers before those scripts did (bounded in entries only),
// and says so once.
func (r *Router) refused(err error) bool {
	if err == nil || !scriptRefused(err) {
		return false
	}
	if r.refusedOnce.CompareAndSwap(false, true) {
		r.log.Warn("the router's Redis user may not run the read scripts' commands (XRANGE, XGROUP SETID): reads are not bounded in bytes; apply the line of routerd acl --role router again", "err", err)
	}
	return true
}

// claimUnbounded claims as claimPending does, with XAUTOCLAIM (XREADGROUP
// of this consumer's pending entries for its own, XPENDING and XCLAIM for
// another's): bounded in entries only.
func (r *Router) claimUnbounded(ctx context.Context, stream string, idle time.Duration, start string, of string) ([]redis.XMessage, string, error) {
	from := strings.TrimPrefix(start, "(")
	if of == r.opt.Consumer {
		if from == "-" {
			from = "0"
		}
		res, err := r.c.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: r.opt.Group, Consumer: r.opt.Consumer, Streams: []string{stream, from}, Count: int64(r.opt.BatchSize), Block: -1,
		}).Result()
		if err != nil || len(res) == 0 || len(res[0].Messages) == 0 {
			return nil, "0-0", err
		}
		msgs := res[0].Messages
		return msgs, "(" + msgs[len(msgs)-1].ID, nil
	}
	if of != "" {
		pending, err := r.c.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: stream, Group: r.opt.Group, Idle: idle, Start: start, End: "+", Count: int64(r.opt.BatchSize), Consumer: of,
		}).Result()
		if err != nil || len(pending) == 0 {
			return nil, "0-0", err
		}
		ids := make([]string, len(pending))
		for i, p := range pending {
			ids[i] = p.ID
		}
		msgs, err := r.c.XClaim(ctx, &redis.XClaimArgs{
			Stream: stream, Group: r.opt.Group, Consumer: r.opt.Consumer, MinIdle: idle, Messages: ids,
		}).Result()
		return msgs, "(" + ids[len(ids)-1], err
	}
	if from == "-" {
		from = "0-0"
	}
	return r.c.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: stream, Group: r.opt.Group, Consumer: r.opt.Consumer, MinIdle: idle, Start: from, Count: int64(r.opt.BatchSize),
	}).Result()
}

// withCuts is the entries a read or claim script returned, each value cut
// on the server a cutValue.
func withCuts(e lua.Entries) []redis.XMessage {
	for _, c := range e.Cut {
		values := e.Entries[c.Entry].Values
		if kept, ok := values[c.Field].(string); ok {
			values[c.Field] = cutValue{kept: kept, size: c.Size}
		}
	}
	return e.Entries
}

// cutEvent says why an entry whose event or events field was cut when read,
// or that came back as a stub (heavier than a whole read), is refused as
// too large ("" when none was); event and events are the entry's values of
// those fields (nil: none).
func (r *Router) cutEvent(values map[string]any, event, events any) string {
	if event == nil && events == nil && len(values) == 1 {
		if c, ok := values[""].(cutValue); ok {
			// A stub: the entry weighed more than a whole read (lua/weight.lua).
			return "entry of " + strconv.Itoa(c.size) + " bytes (its field names and values, with their framing) is above what one read holds whole: " +
				strconv.Itoa(max(r.opt.ReadBytes, r.opt.MaxEventBytes+64<<10)) + " bytes (the larger of read bytes and max event bytes + 64 KiB)"
		}
	}
	for _, f := range []struct {
		name  string
		value any
	}{{wire.EventField, event}, {wire.EventsField, events}} {
		if c, ok := f.value.(cutValue); ok {
			return f.name + " of " + strconv.Itoa(c.size) + " bytes is above the limit of " + strconv.Itoa(r.opt.MaxEventBytes) + " bytes (max event bytes)"
		}
	}
	return ""
}
