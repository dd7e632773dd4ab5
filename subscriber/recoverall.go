package subscriber

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/names"
)

// pending is a channel's recovery decided by a check, not carried out yet.
type pending struct {
	channel string
	p       *position
	d       recovery.Decision
	first   bool // only the message that made the check (execute)
}

// recoverAll carries out the recoveries of one part of a check together:
// the histories of the replays are read in one pipeline and their messages
// applied in pipelines (flushBatch), where one channel after the other took
// a round trip to the bus and one to the cache each — what made the first
// check of a new service of millions of channels take half an hour.
// Whole-tag invalidations go in pipelines too (wholeTags); repairs and a
// channel's first message go as before (execute).
func (s *Subscriber) recoverAll(ctx context.Context, rs []pending) error {
	if len(rs) == 0 {
		return nil
	}
	now := time.Now().UnixMilli()
	var replays []int
	for i := range rs {
		rs[i].d = recovery.Stamp(rs[i].d, now)
		if rs[i].d.Action == recovery.Replay && !rs[i].first {
			replays = append(replays, i)
		}
	}
	histories := make(map[int]*redis.XMessageSliceCmd, len(replays))
	if len(replays) > 0 {
		_, err := s.bus.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, i := range replays {
				d := rs[i].d
				histories[i] = pipe.XRange(ctx, names.HistoryKey(rs[i].channel), strconv.FormatInt(d.From, 10)+"-0", strconv.FormatInt(d.To.Version, 10)+"-0")
			}
			return nil
		})
		if err != nil && !isReplyError(err) {
			return fmt.Errorf("reading the histories of %d channels to replay from the bus Redis: %w", len(replays), err)
		}
	}
	batching := s.batching
	s.batching = true // the replayed messages collect in s.batch
	var failed error
	var wholes []pending // carried out together at the end (wholeTags)
	flush := func() {
		if !batching && len(s.batch) >= pipelineChunk {
			s.batching = false
			failed = errors.Join(failed, s.flushBatch(ctx))
			s.batching = true
		}
	}
	for i, r := range rs {
		if h, ok := histories[i]; ok {
			entries, err := h.Result()
			if err != nil {
				failed = errors.Join(failed, fmt.Errorf("%s: %w", r.channel, err))
				continue
			}
			msgs, payloads, ok := s.parseHistory(r.channel, r.d.To.Epoch, r.d.From, r.d.To.Version, entries)
			var at []recovery.Position
			if ok {
				at, ok = s.replayed(r.channel, r.p, &r.d, msgs, payloads)
			}
			if ok {
				s.m.recoveries.WithLabelValues("replay").Inc()
				for j, m := range msgs {
					failed = errors.Join(failed, s.applyMessage(ctx, r.channel, r.p, m, at[j]))
				}
				flush()
				continue
			}
			// The history no longer reaches back, or its chain diverged:
			// execute falls through to the whole tag.
			r.d.Action = recovery.WholeTag
		}
		if r.d.Action == recovery.WholeTag && !r.first && !batching {
			wholes = append(wholes, r)
			continue
		}
		s.batching = false
		if err := s.execute(ctx, r.channel, r.p, r.d, r.first); err != nil {
			failed = errors.Join(failed, fmt.Errorf("%s: %w", r.channel, err))
		}
		s.batching = true
	}
	s.batching = batching
	if !batching {
		failed = errors.Join(failed, s.flushBatch(ctx), s.wholeTags(ctx, wholes))
	}
	return failed
}

// wholeTags carries out whole-tag recoveries (execute's) in pipelines of
// pipelineChunk: the first check of a service that never recorded the
// bus's generation takes every channel already published whole.
func (s *Subscriber) wholeTags(ctx context.Context, rs []pending) error {
	var failed error
	for start := 0; start < len(rs); start += pipelineChunk {
		part := rs[start:min(start+pipelineChunk, len(rs))]
		invs := make([]Invalidation, len(part))
		for i, r := range part {
			s.m.recoveries.WithLabelValues("whole_tag").Inc()
			s.log.Info("invalidating the whole tag to close a gap", "channel", r.channel, "reason", r.d.Reason.String(), "from", r.p.at.String(), "to", r.d.To.String())
			invs[i] = Invalidation{Tenant: r.p.tenant, Tag: r.p.tag, Epoch: r.d.To.Epoch, Version: r.d.To.Version, Recovered: true, chain: r.d.To.Chain}
		}
		for i, err := range s.invalidateMany(ctx, invs, false) {
			if err != nil {
				failed = errors.Join(failed, fmt.Errorf("%s: %w", part[i].channel, err))
				continue
			}
			part[i].p.at = part[i].d.To
		}
	}
	return failed
}
