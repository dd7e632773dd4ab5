package publisher_test

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/wire"
)

// attack: a durable publish (WAIT 1) while the master's only replica is
// stalled (SIGSTOP, as a replica swapping or paused would be): the
// XADD is on the master, the replica never acknowledges it. Publish fails,
// saying so, and returns the id; the retry with it, once the replica is
// back, succeeds and leaves the event on the replica too.
func TestAttack8PubDurableWithAStalledReplica(t *testing.T) {
	ctx := context.Background()
	master := redistest.Start(t, "--repl-diskless-sync-delay", "0")
	_, port, _ := strings.Cut(master.Addr, ":")
	replica := redistest.Start(t, "--replicaof", "127.0.0.1", port)
	rc := replica.Client(t)
	redistest.Eventually(t, 10*time.Second, "replica in sync", func() bool {
		return strings.Contains(rc.Info(ctx, "replication").Val(), "master_link_status:up")
	})
	p, err := publisher.New(master.Client(t), publisher.Options{Partitions: 4, Durable: true, WaitTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ev := publisher.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
	// Learns the replica count. On a loaded machine the replica may take
	// longer than WaitTimeout to acknowledge: publish again until it does.
	var last error
	if err := redistest.Wait(ctx, 10*time.Second, "a first durable publish acknowledged", func() bool {
		_, last = p.Publish(ctx, ev)
		return last == nil
	}); err != nil {
		t.Fatalf("%v: %v", err, last)
	}

	// Stall the replica: SIGSTOP, as a replica swapping or paused by its
	// host would be; it stays connected and acknowledges nothing.
	pid, err := strconv.Atoi(rc.InfoMap(ctx, "server").Item("Server", "process_id"))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	defer resume()
	id, err := p.Publish(ctx, ev)
	if err == nil || !strings.Contains(err.Error(), "no replica") || !strings.Contains(err.Error(), "same id") {
		t.Fatalf("a durable Publish the replica never acknowledged: %v, want an error saying so and to retry with the same id", err)
	}
	if id == "" {
		t.Fatal("the failed durable Publish returned no id to retry with")
	}
	resume()
	ev.ID = id
	// The retry the error asks for, as often as it takes the woken replica
	// to acknowledge within WaitTimeout.
	if err := redistest.Wait(ctx, 10*time.Second, "the retry once the replica is back", func() bool {
		_, last = p.Publish(ctx, ev)
		return last == nil
	}); err != nil {
		t.Fatalf("%v: %v", err, last)
	}
	found := 0
	for _, got := range entries(t, rc, names.IngressStream("invalidate", wire.Partition("acme", 4))) {
		if got.ID == id {
			found++
		}
	}
	if found == 0 {
		t.Errorf("the event %s is not on the replica after a durable Publish said nil", id)
	}
}

// attack: Durable set on a bus whose master has no replica (a careless
// deployment, or its replica gone) waits for nothing: the option would
// silently do nothing. The publisher warns, naming the master, once while
// it has none (again only after a replica came and went).
func TestAttack8PubDurableWithoutAReplicaWarns(t *testing.T) {
	ctx := context.Background()
	master := redistest.Start(t)
	var log syncLog
	p, err := publisher.New(master.Client(t), publisher.Options{Partitions: 4, Durable: true, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := p.Publish(ctx, publisher.Event{Tenant: "acme", Domain: "user", WholeTag: true}); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Count(log.String(), "level=WARN"); got != 1 || !strings.Contains(log.String(), master.Addr) || !strings.Contains(log.String(), "no replica") {
		t.Errorf("%d warnings for 3 durable publishes to a master without replica, want 1 naming %s and that it has no replica: %q", got, master.Addr, log.String())
	}
}

// syncLog is a log buffer safe for concurrent writes.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// attack: Durable with a client whose masters the publisher cannot find (a
// Ring shards keys itself) is refused by New, naming the option, rather
// than accepted and then failing every Publish.
func TestAttack8PubDurableNeedsAClientOfKnownMasters(t *testing.T) {
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	defer ring.Close()
	if _, err := publisher.New(ring, publisher.Options{Durable: true}); err == nil || !strings.Contains(err.Error(), "Durable") {
		t.Errorf("New with Durable and a Ring: %v, want an error naming Durable", err)
	}
	if _, err := publisher.New(ring, publisher.Options{}); err != nil {
		t.Errorf("New without Durable: %v", err)
	}
}

// attack: a service gives its publisher another prefix than the matrix's
// (the matrix says prefix: app, the publisher keeps the default). Its
// events go to streams no router reads, and Publish says nil: the one sign
// is the partition count it never finds, which it reports, once, naming the
// key and the prefix to check.
func TestAttack8PubPrefixWithoutRouterWarns(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	if err := c.Set(ctx, names.PartitionsKey("app"), 4, 0).Err(); err != nil { // the router's, on prefix app
		t.Fatal(err)
	}
	var log syncLog
	p, err := publisher.New(c, publisher.Options{Logger: slog.New(slog.NewTextHandler(&log, nil)), Refresh: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := p.Publish(ctx, publisher.Event{Tenant: "acme", Domain: "user", WholeTag: true}); err != nil {
			t.Fatal(err)
		}
	}
	got := log.String()
	if strings.Count(got, "level=WARN") != 1 || !strings.Contains(got, names.PartitionsKey("invalidate")) || !strings.Contains(got, "Prefix") {
		t.Errorf("3 publishes with no partition count for their prefix logged %q, want one warning naming the key and Options.Prefix", got)
	}
}
