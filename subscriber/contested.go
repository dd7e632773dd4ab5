package subscriber

import (
	"context"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/wire"
)

// contested settles a version two messages claimed (recovery.Contested):
// msg, and the message taken live before it at the same epoch and version
// with another event id. It reads the channel's own message of that version
// from the history, and carries out recovery.Contest: msg ignored, or the
// whole tag with the position where it stands (a repair).
func (s *Subscriber) contested(ctx context.Context, t target, p *position, msg *wire.Message) error {
	if p.queue != nil {
		if err := s.applyQueued(ctx, t.channel, p); err != nil {
			return err
		}
	}
	s.m.unconfirmed.Inc()
	v := p.last.At
	// A history that cannot be read now is taken for one that does not
	// vouch for what was applied (recovery.Contest).
	msgs, payloads, ok, err := s.history(ctx, t.channel, v.Epoch, v.Version, v.Version)
	var own *recovery.Own
	if err == nil && ok {
		own = &recovery.Own{Event: msgs[0].Event, Payload: payloads[0]}
	}
	d := recovery.Contest(p.at, p.last, own)
	if d.Action == recovery.Ignore {
		s.log.Warn("forged message ignored: the channel's history holds another message at its version",
			"channel", t.channel, "version", v.String(), "event", msg.Event)
		return nil
	}
	s.log.Warn("a forged message was applied at this version in place of the channel's own, or the history cannot tell: invalidating the whole tag",
		"channel", t.channel, "version", v.String(), "applied_event", p.last.Event, "event", msg.Event, "history_err", err)
	s.m.recoveries.WithLabelValues("repair").Inc()
	if err := s.repair(ctx, p.recovered(d.To)); err != nil {
		return err
	}
	p.at = d.To
	p.last.Event = msg.Event
	return nil
}
