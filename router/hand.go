package router

import (
	"sync"
	"time"
)

// hand is what a router has in hand on each stream besides what hold()
// keeps fresh (the coalescer's and the retry queues' entries): the reads
// its routing stages are routing, its read loop's passes over its own
// pending entries, the retries being tried. Each is taken with when it
// started (the zero time for entries of unknown age) and dropped when
// done. An entry pending under this router's name that is older than
// everything in hand was never read by this router, or has been forgotten
// by it — one read under its name by another process (claimForgotten).
type hand struct {
	mu    sync.Mutex
	next  uint64
	since map[string]map[uint64]time.Time // stream -> token -> start
}

// take records something in hand on stream since at and returns its token
// (never 0).
func (h *hand) take(stream string, at time.Time) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.since == nil {
		h.since = map[string]map[uint64]time.Time{}
	}
	if h.since[stream] == nil {
		h.since[stream] = map[uint64]time.Time{}
	}
	h.next++
	h.since[stream][h.next] = at
	return h.next
}

// drop records that what the tokens stand for is done (0 stands for
// nothing).
func (h *hand) drop(stream string, tokens ...uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, t := range tokens {
		delete(h.since[stream], t)
	}
}

// heldFor reports whether something has been in hand on stream for d or
// longer.
func (h *hand) heldFor(stream string, d time.Duration) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, at := range h.since[stream] {
		if time.Since(at) >= d {
			return true
		}
	}
	return false
}
