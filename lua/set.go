package lua

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// SetRequest is one call of set.lua: store a value and register its key in
// sets, atomically; with a Lease, the fill of a read-through miss.
type SetRequest struct {
	Key      string // the cache key
	Value    []byte
	TTL      time.Duration // 0 for none
	Sets     []string      // tag sets, or ref-registered and reference sets
	Expiring int           // how many of the last Sets expire with their values
	Lease    *Fill         // nil: a plain store, which voids any fill in flight
}

// Fill is the lease a SetRequest fills.
type Fill struct {
	Key   string   // the lease, names.LeaseKey
	Token string   // the token lease.lua gave
	Sets  []string // the sets lease.lua added the key to
}

// SetStatus is the outcome of a store.
type SetStatus int

const (
	// Stored: the value is stored and registered.
	Stored SetStatus = iota
	// FillVoid: the lease was no longer the token's, or an invalidation
	// covering the key came since: nothing was stored.
	FillVoid
)

// SetReply is what a store did.
type SetReply struct {
	Status SetStatus
	Added  int // Stored: the sets the key was new in
}

func (*SetRequest) script() *redis.Script { return setScript }

func (r *SetRequest) encode() (keys []string, args []any) {
	n := 1 + len(r.Sets)
	if r.Lease != nil {
		n += 1 + len(r.Lease.Sets)
	}
	keys = make([]string, 0, n)
	keys = append(keys, r.Key)
	if r.Lease != nil {
		keys = append(keys, r.Lease.Key)
	}
	keys = append(keys, r.Sets...)
	if r.Lease == nil {
		return keys, []any{r.Value, r.TTL.Milliseconds(), r.Expiring}
	}
	keys = append(keys, r.Lease.Sets...)
	return keys, []any{r.Value, r.TTL.Milliseconds(), r.Expiring, r.Lease.Token, len(r.Lease.Sets)}
}

// Reply decodes the call's reply.
func (r *SetRequest) Reply(cmd *redis.Cmd) (SetReply, error) {
	n, err := cmd.Int64()
	if err != nil {
		return SetReply{}, err
	}
	if n < 0 {
		return SetReply{Status: FillVoid}, nil
	}
	return SetReply{Status: Stored, Added: int(n)}, nil
}
