package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// A Handler gets a channel's invalidations in increasing versions, even when
// a live message comes while the start-up check is applying what it read
// from an older meta: a subscriber without a cache Redis (positions in
// memory, as `agent --deliver` without --cache-redis) starts on a channel at
// version 3, and version 4 is received while the Handler still holds the
// check's whole-tag invalidation at 3. A receiver that ignores the versions
// it has seen must lose nothing.
func TestHandlerOrderWhenLiveMessageMeetsStartupCheck(t *testing.T) {
	const ch = "acme:active"
	e := newEnv(t, "")
	e.router(router.Options{})
	for i := 1; i <= 3; i++ { // one at a time: the router merges what it reads in one batch
		e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{fmt.Sprintf("user:%d", i)}})
		e.waitVersion("invalidate:acme:active", int64(i))
	}

	var mu sync.Mutex
	var versions []int64 // of ch, in the order the Handler got them
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	reg := prometheus.NewRegistry()
	s, err := subscriber.New(e.bus.Client(t), subscriber.Options{Service: "search-svc", Matrix: e.mtx, CheckInterval: time.Hour, Registerer: reg,
		Handler: func(ctx context.Context, inv subscriber.Invalidation) error {
			if inv.Tenant+":"+inv.Tag != ch {
				return nil
			}
			once.Do(func() { // the start-up check's: held until version 4 waits for the applier
				close(entered)
				select {
				case <-release:
				case <-ctx.Done():
				}
			})
			mu.Lock()
			versions = append(versions, inv.Version)
			mu.Unlock()
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, s.Run)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the start-up check did not reach the Handler")
	}
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:4"}})
	redistest.Eventually(t, 10*time.Second, "version 4 received", func() bool {
		return metric(t, reg, "subscriber_messages_received_total") >= 1
	})
	close(release)
	got := func(v int64) func() bool {
		return func() bool {
			mu.Lock()
			defer mu.Unlock()
			return slices.Contains(versions, v)
		}
	}
	redistest.Eventually(t, 10*time.Second, "version 4 handled", got(4))
	redistest.Eventually(t, 10*time.Second, "subscriber ready", s.Ready)
	// One more, after every check asked for at start has run.
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:5"}})
	redistest.Eventually(t, 10*time.Second, "version 5 handled", got(5))
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(versions); i++ {
		if versions[i] <= versions[i-1] {
			t.Errorf("%s: the Handler got version %d after %d: %v", ch, versions[i], versions[i-1], versions)
		}
	}
}
