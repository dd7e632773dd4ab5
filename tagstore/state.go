package tagstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
)

// State is what a service's cache Redis holds of the service's channels:
// the positions applied, and the bus generation the service's last
// complete check saw. The Store owns these keys, and the position index
// (IndexTenants): the subscriber reads them in one call (ReadState) and
// writes them through the Store alone.
type State struct {
	// Positions, Found and Errs are ReadPositions's answer, one per channel.
	Positions []Position
	Found     []bool
	Errs      []error
	// GenerationSeen is the bus identity the service recorded
	// (RecordGeneration, BusIdentity), "" when none is.
	GenerationSeen string
}

// ReadState reads a service's state for the channels (ReadPositions) and
// the generation it last saw, in the same pipelines.
func (s *Store) ReadState(ctx context.Context, service string, chans []TenantTag) (State, error) {
	return s.readState(ctx, service, chans, true)
}

func (s *Store) readState(ctx context.Context, service string, chans []TenantTag, generation bool) (State, error) {
	if err := names.Service(service); err != nil {
		return State{}, err
	}
	keys := make([]string, len(chans))
	for i, ch := range chans {
		if err := names.Tenant(ch.Tenant); err != nil {
			return State{}, err
		}
		if err := names.Tag(ch.Tag); err != nil {
			return State{}, err
		}
		keys[i] = names.PositionKey(ch.Tenant, service, ch.Tag)
	}
	st := State{Positions: make([]Position, len(chans)), Found: make([]bool, len(chans)), Errs: make([]error, len(chans))}
	for from := 0; from == 0 && generation || from < len(keys); from += readPositionsPipeline {
		part := keys[from:min(from+readPositionsPipeline, len(keys))]
		cmds := make([]*redis.StringCmd, len(part))
		var seen *redis.StringCmd
		_, err := s.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			if generation && from == 0 {
				seen = pipe.Get(ctx, names.GenerationSeenKey(service))
			}
			for i, k := range part {
				cmds[i] = pipe.Get(ctx, k)
			}
			return nil
		})
		// A missing key (redis.Nil) or one of another type fails its own
		// GET only (below, in State.Errs); any other error (a refused
		// connection, WRONGPASS, NOPERM, LOADING), of the pipeline or of one
		// GET, fails the read: an unanswered position must not pass for
		// none.
		if err != nil && !errors.Is(err, redis.Nil) && !redis.HasErrorPrefix(err, "WRONGTYPE") {
			return State{}, fmt.Errorf("tagstore: reading positions from the cache Redis: %w", err)
		}
		if seen != nil {
			v, err := seen.Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return State{}, fmt.Errorf("tagstore: reading the bus generation last seen, %s: %w", names.GenerationSeenKey(service), err)
			}
			st.GenerationSeen = v
		}
		for i, cmd := range cmds {
			v, err := cmd.Result()
			if errors.Is(err, redis.Nil) {
				continue
			}
			if redis.HasErrorPrefix(err, "WRONGTYPE") {
				st.Errs[from+i] = fmt.Errorf("%w: %s is a key of another type", ErrBadPosition, part[i])
				continue
			}
			if err != nil {
				// LOADING, BUSY, TRYAGAIN, NOPERM…: the cache cannot
				// answer for this position now (a cluster master loading
				// or failing over answers for its own slots alone), which
				// a retry fixes; taken for an error of the channel, a check
				// would pass without it.
				return State{}, fmt.Errorf("tagstore: reading position %s from the cache Redis: %w", part[i], err)
			}
			p, err := ParsePosition(v)
			if err != nil {
				st.Errs[from+i] = fmt.Errorf("%w: %s holds %q", ErrBadPosition, part[i], v)
				continue
			}
			st.Positions[from+i], st.Found[from+i] = p, true
		}
	}
	return st, nil
}

// BusIdentity is what a service knows the bus by, as RecordGeneration
// records it: the router's generation and the run_id of every bus server
// that holds data (each master of a cluster), so that a bus restored from
// an older snapshot (which brings back the generation recorded before it)
// or restarted from its last save (which may have lost the last writes) is
// a new identity too. "" when the bus has no generation (no router has
// marked it since it lost its data).
//
// What a version older than run_ids recorded (the generation alone) never
// equals an identity: the service then takes the bus as having lost its
// data once, after its upgrade. Taking it as the same bus would trust that
// the bus did not restart between that version's last check and this one's
// first, which nothing can tell; the once-only cost is the whole tag of the
// channels the service holds no position on.
func BusIdentity(generation string, runIDs []string) string {
	if generation == "" {
		return ""
	}
	runs := slices.Clone(runIDs)
	slices.Sort(runs)
	return generation + " run_id=" + strings.Join(runs, ",")
}

// RecordGeneration records the bus identity (BusIdentity) a service's
// complete check was made against (State.GenerationSeen).
func (s *Store) RecordGeneration(ctx context.Context, service, generation string) error {
	if err := names.Service(service); err != nil {
		return err
	}
	// generation.lua, not a SET: it runs on a full cache Redis too.
	if _, err := lua.Run(ctx, s.c, &lua.GenerationRequest{Service: service, Identity: generation}); err != nil {
		return fmt.Errorf("tagstore: recording the bus generation in %s: %w", names.GenerationSeenKey(service), err)
	}
	return nil
}

// IndexTenants records tenants in a service's position index, before their
// first position is written: a subscriber of every tenant finds its
// positions from the index (IndexedTenants) even when the bus lost its
// tenant registry.
func (s *Store) IndexTenants(ctx context.Context, service string, tenants ...string) error {
	if err := names.Service(service); err != nil {
		return err
	}
	if len(tenants) == 0 {
		return nil
	}
	// index.lua, not an SADD: it runs on a full cache Redis too, where an
	// SADD is refused with OOM and the invalidation it comes before would
	// never run.
	if _, err := lua.Run(ctx, s.c, &lua.IndexRequest{Service: service, Tenants: tenants}); err != nil {
		return fmt.Errorf("tagstore: recording tenants in the position index %s: %w", names.PositionIndexKey(service), err)
	}
	return nil
}

// IndexedTenants returns the tenants of a service's position index.
func (s *Store) IndexedTenants(ctx context.Context, service string) ([]string, error) {
	if err := names.Service(service); err != nil {
		return nil, err
	}
	// In SSCAN pages: one SMEMBERS of an index of a million tenants holds
	// the Redis for the time it takes to answer it all.
	var tenants []string
	var cursor uint64
	for {
		page, next, err := s.c.SScan(ctx, names.PositionIndexKey(service), cursor, "", 1000).Result()
		if err != nil {
			return nil, fmt.Errorf("tagstore: reading the position index %s: %w", names.PositionIndexKey(service), err)
		}
		tenants = append(tenants, page...)
		if cursor = next; cursor == 0 {
			return tenants, nil
		}
	}
}
