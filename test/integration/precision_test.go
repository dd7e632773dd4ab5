package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// Precision: a channel drops exactly the keys its events name, however
// many arrive together, as long as its budget can carry them key-level
// (docs/limits.md, "Precision").

func precisionMatrix(limits string) string {
	return `
version: 1
ingress: {partitions: 1}
tags:
  active: {services: [profile-svc], ` + limits + `}
domains:
  user: {tags: [active]}
services:
  profile-svc: {tenants: all}
`
}

// xaddPiped appends single-key events in one pipeline, as redis-cli --pipe
// would: no publisher library, one entry per event.
func (e *env) xaddPiped(tenant string, keys []string) {
	e.t.Helper()
	stream := names.IngressStream("invalidate", wire.Partition(tenant, e.mtx.Partitions))
	_, err := e.busC.Pipelined(context.Background(), func(pipe redis.Pipeliner) error {
		for _, k := range keys {
			b, _ := json.Marshal(map[string]any{"tenant": tenant, "domain": "user", "keys": []string{k}})
			pipe.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, string(b)}})
		}
		return nil
	})
	must(e.t, err)
}

// cachedCount is how many of the keys the service still has cached.
func (e *env) cachedCount(service, tenant string, keys []string) int {
	e.t.Helper()
	n := 0
	for _, k := range keys {
		if e.cached(service, tenant, k) {
			n++
		}
	}
	return n
}

func keyRange(prefix string, from, to int) []string {
	out := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s:%d", prefix, i))
	}
	return out
}

// A burst of 2 × max_keys single-key events to one channel, read in one
// batch, is two key-level messages: every named key goes, and none of the
// many more keys the tag holds that no event named.
func TestBurstSplitsIntoKeyLevelMessages(t *testing.T) {
	const maxKeys = 50
	e := newEnv(t, precisionMatrix(fmt.Sprintf("max_keys: %d", maxKeys)))
	e.running("acme")
	named, unnamed := keyRange("user", 0, 2*maxKeys), keyRange("other", 0, 10*maxKeys)
	for _, k := range append(slices.Clone(named), unnamed...) {
		e.seed("profile-svc", "acme", k, "active")
	}
	e.subscriber("profile-svc", subscriber.Options{})
	e.xaddPiped("acme", named) // before the router starts: its first read takes them all
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})

	const ch = "invalidate:acme:active"
	e.waitVersion(ch, 2)
	redistest.Eventually(t, 10*time.Second, "every entry acknowledged", func() bool { return e.pending() == 0 })
	for _, k := range named {
		e.waitGone("profile-svc", "acme", k)
	}
	hist := e.history(ch)
	if len(hist) != 2 {
		t.Fatalf("%d messages for %d single-key events at max_keys %d, want 2", len(hist), 2*maxKeys, maxKeys)
	}
	for i, m := range hist {
		if want := named[i*maxKeys : (i+1)*maxKeys]; !slices.Equal(m.Keys, want) {
			t.Errorf("message %d: %d keys (whole tag %v), want %v", i+1, len(m.Keys), m.WholeTag(), want)
		}
	}
	if left := e.cachedCount("profile-svc", "acme", unnamed); left != len(unnamed) {
		t.Errorf("%d of %d keys no event named were dropped", len(unnamed)-left, len(unnamed))
	}
	if w := metric(t, reg, "routerd_whole_tag_messages_total"); w != 0 {
		t.Errorf("%v whole-tag messages", w)
	}
}

// A storm beyond what the channel's budget carries key-level (rate 1/s,
// burst 1: one message of at most 5 keys a second) goes whole-tag, counted
// with its reason, and loses nothing.
func TestStormOverBudgetGoesWholeTag(t *testing.T) {
	const n = 200
	e := newEnv(t, precisionMatrix("rate: 1, burst: 1, coalesce: 20ms, max_keys: 5"))
	keys := keyRange("user", 0, n)
	for _, k := range keys {
		e.seed("profile-svc", "acme", k, "active")
	}
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})
	e.subscriber("profile-svc", subscriber.Options{})
	for _, k := range keys {
		e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{k}})
	}
	for _, k := range keys {
		e.waitGone("profile-svc", "acme", k)
	}
	redistest.Eventually(t, 10*time.Second, "every event routed", func() bool {
		return metric(t, reg, "routerd_events_routed_total") == n && e.pending() == 0
	})
	if w := metric(t, reg, "routerd_whole_tag_messages_total", "reason", router.WholeOverBudget); w < 1 {
		t.Errorf("%v whole-tag messages over_budget, want at least one", w)
	}
	if w := metric(t, reg, "routerd_whole_tag_messages_total", "reason", router.WholeNoKeys); w != 0 {
		t.Errorf("%v whole-tag messages no_keys, for events that all named keys", w)
	}
}

// A redelivery that groups events otherwise than the split that published
// them — some of them in a message with new events, past max_keys — sends
// no event twice, keeps the channel's order, and loses no key.
func TestRegroupedRedeliveryAfterSplit(t *testing.T) {
	e := newEnv(t, precisionMatrix("max_keys: 3"))
	e.subscriber("profile-svc", subscriber.Options{})
	_, stop := e.router(router.Options{})
	const ch = "invalidate:acme:active"
	e.xaddPacked("acme", ev("e1", "acme", "user:1"), ev("e2", "acme", "user:2"), ev("e3", "acme", "user:3"), ev("e4", "acme", "user:4"))
	e.waitVersion(ch, 2) // split: e1-e3, then e4
	stop()

	keys := keyRange("user", 1, 9)
	for _, k := range append(slices.Clone(keys), "other") {
		e.seed("profile-svc", "acme", k, "active")
	}
	// Read in one batch by the next router: the first message takes e4
	// (published), e5 and e2 (published); the next e6 to e8.
	e.xaddPacked("acme", ev("e4", "acme", "user:4"), ev("e5", "acme", "user:5"))
	e.xaddPacked("acme", ev("e2", "acme", "user:2"), ev("e6", "acme", "user:6"), ev("e7", "acme", "user:7"), ev("e8", "acme", "user:8"))
	e.router(router.Options{})
	for _, k := range keys[4:] {
		e.waitGone("profile-svc", "acme", k)
	}
	redistest.Eventually(t, 10*time.Second, "every entry acknowledged", func() bool { return e.pending() == 0 })

	hist := e.history(ch)
	var got [][]string
	for _, m := range hist {
		got = append(got, m.Keys)
	}
	want := [][]string{{"user:1", "user:2", "user:3"}, {"user:4"}, {"user:5"}, {"user:6", "user:7", "user:8"}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("history %v, want %v", got, want)
	}
	for _, k := range append(keys[:4:4], "other") {
		if !e.cached("profile-svc", "acme", k) {
			t.Errorf("%s invalidated again", k)
		}
	}
}

// An event naming more keys than max_keys is split into messages of at
// most max_keys keys, each recording its share of the event. A router
// killed (SIGKILL) after it published the first share, holding the others
// (its channel's bucket had one token), leaves the entry pending; the
// router that claims it publishes the other shares once and never the
// first again, and drops no key the event did not name.
func TestKilledRouterAfterPartOfASplit(t *testing.T) {
	yaml := precisionMatrix("rate: 1, burst: 1, coalesce: 3s, max_keys: 3")
	e := newEnv(t, yaml)
	e.running("acme")
	keys := keyRange("user", 0, 7)
	for _, k := range append(slices.Clone(keys), "other") {
		e.seed("profile-svc", "acme", k, "active")
	}
	e.subscriber("profile-svc", subscriber.Options{})
	var log lockedBuffer
	cmd := e.serveProcess(yaml, &log, "--consumer", "doomed")
	waitReadyz(t, testbin.ListenAddr(t, log.String))

	id := e.publish(wire.Event{ID: "big", Tenant: "acme", Domain: "user", Keys: keys})
	const ch = "invalidate:acme:active"
	e.waitVersion(ch, 1)
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	if _, v := e.meta(ch); v != 1 || e.pending() != 1 {
		t.Fatalf("the killed router published %d messages and left %d entries pending; want 1 and 1", v, e.pending())
	}

	e.router(router.Options{Consumer: "heir", ClaimIdle: 100 * time.Millisecond})
	// The heir's bucket gives a token a second; the coalescing window is 3s.
	redistest.Eventually(t, 30*time.Second, "every key of the event invalidated", func() bool {
		return e.cachedCount("profile-svc", "acme", keys) == 0
	})
	redistest.Eventually(t, 10*time.Second, "the entry acknowledged", func() bool { return e.pending() == 0 })
	hist := e.history(ch)
	var got [][]string
	var events []string
	for _, m := range hist {
		got, events = append(got, m.Keys), append(events, m.Event)
	}
	want := [][]string{keys[0:3], keys[3:6], keys[6:7]}
	if !slices.EqualFunc(got, want, slices.Equal) || !slices.Equal(events, []string{id + "#keys:0-3", id + "#keys:3-6", id + "#keys:6-7"}) {
		t.Errorf("history %v (events %v), want the three shares once each: %v", got, events, want)
	}
	if !e.cached("profile-svc", "acme", "other") {
		t.Error("a key the event did not name was dropped")
	}
}

// The subscriber's local limit splits what it merges too: a burst beyond
// its tokens is applied as key-level invalidations of at most MaxKeys keys
// once its window has passed, and drops no key no message named.
func TestSubscriberLimitSplitsItsMerge(t *testing.T) {
	const n = 30
	// The router lets everything through, one key a message.
	e := newEnv(t, precisionMatrix("rate: 100000, burst: 100000, max_keys: 1"))
	e.running("acme")
	named, unnamed := keyRange("user", 0, n), keyRange("other", 0, 100)
	for _, k := range append(slices.Clone(named), unnamed...) {
		e.seed("profile-svc", "acme", k, "active")
	}
	reg := prometheus.NewRegistry()
	// 5 at once, then 50 a second: the 100ms window refills 5 more, so
	// the 25 keys beyond the burst (5 invalidations of 5) are carried key-level.
	var mu sync.Mutex
	var versions []int64
	record := func(_ context.Context, inv subscriber.Invalidation) error {
		mu.Lock()
		defer mu.Unlock()
		versions = append(versions, inv.Version)
		return nil
	}
	e.subscriber("profile-svc", subscriber.Options{Registerer: reg, ApplyRate: 50, ApplyBurst: 5, Coalesce: 100 * time.Millisecond, MaxKeys: 5,
		Cache: e.caches["profile-svc"].Client(t), Handler: record})
	e.xaddPiped("acme", named)
	e.router(router.Options{})
	redistest.Eventually(t, 10*time.Second, "every named key invalidated", func() bool {
		return e.cachedCount("profile-svc", "acme", named) == 0
	})
	const ch = "invalidate:acme:active"
	_, v := e.meta(ch)
	redistest.Eventually(t, 10*time.Second, "the position at the last version", func() bool {
		pos, _, _ := e.stores["profile-svc"].ReadPosition(context.Background(), "acme", "profile-svc", "active")
		return pos.Version == v
	})
	if left := e.cachedCount("profile-svc", "acme", unnamed); left != len(unnamed) {
		t.Errorf("%d of %d keys no message named were dropped", len(unnamed)-left, len(unnamed))
	}
	if c := metric(t, reg, "subscriber_messages_coalesced_total"); c == 0 {
		t.Error("the local limit merged nothing: the test did not reach it")
	}
	if w := metric(t, reg, "subscriber_whole_tag_invalidations_total"); w != 0 {
		t.Errorf("%v whole-tag invalidations", w)
	}
	// Each invalidation has a version of its own, increasing, the last the
	// channel's: a receiver that ignores a version it has seen loses none.
	mu.Lock()
	defer mu.Unlock()
	increasing := len(versions) > 0
	for i := 1; i < len(versions); i++ {
		increasing = increasing && versions[i] > versions[i-1]
	}
	if !increasing || versions[len(versions)-1] != v {
		t.Errorf("versions handed over %v, want each once, increasing, ending at %d", versions, v)
	}
}

// attack: a granted publisher's own event ids may contain "#keys:" (only
// the shared ingress reserves it), and the shares of a split event are
// recorded as "<publisher>/<id>#keys:<from>-<to>". An event whose id is
// "x#keys:0-2" and a later one with id "x" naming more than max_keys keys
// then share an id: the publish script takes the later event's first share
// for a redelivery of the earlier event, and its keys stay cached.
func TestAttackPublisherIDWithShareMark(t *testing.T) {
	e := newEnv(t, precisionMatrix("max_keys: 2")+`
publishers:
  profile-svc: {domains: [user], tenants: all}
`)
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	keys := []string{"user:1", "user:2", "user:3", "user:4", "user:5", "user:6"}
	for _, k := range keys {
		e.seed("profile-svc", "acme", k, "active")
	}
	stream := names.PublisherStream("invalidate", "profile-svc", wire.Partition("acme", e.mtx.Partitions))
	for _, ev := range []string{
		`{"tenant":"acme","domain":"user","id":"x#keys:0-2","keys":["user:1","user:2"]}`,
		`{"tenant":"acme","domain":"user","id":"x","keys":["user:3","user:4","user:5","user:6"]}`,
	} {
		must(t, e.busC.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err())
	}
	// The first id is reserved on every ingress (a publisher's own streams
	// included): dead-lettered naming the rule, its keys left as they are,
	// and the later event's shares all applied.
	for _, k := range keys[2:] {
		e.waitGone("profile-svc", "acme", k)
	}
	dl := e.deadLetters(1)
	if len(dl) != 1 || dl[0].Values["reason"] != router.ReasonMalformed || !strings.Contains(dl[0].Values["error"].(string), "reserved for the shares") {
		t.Errorf("dead letters %v: want one, malformed, the id reserved for the shares", dl)
	}
	for _, k := range keys[:2] {
		if !e.cached("profile-svc", "acme", k) {
			t.Errorf("%s invalidated by the event with a reserved id", k)
		}
	}
}
