package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// A subscriber started before any router has marked the bus (no
// <prefix>:generation) cannot tell which channels published before it
// looked: it is not ready, and says why, until a router marks the bus;
// then it checks, is ready, and takes a channel's first message key by key
// (not as a whole tag).
func TestSubscriberNotReadyUntilARouterMarksTheBus(t *testing.T) {
	e := newEnv(t, "")
	s, err := subscriber.New(e.bus.Client(t), subscriber.Options{Service: "search-svc", Matrix: e.mtx,
		Cache: e.caches["search-svc"].Client(t), CheckInterval: time.Hour, Logger: testLogger(t, "subscriber")})
	must(t, err)
	run(t, s.Run)
	redistest.Eventually(t, 20*time.Second, "not ready: no router has marked the bus", func() bool {
		ps := s.Problems()
		return len(ps) == 1 && ps[0].Reason == subscriber.ReasonStarting &&
			strings.Contains(ps[0].Detail, "no router has marked the bus yet (no invalidate:generation)")
	})
	e.seed("search-svc", "acme", "user:1", "active")
	e.seed("search-svc", "acme", "user:2", "active")
	e.router(router.Options{})
	redistest.Eventually(t, 10*time.Second, "ready once a router marked the bus", s.Ready)
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("search-svc", "acme", "user:1")
	if !e.cached("search-svc", "acme", "user:2") {
		t.Error("the channel's first message was taken as a whole tag")
	}
}
