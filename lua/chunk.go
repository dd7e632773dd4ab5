package lua

import (
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

func (*ChunkRequest) script() *redis.Script { return chunkScript }

func (r *ChunkRequest) encode() (keys []string, args []any) { return []string{r.Set}, []any{r.Batch} }

// Reply decodes the call's reply.
func (r *ChunkRequest) Reply(cmd *redis.Cmd) (ChunkReply, error) {
	v, err := cmd.Int64Slice()
	if v, err = sized("chunk.lua", 2, v, err); err != nil {
		return ChunkReply{}, err
	}
	return ChunkReply{Deleted: v[0], Left: v[1]}, nil
}
