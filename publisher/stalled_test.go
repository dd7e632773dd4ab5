package publisher_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/wire"
)

// A service publishes with a short deadline (or cancels) while the bus
// does not answer (SIGSTOP: a server swapping, paused by its host, a
// network that stalls). The client is the service's own, built without
// ContextTimeoutEnabled and with a long read timeout, so go-redis would
// wait that long on its read: Publish and PublishBatch return once the
// context is done — long before the read timeout — with the context's
// error and the ids they may have written, and publishing again with those
// ids once the bus answers leaves those events only. Durable too: its
// INFO replication is on the wire first.
func TestPublishReturnsWhenTheContextEndsOnAStalledBus(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	// No read or write timeout: on the stalled bus only the context can end
	// a call.
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: -1, WriteTimeout: -1})
	t.Cleanup(func() { _ = c.Close() })
	p, err := publisher.New(c, publisher.Options{Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	durable, err := publisher.New(c, publisher.Options{Partitions: 1, Durable: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(ctx).Err(); err != nil { // a connection open before the stall
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(admin.InfoMap(ctx, "server").Item("Server", "process_id"))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	resume := func() {
		if stopped {
			stopped = false
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	defer resume()

	ev := func(key string) wire.Event { return wire.Event{Tenant: "acme", Domain: "user", Keys: []string{key}} }
	// prompt fails the test unless call returned with want: the client has
	// no timeout, so a call that waits for the stalled bus's reply, not
	// for its context, never returns (the test gives up after a minute).
	prompt := func(what string, want error, call func(ctx context.Context) error) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- call(ctx) }()
		var err error
		select {
		case err = <-done:
		case <-time.After(time.Minute):
			t.Fatalf("%s on a stalled bus has not returned in a minute: it waits for the bus's reply, not for its context", what)
		}
		if !errors.Is(err, want) || !strings.Contains(err.Error(), "same ids is safe") {
			t.Fatalf("%s on a stalled bus: %v, want %v and that publishing again with the same ids is safe", what, err, want)
		}
	}
	var id, durableID string
	var ids []string
	prompt("Publish with a 50 ms deadline", context.DeadlineExceeded, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		id, err = p.Publish(ctx, ev("user:1"))
		return err
	})
	prompt("PublishBatch cancelled after 50 ms", context.Canceled, func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer time.AfterFunc(50*time.Millisecond, cancel).Stop()
		ids, err = p.PublishBatch(ctx, []wire.Event{ev("user:2"), ev("user:3")})
		return err
	})
	prompt("a durable Publish with a 50 ms deadline", context.DeadlineExceeded, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		durableID, err = durable.Publish(ctx, ev("user:4"))
		return err
	})
	if id == "" || durableID == "" || len(ids) != 2 || ids[0] == "" || ids[1] == "" {
		t.Fatalf("the ids returned with the errors: %q, %q, %q; want every event's", id, ids, durableID)
	}

	resume()
	again := []wire.Event{ev("user:1"), ev("user:2"), ev("user:3"), ev("user:4")}
	for i, id := range []string{id, ids[0], ids[1], durableID} {
		again[i].ID = id
	}
	var last error
	if err := redistest.Wait(ctx, 10*time.Second, "publishing again with the same ids", func() bool {
		_, last = p.PublishBatch(ctx, again)
		return last == nil
	}); err != nil {
		t.Fatalf("%v: %v", err, last)
	}
	seen := map[string]bool{}
	for _, got := range entries(t, admin, names.IngressStream(names.DefaultPrefix, 0)) {
		seen[got.ID] = true
	}
	if len(seen) != 4 || !seen[id] || !seen[ids[0]] || !seen[ids[1]] || !seen[durableID] {
		t.Errorf("the ingress holds events %v, want exactly the ids returned with the errors: %s, %v, %s", seen, id, ids, durableID)
	}
}
