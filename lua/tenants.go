package lua

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// TenantsRequest is one call of tenants.lua: register tenants and announce
// those the registry did not hold, in one step.
type TenantsRequest struct {
	Key     string // the registry set, also the announcement channel (names.TenantsKey)
	Command string // "PUBLISH" or "SPUBLISH"
	Tenants []string
}

// TenantsReply is what a registration did.
type TenantsReply struct {
	Announced int // tenants new to the registry, announced
}

func (r *TenantsRequest) encode() (keys []string, args []any) {
	args = make([]any, 0, 1+len(r.Tenants))
	args = append(args, r.Command)
	for _, t := range r.Tenants {
		args = append(args, t)
	}
	return []string{r.Key}, args
}

// Queue queues the call in a pipeline.
func (r *TenantsRequest) Queue(ctx context.Context, pipe redis.Pipeliner) *redis.Cmd {
	keys, args := r.encode()
	return tenantsScript.EvalSha(ctx, pipe, keys, args...)
}

// Run runs the call alone.
func (r *TenantsRequest) Run(ctx context.Context, c redis.Scripter) (TenantsReply, error) {
	keys, args := r.encode()
	return r.Reply(tenantsScript.Run(ctx, c, keys, args...))
}

// Reply decodes the call's reply.
func (r *TenantsRequest) Reply(cmd *redis.Cmd) (TenantsReply, error) {
	n, err := cmd.Int64()
	if err != nil {
		return TenantsReply{}, err
	}
	return TenantsReply{Announced: int(n)}, nil
}
