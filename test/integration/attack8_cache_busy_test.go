package integration

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// busy runs a script that never ends on a cache Redis, from a connection of
// its own, until the returned kill (SCRIPT KILL) ends it. Past
// busy-reply-threshold every other command is answered BUSY (before it,
// they wait).
func busy(t *testing.T, srv *redistest.Server, threshold time.Duration) (kill func()) {
	t.Helper()
	ctx := context.Background()
	admin := srv.Client(t)
	must(t, admin.ConfigSet(ctx, "busy-reply-threshold", strconv.FormatInt(threshold.Milliseconds(), 10)).Err())
	loop := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: -1, MaxRetries: -1})
	t.Cleanup(func() { _ = loop.Close() })
	ended := make(chan error, 1)
	go func() { ended <- loop.Eval(ctx, "while true do end", nil).Err() }()
	redistest.Eventually(t, 10*time.Second, "the cache answers BUSY", func() bool {
		return redis.HasErrorPrefix(admin.Ping(ctx).Err(), "BUSY")
	})
	killed := false
	kill = func() {
		if killed {
			return
		}
		killed = true
		must(t, admin.ScriptKill(ctx).Err())
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Error("the busy script did not end after SCRIPT KILL")
		}
	}
	t.Cleanup(kill)
	return kill
}

// A cache Redis held by another client's long script answers BUSY to every
// invalidation (a script cannot run while another does). The subscriber must
// say so (not ready: the cache), lose nothing while it lasts, and apply
// everything once the script is killed, without a restart; each version
// once, in order.
func TestAttack8CacheBusyScriptLosesNothing(t *testing.T) {
	e := newEnv(t, "")
	e.running("acme")
	for _, k := range []string{"user:1", "user:2", "user:3"} {
		e.seed("profile-svc", "acme", k, "active")
	}
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	s, _ := e.subscriber("profile-svc", subscriber.Options{Registerer: reg, CheckInterval: time.Second})
	kill := busy(t, e.caches["profile-svc"], 100*time.Millisecond)

	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitVersion("invalidate:acme:active", 2)
	redistest.Eventually(t, 15*time.Second, "not ready (cache_failing) while the cache is busy", func() bool {
		return hasReason(s, subscriber.ReasonCacheFailing) || hasReason(s, subscriber.ReasonCheckFailing)
	})
	kill()
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:3"}})
	e.waitAllGone(20*time.Second, "every key invalidated after SCRIPT KILL", "profile-svc", "acme", []string{"user:1", "user:2", "user:3"})
	epoch, _ := e.meta("invalidate:acme:active")
	redistest.Eventually(t, 10*time.Second, "position at 3", func() bool {
		p, _ := e.position("profile-svc", "acme", "active")
		return p.Epoch == epoch && p.Version == 3
	})
	redistest.Eventually(t, 15*time.Second, "ready again", s.Ready)
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "whole_tag"); got != 0 {
		t.Errorf("%v whole-tag recoveries: a busy cache lost nothing to drop", got)
	}
}
