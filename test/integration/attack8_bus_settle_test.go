package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// faultEnv is the set-up of the bus attacks that publish through a fault: a
// bus started with busArgs, a matrix with its limits lifted, a router and
// profile-svc's subscriber, and n keys of acme's active tag cached (k0…).
func faultEnv(t *testing.T, n int, busArgs ...string) (e *env, r *router.Router, s *subscriber.Subscriber, keys []string) {
	t.Helper()
	e = newEnvBus(t, precisionMatrix("rate: 1000000, burst: 1000000, max_keys: 500"), busArgs...)
	e.running("acme")
	r, _ = e.router(router.Options{})
	s, _ = e.subscriber("profile-svc", subscriber.Options{})
	keys = keyRange("k", 0, n)
	for _, k := range keys {
		e.seed("profile-svc", "acme", k, "active")
	}
	return e, r, s, keys
}

// publishSteadily publishes one single-key event of acme's user domain per
// key, one every pause, while the caller runs a fault. wait waits for the
// last one and returns the keys whose Publish said nil and the errors of
// the others.
func (e *env) publishSteadily(keys []string, pause time.Duration) (wait func() (accepted []string, refused []error)) {
	var (
		mu       sync.Mutex
		accepted []string
		refused  []error
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, k := range keys {
			_, err := e.pub.Publish(context.Background(), wire.Event{Tenant: "acme", Domain: "user", Keys: []string{k}})
			mu.Lock()
			if err == nil {
				accepted = append(accepted, k)
			} else {
				refused = append(refused, err)
			}
			mu.Unlock()
			time.Sleep(pause) // a steady stream, across the fault
		}
	}()
	return func() ([]string, []error) {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return accepted, refused
	}
}

// settled waits for what every attack on the bus promises once the fault
// is over: every accepted key dropped from profile-svc's cache for acme,
// nothing pending, the router and the subscriber ready again without a
// restart; and in channel's history each accepted key once, no other key
// of keys more than once (a refused publish may have been appended).
func (e *env) settled(r *router.Router, s *subscriber.Subscriber, channel string, accepted, keys []string, what string) {
	t := e.t
	t.Helper()
	e.waitAllGone(30*time.Second, fmt.Sprintf("the %d accepted events' keys dropped (%s)", len(accepted), what), "profile-svc", "acme", accepted)
	redistest.Eventually(t, 15*time.Second, "nothing pending", func() bool { return e.pending() == 0 })
	redistest.Eventually(t, 10*time.Second, "the router ready again", r.Ready)
	if err := redistest.Wait(context.Background(), 15*time.Second, "the subscriber ready again", s.Ready); err != nil {
		t.Errorf("%v: %v", err, s.Problems())
	}
	published := map[string]int{}
	for _, m := range e.history(channel) {
		for _, k := range m.Keys {
			published[k]++
		}
	}
	for _, k := range accepted {
		if published[k] != 1 {
			t.Errorf("%s accepted and published %d times, want once", k, published[k])
		}
	}
	for _, k := range keys {
		if published[k] > 1 {
			t.Errorf("%s published %d times, want at most once", k, published[k])
		}
	}
}
