package lua

import (
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
)

// DeliveryClean is the value of names.DeliveryKey that says the last agent
// with --deliver stopped with every delivery made.
const DeliveryClean = "clean"

// DeliveryMarkRequest is one call of delivery.lua: mark a service's cache
// Redis clean (names.DeliveryKey set to DeliveryClean).
type DeliveryMarkRequest struct {
	Service string
}

// DeliveryMarkReply is delivery.lua's reply to a mark: nothing beyond
// success.
type DeliveryMarkReply struct{}

func (*DeliveryMarkRequest) script() *redis.Script { return deliveryScript }

func (r *DeliveryMarkRequest) encode() (keys []string, args []any) {
	return []string{names.DeliveryKey(r.Service)}, []any{"mark", DeliveryClean}
}

// Reply decodes the call's reply.
func (r *DeliveryMarkRequest) Reply(cmd *redis.Cmd) (DeliveryMarkReply, error) {
	return DeliveryMarkReply{}, cmd.Err()
}

// PresenceRequest is one call of delivery.lua: add Member to a service's
// names.DeliveryPlainKey, taking Replaced ("" for none) away.
type PresenceRequest struct {
	Service, Member, Replaced string
}

// PresenceReply is delivery.lua's reply to a presence.
type PresenceReply struct {
	Added bool
}

func (*PresenceRequest) script() *redis.Script { return deliveryScript }

func (r *PresenceRequest) encode() (keys []string, args []any) {
	return []string{names.DeliveryPlainKey(r.Service)}, []any{"presence", r.Member, r.Replaced}
}

// Reply decodes the call's reply.
func (r *PresenceRequest) Reply(cmd *redis.Cmd) (PresenceReply, error) {
	n, err := cmd.Int64()
	return PresenceReply{Added: n == 1}, err
}
