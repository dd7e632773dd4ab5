package recovery

// Plan is the whole answer of a check for one channel: where this
// subscriber stands before carrying it out, what to carry out, and what
// the check learnt on the way. The subscriber reads the channel's state
// (Channel), asks Decide, and applies the plan: it decides nothing itself.
type Plan struct {
	// Decision is what to carry out; Action Ignore: nothing.
	Decision
	// At is where the channel stands in memory before the decision is
	// carried out, the start of a replay: the position stored with the
	// cache when the cache moved (Start) and no Handler keeps its own, the
	// meta's chain taken by a position without one (Adopt).
	At Position
	// Start is where the check starts (see Start): At, or with a Handler
	// the older of the Handler's and the cache's, or none.
	Start Position
	// Moved: the cache holds another position than this subscriber
	// applied (restored, failed over, or another instance): any work
	// queued from memory is void.
	Moved bool
	// Watch: the channel becomes watched under the bus's current
	// generation (Channel.Watched).
	Watch bool
	// Unconfirmed: the message that made the check (Channel.Message) is
	// not confirmed by the meta (forged, or lost with the bus); it must
	// not move the position.
	Unconfirmed bool
	// First: the decision replays only the message that made the check,
	// the first of a channel without a position (see First): it is taken
	// as it would have been live, not as a recovery.
	First bool
}

// Decide decides a check of a channel (periodic, at startup, for a new
// channel, or for a message that does not follow the position): every rule
// of the package, composed in their one order — Start, Adopt, Check, Watch,
// Confirmed, First.
func Decide(c Channel) Plan {
	start, moved := Start(c)
	pl := Plan{Decision: Check(c), At: c.Memory, Start: start, Moved: moved, Watch: Watch(c)}
	if chain, ok := Adopt(c); ok && pl.At.Epoch == c.Meta.Epoch && pl.At.Version == c.Meta.Version {
		pl.At.Chain = chain
	}
	if moved && !c.HasHandler {
		// Without a Handler, the cache's position is where the channel
		// stands; with one, memory stays the Handler's (per process) until
		// the recovery has brought both to the meta.
		pl.At = c.Stored
	}
	if c.Message.Known() {
		pl.Unconfirmed = !Confirmed(c.Message, c.Meta)
		if pl.Action != Ignore {
			pl.Decision, pl.First = First(pl.Decision, c.Message)
		}
	}
	return pl
}

// Live is the last message a channel took live: its position, its event
// id, and the channel's chain before it.
type Live struct {
	At    Position
	Event string
	Prev  string
}

// Contested reports whether a message (its position and event id) claims
// the version of the last message taken live with another event id. Only
// the router publishes on a channel, and it never publishes a version
// twice: one of the two was forged — most likely the first, a forged next
// version, which nothing told from the real one when it came. A message
// without an event id (an older router) is a redelivery.
func Contested(last Live, msg Position, event string) bool {
	return event != "" && last.Event != "" && event != last.Event && msg == last.At
}

// Own is the channel's own message of a contested version, as its history
// holds it: its event id and its JSON as published.
type Own struct {
	Event   string
	Payload []byte
}

// Contest settles a version two messages claimed (Contested). applied is
// where the channel stands; last the message taken live at the version;
// own the history's message of that version, nil when the history no
// longer holds it or cannot be read now (the decision cannot wait: the real
// message will not come again). When the history's message is the one
// applied, the newcomer is the forgery: Ignore. Otherwise what the real
// message named was not applied: Repair, the whole tag, with the position
// where it stands — taking the chain of the channel's own message when the
// position is the contested version and the chain before it is known.
func Contest(applied Position, last Live, own *Own) Decision {
	if own != nil && own.Event == last.Event {
		return Decision{Action: Ignore, Reason: Contended}
	}
	to := Position{Epoch: applied.Epoch, Version: applied.Version}
	if own != nil && to == last.At {
		to = Next(Position{Epoch: last.At.Epoch, Version: last.At.Version - 1, Chain: last.Prev}, last.At, own.Payload)
	}
	return Decision{Action: Repair, Reason: Contended, To: to}
}

// Resolve settles a Replay decision against the history read for it, before
// anything is applied: msgs are the positions of the history's messages
// From..To (held: all of them, contiguous, in To's epoch; see Contiguous)
// and payloads their JSON as published. It returns the decision to carry
// out and, for a replay, where the channel stands after each message
// (Replayed). A history that no longer holds them all makes the whole tag
// go, for the decision's reason; one whose chain does not reach the meta's
// too, for reason Diverged (a forged message was applied before). Any other
// decision is returned as it is.
func Resolve(d Decision, start Position, held bool, msgs []Position, payloads [][]byte) (Decision, []Position) {
	if d.Action != Replay {
		return d, nil
	}
	if !held {
		return Decision{Action: WholeTag, Reason: d.Reason, To: d.To}, nil
	}
	at, ok := Replayed(start, msgs, payloads, d.To)
	if !ok {
		return Decision{Action: WholeTag, Reason: Diverged, To: d.To}, nil
	}
	return d, at
}
