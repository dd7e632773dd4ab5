package router

import (
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// silence tells the routers gone silent from listings of the consumers of
// each stream (XINFO CONSUMERS). A consumer idle for DeadAfter in one
// listing is not yet silent: a replica promoted by a failover, or a Redis
// restarted from its file, knows of each consumer only its last read that
// delivered entries (a touch is not replicated), so right after one every
// router that did not read lately looks idle. It is silent when a listing
// a fifth of DeadAfter later (at least five touches, touchEvery) finds
// that it did nothing in between: the instant it last read or was touched
// is the same.
type silence struct {
	mu   sync.Mutex
	seen map[[2]string]sighting // by stream and consumer
}

// sighting is when a listing first found a consumer idle for DeadAfter,
// and the instant it last read or was touched by that listing.
type sighting struct{ at, last time.Time }

// silent returns the consumers of a listing of stream taken at now that are
// silent: other than self and the empty name, holding entries, idle for
// deadAfter, and found so a fifth of deadAfter earlier with the same last
// read.
func (s *silence) silent(stream string, consumers []redis.XInfoConsumer, self string, deadAfter time.Duration, now time.Time) []redis.XInfoConsumer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[[2]string]sighting{}
	}
	listed := map[string]bool{}
	var silent []redis.XInfoConsumer
	for _, c := range consumers {
		listed[c.Name] = true
		key := [2]string{stream, c.Name}
		if c.Name == self || c.Name == "" || c.Pending == 0 || c.Idle < deadAfter {
			delete(s.seen, key)
			continue
		}
		last := now.Add(-c.Idle)
		g, ok := s.seen[key]
		switch {
		case !ok || last.Sub(g.last) >= deadAfter/2:
			// First found idle, or it read or was touched since: that
			// moves the instant by DeadAfter at least (it was idle that
			// long), the listings' round trips by far less.
			s.seen[key] = sighting{at: now, last: last}
		case now.Sub(g.at) >= deadAfter/5:
			silent = append(silent, c)
		}
	}
	for key := range s.seen {
		if key[0] == stream && !listed[key[1]] {
			delete(s.seen, key)
		}
	}
	return silent
}
