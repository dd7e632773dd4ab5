package cli

import (
	"context"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/faultproxy"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
)

// An agent without --deliver that starts and stops while an agent with
// --deliver runs on the same cache Redis moves the cache's positions past
// what the process was given (it applied user:1 while the --deliver
// agent's bus link was cut, and that agent stopped before it noticed). Neither start nor stop of the
// --deliver agent sees its presence, so the stop must still leave no clean
// mark: a start continuing from the cache's positions skips user:1 for
// good.
func TestAttack11PlainAgentBetweenStartAndStopOfADeliverAgent(t *testing.T) {
	plainBetweenDeliverRuns(t, false)
}

// The same, with the agent without --deliver cut off from the cache Redis
// when it starts: it could neither record its presence nor take the
// mark away then, and does both once the cache answers (before it applies
// anything there).
func TestAttack11PlainAgentStartedWhileTheCacheRefused(t *testing.T) {
	plainBetweenDeliverRuns(t, true)
}

func plainBetweenDeliverRuns(t *testing.T, refusedAtStart bool) {
	bus, cache := redistest.Start(t), redistest.Start(t)
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	rcv := &receiver{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	link := faultproxy.Start(t, bus.Addr)
	a := startAgent(t, "--redis", "redis://"+link.Addr(), "--cache-redis", cache.URL, "--deliver", srv.URL)
	a.waitReady(t)
	a.waitDelivered(t, rcv) // its first start's reset
	before := len(rcv.objects())

	cacheLink := faultproxy.Start(t, cache.Addr)
	if refusedAtStart {
		if err := cacheLink.Add(faultproxy.Toxic{Name: "refuse", Type: "timeout", Stream: "upstream", Attributes: map[string]any{"timeout": 1}}); err != nil {
			t.Fatal(err)
		}
	}
	plain := startAgent(t, "--redis", bus.URL, "--cache-redis", "redis://"+cacheLink.Addr(), "--log-level", "debug")
	if refusedAtStart {
		redistest.Eventually(t, 10*time.Second, "the plain agent started without recording its presence or taking the mark", func() bool {
			return strings.Contains(plain.errb.String(), "could not record in the cache Redis") && strings.Contains(plain.errb.String(), "msg=subscribing")
		})
		if err := cacheLink.Heal(); err != nil {
			t.Fatal(err)
		}
	}
	plain.waitReady(t)
	if err := link.Blackhole(); err != nil {
		t.Fatal(err)
	}
	publishKeys(t, bus.URL, "user", "user:1")
	redistest.Eventually(t, 10*time.Second, "the plain agent applied user:1", func() bool {
		v, _ := cache.Client(t).Get(context.Background(), names.PositionKey("acme", "search-svc", "active")).Result()
		p, err := tagstore.ParsePosition(v)
		return err == nil && p.Version == 1
	})
	plain.stop(t)
	if err := link.Heal(); err != nil {
		t.Fatal(err)
	}
	// The agent stops before it sees that it missed user:1 (the link
	// healed, its subscription not yet back): what it stands on is the
	// cache's position, which the plain agent moved past user:1.
	a.waitDelivered(t, rcv)
	a.stop(t)

	b := startAgent(t, "--redis", bus.URL, "--cache-redis", cache.URL, "--deliver", srv.URL)
	b.waitReady(t)
	publishKeys(t, bus.URL, "user", "user:2")
	redistest.Eventually(t, 10*time.Second, "user:2 delivered", func() bool {
		return slices.ContainsFunc(rcv.objects(), func(d delivered) bool { return slices.Contains(d.Keys, "user:2") })
	})
	for _, d := range rcv.objects()[before:] {
		if d.Reset || d.WholeTag || slices.Contains(d.Keys, "user:1") {
			return
		}
	}
	t.Errorf("user:1, applied by an agent without --deliver while the --deliver agent ran, never reached the process (no reset either): %+v\n%s", rcv.objects()[before:], grep(a.errb.String()+plain.errb.String(), "mark"))
}

// The cache Redis comes back from a snapshot taken after an agent with
// --deliver stopped cleanly (a restart with RDB persistence, a restore
// from a backup): the clean mark is back, the running agent's token gone.
// That agent then applies user:1 to the cache and stops before the process
// took it: its stop must leave no clean mark, or the next start continues
// from the cache's position, past user:1, and skips it for good.
func TestAttack11CacheRestoredToACleanMarkWhileTheAgentRuns(t *testing.T) {
	ctx := context.Background()
	bus, cache, rcv, args := deliverRig(t)
	first := startAgent(t, args...)
	first.waitReady(t)
	first.waitDelivered(t, rcv)
	first.stop(t)
	snap, err := cache.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}

	a := startAgent(t, args...)
	a.waitReady(t)
	if err := cache.RestoreSnapshot(snap); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the agent saw the cache change", func() bool {
		return strings.Contains(a.errb.String(), "the cache Redis restarted or failed over")
	})
	a.waitReady(t)
	before := len(rcv.objects())
	rcv.setDown(true)
	publishKeys(t, bus.URL, "user", "user:1")
	redistest.Eventually(t, 10*time.Second, "the delivery of user:1 tried", func() bool {
		return strings.Contains(a.errb.String(), "delivery failed; retrying")
	})
	a.stop(t)
	rcv.setDown(false)

	b := startAgent(t, args...)
	b.waitReady(t)
	publishKeys(t, bus.URL, "user", "user:2")
	redistest.Eventually(t, 10*time.Second, "user:2 delivered", func() bool {
		return slices.ContainsFunc(rcv.objects()[before:], func(d delivered) bool { return slices.Contains(d.Keys, "user:2") })
	})
	for _, d := range rcv.objects()[before:] {
		if d.Reset || d.WholeTag || slices.Contains(d.Keys, "user:1") {
			return
		}
	}
	t.Errorf("user:1, applied to the cache by an agent that stopped before the process took it, never reached the process (no reset either): %+v\n%s", rcv.objects()[before:], grep(a.errb.String(), "clean"))
}

// The same restore, with the agent killed (kill -9) rather than stopped:
// no stop writes anything, so the agent, once it sees that the mark is no
// longer its token, writes it again, and the next start delivers a reset.
func TestAttack11CacheRestoredToACleanMarkThenTheAgentKilled(t *testing.T) {
	ctx := context.Background()
	bin := testbin.Routerd(t)
	bus, cache := redistest.Start(t), redistest.Start(t)
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	rcv := &receiver{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	args := []string{"--redis", bus.URL, "--cache-redis", cache.URL, "--deliver", srv.URL}
	first := startAgent(t, args...)
	first.waitReady(t)
	first.waitDelivered(t, rcv)
	first.stop(t)
	snap, err := cache.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}

	var logs syncBuffer
	cmd := exec.Command(bin, append([]string{"agent", "--matrix", "../../matrix.yaml", "--service", "search-svc", "--listen", anyPort}, args...)...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := listening(t, &logs)
	ready := func() {
		redistest.Eventually(t, 15*time.Second, "agent ready", func() bool {
			code, _ := get(t, "http://"+addr+"/readyz")
			return code == 200
		})
	}
	ready()
	if err := cache.RestoreSnapshot(snap); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the agent saw the cache change", func() bool {
		return strings.Contains(logs.String(), "the cache Redis restarted or failed over")
	})
	ready()
	before := len(rcv.objects())
	rcv.setDown(true)
	publishKeys(t, bus.URL, "user", "user:1")
	redistest.Eventually(t, 10*time.Second, "the delivery of user:1 tried", func() bool {
		return strings.Contains(logs.String(), "delivery failed; retrying")
	})
	redistest.Eventually(t, 10*time.Second, "the mark no longer clean", func() bool {
		v, _ := cache.Client(t).Get(ctx, names.DeliveryKey("search-svc")).Result()
		return v != lua.DeliveryClean
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	srv.Close() // waits for a request of the killed agent still in flight: it is refused
	rcv.setDown(false)
	srv = httptest.NewServer(rcv)
	defer srv.Close()

	b := startAgent(t, "--redis", bus.URL, "--cache-redis", cache.URL, "--deliver", srv.URL)
	b.waitReady(t)
	publishKeys(t, bus.URL, "user", "user:2")
	redistest.Eventually(t, 10*time.Second, "user:2 delivered", func() bool {
		return slices.ContainsFunc(rcv.objects()[before:], func(d delivered) bool { return slices.Contains(d.Keys, "user:2") })
	})
	for _, d := range rcv.objects()[before:] {
		if d.Reset || d.WholeTag || slices.Contains(d.Keys, "user:1") {
			return
		}
	}
	t.Errorf("user:1, applied to the cache by an agent killed before the process took it, never reached the process (no reset either): %+v\n%s", rcv.objects()[before:], grep(logs.String(), "mark"))
}
