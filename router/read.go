package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/lua"
)

// Reads bounded in bytes.
//
// XREADGROUP and XAUTOCLAIM bound a read by a count of entries only: forty
// entries of 7 MB (refused as too large, but read first) took a router from
// 26 MB to 658 MB. So the router reads and claims through scripts
// (lua/read.lua, lua/claim.lua) that measure the entries on the server
// first: one read returns at most Options.ReadBytes of field values (and
// at least one entry), and a value above MaxEventBytes — which the router
// refuses anyway — comes back cut to its first DeadLetterEntryBytes, with
// its length, so it is dead-lettered as too_large without ever being held.
// Only a read that waits for the next entry (XREADGROUP COUNT 1 BLOCK: a
// script cannot block) returns one entry whole.

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
// budget now, or, when nothing is new, the next entry within block.
func (r *Router) readNew(ctx context.Context, stream string, count int, block time.Duration) ([]redis.XMessage, error) {
	reply, err := lua.Read.Run(ctx, r.c, []string{stream}, r.opt.Group, r.opt.Consumer, count,
		r.opt.ReadBytes, r.opt.MaxEventBytes, r.opt.DeadLetterEntryBytes).Slice()
	if err != nil {
		return nil, err
	}
	if len(reply) > 0 {
		return scriptEntries(reply)
	}
	res, err := r.c.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: r.opt.Group, Consumer: r.opt.Consumer, Streams: []string{stream, ">"}, Count: 1, Block: block,
	}).Result()
	if err != nil || len(res) == 0 {
		return nil, err
	}
	return res[0].Messages, nil
}

// claimPending claims the group's entries of stream pending for at least
// idle from start on — with own, those pending for this consumer only — as
// many as fit the byte budget. It returns them and the start of the next
// call ("0-0" when every pending entry was looked at).
func (r *Router) claimPending(ctx context.Context, stream string, idle time.Duration, start string, own bool) ([]redis.XMessage, string, error) {
	flag := "0"
	if own {
		flag = "1"
	}
	reply, err := lua.Claim.Run(ctx, r.c, []string{stream}, r.opt.Group, r.opt.Consumer, idle.Milliseconds(), start,
		r.opt.BatchSize, r.opt.ReadBytes, r.opt.MaxEventBytes, r.opt.DeadLetterEntryBytes, flag).Slice()
	if err != nil {
		return nil, "", err
	}
	if len(reply) != 2 {
		return nil, "", fmt.Errorf("claim script: a reply of %d items", len(reply))
	}
	next, _ := reply[0].(string)
	list, _ := reply[1].([]any)
	msgs, err := scriptEntries(list)
	return msgs, next, err
}

// scriptEntries reads the entries of a read or claim script's reply:
// {id, {field, value, …}, {cut field, length, …}} each.
func scriptEntries(reply []any) ([]redis.XMessage, error) {
	bad := errors.New("read script: an entry that is not {id, fields, cut}")
	msgs := make([]redis.XMessage, len(reply))
	for i, item := range reply {
		e, ok := item.([]any)
		if !ok || len(e) != 3 {
			return nil, bad
		}
		id, ok1 := e[0].(string)
		fields, ok2 := e[1].([]any)
		cut, ok3 := e[2].([]any)
		if !ok1 || !ok2 || !ok3 || len(fields)%2 != 0 || len(cut)%2 != 0 {
			return nil, bad
		}
		values := make(map[string]any, len(fields)/2)
		for j := 0; j < len(fields); j += 2 {
			k, _ := fields[j].(string)
			values[k] = fields[j+1]
		}
		for j := 0; j < len(cut); j += 2 {
			k, _ := cut[j].(string)
			size, _ := cut[j+1].(int64)
			kept, _ := values[k].(string)
			values[k] = cutValue{kept: kept, size: int(size)}
		}
		msgs[i] = redis.XMessage{ID: id, Values: values}
	}
	return msgs, nil
}

// cutEvent says why an entry whose event or events field was cut when read
// is refused as too large ("" when none was).
func (r *Router) cutEvent(values map[string]any) string {
	for _, f := range []string{"event", "events"} {
		if c, ok := values[f].(cutValue); ok {
			return f + " of " + strconv.Itoa(c.size) + " bytes is above the limit of " + strconv.Itoa(r.opt.MaxEventBytes) + " bytes (max event bytes)"
		}
	}
	return ""
}
