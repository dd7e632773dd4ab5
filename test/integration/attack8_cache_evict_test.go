package integration

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
)

// A cache Redis at maxmemory under volatile-ttl evicts the keys nearest
// their expiry first: a fill's lease (a few seconds to live) before any
// value. Evicted while its fill loads, a lease is taken again by the next
// miss, and an invalidation comes: neither the first fill (its token gone)
// nor the second (its key taken out of the tag set) may cache what they
// read before the change.
func TestAttack8CacheLeaseEvictedMidLoad(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, "--maxmemory-policy", "volatile-ttl")
	c := srv.Client(t)
	st, err := tagstore.New(c, tagstore.Options{})
	must(t, err)
	opt := tagstore.FetchOptions{Tags: []string{"active"}}
	full, _ := st.Key("acme", "user:1")
	lease := names.LeaseKey("acme", full)

	// fetch runs a Fetch whose load returns what it is given, once it is
	// told to; it says when it loads.
	type fetchRun struct {
		loading chan struct{}
		value   chan string
		done    chan error
	}
	fetch := func() *fetchRun {
		r := &fetchRun{loading: make(chan struct{}), value: make(chan string), done: make(chan error, 1)}
		go func() {
			_, err := st.Fetch(ctx, "acme", "user:1", opt, func(context.Context) ([]byte, error) {
				close(r.loading)
				return []byte(<-r.value), nil
			})
			r.done <- err
		}()
		return r
	}

	a := fetch()
	<-a.loading
	// Memory pressure: the next command evicts every key with a time to
	// live, the lease first.
	must(t, c.ConfigSet(ctx, "maxmemory", "1").Err())
	redistest.Eventually(t, 5*time.Second, "the lease evicted", func() bool { return c.Exists(ctx, lease).Val() == 0 })
	if n := c.InfoMap(ctx, "stats").Item("Stats", "evicted_keys"); n == "0" {
		t.Fatalf("evicted_keys %s: the lease went another way", n)
	}
	must(t, c.ConfigSet(ctx, "maxmemory", "0").Err())

	b := fetch() // takes the lease again
	<-b.loading
	// The change, and its invalidation.
	if _, err := st.InvalidateKeys(ctx, "acme", "active", "user:1"); err != nil {
		t.Fatal(err)
	}
	a.value <- "old a"
	must(t, <-a.done)
	b.value <- "old b"
	must(t, <-b.done)
	if v, err := c.Get(ctx, full).Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("cached %q (%v) after the invalidation, from a fill that read before it", v, err)
	}
	v, err := st.Fetch(ctx, "acme", "user:1", opt, func(context.Context) ([]byte, error) { return []byte("new"), nil })
	if err != nil || string(v) != "new" {
		t.Fatalf("a Fetch after the change: %q, %v", v, err)
	}
	if got, err := c.Get(ctx, full).Result(); err != nil || got != "new" {
		t.Errorf("cached %q (%v), want the value read after the change", got, err)
	}
}

// The cache Redis loses its data (FLUSHALL, or a restart without
// persistence) while a fill loads, and the change's invalidation then finds
// no tag set to take the key out of: the fill must not cache what it read
// before the change (its lease went with the data).
func TestAttack8CacheLostWhileAFillLoads(t *testing.T) {
	for _, lose := range []struct {
		name string
		do   func(t *testing.T, srv *redistest.Server, c *redis.Client)
	}{
		{"FLUSHALL", func(t *testing.T, _ *redistest.Server, c *redis.Client) {
			must(t, c.FlushAll(context.Background()).Err())
		}},
		{"restart", func(t *testing.T, srv *redistest.Server, _ *redis.Client) { srv.Restart(t) }},
	} {
		t.Run(lose.name, func(t *testing.T) {
			ctx := context.Background()
			srv := redistest.Start(t)
			c := srv.Client(t)
			st, err := tagstore.New(c, tagstore.Options{})
			must(t, err)
			opt := tagstore.FetchOptions{Tags: []string{"active"}}
			full, _ := st.Key("acme", "user:1")
			loading, value := make(chan struct{}), make(chan string)
			done := make(chan error, 1)
			go func() {
				_, err := st.Fetch(ctx, "acme", "user:1", opt, func(context.Context) ([]byte, error) {
					close(loading)
					return []byte(<-value), nil
				})
				done <- err
			}()
			<-loading
			lose.do(t, srv, c)
			if _, err := st.InvalidateKeys(ctx, "acme", "active", "user:1"); err != nil {
				t.Fatal(err)
			}
			value <- "old"
			must(t, <-done)
			if v, err := c.Get(ctx, full).Result(); !errors.Is(err, redis.Nil) {
				t.Errorf("cached %q (%v) after the invalidation, from a fill that read before it", v, err)
			}
		})
	}
}
