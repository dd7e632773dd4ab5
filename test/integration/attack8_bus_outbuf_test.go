package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// A subscriber whose reading is slowed (its in-process cache, the Handler,
// stalls) while a burst of large key-level messages arrives is closed by
// the bus for overcoming its pub/sub output buffer limit
// (client-output-buffer-limit pubsub 64kb 32kb 1). It reconnects and
// recovers every message from the history — every key reaches both its
// cache Redis and its Handler, nothing is left stale — and again when it
// happens a second time, without a restart.
func TestAttack8BusPubSubOutputBufferLimitRecovered(t *testing.T) {
	e := newEnvBus(t, precisionMatrix("rate: 1000000, burst: 1000000, max_keys: 500"),
		"--client-output-buffer-limit", "pubsub 64kb 32kb 1")
	e.running("acme")
	e.router(router.Options{})

	var mu sync.Mutex
	gate := make(chan struct{}) // closed: the handler runs
	close(gate)
	handled := map[string]bool{}
	whole := 0
	handler := func(ctx context.Context, inv subscriber.Invalidation) error {
		mu.Lock()
		g := gate
		mu.Unlock()
		select {
		case <-g:
		case <-ctx.Done():
			return ctx.Err()
		}
		mu.Lock()
		defer mu.Unlock()
		if len(inv.Keys) == 0 && len(inv.Refs) == 0 {
			whole++
		}
		for _, k := range inv.Keys {
			handled[k] = true
		}
		return nil
	}
	s, _ := e.subscriber("profile-svc", subscriber.Options{Cache: e.caches["profile-svc"].Client(t), Handler: handler, Buffer: 1})

	pad := strings.Repeat("x", 400)
	for round := 0; round < 2; round++ {
		closedBefore := closedForOutputBuffer(t, e)
		mu.Lock()
		gate = make(chan struct{})
		mu.Unlock()
		// 40 events of 25 keys of 400 bytes: 10 KB a message, 400 KB in
		// all, while the subscriber reads at most two. The first has 250:
		// a message of 100 KB, above the hard limit on its own, so that
		// the bus closes the subscriber whatever the kernel's socket
		// buffers take in (a loaded machine's could hold the rest).
		var keys []string
		var events []wire.Event
		for i := 0; i < 40; i++ {
			ev := wire.Event{Tenant: "acme", Domain: "user"}
			n := 25
			if i == 0 {
				n = 250
			}
			for j := 0; j < n; j++ {
				k := fmt.Sprintf("r%d:%d:%d:%s", round, i, j, pad)
				ev.Keys = append(ev.Keys, k)
				keys = append(keys, k)
				e.seed("profile-svc", "acme", k, "active")
			}
			events = append(events, ev)
		}
		for _, ev := range events {
			e.publish(ev)
		}
		redistest.Eventually(t, 20*time.Second, "the bus closed the slow subscriber for its output buffer", func() bool {
			return closedForOutputBuffer(t, e) > closedBefore
		})
		mu.Lock()
		close(gate)
		mu.Unlock()
		e.waitAllGone(30*time.Second, fmt.Sprintf("round %d: every key dropped from the cache Redis", round), "profile-svc", "acme", keys)
		redistest.Eventually(t, 20*time.Second, fmt.Sprintf("round %d: every key handed to the Handler", round), func() bool {
			mu.Lock()
			defer mu.Unlock()
			if whole > 0 {
				return true
			}
			for _, k := range keys {
				if !handled[k] {
					return false
				}
			}
			return true
		})
		redistest.Eventually(t, 20*time.Second, "the subscriber ready again", s.Ready)
	}
}
