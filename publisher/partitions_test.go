package publisher_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/wire"
)

// gateGET holds every GET of key until release is closed, and counts them.
type gateGET struct {
	key     string
	gets    atomic.Int32
	entered chan struct{}
	release chan struct{}
	armed   atomic.Bool
}

func (g *gateGET) DialHook(next redis.DialHook) redis.DialHook { return next }
func (g *gateGET) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (g *gateGET) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "get" && len(cmd.Args()) == 2 && cmd.Args()[1] == g.key {
			g.gets.Add(1)
			if g.armed.Load() {
				select {
				case g.entered <- struct{}{}:
				default:
				}
				<-g.release
			}
		}
		return next(ctx, cmd)
	}
}

// A publisher refreshing its partition count does not hold other Publish
// calls behind that Redis round trip: one whose context ends returns at
// once, and the others share the one GET.
func TestPartitionRefreshDoesNotHoldOthers(t *testing.T) {
	c := redistest.Start(t).Client(t)
	gate := &gateGET{key: names.PartitionsKey(names.DefaultPrefix), entered: make(chan struct{}, 1), release: make(chan struct{})}
	c.AddHook(gate)
	var mu sync.Mutex
	now := time.UnixMilli(1764000000000)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	p, err := publisher.New(c, publisher.Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ev := publisher.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
	if _, err := p.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}

	// The count is due for a refresh, and the GET that refreshes it hangs.
	mu.Lock()
	now = now.Add(publisher.DefaultRefresh + time.Second)
	mu.Unlock()
	gate.armed.Store(true)
	released := false
	release := func() {
		if !released {
			released = true
			close(gate.release)
		}
	}
	defer release()
	first := make(chan error, 1)
	go func() { _, err := p.Publish(context.Background(), ev); first <- err }()
	<-gate.entered

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	other := make(chan error, 1)
	go func() { _, err := p.Publish(cancelled, ev); other <- err }()
	var otherErr error
	redistest.Eventually(t, 5*time.Second, "a cancelled Publish to return while the refresh hangs", func() bool {
		select {
		case otherErr = <-other:
			return true
		default:
			return false
		}
	})
	if !errors.Is(otherErr, context.Canceled) {
		t.Errorf("cancelled Publish: %v", otherErr)
	}

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := p.Publish(context.Background(), ev); err != nil {
				t.Error(err)
			}
		})
	}
	release()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if n := gate.gets.Load(); n != 2 {
		t.Errorf("%d GETs of the partition count, want 2 (the first, and one refresh shared by all)", n)
	}
}

// A partition count gone with the bus's data is not replaced by a guess for
// long: a publisher that read one keeps it, and one that never did uses the
// default only until the router writes the count again (read after a
// second, not after Refresh).
func TestMissingPartitionCountNotGuessedForLong(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	key := names.PartitionsKey(names.DefaultPrefix)
	var mu sync.Mutex
	now := time.UnixMilli(1764000000000)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	ev := publisher.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
	// acme's partition among 4 and among the default 8 differ.
	among := func(n int) string { return names.IngressStream(names.DefaultPrefix, wire.Partition("acme", n)) }
	lands := func(p *publisher.Publisher, want string) {
		t.Helper()
		before := c.XLen(ctx, want).Val()
		if _, err := p.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
		if c.XLen(ctx, want).Val() != before+1 {
			t.Fatalf("the event did not land on %s", want)
		}
	}

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Set(ctx, key, 4, 0).Err())
	known, err := publisher.New(c, publisher.Options{Now: clock})
	must(err)
	lands(known, among(4))
	must(c.FlushAll(ctx).Err()) // the bus lost its data
	advance(publisher.DefaultRefresh + time.Second)
	lands(known, among(4)) // the count read before, not the default

	fresh, err := publisher.New(c, publisher.Options{Now: clock})
	must(err)
	lands(fresh, among(wire.DefaultPartitions)) // nothing better to go by
	must(c.Set(ctx, key, 4, 0).Err())           // the router writes it again
	advance(2 * time.Second)
	lands(fresh, among(4))
}
