package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

func stormMatrix(rate string, burst int) string {
	return fmt.Sprintf(`
version: 1
ingress: {partitions: 2}
tags:
  hot:   {services: [search-svc], rate: %s, burst: %d, coalesce: 20ms, max_keys: 10000}
  quiet: {services: [search-svc]}
domains:
  stock: {tags: [hot]}
  price: {tags: [quiet]}
services:
  search-svc: {tenants: [acme, globex]}
`, rate, burst)
}

func stormEvents(n int) []wire.Event {
	events := make([]wire.Event, n)
	for i := range events {
		events[i] = wire.Event{Tenant: "acme", Domain: "stock", Keys: []string{fmt.Sprintf("sku:%d", i)}}
	}
	return events
}

// publishOneByOne publishes the events one Publish at a time, so that the
// router reads them in many batches (the events of one read batch share a
// message, which would leave the storm limits nothing to do).
func (e *env) publishOneByOne(events []wire.Event) {
	e.t.Helper()
	for _, ev := range events {
		e.publish(ev)
	}
}

func (e *env) seedStorm(n int) {
	e.t.Helper()
	ctx := context.Background()
	for i := 0; i < n; i++ {
		e.seed("search-svc", "acme", fmt.Sprintf("sku:%d", i), "hot")
	}
	if c := e.caches["search-svc"].Client(e.t).SCard(ctx, "{tenant:acme}:tag:hot").Val(); c != int64(n) {
		e.t.Fatalf("seeded %d keys", c)
	}
}

func (e *env) waitStormGone(n int) {
	e.t.Helper()
	c := e.caches["search-svc"].Client(e.t)
	redistest.Eventually(e.t, 30*time.Second, "every storm key invalidated", func() bool {
		left := 0
		for i := 0; i < n; i += 100 {
			keys := make([]string, 0, 100)
			for j := i; j < min(i+100, n); j++ {
				keys = append(keys, fmt.Sprintf("{tenant:acme}:sku:%d", j))
			}
			left += int(c.Exists(context.Background(), keys...).Val())
		}
		return left == 0
	})
}

// 3,000 events for one channel in a second or so produce at most
// burst + rate × elapsed messages, and every key they named is invalidated.
func TestStormIsBoundedAndLosesNothing(t *testing.T) {
	const n, rate, burst = 3000, 50.0, 20
	e := newEnv(t, stormMatrix("50", burst))
	e.seedStorm(n)
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})
	e.subscriber("search-svc", subscriber.Options{})

	start := time.Now()
	e.publishOneByOne(stormEvents(n))
	injected := time.Since(start)
	e.waitStormGone(n)
	redistest.Eventually(t, 10*time.Second, "nothing pending", func() bool {
		return metric(t, reg, "routerd_pending_channels") == 0 && metric(t, reg, "routerd_events_routed_total") == n
	})
	elapsed := time.Since(start)
	_, messages := e.meta("invalidate:acme:hot")
	limit := float64(burst) + rate*elapsed.Seconds()
	t.Logf("%d events injected in %v; %d messages in %v (limit %.0f); %v events coalesced",
		n, injected, messages, elapsed, limit, metric(t, reg, "routerd_events_coalesced_total"))
	if float64(messages) > limit {
		t.Errorf("%d messages for %d events in %v: more than burst + rate × elapsed = %.0f", messages, n, elapsed, limit)
	}
	if messages >= n/10 {
		t.Errorf("%d messages for %d events: the storm was not coalesced", messages, n)
	}
}

// A storm on one channel does not hold up another: a quiet channel's change
// is applied while the storm's channel still waits for its budget.
func TestQuietChannelNotDelayedByStorm(t *testing.T) {
	const n = 2000
	e := newEnv(t, stormMatrix("0.5", 5)) // the hot channel drains very slowly
	e.seedStorm(n)
	e.seed("search-svc", "acme", "price:1", "quiet")
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})
	e.subscriber("search-svc", subscriber.Options{})

	e.publishOneByOne(stormEvents(n))
	redistest.Eventually(t, 10*time.Second, "the storm held back", func() bool {
		return metric(t, reg, "routerd_pending_channels") == 1
	})
	start := time.Now()
	e.publish(wire.Event{Tenant: "acme", Domain: "price", Keys: []string{"price:1"}})
	e.waitGone("search-svc", "acme", "price:1")
	t.Logf("quiet channel applied %v after publishing, during the storm", time.Since(start))
	if metric(t, reg, "routerd_pending_channels") != 1 {
		t.Error("the quiet change was applied only after the storm's channel drained")
	}
	e.waitStormGone(n)
}

// A router killed (SIGKILL) while it holds coalesced work loses none of it:
// another instance claims the entries and invalidates every key.
func TestKilledRouterHoldingCoalescedWork(t *testing.T) {
	const n = 500
	yaml := stormMatrix("0.5", 1)
	e := newEnv(t, yaml)
	e.seedStorm(n)
	e.routerRanBefore()
	e.subscriber("search-svc", subscriber.Options{}) // applies live, key by key: no whole-tag shortcut
	var log lockedBuffer
	cmd := e.serveProcess(yaml, &log, "--consumer", "doomed")
	addr := testbin.ListenAddr(t, log.String)
	scrape := func() string {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	waitReadyz(t, addr)
	e.publishOneByOne(stormEvents(n))
	redistest.Eventually(t, 10*time.Second, "routerd holding the storm in a pending message", func() bool {
		m := scrape()
		return strings.Contains(m, "routerd_pending_channels 1") && strings.Contains(m, fmt.Sprintf("routerd_events_read_total %d", n))
	})
	// What it published went out in one message (burst 1): the rest it holds.
	held := e.pending()
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	if _, v := e.meta("invalidate:acme:hot"); v != 1 || held < n/2 {
		t.Fatalf("the killed router published %d messages and held %d entries; want 1 message, most entries held", v, held)
	}

	reg := prometheus.NewRegistry()
	e.router(router.Options{Consumer: "heir", ClaimIdle: 100 * time.Millisecond, Registerer: reg})
	e.waitStormGone(n)
	if claimed := metric(t, reg, "routerd_entries_claimed_total"); claimed < float64(held) {
		t.Errorf("the heir claimed %v entries, want the %d the killed router held", claimed, held)
	}
	if metric(t, reg, "routerd_messages_published_total") < 1 {
		t.Error("the heir published nothing")
	}
}

// The subscriber's local limit merges what is over it per channel and
// applies it as one invalidation: fewer calls on the cache Redis, no key lost.
func TestSubscriberLimitsItsApplies(t *testing.T) {
	const n = 600
	e := newEnv(t, stormMatrix("100000", 100000)) // the router lets everything through
	e.seedStorm(n)
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	e.subscriber("search-svc", subscriber.Options{Registerer: reg, ApplyRate: 5, ApplyBurst: 2, Coalesce: 10 * time.Millisecond, MaxKeys: 10000})

	start := time.Now()
	e.publishOneByOne(stormEvents(n))
	e.waitStormGone(n)
	elapsed := time.Since(start)
	applied := metric(t, reg, "subscriber_messages_applied_total")
	_, v := e.meta("invalidate:acme:hot")
	t.Logf("%d messages (%d events) applied as %v invalidations in %v; %v coalesced", v, n, applied, elapsed, metric(t, reg, "subscriber_messages_coalesced_total"))
	if limit := 2 + 5*elapsed.Seconds(); applied > limit+1 {
		t.Errorf("%v invalidations in %v: above burst + rate × elapsed = %.0f", applied, elapsed, limit)
	}
	if float64(v) <= applied {
		t.Fatalf("the router sent %d messages, applied as %v invalidations: the limit had nothing to merge", v, applied)
	}
	pos, _, _ := e.stores["search-svc"].ReadPosition(context.Background(), "acme", "search-svc", "hot")
	if pos.Version != v {
		t.Errorf("position %v after the merged invalidations, want version %d", pos, v)
	}
}

// lockedBuffer is testbin.Buffer: written by a process or a logger while the test reads.
type lockedBuffer = testbin.Buffer
