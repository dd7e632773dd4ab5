package publisher_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/wire"
)

// attack: one Publisher shared by many goroutines (as a service's request
// handlers share it), publishing one by one and in batches, some reusing
// each other's ids, while the partition count in Redis changes under them
// and is read again on almost every call. Run under -race: no data race;
// every event lands once on a partition of its tenant under one of the
// counts; and while the count holds still, each goroutine's events of its
// tenant are in the order it published them.
func TestAttack8PubConcurrentPublishers(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	key := names.PartitionsKey("invalidate")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Set(ctx, key, 4, 0).Err())
	p, err := publisher.New(c, publisher.Options{Refresh: time.Millisecond, MaxPacked: 3})
	if err != nil {
		t.Fatal(err)
	}

	const goroutines, each = 16, 40
	run := func(changing bool) map[string][]string {
		stop := make(chan struct{})
		var flips sync.WaitGroup
		if changing {
			flips.Add(1)
			go func() {
				defer flips.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-time.After(time.Millisecond):
					}
					_ = c.Set(ctx, key, []int{4, 8}[i%2], 0).Err()
				}
			}()
		}
		var wg sync.WaitGroup
		errs := make(chan error, goroutines)
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tenant := fmt.Sprintf("t%d", g)
				for i := 0; i < each; {
					if i%4 == 0 && i+3 <= each { // a batch of three
						batch := make([]wire.Event, 3)
						for j := range batch {
							batch[j] = wire.Event{ID: fmt.Sprintf("%v-%s-%d", changing, tenant, i+j), Tenant: tenant, Domain: "user", Keys: []string{fmt.Sprint(i + j)}}
						}
						if _, err := p.PublishBatch(ctx, batch); err != nil {
							errs <- err
							return
						}
						i += 3
						continue
					}
					if _, err := p.Publish(ctx, wire.Event{ID: fmt.Sprintf("%v-%s-%d", changing, tenant, i), Tenant: tenant, Domain: "user", Keys: []string{fmt.Sprint(i)}}); err != nil {
						errs <- err
						return
					}
					// The same change, published by another goroutine
					// too (a retry racing the first try): its own id.
					if _, err := p.Publish(ctx, wire.Event{ID: "shared-" + fmt.Sprint(changing, i), Tenant: "shared", Domain: "user", Keys: []string{fmt.Sprint(i)}}); err != nil {
						errs <- err
						return
					}
					i++
				}
			}()
		}
		wg.Wait()
		close(stop)
		flips.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		// Every event of every partition stream, by tenant, in stream
		// order; then the streams are emptied for the next run.
		got := map[string][]string{}
		for part := range 8 {
			stream := names.IngressStream("invalidate", part)
			for _, ev := range entries(t, c, stream) {
				if wire.Partition(ev.Tenant, 4) != part && (!changing || wire.Partition(ev.Tenant, 8) != part) {
					t.Errorf("%s's event %s on %s", ev.Tenant, ev.ID, stream)
				}
				got[ev.Tenant] = append(got[ev.Tenant], ev.ID)
			}
			must(c.Del(ctx, stream).Err())
		}
		return got
	}

	for _, changing := range []bool{false, true} {
		got := run(changing)
		for g := range goroutines {
			tenant := fmt.Sprintf("t%d", g)
			ids := got[tenant]
			if len(ids) != each {
				t.Errorf("changing count %v: %s has %d events, want %d", changing, tenant, len(ids), each)
				continue
			}
			if changing {
				continue // a tenant's events span two partitions: their order is lost (docs/protocol.md 2.2)
			}
			for i, id := range ids {
				if want := fmt.Sprintf("%v-%s-%d", changing, tenant, i); id != want {
					t.Errorf("%s's event %d is %s, want %s: out of order", tenant, i, id, want)
					break
				}
			}
		}
		if n := len(got["shared"]); n != goroutines*(each-each/4*3) {
			t.Errorf("changing count %v: %d shared events, want %d", changing, n, goroutines*(each-each/4*3))
		}
	}
}
