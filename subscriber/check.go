package subscriber

import (
	"context"
	"errors"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// pipelineChunk bounds the commands sent in one pipeline.
const pipelineChunk = 1000

// check compares every channel's position with the channel's current epoch
// and version and recovers the channels that are behind.
func (s *Subscriber) check(ctx context.Context) error {
	s.m.checks.Inc()
	targets, err := s.targets(ctx)
	if err != nil {
		return err
	}
	return s.checkTargets(ctx, targets)
}

// checkChannel checks one channel of interest, newly subscribed.
func (s *Subscriber) checkChannel(ctx context.Context, channel string) error {
	tenant, tag, err := names.ParseChannel(s.prefix, channel)
	if err != nil || !s.cur.covers(tenant, tag) {
		return nil // no longer ours (a matrix change)
	}
	return s.checkTargets(ctx, []target{{channel, tenant, tag}})
}

// checkTargets compares the channels' versions with the positions and
// recovers the channels behind.
func (s *Subscriber) checkTargets(ctx context.Context, targets []target) error {
	if err := s.loadPositions(ctx, targets); err != nil {
		return err
	}
	var failed error
	for start := 0; start < len(targets); start += pipelineChunk {
		batch := targets[start:min(start+pipelineChunk, len(targets))]
		cmds, err := s.bus.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, t := range batch {
				pipe.HMGet(ctx, names.MetaKey(t.channel), "epoch", "version")
			}
			return nil
		})
		if err != nil {
			return err
		}
		for i, t := range batch {
			vals := cmds[i].(*redis.SliceCmd).Val()
			epoch, _ := vals[0].(string)
			vs, _ := vals[1].(string)
			version, _ := strconv.ParseInt(vs, 10, 64)
			if epoch == "" || version < 1 {
				continue // nothing published on this channel (since the bus lost its data)
			}
			p := s.pos[t.channel]
			if head, known := p.head(); known && head.Epoch == epoch && head.Version >= version {
				continue
			}
			s.m.gaps.Inc()
			s.log.Info("position behind the channel; recovering", "channel", t.channel, "at", p.Position.String(), "channel_at", epoch+":"+vs)
			if err := s.recover(ctx, t.channel, p, epoch, version); err != nil {
				failed = errors.Join(failed, err)
			}
		}
	}
	return failed
}

type target struct{ channel, tenant, tag string }

// targets lists the channels to check: the configured tenants, or for a
// service of every tenant the router's tenant registry plus every channel
// seen so far.
func (s *Subscriber) targets(ctx context.Context) ([]target, error) {
	tenants := s.cur.tenants
	if s.cur.allTenants {
		registered, err := s.bus.SMembers(ctx, wire.TenantsKey(s.prefix)).Result()
		if err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		tenants = nil
		for _, t := range registered {
			if names.ValidTenant(t) && !seen[t] {
				seen[t] = true
				tenants = append(tenants, t)
			}
		}
		for _, p := range s.pos {
			if !seen[p.tenant] {
				seen[p.tenant] = true
				tenants = append(tenants, p.tenant)
			}
		}
	}
	out := make([]target, 0, len(tenants)*len(s.cur.tagList))
	for _, tenant := range tenants {
		for _, tag := range s.cur.tagList {
			out = append(out, target{names.Channel(s.prefix, tenant, tag), tenant, tag})
		}
	}
	return out, nil
}

// loadPositions reads from the cache Redis the positions not yet in memory.
func (s *Subscriber) loadPositions(ctx context.Context, targets []target) error {
	var missing []target
	for _, t := range targets {
		if _, ok := s.pos[t.channel]; !ok {
			missing = append(missing, t)
		}
	}
	for start := 0; start < len(missing); start += pipelineChunk {
		batch := missing[start:min(start+pipelineChunk, len(missing))]
		var cmds []redis.Cmder
		if s.store != nil {
			var err error
			cmds, err = s.opt.Cache.Pipelined(ctx, func(pipe redis.Pipeliner) error {
				for _, t := range batch {
					pipe.Get(ctx, names.PositionKey(t.tenant, s.opt.Service, t.tag))
				}
				return nil
			})
			if err != nil && !errors.Is(err, redis.Nil) {
				return err
			}
		}
		for i, t := range batch {
			p := &position{tenant: t.tenant, tag: t.tag}
			if cmds != nil {
				if v, err := cmds[i].(*redis.StringCmd).Result(); err == nil {
					if pos, err := tagstore.ParsePosition(v); err == nil {
						p.known, p.Position = true, pos
					}
				}
			}
			s.pos[t.channel] = p
		}
	}
	return nil
}
