package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sys/unix"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
)

// An agent delivering to stdout whose reader stopped reading (a pipe nobody
// drains: the write blocks) stops on SIGTERM all the same, without the
// clean mark (the delivery was not made: the next start delivers a reset),
// and says what it abandoned.
func TestAgentStdoutNotReadStopsOnSIGTERM(t *testing.T) {
	bin := testbin.Routerd(t)
	bus, cache := redistest.Start(t), redistest.Start(t)
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var logs syncBuffer
	cmd := exec.Command(bin, "agent", "--matrix", "../../matrix.yaml", "--service", "search-svc", "--listen", anyPort,
		"--redis", bus.URL, "--cache-redis", cache.URL, "--deliver", "-")
	cmd.Stdout, cmd.Stderr = w, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close() // the agent holds the only writing end
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	addr := listening(t, &logs)
	redistest.Eventually(t, 15*time.Second, "agent ready", func() bool {
		code, _ := get(t, "http://"+addr+"/readyz")
		return code == 200
	})
	// One line longer than the pipe holds (64 KiB): its write blocks.
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = fmt.Sprintf("user:%d:%s", i, strings.Repeat("x", 400))
	}
	publishKeys(t, bus.URL, "user", strings.Join(keys, ","))
	redistest.Eventually(t, 10*time.Second, "the pipe full", func() bool {
		n, err := unix.IoctlGetInt(int(r.Fd()), unix.TIOCINQ)
		return err == nil && n >= 32<<10 // more than the reset: the line is being written
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("agent exited with %v:\n%s", waitErr, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the agent did not stop within 15 s of SIGTERM:\n%s", logs.String())
	}
	if v, err := cache.Client(t).Get(context.Background(), names.DeliveryKey("search-svc")).Result(); v == lua.DeliveryClean {
		t.Errorf("the clean mark was left (%q, %v) although a delivery was not made", v, err)
	}
	if line := grep(logs.String(), "stopping with a delivery not made"); !strings.Contains(line, `what="acme:active version 1"`) {
		t.Errorf("the log does not say what was abandoned:\n%s", logs.String())
	}
}

// An agent with --deliver that stops with everything delivered marks its
// cache Redis clean even when the cache is full (maxmemory under
// noeviction, where Redis refuses a SET with OOM): the next start then
// continues from the cache's positions rather than delivering a needless
// reset.
func TestAgentCleanMarkOnAFullCache(t *testing.T) {
	bus, cache, rcv, args := deliverRig(t)
	a := startAgent(t, args...)
	a.waitReady(t)
	c := cache.Client(t)
	ctx := context.Background()
	must(t, c.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
	must(t, c.ConfigSet(ctx, "maxmemory", "1").Err())
	t.Cleanup(func() { _ = c.ConfigSet(context.Background(), "maxmemory", "0").Err() })
	if err := c.Set(ctx, "probe", "x", 0).Err(); !redis.HasErrorPrefix(err, "OOM") {
		t.Fatalf("a SET on the full cache answered %v, want OOM", err)
	}
	a.stop(t)
	if v, err := c.Get(ctx, names.DeliveryKey("search-svc")).Result(); v != "clean" {
		t.Fatalf("a clean stop on a full cache left the mark %q (%v):\n%s", v, err, grep(a.errb.String(), "clean"))
	}
	b := startAgent(t, args...)
	b.waitReady(t)
	if got := rcv.objects(); len(got) != 1 || !got[0].Reset {
		t.Errorf("delivered %+v, want the first start's reset alone", got)
	}
	// An agent without --deliver that starts on the full cache records
	// its presence all the same: the agent with --deliver, stopping while
	// it runs, must not mark the cache clean.
	plain := startAgent(t, "--redis", bus.URL, "--cache-redis", cache.URL)
	plain.waitReady(t)
	b.stop(t)
	if v, err := c.Get(ctx, names.DeliveryKey("search-svc")).Result(); v == lua.DeliveryClean {
		t.Errorf("stopped beside an agent without --deliver on a full cache, the mark was left (%q, %v):\n%s", v, err, plain.errb.String())
	}
}

// A service that embeds the subscriber with its cache Redis (the library,
// Options.Cache) beside an agent with --deliver on the same cache Redis and
// service moves the cache's positions as an agent without --deliver does:
// what it applies while the agent is down, the agent started again must
// hand the process (or a reset), not skip it by continuing from the
// cache's positions.
func TestDeliverBesideAnEmbeddedSubscriberLosesNothing(t *testing.T) {
	bus, cache, rcv, args := deliverRig(t)
	m, err := matrix.Load("../../matrix.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := subscriber.New(bus.Client(t), subscriber.Options{Service: "search-svc", Matrix: m, Cache: cache.Client(t), CheckInterval: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	redistest.Eventually(t, 10*time.Second, "the embedded subscriber ready", s.Ready)

	a := startAgent(t, args...)
	a.waitReady(t)
	publishKeys(t, bus.URL, "user", "user:1")
	redistest.Eventually(t, 10*time.Second, "user:1 delivered", hasKeys(rcv, "acme:active", 1))
	a.waitDelivered(t, rcv)
	a.stop(t)

	// Published while the agent is down: the embedded subscriber applies
	// it to the cache and records the position.
	publishKeys(t, bus.URL, "user", "user:2")
	redistest.Eventually(t, 10*time.Second, "the embedded subscriber applied user:2", func() bool {
		v, _ := cache.Client(t).Get(context.Background(), names.PositionKey("acme", "search-svc", "active")).Result()
		p, err := tagstore.ParsePosition(v)
		return err == nil && p.Version == 2
	})

	before := len(rcv.objects())
	b := startAgent(t, args...)
	b.waitReady(t)
	publishKeys(t, bus.URL, "user", "user:3")
	redistest.Eventually(t, 10*time.Second, "user:3 delivered", func() bool {
		for _, d := range rcv.objects()[before:] {
			if slices.Contains(d.Keys, "user:3") {
				return true
			}
		}
		return false
	})
	for _, d := range rcv.objects()[before:] {
		if d.Reset || d.WholeTag || slices.Contains(d.Keys, "user:2") {
			return
		}
		if slices.Contains(d.Keys, "user:3") {
			break
		}
	}
	t.Errorf("the agent started again skipped user:2, which the embedded subscriber applied while it was down: %+v\n%s", rcv.objects()[before:], b.errb.String())
}
