package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// The attacks on read-through caching (issue 20): a value read from the
// database before a change must never be cached after the change's
// invalidation, whatever kind of invalidation it is, and a crowd of misses
// must not all go to the database. Each race is run first with the naive
// cache-aside fill (Get, load, Set), which must lose it — the proof that the
// test reproduces the race — and then with tagstore.Fetch, which must not.

// database is the source of truth of the races: a version per key.
type database struct {
	mu       sync.Mutex
	versions map[string]int
}

func (d *database) read(key string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return "v" + strconv.Itoa(d.versions[key])
}

func (d *database) bump(key string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.versions == nil {
		d.versions = map[string]int{}
	}
	d.versions[key]++
}

// filler is a read-through fill: the naive one or Fetch.
type filler func(ctx context.Context, st *tagstore.Store, key string, opt tagstore.FetchOptions, load func(context.Context) ([]byte, error)) ([]byte, error)

// naiveFill is cache-aside as the tag store's Get and SetRefs invite it:
// on a miss, load and store whatever was loaded.
func naiveFill(ctx context.Context, st *tagstore.Store, key string, opt tagstore.FetchOptions, load func(context.Context) ([]byte, error)) ([]byte, error) {
	v, err := st.Get(ctx, "acme", key)
	if err == nil || !errors.Is(err, redis.Nil) {
		return v, err
	}
	if v, err = load(ctx); err != nil {
		return nil, err
	}
	_, err = st.SetRefs(ctx, "acme", key, v, opt.TTL, opt.Tags, opt.Refs)
	return v, err
}

func fetchFill(ctx context.Context, st *tagstore.Store, key string, opt tagstore.FetchOptions, load func(context.Context) ([]byte, error)) ([]byte, error) {
	return st.Fetch(ctx, "acme", key, opt, load)
}

// raceEnv is what a race needs of a deployment, standalone or cluster: the
// service gql's cache, the bus, and a publisher, with a router and gql's
// subscriber running on entityMatrix.
type raceEnv struct {
	t       *testing.T
	store   *tagstore.Store
	bus     redis.UniversalClient
	publish func(wire.Event)
	db      database
}

// channelState is a channel's meta on the bus and gql's position on it.
func (r *raceEnv) channelState(tag string) (meta, pos string) {
	ctx := context.Background()
	vals, err := r.bus.HMGet(ctx, "{invalidate:acme:"+tag+"}:meta", "epoch", "version").Result()
	if err != nil {
		r.t.Fatal(err)
	}
	if e, ok := vals[0].(string); ok {
		v, _ := vals[1].(string)
		meta = e + ":" + v
	}
	p, ok, err := r.store.ReadPosition(ctx, "acme", "gql", tag)
	if err != nil {
		r.t.Fatal(err)
	}
	if ok {
		pos = p.Epoch + ":" + strconv.FormatInt(p.Version, 10) // without the chain, as the meta above
	}
	return meta, pos
}

// race runs fill on key with a load that reads the database and then waits
// while change commits a new version and publishes it, until gql's
// subscriber has applied the channel's new messages. It returns what is
// cached afterwards ("" for nothing) and the database's version.
func (r *raceEnv) race(fill filler, key, tag string, opt tagstore.FetchOptions, change func()) (cached, current string) {
	r.t.Helper()
	ctx := context.Background()
	if _, err := r.store.Get(ctx, "acme", key); !errors.Is(err, redis.Nil) {
		r.t.Fatalf("%s is cached before the race (%v)", key, err)
	}
	loaded, proceed := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := fill(ctx, r.store, key, opt, func(context.Context) ([]byte, error) {
			v := r.db.read(key)
			close(loaded)
			<-proceed
			return []byte(v), nil
		})
		done <- err
	}()
	<-loaded
	before, _ := r.channelState(tag)
	change()
	redistest.Eventually(r.t, 15*time.Second, "the change applied to "+tag, func() bool {
		meta, pos := r.channelState(tag)
		return meta != before && pos == meta
	})
	close(proceed)
	if err := <-done; err != nil {
		r.t.Fatal(err)
	}
	v, err := r.store.Get(ctx, "acme", key)
	if err != nil && !errors.Is(err, redis.Nil) {
		r.t.Fatal(err)
	}
	return string(v), r.db.read(key)
}

// races runs every race, naive first (it must serve a stale value), then
// through Fetch (it must not).
func (r *raceEnv) races(t *testing.T, flushBus func()) {
	orders := tagstore.FetchOptions{Tags: []string{"orders"}}
	for _, tc := range []struct {
		name, tag string
		opt       func(key string) tagstore.FetchOptions
		change    func(key string)
	}{
		{"key level", "orders", func(string) tagstore.FetchOptions { return orders }, func(key string) {
			r.db.bump(key)
			r.publish(wire.Event{Tenant: "acme", Domain: "order", Keys: []string{key}})
		}},
		{"entity level", "users", func(key string) tagstore.FetchOptions {
			return tagstore.FetchOptions{Tags: []string{"users"}, Refs: []tagstore.Ref{user(key)}}
		}, func(key string) {
			r.db.bump(key)
			r.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: key})
		}},
		{"whole tag", "orders", func(string) tagstore.FetchOptions { return orders }, func(key string) {
			r.db.bump(key)
			r.publish(wire.Event{Tenant: "acme", Domain: "order", WholeTag: true})
		}},
		// The change's event is lost with the bus's data; the next event of
		// the channel shows a new epoch, and recovery drops the whole tag.
		{"recovery's whole tag", "orders", func(string) tagstore.FetchOptions { return orders }, func(key string) {
			r.db.bump(key)
			flushBus()
			r.publish(wire.Event{Tenant: "acme", Domain: "order", Keys: []string{"unrelated"}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r.t = t
			for i, f := range []struct {
				name  string
				fill  filler
				stale bool
			}{{"naive", naiveFill, true}, {"Fetch", fetchFill, false}} {
				key := strings.ReplaceAll(tc.name, " ", "-") + "-" + strconv.Itoa(i)
				key = strings.ReplaceAll(key, "'", "")
				cached, current := r.race(f.fill, key, tc.tag, tc.opt(key), func() { tc.change(key) })
				stale := cached != "" && cached != current
				switch {
				case f.stale && !stale:
					t.Fatalf("%s fill: cached %q, database %q: the race did not reproduce", f.name, cached, current)
				case !f.stale && stale:
					t.Errorf("%s fill cached %q after the invalidation of the change to %q", f.name, cached, current)
				}
			}
		})
	}
}

func TestFetchRacesNoInvalidation(t *testing.T) {
	e := newEnv(t, entityMatrix)
	e.router(router.Options{})
	e.subscriber("gql", subscriber.Options{})
	r := &raceEnv{store: e.stores["gql"], bus: e.busC, publish: func(ev wire.Event) { e.publish(ev) }}
	r.races(t, func() { must(t, e.busC.FlushAll(context.Background()).Err()) })
}

func TestClusterFetchRacesNoInvalidation(t *testing.T) {
	e := newClusterEnv(t)
	e.start(entityMatrix, "gql")
	r := &raceEnv{store: e.store, bus: e.busC, publish: func(ev wire.Event) {
		if _, err := e.pub.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}}
	r.races(t, func() {
		must(t, e.busC.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
			return m.FlushAll(ctx).Err()
		}))
	})
}

// The helper process of the lease tests: the test binary run again with
// ROUTERD_FETCH_HELPER set, so a fill runs in a real other process (one
// that can be killed with SIGKILL).
//
//	hold: Fetch "hot" with a load that never returns, after printing "loading"
//	herd: on a line on stdin, 40 concurrent Fetches of "hot"; print "done"
//
// Each load increments the counter "loads" in the cache Redis.
func TestFetchHelperProcess(t *testing.T) {
	mode := os.Getenv("ROUTERD_FETCH_HELPER")
	if mode == "" {
		t.Skip("the helper process of the lease tests")
	}
	cluster := os.Getenv("ROUTERD_FETCH_CLUSTER") == "1"
	c, err := redisconn.Open(os.Getenv("ROUTERD_FETCH_CACHE"), cluster)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := tagstore.New(c, tagstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	switch mode {
	case "hold":
		_, err := st.Fetch(ctx, "acme", "hot", heldOptions, func(ctx context.Context) ([]byte, error) {
			c.Incr(ctx, "loads")
			fmt.Println("loading")
			select {} // until killed
		})
		t.Fatal(err)
	case "herd":
		bufio.NewReader(os.Stdin).ReadString('\n')
		if err := herd(ctx, st, c, 40); err != nil {
			t.Fatal(err)
		}
		fmt.Println("done")
	}
}

// heldOptions are the options of the killed holder's Fetch.
var heldOptions = tagstore.FetchOptions{Tags: []string{"orders"}, LeaseTime: 2 * time.Second}

// herd runs n concurrent Fetches of "hot", each load taking a while, as a
// query does.
func herd(ctx context.Context, st *tagstore.Store, c redis.UniversalClient, n int) error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := st.Fetch(ctx, "acme", "hot", tagstore.FetchOptions{Tags: []string{"orders"}}, func(ctx context.Context) ([]byte, error) {
				if err := c.Incr(ctx, "loads").Err(); err != nil {
					return nil, err
				}
				time.Sleep(100 * time.Millisecond) // the query
				return []byte("hot value"), nil
			})
			if err == nil && string(v) != "hot value" {
				err = fmt.Errorf("fetched %q", v)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// helper starts the helper process in a mode against a cache.
func helper(t *testing.T, mode, cacheURL string, cluster bool) (*exec.Cmd, io.WriteCloser, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFetchHelperProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "ROUTERD_FETCH_HELPER="+mode, "ROUTERD_FETCH_CACHE="+cacheURL, "ROUTERD_FETCH_CLUSTER="+map[bool]string{true: "1", false: "0"}[cluster])
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, stdin, bufio.NewReader(stdout)
}

// waitLine reads the helper's output until a line that is want.
func waitLine(t *testing.T, out *bufio.Reader, want string) {
	t.Helper()
	for {
		line, err := out.ReadString('\n')
		if strings.TrimSpace(line) == want {
			return
		}
		if err != nil {
			t.Fatalf("the helper ended before %q: %v", want, err)
		}
	}
}

// A lease holder killed with SIGKILL in the middle of its load: the misses
// waiting for it get a value once its lease time is over, loaded once.
func testFetchHolderKilled(t *testing.T, st *tagstore.Store, c redis.UniversalClient, cacheURL string, cluster bool) {
	ctx := context.Background()
	cmd, _, out := helper(t, "hold", cacheURL, cluster)
	waitLine(t, out, "loading")
	var loads atomic.Int32
	var wg sync.WaitGroup
	errs := make([]error, 10)
	start := time.Now()
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := st.Fetch(ctx, "acme", "hot", tagstore.FetchOptions{Tags: []string{"orders"}}, func(context.Context) ([]byte, error) {
				loads.Add(1)
				return []byte("fresh"), nil
			})
			if err == nil && string(v) != "fresh" {
				err = fmt.Errorf("fetched %q", v)
			}
			errs[i] = err
		}()
	}
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	wg.Wait()
	must(t, errors.Join(errs...))
	if n := loads.Load(); n != 1 {
		t.Errorf("the waiters loaded %d times, want 1", n)
	}
	if took := time.Since(start); took < heldOptions.LeaseTime/2 {
		t.Errorf("the waiters loaded after %v: the dead holder's lease (%v) did not hold them", took, heldOptions.LeaseTime)
	}
	if n, _ := c.Get(ctx, "loads").Int(); n != 1 {
		t.Errorf("the killed holder loaded %d times, want 1", n)
	}
}

// 80 concurrent misses of one key, 40 in each of two processes, load it at
// most twice.
func testFetchHerdAcrossProcesses(t *testing.T, st *tagstore.Store, c redis.UniversalClient, cacheURL string, cluster bool) {
	ctx := context.Background()
	cmd, stdin, out := helper(t, "herd", cacheURL, cluster)
	waitLine(t, out, "=== RUN   TestFetchHelperProcess")
	var wg sync.WaitGroup
	wg.Add(1)
	var mine error
	go func() {
		defer wg.Done()
		mine = herd(ctx, st, c, 40)
	}()
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	waitLine(t, out, "done")
	wg.Wait()
	must(t, mine)
	must(t, cmd.Wait())
	if n, _ := c.Get(ctx, "loads").Int(); n < 1 || n > 2 {
		t.Errorf("80 concurrent misses in two processes loaded %d times, want at most 2", n)
	}
}

func TestFetchAcrossProcesses(t *testing.T) {
	t.Run("holder killed", func(t *testing.T) {
		srv := redistest.Start(t)
		c := srv.Client(t)
		st, err := tagstore.New(c, tagstore.Options{})
		must(t, err)
		testFetchHolderKilled(t, st, c, srv.URL, false)
	})
	t.Run("herd", func(t *testing.T) {
		srv := redistest.Start(t)
		c := srv.Client(t)
		st, err := tagstore.New(c, tagstore.Options{})
		must(t, err)
		testFetchHerdAcrossProcesses(t, st, c, srv.URL, false)
	})
}

func TestClusterFetchAcrossProcesses(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	c := cl.Client(t)
	st, err := tagstore.New(c, tagstore.Options{})
	must(t, err)
	t.Run("holder killed", func(t *testing.T) { testFetchHolderKilled(t, st, c, cl.URL(), true) })
	// "loads" lives in a slot of its own, the value in the tenant's.
	must(t, c.Del(context.Background(), "loads").Err())
	must(t, c.Del(context.Background(), "{tenant:acme}:hot").Err())
	t.Run("herd", func(t *testing.T) { testFetchHerdAcrossProcesses(t, st, c, cl.URL(), true) })
}
