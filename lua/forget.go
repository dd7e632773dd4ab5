package lua

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// ForgetRequest is one call of forget.lua: remove from an ingress stream's
// consumer group the consumers idle at least Idle that hold nothing, the
// check and the delete in one step.
type ForgetRequest struct {
	Stream string
	Group  string
	Keep   string // a consumer kept whatever its idle time (the caller's own)
	Idle   time.Duration
}

// Forgotten is a consumer the call removed.
type Forgotten struct {
	Name string
	Idle time.Duration // its idle time when removed
}

func (*ForgetRequest) script() *redis.Script { return forgetScript }

func (r *ForgetRequest) encode() (keys []string, args []any) {
	return []string{r.Stream}, []any{r.Group, r.Keep, max(r.Idle.Milliseconds(), 0)}
}

// Reply decodes the call's reply: the consumers removed.
func (r *ForgetRequest) Reply(cmd *redis.Cmd) ([]Forgotten, error) {
	v, err := cmd.Slice()
	if err != nil {
		return nil, err
	}
	if len(v)%2 != 0 {
		return nil, badReply("forget.lua", "%d values, not pairs", len(v))
	}
	out := make([]Forgotten, 0, len(v)/2)
	for i := 0; i < len(v); i += 2 {
		name, ok := v[i].(string)
		idle, ok2 := v[i+1].(int64)
		if !ok || !ok2 || idle < 0 {
			return nil, badReply("forget.lua", "%v", v)
		}
		out = append(out, Forgotten{Name: name, Idle: time.Duration(idle) * time.Millisecond})
	}
	return out, nil
}
