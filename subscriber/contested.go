package subscriber

import (
	"context"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/wire"
)

// contested settles a version two messages claimed: msg, and the message
// taken live before it at the same epoch and version with another event
// id. Only the router publishes on a channel, and it never publishes a
// version twice, so one of them was forged — most likely the first, a
// forged next version, which nothing told from the real one when it came.
// The channel's history holds the router's message of that version: when
// it is the one applied, msg is the forgery and is ignored; otherwise (or
// when the history no longer holds the version) what the real message
// named was not applied, and the whole tag goes, with the position where
// it stands (a repair).
func (s *Subscriber) contested(ctx context.Context, t target, p *position, msg *wire.Message) error {
	if p.queue != nil {
		if err := s.applyQueued(ctx, t.channel, p); err != nil {
			return err
		}
	}
	s.m.unconfirmed.Inc()
	v := p.last.at
	// A history that cannot be read now is taken for one that does not
	// vouch for what was applied: the decision cannot wait, since the real
	// message will not come again.
	msgs, payloads, ok, err := s.history(ctx, t.channel, v.Epoch, v.Version, v.Version)
	if err == nil && ok && msgs[0].Event == p.last.event {
		s.log.Warn("forged message ignored: the channel's history holds another message at its version",
			"channel", t.channel, "version", v.String(), "event", msg.Event)
		return nil
	}
	s.log.Warn("a forged message was applied at this version in place of the channel's own, or the history cannot tell: invalidating the whole tag",
		"channel", t.channel, "version", v.String(), "applied_event", p.last.event, "event", msg.Event, "history_err", err)
	s.m.recoveries.WithLabelValues("repair").Inc()
	// The position takes the chain of the channel's own message, when the
	// history has it and the chain before the forgery is known.
	at := recovery.Position{Epoch: p.at.Epoch, Version: p.at.Version}
	if err == nil && ok && at == v {
		at = recovery.Next(recovery.Position{Epoch: v.Epoch, Version: v.Version - 1, Chain: p.last.prev}, v, payloads[0])
	}
	if err := s.repair(ctx, Invalidation{Tenant: t.tenant, Tag: t.tag, Epoch: at.Epoch, Version: at.Version, Recovered: true, chain: at.Chain}); err != nil {
		return err
	}
	p.at = at
	p.last.event = msg.Event
	return nil
}
