package subscriber

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
)

// The tags and tenants a service last ran with, kept in its cache Redis
// (names.InterestKey), so that a subscriber started on a matrix that took
// channels from the service drops their tags as a running one does on a
// reload (leave): a deploy that takes a tenant or a tag from the service
// and is rolled back restarts the agents twice, and what changed in
// between was published for nobody.

// interestRecord is the record of an interest: "tags=<t>,<t>…\ntenants=*"
// for a service of every tenant, or "…\ntenants=<t>,<t>…". The tenants are
// the matrix's, not a shard's: every shard of a service writes the same.
func interestRecord(in *interest) string {
	tenants := "*"
	if !in.allTenants {
		tenants = strings.Join(in.listed, ",")
	}
	return "tags=" + strings.Join(in.tagList, ",") + "\ntenants=" + tenants
}

// parseInterest reads a record; ok is false for one it cannot read.
func parseInterest(rec string) (tags []string, all bool, tenants []string, ok bool) {
	t, rest, found := strings.Cut(rec, "\n")
	tagPart, okT := strings.CutPrefix(t, "tags=")
	tenantPart, okN := strings.CutPrefix(rest, "tenants=")
	if !found || !okT || !okN {
		return nil, false, nil, false
	}
	split := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(s, ",")
	}
	if tenantPart == "*" {
		return split(tagPart), true, nil, true
	}
	return split(tagPart), false, split(tenantPart), true
}

// leaveFormerInterest drops the tags of the channels the service held a
// position on under the interest it last ran with (names.InterestKey) and
// that the current one no longer covers, as leave does, and records the
// current interest. The channels in done were left already. A cache user
// from before the key was granted (NOPERM) leaves the check out, with a
// warning. It fails when the cache does not answer a read (the record, the
// position index, the positions), returning as soon as ctx ends whatever
// the client's timeouts (untilDone); leaving what it found is not a read
// (what fails is in unleft, left by every check).
func (s *Subscriber) leaveFormerInterest(ctx context.Context, done ...string) error {
	if s.store == nil {
		return nil
	}
	key := names.InterestKey(s.opt.Service)
	rec := interestRecord(s.cur)
	var former string
	err := untilDone(ctx, func(ctx context.Context) (err error) {
		former, err = s.opt.Cache.Get(ctx, key).Result()
		return err
	})
	switch {
	case errors.Is(err, redis.Nil):
	case err != nil:
		if !redis.HasErrorPrefix(err, "NOPERM") {
			return fmt.Errorf("reading the interest the service last ran with %s from the cache Redis: %w", key, err)
		}
		s.log.Warn("cannot read the interest the service last ran with; channels a matrix took from it while it was stopped keep their values: grant the cache user its key (routerd acl --role cache)", "key", key, "err", err)
		return nil
	case former != rec:
		if err := s.leaveFormer(ctx, former, done); err != nil {
			return err
		}
	}
	switch {
	case len(s.unleft) > 0:
		// Recorded once they are left: a restart meanwhile leaves them
		// again from the former record.
		s.unrecorded = rec
	case former != rec:
		s.recordInterest(ctx, rec)
	default:
		s.unrecorded = ""
	}
	return nil
}

// recordInterest writes the interest record; one that failed is written by
// a later check (said once: the record only serves a restart).
func (s *Subscriber) recordInterest(ctx context.Context, rec string) {
	key := names.InterestKey(s.opt.Service)
	if err := s.opt.Cache.Set(ctx, key, rec, 0).Err(); err != nil {
		if s.unrecorded != rec {
			s.log.Warn("recording the interest the service runs with failed; later checks try again", "key", key, "err", err)
		}
		s.unrecorded = rec
		return
	}
	s.unrecorded = ""
}

// leaveFormer leaves the channels a former interest covered and the
// current one does not, among the tenants the service holds positions for.
func (s *Subscriber) leaveFormer(ctx context.Context, former string, done []string) error {
	tags, all, tenants, ok := parseInterest(former)
	if !ok {
		s.log.Warn("the interest the service last ran with is unreadable; not compared", "record", former)
		return nil
	}
	var indexed []string
	err := untilDone(ctx, func(ctx context.Context) (err error) {
		indexed, err = s.store.IndexedTenants(ctx, s.opt.Service)
		return err
	})
	if err != nil {
		return fmt.Errorf("reading the position index %s from the cache Redis: %w", names.PositionIndexKey(s.opt.Service), err)
	}
	listed := make(map[string]bool, len(tenants))
	for _, t := range tenants {
		listed[t] = true
	}
	skip := make(map[string]bool, len(done))
	for _, ch := range done {
		skip[ch] = true
	}
	var chans []tagstore.TenantTag
	for _, t := range indexed {
		if !s.cur.shard.Owns(t) || !all && !listed[t] {
			continue
		}
		for _, g := range tags {
			if !s.cur.covers(t, g) {
				chans = append(chans, tagstore.TenantTag{Tenant: t, Tag: g})
			}
		}
	}
	if len(chans) == 0 {
		return nil
	}
	var found []bool
	err = untilDone(ctx, func(ctx context.Context) (err error) {
		_, found, _, err = s.store.ReadPositions(ctx, s.opt.Service, chans)
		return err
	})
	if err != nil {
		return fmt.Errorf("reading the positions of channels the matrix took from the service from the cache Redis: %w", err)
	}
	var left []string
	var invs []Invalidation
	for i, c := range chans {
		if ch := names.Channel(s.prefix, c.Tenant, c.Tag); found[i] && !skip[ch] {
			left = append(left, ch)
			invs = append(invs, s.leaving(&position{tenant: c.Tenant, tag: c.Tag}))
		}
	}
	_ = s.leave(ctx, left, invs) // what failed is in unleft, tried again by every check
	return nil
}
