package integration

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// An operator (or a script gone wrong) runs redis-cli CLIENT KILL TYPE
// pubsub and CLIENT KILL TYPE normal in a loop for a few seconds while
// events are published: every connection of the publisher, the router and
// the subscriber is cut again and again, mid-command. Every event a
// publisher was told was accepted reaches the subscriber, each key once in
// the channel's history; nothing is left pending, and the router and the
// subscriber are ready again without a restart.
func TestAttack8BusClientKillLoopLosesNothing(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, precisionMatrix("rate: 1000000, burst: 1000000, max_keys: 500"))
	e.running("acme")
	r, _ := e.router(router.Options{})
	s, _ := e.subscriber("profile-svc", subscriber.Options{})

	const n = 400
	keys := keyRange("k", 0, n)
	for _, k := range keys {
		e.seed("profile-svc", "acme", k, "active")
	}
	var (
		mu       sync.Mutex
		accepted []string
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, k := range keys {
			if _, err := e.pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{k}}); err == nil {
				mu.Lock()
				accepted = append(accepted, k)
				mu.Unlock()
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	host, port, _ := net.SplitHostPort(e.bus.Addr)
	kills := 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		for _, typ := range []string{"pubsub", "normal"} {
			out, err := exec.Command("redis-cli", "-h", host, "-p", port, "CLIENT", "KILL", "TYPE", typ).CombinedOutput()
			if err != nil {
				t.Fatalf("redis-cli CLIENT KILL TYPE %s: %v: %s", typ, err, out)
			}
			kills++
		}
		time.Sleep(20 * time.Millisecond)
	}
	<-done

	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d of %d events accepted, %d kills", len(accepted), n, kills)
	e.waitAllGone(30*time.Second, fmt.Sprintf("the %d accepted events' keys dropped (%d kill rounds)", len(accepted), kills/2), "profile-svc", "acme", accepted)
	redistest.Eventually(t, 15*time.Second, "nothing pending", func() bool { return e.pending() == 0 })
	redistest.Eventually(t, 10*time.Second, "the router ready again", r.Ready)
	if err := redistest.Wait(ctx, 15*time.Second, "the subscriber ready again", s.Ready); err != nil {
		t.Errorf("%v: %v", err, s.Problems())
	}
	published := map[string]int{}
	for _, m := range e.history("invalidate:acme:active") {
		for _, k := range m.Keys {
			published[k]++
		}
	}
	for _, k := range keys {
		if published[k] > 1 {
			t.Errorf("%s published %d times, want once", k, published[k])
		}
	}
}
