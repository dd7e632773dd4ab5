package lua

import (
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
)

// DeliveryClean is the value of names.DeliveryKey that says the last agent
// with --deliver stopped with every delivery made.
const DeliveryClean = "clean"

// DeliveryTakeRequest is one call of delivery.lua: take a service's clean
// mark (names.DeliveryKey) at an agent's start, leaving Token, the agent
// run's own, in its place: any other subscriber that starts on the cache
// Redis takes the mark away (subscriber/presence.go), so a token still
// there when the agent stops says none did meanwhile.
type DeliveryTakeRequest struct {
	Service, Token string
}

// DeliveryTakeReply is delivery.lua's reply to a take.
type DeliveryTakeReply struct {
	// Was is the mark's value before ("" for none).
	Was string
}

func (*DeliveryTakeRequest) script() *redis.Script { return deliveryScript }

func (r *DeliveryTakeRequest) encode() (keys []string, args []any) {
	return []string{names.DeliveryKey(r.Service)}, []any{"take", r.Token, ""}
}

// Reply decodes the call's reply.
func (r *DeliveryTakeRequest) Reply(cmd *redis.Cmd) (DeliveryTakeReply, error) {
	v, err := cmd.Text()
	if errors.Is(err, redis.Nil) {
		return DeliveryTakeReply{}, nil
	}
	return DeliveryTakeReply{Was: v}, err
}

// DeliveryMarkRequest is one call of delivery.lua: mark a service's cache
// Redis clean (names.DeliveryKey set to DeliveryClean) if the mark still
// holds Token, the one the agent's DeliveryTakeRequest left.
type DeliveryMarkRequest struct {
	Service, Token string
}

// DeliveryMarkReply is delivery.lua's reply to a mark.
type DeliveryMarkReply struct {
	// Marked is false when the mark no longer held the token: another
	// subscriber started on the cache Redis since the agent did.
	Marked bool
}

func (*DeliveryMarkRequest) script() *redis.Script { return deliveryScript }

func (r *DeliveryMarkRequest) encode() (keys []string, args []any) {
	return []string{names.DeliveryKey(r.Service)}, []any{"mark", DeliveryClean, r.Token}
}

// Reply decodes the call's reply.
func (r *DeliveryMarkRequest) Reply(cmd *redis.Cmd) (DeliveryMarkReply, error) {
	n, err := cmd.Int64()
	return DeliveryMarkReply{Marked: n == 1}, err
}

// PresenceRequest is one call of delivery.lua: add a member for ID to a
// service's names.DeliveryPlainKey, "<ID>@<unix seconds it expires>", For
// from now on the cache Redis's clock (TIME), taking Replaced ("" for none)
// away. Member is the one written where the user may not run TIME (an ACL
// of an earlier routerd acl): the same, on the caller's clock.
type PresenceRequest struct {
	Service, ID, Member, Replaced string
	For                           time.Duration
}

// PresenceReply is delivery.lua's reply to a presence.
type PresenceReply struct {
	// Member is the member written.
	Member string
}

func (*PresenceRequest) script() *redis.Script { return deliveryScript }

func (r *PresenceRequest) encode() (keys []string, args []any) {
	return []string{names.DeliveryPlainKey(r.Service)}, []any{"presence", r.Member, r.Replaced, r.ID, int64(r.For / time.Second)}
}

// Reply decodes the call's reply.
func (r *PresenceRequest) Reply(cmd *redis.Cmd) (PresenceReply, error) {
	m, err := cmd.Text()
	return PresenceReply{Member: m}, err
}

// PresenceCountRequest is one call of delivery.lua: count the members of a
// service's names.DeliveryPlainKey not expired on the cache Redis's clock
// (TIME), taking the expired ones away. Now is the caller's clock, used
// where the user may not run TIME.
type PresenceCountRequest struct {
	Service string
	Now     time.Time
}

// PresenceCountReply is delivery.lua's reply to a count.
type PresenceCountReply struct {
	N int
}

func (*PresenceCountRequest) script() *redis.Script { return deliveryScript }

func (r *PresenceCountRequest) encode() (keys []string, args []any) {
	return []string{names.DeliveryPlainKey(r.Service)}, []any{"count", r.Now.Unix(), ""}
}

// Reply decodes the call's reply.
func (r *PresenceCountRequest) Reply(cmd *redis.Cmd) (PresenceCountReply, error) {
	n, err := cmd.Int64()
	return PresenceCountReply{N: int(n)}, err
}
