package lua

import (
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
)

// IndexRequest is one call of index.lua: record tenants in a service's
// position index.
type IndexRequest struct {
	Service string
	Tenants []string
}

// IndexReply is how many tenants were new in the index.
type IndexReply struct {
	Added int64
}

func (*IndexRequest) script() *redis.Script { return indexScript }

func (r *IndexRequest) encode() (keys []string, args []any) {
	return []string{names.PositionIndexKey(r.Service)}, appendStrings(make([]any, 0, len(r.Tenants)), r.Tenants)
}

// Reply decodes the call's reply.
func (r *IndexRequest) Reply(cmd *redis.Cmd) (IndexReply, error) {
	n, err := cmd.Int64()
	return IndexReply{Added: n}, err
}
