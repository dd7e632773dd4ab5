package lua

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// ReadRequest is one call of read.lua: a consumer group's next entries of
// a stream, bounded in bytes.
type ReadRequest struct {
	Stream, Group, Consumer string
	Count                   int // most entries
	Bytes                   int // most bytes of field values returned (at least one entry)
	MaxValue                int // largest value returned whole; a larger one is cut
	Keep                    int // bytes kept of a value that is cut
}

// ReadStatus says whether a read found entries.
type ReadStatus int

const (
	// ReadEntries: new entries were delivered (Entries).
	ReadEntries ReadStatus = iota
	// ReadNothingNew: no entry is new.
	ReadNothingNew
)

// Entries are the entries a read or claim returned. A value above the
// largest whole is cut to its first bytes: Cut lists those.
type Entries struct {
	Entries []redis.XMessage
	Cut     []Cut
}

// Cut is a field value cut on the server: Entries[Entry].Values[Field]
// holds its first bytes; Size is its full length.
type Cut struct {
	Entry int
	Field string
	Size  int
}

// ReadReply is what a read returned.
type ReadReply struct {
	Status ReadStatus
	Entries
}

func (*ReadRequest) script() *redis.Script { return readScript }

func (r *ReadRequest) encode() (keys []string, args []any) {
	return []string{r.Stream}, []any{r.Group, r.Consumer, r.Count, r.Bytes, r.MaxValue, r.Keep}
}

// Reply decodes the call's reply.
func (r *ReadRequest) Reply(cmd *redis.Cmd) (ReadReply, error) {
	reply, err := cmd.Slice()
	if err != nil {
		return ReadReply{}, err
	}
	if len(reply) == 0 {
		return ReadReply{Status: ReadNothingNew}, nil
	}
	if len(reply) != 2 {
		return ReadReply{}, badReply("read.lua", "a reply of %d items", len(reply))
	}
	e, err := entries("read.lua", reply)
	return ReadReply{Status: ReadEntries, Entries: e}, err
}

// ClaimRequest is one call of claim.lua: claim pending entries of a
// consumer group, bounded in bytes as ReadRequest reads new ones.
type ClaimRequest struct {
	Stream, Group, Consumer string
	MinIdle                 time.Duration
	Start                   string // the first id to look at
	Count                   int    // most entries
	Bytes                   int    // most bytes of field values returned (at least one entry)
	MaxValue                int    // largest value returned whole; a larger one is cut
	Keep                    int    // bytes kept of a value that is cut
	// Of is the consumer whose pending entries are claimed ("" for any):
	// Consumer itself (its own, claimed whatever MinIdle), or another.
	Of string
}

// ClaimReply is what a claim returned.
type ClaimReply struct {
	Next string // the start of the next call; "0-0" when every pending entry was looked at
	Entries
	// Deleted is how many pending entries the call found deleted from the
	// stream (a client's XDEL or trim) and acknowledged: lost, never
	// routed.
	Deleted int64
}

func (*ClaimRequest) script() *redis.Script { return claimScript }

func (r *ClaimRequest) encode() (keys []string, args []any) {
	return []string{r.Stream}, []any{r.Group, r.Consumer, r.MinIdle.Milliseconds(), r.Start, r.Count, r.Bytes, r.MaxValue, r.Keep, r.Of}
}

// Reply decodes the call's reply.
func (r *ClaimRequest) Reply(cmd *redis.Cmd) (ClaimReply, error) {
	reply, err := cmd.Slice()
	if reply, err = sized("claim.lua", 4, reply, err); err != nil {
		return ClaimReply{}, err
	}
	next, _ := reply[0].(string)
	deleted, ok := reply[3].(int64)
	if !ok || deleted < 0 {
		return ClaimReply{}, badReply("claim.lua", "deleted %v", reply[3])
	}
	e, err := entries("claim.lua", reply[1:3])
	return ClaimReply{Next: next, Entries: e, Deleted: deleted}, err
}

// entries decodes {entries, cut}: each entry {id, {field, value, …}}, and
// for each value cut the entry's place (from 1), its field and its full
// length.
func entries(script string, reply []any) (Entries, error) {
	bad := badReply(script, "a reply that is not {entries, cut}")
	list, ok1 := reply[0].([]any)
	cut, ok2 := reply[1].([]any)
	if !ok1 || !ok2 || len(cut)%3 != 0 {
		return Entries{}, bad
	}
	msgs := make([]redis.XMessage, len(list))
	for i, item := range list {
		e, ok := item.([]any)
		if !ok || len(e) != 2 {
			return Entries{}, bad
		}
		id, ok1 := e[0].(string)
		fields, ok2 := e[1].([]any)
		if !ok1 || !ok2 || len(fields)%2 != 0 {
			return Entries{}, bad
		}
		values := make(map[string]any, len(fields)/2)
		for j := 0; j < len(fields); j += 2 {
			k, _ := fields[j].(string)
			values[k] = fields[j+1]
		}
		msgs[i] = redis.XMessage{ID: id, Values: values}
	}
	var cuts []Cut
	for j := 0; j < len(cut); j += 3 {
		at, _ := cut[j].(int64)
		k, _ := cut[j+1].(string)
		size, _ := cut[j+2].(int64)
		if at < 1 || int(at) > len(msgs) {
			return Entries{}, bad
		}
		cuts = append(cuts, Cut{Entry: int(at) - 1, Field: k, Size: int(size)})
	}
	return Entries{Entries: msgs, Cut: cuts}, nil
}
