package lua

import (
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
)

// GenerationRequest is one call of generation.lua: record the bus identity
// a service's complete check saw.
type GenerationRequest struct {
	Service  string
	Identity string
}

// GenerationReply is generation.lua's reply: nothing beyond success.
type GenerationReply struct{}

func (*GenerationRequest) script() *redis.Script { return generationScript }

func (r *GenerationRequest) encode() (keys []string, args []any) {
	return []string{names.GenerationSeenKey(r.Service)}, []any{r.Identity}
}

// Reply decodes the call's reply.
func (r *GenerationRequest) Reply(cmd *redis.Cmd) (GenerationReply, error) {
	return GenerationReply{}, cmd.Err()
}
