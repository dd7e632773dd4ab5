package lua

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// ChunkRequest is one call of chunk.lua: delete up to a batch of a large
// tag's keys.
type ChunkRequest struct {
	Set   string // the tag set (or a reference set)
	Batch int    // at most MaxUnpack
}

// ChunkReply is what a chunk deleted and left.
type ChunkReply struct {
	Deleted int64 // keys deleted
	Left    int64 // members left in the set
}

// Run runs the call.
func (r *ChunkRequest) Run(ctx context.Context, c redis.Scripter) (ChunkReply, error) {
	v, err := chunkScript.Run(ctx, c, []string{r.Set}, r.Batch).Int64Slice()
	if err != nil {
		return ChunkReply{}, err
	}
	if len(v) != 2 {
		return ChunkReply{}, badReply("chunk.lua", "a reply of %d numbers, not 2", len(v))
	}
	return ChunkReply{Deleted: v[0], Left: v[1]}, nil
}
