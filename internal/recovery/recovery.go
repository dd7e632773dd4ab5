// Package recovery holds the subscriber's per-channel rules: given where a
// channel stands for this service (its position), what the channel's meta on
// the bus says, and a message, it decides what to do — apply, ignore, replay
// a range of the history, invalidate the whole tag, or repair a position
// that is ahead of the channel. It does no I/O: the subscriber reads
// positions, metas and history, asks Decide (and Resolve for a replay), and
// carries out the decisions.
//
// The rules are stated once, in docs/protocol.md §5.2 ("Writing your own
// subscriber": a live message against the channel's head, a check against
// the meta, the chain); the functions here implement them row by row, and
// docs/architecture.md ("Recovery rules") says which function does what and
// what the rules cannot reach.
//
// Over-invalidation is safe; a missed invalidation is a stale cache forever,
// so every doubt resolves to invalidating more.
package recovery

import (
	"crypto/sha1"
	"encoding/hex"
	"strconv"
)

// Position is how far a channel has been applied, or what its meta says:
// Version within Epoch. The zero Position is "none": nothing applied, or no
// meta on the bus. (tagstore.Position is the same pair as the cache stores
// it, kept apart for the reason its doc gives.)
type Position struct {
	Epoch   string
	Version int64
	// Chain is the channel's chain at Version: a digest of every message of
	// the epoch up to it, in order (Link), which tells a position reached
	// through a forged message from the channel's own. "" when unknown: a
	// position written by an older version, a Lost one, a meta written by
	// an older router, a message.
	Chain string
}

// same reports whether p and q are the same position: epoch and version,
// and the chain where both know it.
func (p Position) same(q Position) bool {
	return p.Epoch == q.Epoch && p.Version == q.Version && (p.Chain == "" || q.Chain == "" || p.Chain == q.Chain)
}

// ChainLen is the length of a chain in hex digits.
const ChainLen = 16

// Link returns the chain after a message: the first ChainLen hex digits of
// SHA-1(prev + hex SHA-1(payload)), where prev is the chain before it (""
// before version 1) and payload the message's JSON exactly as published.
// lua/publish.lua computes the same for the meta; docs/protocol.md says it
// once for other languages.
func Link(prev string, payload []byte) string {
	d := sha1.Sum(payload)
	h := sha1.New()
	h.Write([]byte(prev))
	h.Write([]byte(hex.EncodeToString(d[:])))
	return hex.EncodeToString(h.Sum(nil))[:ChainLen]
}

// Next returns where a channel stands once msg (its epoch and version, and
// its payload as published) is applied on head: msg's position, with the
// chain when it can be told (head's is known and msg follows it, or msg
// starts its epoch).
func Next(head, msg Position, payload []byte) Position {
	msg.Chain = ""
	switch {
	case msg.Version == 1:
		msg.Chain = Link("", payload)
	case head.Chain != "" && head.Epoch == msg.Epoch && head.Version == msg.Version-1:
		msg.Chain = Link(head.Chain, payload)
	}
	return msg
}

// Known reports whether p is a position at all.
func (p Position) Known() bool { return p.Epoch != "" }

func (p Position) String() string {
	if !p.Known() {
		return "none"
	}
	return p.Epoch + ":" + strconv.FormatInt(p.Version, 10)
}

// LostEpoch marks the position of a channel whose meta vanished from the bus
// after its whole tag was invalidated. Real epochs are hex, so no channel
// ever continues it.
const LostEpoch = "lost"

// Lost is the position recorded after a channel's meta vanished. Decisions
// name it with version 0; Stamp gives it a version of its moment, so that a
// cache restored to an older Lost differs from the current one.
var Lost = Position{Epoch: LostEpoch}

// Stamp gives a decision's Lost position the version stamp (a clock reading
// that grows, such as Unix milliseconds: Redis scripts hold
// numbers as doubles, exact to 2^53).
func Stamp(d Decision, stamp int64) Decision {
	if d.To.Epoch == LostEpoch {
		d.To.Version = stamp
	}
	return d
}

// Action is what to do with a channel.
type Action uint8

const (
	// Ignore: nothing to do (a duplicate, or the position is current).
	Ignore Action = iota
	// Apply the message: it directly follows the position.
	Apply
	// Verify: read the channel's meta and the stored position and decide
	// with Check.
	Verify
	// Replay versions From..To.Version of the history, then stand at To. If
	// the history no longer holds them all, invalidate the whole tag instead.
	Replay
	// WholeTag: invalidate the whole tag and stand at To.
	WholeTag
	// Repair: the position is ahead of the channel; invalidate the whole tag
	// and set the position back to To.
	Repair
)

var actionNames = [...]string{"ignore", "apply", "verify", "replay", "whole_tag", "repair"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "action(" + strconv.Itoa(int(a)) + ")"
}

// Reason says why a decision was taken, for logs and metrics.
type Reason uint8

const (
	Consecutive Reason = iota // the next version
	Duplicate                 // at or behind the position
	Current                   // the position is the channel's
	Gap                       // versions missing in the same epoch
	NewEpoch                  // the channel started another epoch
	NewChannel                // a channel never applied
	Vanished                  // the channel's meta is gone, a position was held
	Ahead                     // the position is ahead of the channel's meta
	RolledBack                // the cache lost the position it had
	Diverged                  // the position's chain is not the channel's: a forged message was applied
	Contended                 // two messages claimed one version (Contested)
)

var reasonNames = [...]string{"consecutive", "duplicate", "current", "gap", "new_epoch", "new_channel", "vanished", "ahead", "rolled_back", "diverged", "contested"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "reason(" + strconv.Itoa(int(r)) + ")"
}

// Decision is what to do with a channel, and why.
type Decision struct {
	Action Action
	Reason Reason
	From   int64    // Replay: the first version to replay
	To     Position // Replay, WholeTag, Repair: where the channel stands after
}

// OnMessage decides for a live message (its epoch and version) given the
// channel's head: the position, counting work queued but not yet applied.
func OnMessage(head, msg Position) Decision {
	switch {
	case head.Known() && head.Epoch != LostEpoch && head.Epoch == msg.Epoch:
		if msg.Version <= head.Version {
			return Decision{Action: Ignore, Reason: Duplicate}
		}
		if msg.Version == head.Version+1 {
			return Decision{Action: Apply, Reason: Consecutive}
		}
		return Decision{Action: Verify, Reason: Gap}
	case !head.Known():
		// Even version 1: its epoch may have started after the bus lost an
		// older one, which only the check can tell (Check).
		return Decision{Action: Verify, Reason: NewChannel}
	default:
		return Decision{Action: Verify, Reason: NewEpoch}
	}
}

// Confirmed reports whether the channel's meta vouches for a message: the
// same epoch, and a version the channel has reached. A message the meta
// does not confirm was forged, or comes from a bus that has since lost it;
// either way it must not move a position.
func Confirmed(msg, meta Position) bool {
	return meta.Known() && msg.Epoch == meta.Epoch && msg.Version >= 1 && msg.Version <= meta.Version
}

// Recover decides how to bring a channel from pos to its meta. A zero meta
// means the channel has no meta on the bus: nothing was published on it, or
// the bus lost it.
func Recover(pos, meta Position) Decision {
	switch {
	case !meta.Known() || meta.Version < 1:
		if !pos.Known() || pos.Epoch == LostEpoch {
			return Decision{Action: Ignore, Reason: Current}
		}
		return Decision{Action: WholeTag, Reason: Vanished, To: Lost}
	case !pos.Known():
		// Check comes here only for a channel whose epoch is all it
		// published (fresh): its history is replayed from version 1, as
		// far back as it reaches (Replayed: whole tag when it does not).
		return Decision{Action: Replay, Reason: NewChannel, From: 1, To: meta}
	case pos.Epoch != meta.Epoch:
		// Also after Lost: the bus may have lost a whole epoch more since
		// the position was recorded, so the history of this one is not
		// everything the channel published.
		return Decision{Action: WholeTag, Reason: NewEpoch, To: meta}
	case pos.Version == meta.Version:
		return Decision{Action: Ignore, Reason: Current}
	case pos.Version > meta.Version:
		return Decision{Action: Repair, Reason: Ahead, To: meta}
	default:
		return Decision{Action: Replay, Reason: Gap, From: pos.Version + 1, To: meta}
	}
}

// First narrows the decision of a check made for the first message of a
// channel without a position (version 1): a replay from version 1 replays
// only that message, taken as it would have been live; the versions after
// it are on their way, and are checked like any other if they do not come.
// It reports whether d was narrowed so.
func First(d Decision, msg Position) (Decision, bool) {
	if d.Action != Replay || d.Reason != NewChannel || d.From != 1 || msg.Version != 1 || msg.Epoch != d.To.Epoch {
		return d, false
	}
	if d.To.Version != 1 {
		d.To = Position{Epoch: msg.Epoch, Version: 1}
	}
	return d, true
}

// Channel is what a check knows of one channel.
type Channel struct {
	Memory   Position // applied, as this subscriber remembers it
	Stored   Position // as the cache holds it (HasStore)
	HasStore bool
	Meta     Position // the channel's meta on the bus; zero when it has none
	// MetaRestarted: the meta's epoch started where the channel's meta
	// was lost (evicted, deleted, expired) while its history or event ids
	// were left: an epoch came before it, whatever the bus's identity
	// says, so a channel without a position is never fresh.
	MetaRestarted bool
	// BusLost: the bus lost its data since this service last looked (the
	// router's generation key changed or vanished). A channel without a
	// meta may then have published and lost messages, whatever position is
	// held — even none, or Lost.
	BusLost bool
	// BusKnown: the bus's generation is the one this service's last
	// complete check recorded (it has not lost its data since). Neither
	// BusKnown nor BusLost: the service never recorded one.
	BusKnown bool
	// Watched: this subscriber checked the channel under the bus's current
	// generation and found neither a meta nor a position (see Watch), so
	// the channel's epoch started under its eyes.
	Watched bool
	// Announced: the subscriber heard the router announce the channel's
	// tenant, new to it, and has not checked the channel since. The router
	// announces a tenant when it joins the registry, before any of its
	// messages: unless the bus lost its data since the service last looked
	// (and so its registry), nothing was published on the channel before.
	Announced bool
	// HasHandler: invalidations also go to an in-process Handler, whose
	// position is Memory (per process), while Stored is the cache's (shared
	// by every instance of the service, and applied before the Handler).
	HasHandler bool
	// Message is the message that made the check, one that does not
	// follow the position (zero for a periodic or startup check): Decide
	// says whether the meta confirms it, and narrows a replay to it when
	// it is the channel's first (First).
	Message Position
}

// Check decides a periodic or startup check of a channel: from the position
// stored with the cache (see Start) to the channel's meta. When the cache no
// longer holds a position it had in memory (restored from a snapshot taken
// before the first one, or after the meta vanished), what it lost cannot be
// told from the history: the whole tag goes. When the bus lost its data, a
// channel without a meta goes whole too.
func Check(c Channel) Decision {
	start, moved := Start(c)
	hasMeta := c.Meta.Known() && c.Meta.Version >= 1
	if moved && c.Memory.Known() && (!start.Known() || start.Epoch == LostEpoch) {
		to := c.Meta
		if !hasMeta {
			to = Lost
		}
		return Decision{Action: Repair, Reason: RolledBack, To: to}
	}
	if c.BusLost && !hasMeta {
		return Decision{Action: WholeTag, Reason: Vanished, To: Lost}
	}
	if !start.Known() && hasMeta && !fresh(c) {
		// An epoch that started after the bus lost its data hides the one
		// lost before it: nothing tells that version 1 was the channel's
		// first message.
		return Decision{Action: WholeTag, Reason: NewChannel, To: c.Meta}
	}
	ahead := func(p Position) bool { return hasMeta && p.Epoch == c.Meta.Epoch && p.Version > c.Meta.Version }
	if c.HasStore && ahead(c.Stored) || c.HasHandler && ahead(c.Memory) {
		// The cache's position, or the Handler's, is ahead of the channel.
		return Decision{Action: Repair, Reason: Ahead, To: c.Meta}
	}
	if hasMeta && !start.same(c.Meta) && start.Epoch == c.Meta.Epoch && start.Version == c.Meta.Version {
		// At the channel's version by another road: a forged next version
		// was applied, and the channel's own message of it (or of a later
		// one) was lost. The position is the meta's, so a repair.
		return Decision{Action: Repair, Reason: Diverged, To: c.Meta}
	}
	return Recover(start, c.Meta)
}

// Adopt returns the meta's chain for a channel whose position is the meta's
// but has no chain (written before positions carried one, or after a
// contested version): it is taken as the channel's, as such a position
// always was, and from then on each message applied extends it.
func Adopt(c Channel) (string, bool) {
	start, _ := Start(c)
	if start.Known() && start.Chain == "" && c.Meta.Chain != "" && start.Epoch == c.Meta.Epoch && start.Version == c.Meta.Version {
		return c.Meta.Chain, true
	}
	return "", false
}

// Replayed checks a replay from start before it is applied: msgs are the
// positions of the history's messages (contiguous, from start's next
// version or from version 1) and payloads their JSON as published. It
// returns where the channel stands after each, and false when the chain
// they reach is not to's (both known): a message applied at or before start
// was not the channel's (forged), so replaying the rest would leave what
// the channel's own named cached — the whole tag goes instead. When start's
// chain is unknown, the last position takes to's (Adopt).
func Replayed(start Position, msgs []Position, payloads [][]byte, to Position) ([]Position, bool) {
	out := make([]Position, len(msgs))
	head := start
	for i, m := range msgs {
		head = Next(head, m, payloads[i])
		out[i] = head
	}
	if len(out) == 0 {
		return out, true
	}
	last := &out[len(out)-1]
	if last.Epoch != to.Epoch || last.Version != to.Version {
		return out, true // a replay to another position than to: nothing to compare
	}
	if last.Chain != "" && to.Chain != "" && last.Chain != to.Chain {
		return out, false
	}
	if last.Chain == "" {
		last.Chain = to.Chain
	}
	return out, true
}

// fresh reports whether a channel without a position may be replayed from
// version 1: its epoch did not start after a lost meta (MetaRestarted), and
// it was watched without a meta under the bus's current
// generation, or its tenant was announced to the subscriber since it last
// looked, or the bus kept its data since the service last looked and
// every value cached under the channel lives in the cache Redis, whose
// tenants (the tenant and position indexes) every check covers, so the
// check that recorded the generation saw the channel (a bus loss before it
// made the channel Lost). An in-process cache has no such index: a tenant
// it cached before the subscriber heard of it may have lost an epoch unseen.
func fresh(c Channel) bool {
	if c.MetaRestarted {
		return false
	}
	return c.Watched || c.Announced && looked(c) || c.BusKnown && c.HasStore && !c.HasHandler
}

// looked reports whether the service has looked at the bus under its
// current generation: its last complete check recorded it, or (a cache
// that started with the subscriber, in process) this is its first look and
// no loss is known.
func looked(c Channel) bool {
	return c.BusKnown || !c.HasStore && !c.BusLost
}

// Watch reports whether the check of c makes the channel watched under the
// bus's current generation (Channel.Watched): the channel has neither a
// meta nor a position, and the bus kept its data since the service last
// looked, so whatever epoch the channel starts next is all it published
// since. Without a store the cache is in-process and started with the
// subscriber, so its first check counts as a look; a cache Redis may hold
// values from before the service ever looked.
func Watch(c Channel) bool {
	start, _ := Start(c)
	return looked(c) && !start.Known() && !(c.Meta.Known() && c.Meta.Version >= 1)
}

// Start returns the position a check starts from: the one stored with the
// cache when there is a store (it is what the cache holds — behind memory
// after the cache was restored from a snapshot, ahead of it after another
// instance applied more), else the one in memory. moved reports that the
// two differ, so any work queued from memory is void.
//
// With a Handler too, Memory is the Handler's position and both must reach
// the meta: the older of the two in one epoch (the cache answers duplicates
// for what it has, the Handler gets what it missed — another instance's
// applies, or one the Handler failed after the cache took it); in two
// epochs (two different lost: stamps too), when the cache lost its
// position, or when the Handler has none while the cache has one (memory
// starts from the cache: the Handler failed what the cache took), none:
// from the start for both.
func Start(c Channel) (start Position, moved bool) {
	switch {
	case !c.HasStore:
		return c.Memory, false
	case c.HasHandler && c.Stored.Known() && c.Memory.Known() && c.Stored.Epoch == c.Memory.Epoch && c.Memory.Epoch != LostEpoch:
		if c.Stored.Version == c.Memory.Version && !c.Stored.same(c.Memory) {
			return Position{}, true // one of them took another message at that version
		}
		start = c.Memory
		if c.Stored.Version < c.Memory.Version || c.Stored.Version == c.Memory.Version && c.Memory.Chain == "" {
			start = c.Stored
		}
		return start, !start.same(c.Memory)
	case c.HasHandler && !c.Stored.same(c.Memory):
		// Also with nothing in memory: the subscriber starts memory from
		// the cache, so the Handler failed what the cache took since.
		return Position{}, true
	}
	return c.Stored, !c.Stored.same(c.Memory)
}

// Contiguous reports whether replayed history entries, in order, are exactly
// the versions from..to of epoch. Anything else — a hole left by trimming, an
// entry of another epoch — means the history cannot close the gap.
func Contiguous(entries []Position, epoch string, from, to int64) bool {
	if int64(len(entries)) != to-from+1 {
		return false
	}
	for i, e := range entries {
		if e.Epoch != epoch || e.Version != from+int64(i) {
			return false
		}
	}
	return true
}
