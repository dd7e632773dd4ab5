package integration

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// An operator empties an ingress stream (XTRIM … MAXLEN 0) in the middle of
// a backlog no router had read yet (2,000 events, the trim and 2,000 more,
// in one transaction): the first 2,000 are gone. The router neither stops
// nor loops on it: it routes the events after the trim; and it does not
// hide the loss: it warns, naming the stream and how many entries were
// deleted unread, routerd_ingress_entries_lost_total counts them, and the
// lag (routerd_ingress_lag_entries, which Redis goes on counting the
// deleted entries in) comes back to 0.
func TestAttack8BusIngressTrimmedMidBacklogIsReported(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)
	var log lockedBuffer
	reg := prometheus.NewRegistry()
	r, _ := e.router(router.Options{Registerer: reg, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "before", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"before"}})
	e.waitGone("profile-svc", "acme", "before")
	// In one transaction, so that no router reads between: a backlog of
	// 2,000 events, the trim, and 2,000 more.
	const n = 2000
	lost, kept := keyRange("lost", 0, n), keyRange("kept", 0, n)
	for _, k := range kept {
		e.seed("profile-svc", "acme", k, "active")
	}
	_, err := e.busC.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, keys := range [][]string{lost, kept} {
			for _, k := range keys {
				b, _ := json.Marshal(map[string]any{"tenant": "acme", "domain": "user", "keys": []string{k}})
				pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, string(b)}})
			}
			if keys[0] == lost[0] {
				pipe.XTrimMaxLen(ctx, stream, 0)
			}
		}
		return nil
	})
	must(t, err)
	e.waitAllGone(20*time.Second, "the events after the trim routed", "profile-svc", "acme", kept)
	const unread = n

	e.seed("profile-svc", "acme", "after", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"after"}})
	e.waitGone("profile-svc", "acme", "after")
	redistest.Eventually(t, 10*time.Second, "nothing pending", func() bool { return e.pending() == 0 })
	if !r.Ready() {
		t.Errorf("the router is not ready after the trim: %v", r.Problems())
	}
	if err := redistest.Wait(ctx, 10*time.Second, "the loss counted", func() bool {
		return metric(t, reg, "routerd_ingress_entries_lost_total") == float64(unread)
	}); err != nil {
		g, _ := e.busC.XInfoGroups(ctx, stream).Result()
		t.Fatalf("%v (%v counted; the group: %+v); log:\n%s", err, metric(t, reg, "routerd_ingress_entries_lost_total"), g, lastLines(log.String(), 10))
	}
	redistest.Eventually(t, 10*time.Second, "the lag back to 0", func() bool {
		return metric(t, reg, "routerd_ingress_lag_entries") == 0
	})
	var warned bool
	for _, line := range strings.Split(log.String(), "\n") {
		if strings.Contains(line, "deleted before any router read them") && strings.Contains(line, stream) {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no warning names %s's entries deleted unread; log:\n%s", stream, lastLines(log.String(), 10))
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// An operator moves the router's group past a backlog (XGROUP SETID <stream>
// routerd $) while a router runs: the entries skipped are not routed (Redis
// keeps no trace of them: docs/operations.md, Ingress housekeeping), and the
// router neither stops nor loops: it routes every event after, leaves
// nothing pending and stays ready.
func TestAttack8BusGroupMovedPastABacklogKeepsRouting(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)
	r, _ := e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	kept := keyRange("kept", 0, 500)
	for _, k := range kept {
		e.seed("profile-svc", "acme", k, "active")
	}
	_, err := e.busC.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, k := range keyRange("skipped", 0, 2000) {
			b, _ := json.Marshal(map[string]any{"tenant": "acme", "domain": "user", "keys": []string{k}})
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, string(b)}})
		}
		pipe.XGroupSetID(ctx, stream, "routerd", "$")
		for _, k := range kept {
			b, _ := json.Marshal(map[string]any{"tenant": "acme", "domain": "user", "keys": []string{k}})
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, string(b)}})
		}
		return nil
	})
	must(t, err)
	e.waitAllGone(20*time.Second, "the events after the skip routed", "profile-svc", "acme", kept)
	redistest.Eventually(t, 10*time.Second, "nothing pending", func() bool { return e.pending() == 0 })
	if !r.Ready() {
		t.Errorf("the router is not ready after the skip: %v", r.Problems())
	}
}
