package lua

import (
	"context"

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

// Run runs the call.
func (r *ReleaseRequest) Run(ctx context.Context, c redis.Scripter) (ReleaseReply, error) {
	keys := make([]string, 0, 2+len(r.Lease.Sets))
	keys = append(append(keys, r.Lease.Key, r.Key), r.Lease.Sets...)
	n, err := releaseScript.Run(ctx, c, keys, r.Lease.Token).Int64()
	if err != nil {
		return ReleaseReply{}, err
	}
	return ReleaseReply{Released: n == 1}, nil
}
