package lua

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// LeaseRequest is one call of lease.lua: read a cache value, or take its
// lease when it is missing.
type LeaseRequest struct {
	Key       string   // the cache key
	LeaseKey  string   // names.LeaseKey
	Sets      []string // the sets the value will be registered in, as SetRequest.Sets
	Token     string   // unique to this fill (random, at least 16 characters)
	LeaseTime time.Duration
	Expiring  int // how many of the last Sets expire with their values
}

// LeaseStatus is the outcome of a lease call.
type LeaseStatus string

const (
	// LeaseHit: the value is cached (Value).
	LeaseHit LeaseStatus = "HIT"
	// Leased: the caller holds the lease: load, then fill or release.
	Leased LeaseStatus = "LEASED"
	// LeaseWait: another fill holds the lease for Left more.
	LeaseWait LeaseStatus = "WAIT"
)

// LeaseReply is what a lease call found.
type LeaseReply struct {
	Status LeaseStatus
	Value  []byte        // LeaseHit
	Left   time.Duration // LeaseWait
}

func (*LeaseRequest) script() *redis.Script { return leaseScript }

func (r *LeaseRequest) encode() (keys []string, args []any) {
	keys = make([]string, 0, 2+len(r.Sets))
	keys = append(append(keys, r.Key, r.LeaseKey), r.Sets...)
	return keys, []any{r.Token, r.LeaseTime.Milliseconds(), r.Expiring}
}

// Reply decodes the call's reply.
func (r *LeaseRequest) Reply(cmd *redis.Cmd) (LeaseReply, error) {
	v, err := cmd.Slice()
	if err != nil {
		return LeaseReply{}, err
	}
	var status string
	if len(v) > 0 {
		status, _ = v[0].(string)
	}
	switch rep := (LeaseReply{Status: LeaseStatus(status)}); {
	case rep.Status == LeaseHit && len(v) == 2:
		if s, ok := v[1].(string); ok {
			rep.Value = []byte(s)
			return rep, nil
		}
	case rep.Status == Leased && len(v) == 1:
		return rep, nil
	case rep.Status == LeaseWait && len(v) == 2:
		if ms, ok := v[1].(int64); ok {
			rep.Left = time.Duration(ms) * time.Millisecond
			return rep, nil
		}
	}
	return LeaseReply{}, badReply("lease.lua", "unexpected reply %v", v)
}
