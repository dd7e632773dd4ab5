package integration

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// sentinelRig is routerd serve and routerd agent (profile-svc) as real
// processes on a bus and a cache given by URL (a Sentinel URL, or one
// server's), a durable publisher on the bus and the service's tag store
// on the cache, both opened from the same URLs as the daemons.
type sentinelRig struct {
	t                    *testing.T
	pub                  *publisher.Publisher
	store                *tagstore.Store
	serveAddr, agentAddr string
	serveLog, agentLog   *lockedBuffer
}

func newSentinelRig(t *testing.T, busURL, cacheURL string, agentArgs ...string) *sentinelRig {
	t.Helper()
	r := &sentinelRig{t: t, serveLog: &lockedBuffer{}, agentLog: &lockedBuffer{}}
	open := func(u string) redis.UniversalClient {
		c, err := redisconn.Open(u, false)
		if err != nil {
			t.Fatalf("opening %s: %v", u, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	var err error
	r.store, err = tagstore.New(open(cacheURL), tagstore.Options{})
	must(t, err)
	// Durable: a publish succeeds once a replica has the entry (WAIT 1),
	// so a failover cannot lose an event its publisher was told was taken
	// (docs/architecture.md, "What needs Redis persistence").
	r.pub, err = publisher.New(open(busURL), publisher.Options{Origin: "test", Durable: true, WaitTimeout: 500 * time.Millisecond})
	must(t, err)

	path := filepath.Join(t.TempDir(), "matrix.yaml")
	must(t, os.WriteFile(path, []byte(testMatrix), 0o644))
	start := func(log *lockedBuffer, args ...string) string {
		cmd := exec.Command(testbin.Routerd(t), append(args, "--matrix", path, "--listen", testbin.AnyPort)...)
		cmd.Stderr = log
		must(t, cmd.Start())
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if t.Failed() {
				t.Logf("routerd %s log:\n%s", args[0], log.String())
			}
		})
		return testbin.ListenAddr(t, log.String)
	}
	r.serveAddr = start(r.serveLog, "serve", "--redis", busURL)
	r.agentAddr = start(r.agentLog, append([]string{"agent", "--service", "profile-svc", "--redis", busURL, "--cache-redis", cacheURL}, agentArgs...)...)
	r.ready()
	return r
}

// ready waits until both daemons answer /readyz 200.
func (r *sentinelRig) ready() {
	r.t.Helper()
	redistest.Eventually(r.t, 20*time.Second, "routerd serve and agent ready", func() bool {
		return readyz(r.serveAddr) && readyz(r.agentAddr)
	})
}

func readyz(addr string) bool {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (r *sentinelRig) seed(keys ...string) {
	r.t.Helper()
	for _, k := range keys {
		must(r.t, r.store.Set(context.Background(), "acme", k, []byte("cached"), 0, "active"))
	}
}

func (r *sentinelRig) cached(key string) bool {
	r.t.Helper()
	_, err := r.store.Get(context.Background(), "acme", key)
	if errors.Is(err, redis.Nil) {
		return false
	}
	must(r.t, err)
	return true
}

// publish publishes an event naming key, again with the same id until it
// is taken (a failover in the middle fails it: the entry may be on the
// bus or not, and a second one with the same id is harmless).
func (r *sentinelRig) publish(key string) error {
	ev := wire.Event{ID: "ev-" + key, Tenant: "acme", Domain: "user", Keys: []string{key}}
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err = r.pub.Publish(ctx, ev)
		cancel()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("publishing %s: %w", key, err)
}

func (r *sentinelRig) waitGone(keys ...string) {
	r.t.Helper()
	redistest.Eventually(r.t, 20*time.Second, fmt.Sprintf("%v invalidated", keys), func() bool {
		for _, k := range keys {
			if r.cached(k) {
				return false
			}
		}
		return true
	})
}

// precise publishes an event naming one of two fresh keys and checks that
// the other stays: invalidations go key by key again, not only whole tags.
func (r *sentinelRig) precise(named, bystander string) {
	r.t.Helper()
	r.seed(named, bystander)
	must(r.t, r.publish(named))
	r.waitGone(named)
	if !r.cached(bystander) {
		r.t.Errorf("%s, named by no event, was invalidated with %s: the tag went whole", bystander, named)
	}
}

// routerd serve and routerd agent on a bus that Redis Sentinel fails over.
// Events are published (durably) while the bus master is killed (kill -9);
// Sentinel promotes the replica. Every event published before, during and
// after the failover must be applied — or its tag dropped whole, the
// recovery of a bus that may have lost the last channel messages — without
// restarting either daemon: once an event published after the failover is
// applied, no key an earlier event named is left readable, and the next
// invalidations go key by key again.
func TestSentinelBusFailover(t *testing.T) {
	bus := redistest.StartSentinel(t, 1, 1)
	cache := redistest.Start(t)
	keys := keyRange("user", 0, 30)
	r := newSentinelRig(t, bus.URL(), cache.URL)
	r.seed(keys...)

	for _, k := range keys[:5] {
		must(t, r.publish(k))
	}
	r.waitGone(keys[:5]...)

	// Publish the rest steadily; kill the bus master after the first five.
	var mu sync.Mutex
	accepted := 0
	done := make(chan error, 1)
	go func() {
		for _, k := range keys[5:] {
			if err := r.publish(k); err != nil {
				done <- err
				return
			}
			mu.Lock()
			accepted++
			mu.Unlock()
		}
		done <- nil
	}()
	redistest.Eventually(t, 10*time.Second, "five events published", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return accepted >= 5
	})
	old := bus.Master(t)
	killed := time.Now()
	promoted := bus.KillMaster(t)
	t.Logf("bus failed over from %s to %s in %v", old.Addr, promoted.Addr, time.Since(killed))
	must(t, <-done)

	// An event published after the failover is applied; by then every key
	// an earlier event named is gone. (Its channel starts a new epoch under
	// the promoted replica's replication id, which the agent takes as a
	// gap: the tag goes whole once, docs/cluster.md "Failover".)
	r.seed("after:0")
	must(t, r.publish("after:0"))
	r.waitGone("after:0")
	t.Logf("an event published after the failover applied %v after the kill", time.Since(killed))
	for _, k := range keys {
		if r.cached(k) {
			t.Errorf("%s, named by an event published before the last, is still cached", k)
		}
	}
	r.ready()
	r.precise("after:1", "after:2")
}

// routerd agent on a cache Redis that Redis Sentinel fails over: the agent
// follows the promoted replica without a restart, and the invalidations
// published after the failover land there.
func TestSentinelCacheFailover(t *testing.T) {
	bus := redistest.Start(t)
	cache := redistest.StartSentinel(t, 1, 1)
	keys := keyRange("user", 0, 10)
	r := newSentinelRig(t, bus.URL, cache.URL())
	r.seed(keys...)
	// The replica has every value before the first invalidation.
	must(t, cache.Master(t).Client(t).Do(context.Background(), "WAIT", 1, 5000).Err())
	must(t, r.publish(keys[0]))
	r.waitGone(keys[0])
	must(t, cache.Master(t).Client(t).Do(context.Background(), "WAIT", 1, 5000).Err())

	cache.KillMaster(t)
	for _, k := range keys[1:5] {
		must(t, r.publish(k))
	}
	r.waitGone(keys[:5]...)
	r.ready()
	r.precise("after:1", "after:2")
	for _, k := range keys[5:] {
		if !r.cached(k) {
			t.Errorf("%s, named by no event, was invalidated", k)
		}
	}
}

// A cache failover that loses the last invalidation: the replica's link to
// the master is down (it cannot authenticate) while the agent deletes a
// key on the master, and the master is killed before the replica has the
// deletion. The promoted replica serves the value again, with the position
// from before it. The agent's next position check finds the cache's
// position behind the one it applied, replays the channel from there
// (docs/protocol.md §5.2, "the cache position moved") and the key goes
// again. That check comes at once: the agent sees the promoted replica's
// run_id (TestSentinelCacheFailoverRecheckedAtOnce, at the default
// --check-interval; this one runs every second besides).
func TestSentinelCacheFailoverLosesAnInvalidation(t *testing.T) {
	bus := redistest.Start(t)
	cache := redistest.StartSentinel(t, 1, 1)
	keys := keyRange("user", 0, 4)
	r := newSentinelRig(t, bus.URL, cache.URL(), "--check-interval", "1s")
	r.loseOnReplica(cache, keys)
	cache.KillMaster(t)
	r.waitGone(keys[:2]...)
	r.ready()
	for _, k := range keys[2:] {
		if !r.cached(k) {
			t.Errorf("%s, named by no event, was invalidated: the replay went whole", k)
		}
	}
	r.precise("after:1", "after:2")
}

// A failover an operator asks for (SENTINEL FAILOVER): the old master
// lives on, as a master, until the sentinels reconfigure it as a replica
// (8 s after they see it report itself master, so 8-18 s) and close its
// clients' connections. go-redis's failover client closes its pooled
// connections to it at once (+switch-master), but neither its pub/sub
// connections nor the router's own read connections (router/bounded.go:
// clients made from the failover client's Options): the router read the
// old master's ingress and the agent listened there while publishers
// wrote to the new one, so nothing published after the switch was routed
// or heard until the old master was reconfigured (about 10 s here). Every
// connection of routerd's must leave the old master while it is still a
// master, and what is published after the switch is applied.
func TestSentinelBusManualFailover(t *testing.T) {
	bus := redistest.StartSentinel(t, 1, 1)
	cache := redistest.Start(t)
	r := newSentinelRig(t, bus.URL(), cache.URL)
	r.seed("before:1")
	must(t, r.publish("before:1"))
	r.waitGone("before:1")

	old := bus.Master(t)
	oldC := old.Client(t)
	bus.Failover(t)
	redistest.Eventually(t, 20*time.Second, "no connection of routerd's left on the old master", func() bool {
		list, err := oldC.ClientList(context.Background()).Result()
		if err != nil {
			return false
		}
		for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
			// The sentinels' own, this CLIENT LIST's, and the link to the
			// new master once the old one follows it may stay.
			if !strings.Contains(line, " name=sentinel-") && !strings.Contains(line, "cmd=client|list") && !strings.Contains(line, " flags=M ") {
				return false
			}
		}
		if info, err := oldC.InfoMap(context.Background(), "replication").Result(); err != nil || info["Replication"]["role"] != "master" {
			t.Errorf("routerd left the old master only when the sentinels reconfigured it and closed its clients (role %v, %v)", info["Replication"]["role"], err)
		}
		return true
	})
	r.seed("after:0")
	must(t, r.publish("after:0"))
	r.waitGone("after:0")
	r.ready()
	r.precise("after:1", "after:2")
}

// loseOnReplica seeds keys in the Sentinel cache, invalidates keys[0] with
// the replica following, then cuts the replica off (a wrong masterauth, its
// link killed) and invalidates keys[1]: the master no longer holds it, the
// replica still does, and a failover to the replica brings it back.
func (r *sentinelRig) loseOnReplica(cache *redistest.Sentinel, keys []string) {
	t := r.t
	t.Helper()
	ctx := context.Background()
	r.seed(keys...)
	master := cache.Master(t).Client(t)
	must(t, r.publish(keys[0]))
	r.waitGone(keys[0])
	must(t, master.Do(ctx, "WAIT", 1, 5000).Err())

	replica := cache.Servers[1].Client(t)
	must(t, replica.ConfigSet(ctx, "masterauth", "wrong").Err())
	must(t, replica.Do(ctx, "CLIENT", "KILL", "TYPE", "master").Err())
	redistest.Eventually(t, 5*time.Second, "the replica's link down", func() bool {
		info, err := master.InfoMap(ctx, "replication").Result()
		return err == nil && info["Replication"]["connected_slaves"] == "0"
	})
	must(t, r.publish(keys[1]))
	r.waitGone(keys[1])
	// The replica still holds the value the master no longer has.
	full, err := r.store.Key("acme", keys[1])
	must(t, err)
	if n, err := replica.Exists(ctx, full).Result(); err != nil || n != 1 {
		t.Fatalf("the replica has %d of %s (%v): the invalidation was not lost, the attack did not take", n, full, err)
	}
}
