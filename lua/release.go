package lua

import (
	"github.com/redis/go-redis/v9"
)

// ReleaseRequest is one call of release.lua: give a lease back unfilled.
type ReleaseRequest struct {
	Key   string // the cache key
	Lease Fill
}

// ReleaseReply says whether the lease was the token's.
type ReleaseReply struct {
	Released bool // false: expired, taken by another fill, or voided by a plain store
}

func (*ReleaseRequest) script() *redis.Script { return releaseScript }

func (r *ReleaseRequest) encode() (keys []string, args []any) {
	keys = make([]string, 0, 2+len(r.Lease.Sets))
	keys = append(append(keys, r.Lease.Key, r.Key), r.Lease.Sets...)
	return keys, []any{r.Lease.Token}
}

// Reply decodes the call's reply.
func (r *ReleaseRequest) Reply(cmd *redis.Cmd) (ReleaseReply, error) {
	n, err := cmd.Int64()
	return ReleaseReply{Released: n == 1}, err
}
