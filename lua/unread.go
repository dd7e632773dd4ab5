package lua

import (
	"github.com/redis/go-redis/v9"
)

// UnreadRequest is one call of unread.lua: count the entries of an ingress
// stream deleted before its consumer group read them, and take them out of
// the group's lag.
type UnreadRequest struct {
	Stream string
	Group  string
	// Most is how many entries left to read one call counts at most, to
	// tell them from what was deleted; 0: none, the head check alone
	// (unread.lua), which counts no entry (its XINFO STREAM copies the
	// stream's first and last entries, nothing more).
	Most int
}

// UnreadReply is what the call found.
type UnreadReply struct {
	// Lost is how many entries were deleted before the group read them
	// (0: none, or the call could not tell: unread.lua).
	Lost int64
	// Last is an id the lost entries were added before: the first entry
	// left to read, or the group's last delivered id.
	Last string
}

func (*UnreadRequest) script() *redis.Script { return unreadScript }

func (r *UnreadRequest) encode() (keys []string, args []any) {
	return []string{r.Stream}, []any{r.Group, max(r.Most, 0)}
}

// Reply decodes the call's reply.
func (r *UnreadRequest) Reply(cmd *redis.Cmd) (UnreadReply, error) {
	v, err := cmd.Slice()
	if err != nil {
		return UnreadReply{}, err
	}
	if len(v) != 2 {
		return UnreadReply{}, badReply("unread.lua", "%d values, not 2", len(v))
	}
	lost, ok := v[0].(int64)
	last, ok2 := v[1].(string)
	if !ok || !ok2 || lost < 0 {
		return UnreadReply{}, badReply("unread.lua", "%v", v)
	}
	return UnreadReply{Lost: lost, Last: last}, nil
}
