package subscriber

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// pending is a channel's recovery decided by a check, not carried out yet.
type pending struct {
	channel string
	p       *position
	d       recovery.Decision
	first   bool // only the message that made the check (execute)
	// start is where the check started (recovery.Plan.Start): a replay's
	// chain is checked from it, the cache's position when the cache went
	// back behind memory, not from memory.
	start recovery.Position
}

// historiesLostLimit is how many reads in a row of the histories to
// replay may lose their connection before each is read alone, and those
// that lose it again go whole.
const historiesLostLimit = 2

// recoverAll carries out the recoveries of one part of a check together:
// the histories of the replays are read in one pipeline, settled
// (recovery.Resolve) and their messages staged and applied in pipelines
// (flushBatch), where one channel after the other took a round trip to the
// bus and one to the cache each — what made the first check of a new
// service of millions of channels take half an hour. Whole-tag
// invalidations go in pipelines too (wholeTags); repairs and a channel's
// first message go one by one (execute). A check made for messages of a
// burst runs once the burst's own work is applied (verifyAll): its
// recoveries are carried out the same way, so that one channel's refused
// invalidation is not another's whole tag held back.
func (s *Subscriber) recoverAll(ctx context.Context, rs []pending) error {
	if len(rs) == 0 {
		return nil
	}
	var replays []int
	for i := range rs {
		if rs[i].d.Action == recovery.Replay {
			replays = append(replays, i)
		}
	}
	histories := make(map[int]*redis.XMessageSliceCmd, len(replays))
	read := func(c redis.Cmdable, i int) *redis.XMessageSliceCmd {
		d := rs[i].d
		return c.XRange(ctx, names.HistoryKey(rs[i].channel), strconv.FormatInt(d.From, 10)+"-0", strconv.FormatInt(d.To.Version, 10)+"-0")
	}
	unread := map[int]bool{} // replays whose history the bus closed: they go whole
	if len(replays) > 0 && s.historiesLost >= historiesLostLimit {
		// The bus closed the connection of this read again and again: a
		// reply above its client-output-buffer-limit normal (a long gap of
		// large messages) is closed every time. Each history is read
		// alone: one closed again goes whole (a whole tag closes the gap
		// as well), the others are replayed, and the next replays are
		// read together again.
		s.historiesLost = 0
		for _, i := range replays {
			h := read(s.bus, i)
			switch err := h.Err(); {
			case err == nil || isReplyError(err):
				histories[i] = h
			case ctx.Err() != nil || redisconn.Unsent(err):
				return fmt.Errorf("reading the history of %s to replay from the bus Redis: %w", rs[i].channel, err)
			default:
				unread[i] = true
			}
		}
		if len(unread) > 0 {
			s.log.Warn("reading the histories to replay lost its connection again and again (a reply above the bus's client-output-buffer-limit normal?): invalidating whole the tags whose history alone lost it",
				"channels", len(unread), "of", len(replays))
		}
	} else if len(replays) > 0 {
		_, err := s.bus.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, i := range replays {
				histories[i] = read(pipe, i)
			}
			return nil
		})
		if err != nil && !isReplyError(err) {
			s.historiesLost++
			return fmt.Errorf("reading the histories of %d channels to replay from the bus Redis: %w", len(replays), err)
		}
		s.historiesLost = 0
	}
	var failed error
	var wholes []pending // carried out together at the end (wholeTags)
	for i, r := range rs {
		var msgs []*wire.Message
		var at []recovery.Position
		if h, read := histories[i]; read {
			entries, err := h.Result()
			if err != nil {
				failed = errors.Join(failed, fmt.Errorf("%s: %w", r.channel, err))
				continue
			}
			var payloads [][]byte
			var held bool
			msgs, payloads, held = s.parseHistory(r.channel, r.d.To.Epoch, r.d.From, r.d.To.Version, entries)
			r.d, at = s.settle(r.channel, r.start, r.d, msgs, payloads, held)
			if r.d.Action == recovery.Replay && !r.first {
				// Staged: the pipelines of the part apply them (below).
				if err := s.execute(ctx, r.channel, r.p, r.d, msgs, at, false); err != nil {
					failed = errors.Join(failed, fmt.Errorf("%s: %w", r.channel, err))
				}
				if len(s.batch) >= pipelineChunk {
					failed = errors.Join(failed, s.flushBatch(ctx))
				}
				continue
			}
			if r.d.Action == recovery.Replay {
				if err := s.execute(ctx, r.channel, r.p, r.d, msgs, at, true); err != nil {
					failed = errors.Join(failed, fmt.Errorf("%s: %w", r.channel, err))
				}
				continue
			}
		}
		if unread[i] && r.d.Action == recovery.Replay {
			r.d, _ = s.settle(r.channel, r.start, r.d, nil, nil, false)
		}
		if r.d.Action == recovery.WholeTag && !r.first {
			wholes = append(wholes, r)
			continue
		}
		if err := s.execute(ctx, r.channel, r.p, r.d, msgs, at, r.first); err != nil {
			failed = errors.Join(failed, fmt.Errorf("%s: %w", r.channel, err))
		}
	}
	return errors.Join(failed, s.flushBatch(ctx), s.wholeTags(ctx, wholes))
}

// wholeTags carries out whole-tag recoveries (execute's) in pipelines of
// pipelineChunk: the first check of a service that never recorded the
// bus's generation takes every channel already published whole.
func (s *Subscriber) wholeTags(ctx context.Context, rs []pending) error {
	var failed error
	for start := 0; start < len(rs); start += pipelineChunk {
		part := rs[start:min(start+pipelineChunk, len(rs))]
		invs := make([]Invalidation, len(part))
		for i := range part {
			part[i].d = recovery.Stamp(part[i].d, time.Now().UnixMilli())
			r := part[i]
			s.m.recoveries.WithLabelValues("whole_tag").Inc()
			s.log.Info("invalidating the whole tag to close a gap", "channel", r.channel, "reason", r.d.Reason.String(), "from", r.p.at.String(), "to", r.d.To.String())
			invs[i] = r.p.recovered(r.d.To)
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
