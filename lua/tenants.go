package lua

import (
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

func (*TenantsRequest) script() *redis.Script { return tenantsScript }

func (r *TenantsRequest) encode() (keys []string, args []any) {
	args = make([]any, 0, 1+len(r.Tenants))
	return []string{r.Key}, appendStrings(append(args, r.Command), r.Tenants)
}

// Reply decodes the call's reply.
func (r *TenantsRequest) Reply(cmd *redis.Cmd) (TenantsReply, error) {
	n, err := cmd.Int64()
	if err != nil {
		return TenantsReply{}, err
	}
	return TenantsReply{Announced: int(n)}, nil
}
