package lua

import (
	"github.com/redis/go-redis/v9"
)

// CompactRequest is one call of compact.lua: drop from a set the members
// whose keys are gone.
type CompactRequest struct {
	Set     string
	Members []string // at most MaxUnpack
}

// CompactReply is what a compaction removed.
type CompactReply struct {
	Removed int64
}

func (*CompactRequest) script() *redis.Script { return compactScript }

func (r *CompactRequest) encode() (keys []string, args []any) {
	return []string{r.Set}, appendStrings(make([]any, 0, len(r.Members)), r.Members)
}

// Reply decodes the call's reply.
func (r *CompactRequest) Reply(cmd *redis.Cmd) (CompactReply, error) {
	n, err := cmd.Int64()
	return CompactReply{Removed: n}, err
}
