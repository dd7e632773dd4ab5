package lua

import (
	"github.com/redis/go-redis/v9"
)

// DeadLetterRequest is one call of deadletter.lua: write a dead letter
// unless one of the same origin was written already.
type DeadLetterRequest struct {
	Stream  string // the dead-letter stream
	Written string // its record of origins (names.DeadLetterWrittenKey)
	// Origin names what is dead-lettered: "<stream> <entry id> <index>".
	Origin string
	MaxLen int64 // most dead letters the stream keeps (about)
	Values []any // the dead letter's fields and values
}

// DeadLetterReply says whether the dead letter was written.
type DeadLetterReply struct {
	ID string // the dead letter's id; "" when one of the same origin was written already
}

func (*DeadLetterRequest) script() *redis.Script { return deadLetterScript }

func (r *DeadLetterRequest) encode() (keys []string, args []any) {
	return []string{r.Stream, r.Written}, append([]any{r.Origin, r.MaxLen}, r.Values...)
}

// Reply decodes the call's reply.
func (r *DeadLetterRequest) Reply(cmd *redis.Cmd) (DeadLetterReply, error) {
	id, err := cmd.Text()
	return DeadLetterReply{ID: id}, err
}
