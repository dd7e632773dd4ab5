package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
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

// The bus reaches maxmemory (noeviction) in the middle of a backlog: every
// write that may grow memory (the publish script's ZADD and XADD, the
// tenant registry, the budgets) is refused with OOM, while XREADGROUP and
// XACK still run. No entry may be acknowledged without its message in the
// channel's history; the router says it is not ready (publishing_failing,
// naming OOM) and routerd_publish_errors_total climbs; once memory frees
// (CONFIG SET maxmemory 0) it publishes every held entry, each event once
// (no second version), and the subscriber drops every key, without a
// restart of either.
func TestAttack8BusOOMMidBacklogLosesNothing(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)
	const ch = "invalidate:acme:active"
	const n = 2000
	keys := keyRange("k", 0, n)
	for _, k := range keys {
		e.seed("profile-svc", "acme", k, "active")
	}
	reg := prometheus.NewRegistry()
	r, _ := e.router(router.Options{Registerer: reg})
	e.subscriber("profile-svc", subscriber.Options{})

	// The backlog and the memory limit in one transaction: the router's
	// blocked read is served once it is applied, so it reads the backlog
	// from a bus that refuses every write that grows memory.
	_, err := e.busC.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, k := range keys {
			b, _ := json.Marshal(map[string]any{"tenant": "acme", "domain": "user", "keys": []string{k}})
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, string(b)}})
		}
		pipe.ConfigSet(ctx, "maxmemory", "1")
		return nil
	})
	must(t, err)
	t.Cleanup(func() { _ = e.busC.ConfigSet(ctx, "maxmemory", "0").Err() })

	redistest.Eventually(t, 15*time.Second, "the router not ready: publishing_failing, naming OOM", func() bool {
		for _, p := range r.Problems() {
			if p.Reason == router.ReasonPublishingFailing && strings.Contains(p.Detail, "OOM") {
				return true
			}
		}
		return false
	})
	// A publisher is told: the error names the refusal, and nothing of it
	// reached the ingress.
	before := e.busC.XLen(ctx, stream).Val()
	if _, err := e.pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"late"}}); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Errorf("Publish on a bus out of memory: %v, want the OOM refusal", err)
	}
	if _, err := e.pub.PublishBatch(ctx, []wire.Event{{Tenant: "acme", Domain: "user", Keys: []string{"late"}}, {Tenant: "globex", Domain: "user", Keys: []string{"late"}}}); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Errorf("PublishBatch on a bus out of memory: %v, want the OOM refusal", err)
	}
	if after := e.busC.XLen(ctx, stream).Val(); after != before {
		t.Errorf("the ingress grew from %d to %d entries while the bus refused the publisher", before, after)
	}
	if got := metric(t, reg, "routerd_publish_errors_total"); got == 0 {
		t.Errorf("routerd_publish_errors_total = 0 while the bus refuses every publish")
	}
	// Nothing acknowledged is missing from the history.
	published := map[string]int{}
	for _, m := range e.history(ch) {
		for _, k := range m.Keys {
			published[k]++
		}
	}
	pending, err := e.busC.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "routerd", Start: "-", End: "+", Count: n}).Result()
	must(t, err)
	held := map[string]bool{}
	for _, p := range pending {
		held[p.ID] = true
	}
	entries, err := e.busC.XRange(ctx, stream, "-", "+").Result()
	must(t, err)
	groups, err := e.busC.XInfoGroups(ctx, stream).Result()
	must(t, err)
	for _, en := range entries {
		if held[en.ID] || compareEntryIDs(en.ID, groups[0].LastDeliveredID) > 0 {
			continue
		}
		var ev wire.Event
		must(t, json.Unmarshal([]byte(en.Values[wire.EventField].(string)), &ev))
		if published[ev.Keys[0]] == 0 {
			t.Errorf("entry %s (%s) acknowledged during OOM without its message in the history", en.ID, ev.Keys[0])
		}
	}

	must(t, e.busC.ConfigSet(ctx, "maxmemory", "0").Err())
	e.waitAllGone(30*time.Second, "every key of the backlog dropped once memory freed", "profile-svc", "acme", keys)
	redistest.Eventually(t, 10*time.Second, "nothing pending", func() bool { return e.pending() == 0 })
	redistest.Eventually(t, 10*time.Second, "the router ready again", r.Ready)
	clear(published)
	for _, m := range e.history(ch) {
		for _, k := range m.Keys {
			published[k]++
		}
	}
	var missing, twice []string
	for _, k := range keys {
		switch published[k] {
		case 0:
			missing = append(missing, k)
		case 1:
		default:
			twice = append(twice, k)
		}
	}
	slices.Sort(twice)
	if len(missing) > 0 || len(twice) > 0 {
		t.Errorf("after the OOM: %d keys never published (%v), %d published more than once (%v)", len(missing), head(missing), len(twice), head(twice))
	}
}

func head(s []string) string {
	if len(s) > 5 {
		return fmt.Sprint(s[:5], "…")
	}
	return fmt.Sprint(s)
}
