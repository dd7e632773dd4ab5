package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
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

// The router routes a stream's next batch while the one before is
// published and acknowledged: the batches' publishes must still follow one
// another, so a channel's messages keep the stream's order, and every entry
// is acknowledged once its messages are out. 300 raw single-key events to
// one channel, appended before the router starts so that reads of two to
// eight entries follow each other: the history must hold every key once, in
// the order the events were appended, and nothing may stay pending.
func TestOrderAcrossOverlappingBatches(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	const n = 300
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	pipe := e.busC.Pipeline()
	for i := range n {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField,
			fmt.Sprintf(`{"tenant":"acme","domain":"user","keys":["user:%d"]}`, i)}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	e.router(router.Options{BatchSize: 2})
	ch := names.Channel("invalidate", "acme", "active")
	var keys []string
	redistest.Eventually(t, 20*time.Second, "every key in the channel's history, nothing pending", func() bool {
		keys = keys[:0]
		for _, m := range e.history(ch) {
			keys = append(keys, m.Keys...)
		}
		return len(keys) >= n && e.pending() == 0
	})
	if len(keys) != n {
		t.Fatalf("the history holds %d keys, not %d (a message sent twice?)", len(keys), n)
	}
	for i, k := range keys {
		if want := fmt.Sprintf("user:%d", i); k != want {
			t.Fatalf("key %d of the history is %s, not %s: the channel's messages left the stream's order: …%v…", i, k, want, keys[max(i-5, 0):min(i+10, len(keys))])
		}
	}
}
