package lua

import (
	"context"

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

// Run runs the call.
func (r *CompactRequest) Run(ctx context.Context, c redis.Scripter) (CompactReply, error) {
	args := make([]any, len(r.Members))
	for i, m := range r.Members {
		args[i] = m
	}
	n, err := compactScript.Run(ctx, c, []string{r.Set}, args...).Int64()
	if err != nil {
		return CompactReply{}, err
	}
	return CompactReply{Removed: n}, nil
}
