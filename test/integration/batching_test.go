package integration

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// Batching: many events per ingress entry (the field events) and one
// message per channel per read batch must keep every guarantee of one
// event per entry and one message per event: no lost key, no lost event
// id, no second message for an event already published.

// xaddPacked appends one packed entry, as a raw client would, and returns its id.
func (e *env) xaddPacked(tenant string, events ...map[string]any) string {
	e.t.Helper()
	b, err := json.Marshal(events)
	if err != nil {
		e.t.Fatal(err)
	}
	id, err := e.busC.XAdd(context.Background(), &redis.XAddArgs{
		Stream: names.IngressStream("invalidate", wire.Partition(tenant, e.mtx.Partitions)),
		Values: []any{wire.EventsField, string(b)},
	}).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

// ev is one event of a packed entry.
func ev(id, tenant string, keys ...string) map[string]any {
	m := map[string]any{"tenant": tenant, "domain": "user"}
	if id != "" {
		m["id"] = id
	}
	if len(keys) > 0 {
		m["keys"] = keys
	}
	return m
}

// pending is how many ingress entries are delivered and not acknowledged.
func (e *env) pending() int64 {
	e.t.Helper()
	var n int64
	for p := 0; p < e.mtx.Partitions; p++ {
		sum, err := e.busC.XPending(context.Background(), names.IngressStream("invalidate", p), "routerd").Result()
		if err != nil && !redis.HasErrorPrefix(err, "NOGROUP") {
			e.t.Fatal(err)
		}
		if sum != nil {
			n += sum.Count
		}
	}
	return n
}

// A packed entry with one bad event: the others are routed (in one message
// for their channel), each bad one is dead-lettered on its own, naming its
// index, with the fields of an entry that would carry it alone, and the
// entry is acknowledged.
func TestPackedEntryWithBadEvents(t *testing.T) {
	e := newEnv(t, "")
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})
	e.subscriber("profile-svc", subscriber.Options{})
	for _, k := range []string{"user:a", "user:b", "user:c"} {
		e.seed("profile-svc", "acme", k, "active")
	}
	bad := map[string]any{"tenant": "acme", "domain": "user", "keys": []string{}}
	unknown := map[string]any{"tenant": "acme", "domain": "nope", "keys": []string{"user:c"}}
	entryID := e.xaddPacked("acme", ev("p1", "acme", "user:a"), bad, unknown, ev("", "acme", "user:b"))

	e.waitGone("profile-svc", "acme", "user:a")
	e.waitGone("profile-svc", "acme", "user:b")
	dead := e.deadLetters(2)
	if len(dead) != 2 {
		t.Fatalf("%d dead letters, want 2: %v", len(dead), dead)
	}
	for i, want := range []struct{ reason, index, errPart string }{
		{router.ReasonMalformed, "1", "events[1]: keys: " + wire.EmptyKeys},
		{router.ReasonUnknownDomain, "2", `events[2]: domain "nope"`},
	} {
		d := dead[i].Values
		if d["reason"] != want.reason || d["index"] != want.index || d["entry_id"] != entryID || !strings.Contains(d["error"].(string), want.errPart) {
			t.Errorf("dead letter %d: %v", i, d)
		}
		var fields map[string]string
		if err := json.Unmarshal([]byte(d["entry"].(string)), &fields); err != nil || len(fields) != 1 || fields[wire.EventField] == "" {
			t.Errorf("dead letter %d keeps %v (%v), want the fields of an entry with its event alone", i, d["entry"], err)
		}
	}
	redistest.Eventually(t, 10*time.Second, "the entry acknowledged", func() bool { return e.pending() == 0 })
	if !e.cached("profile-svc", "acme", "user:c") {
		t.Error("user:c, named only by a refused event, was invalidated")
	}
	hist := e.history("invalidate:acme:active")
	if len(hist) != 1 || !slices.Equal(hist[0].Keys, []string{"user:a", "user:b"}) || hist[0].Event != "p1" {
		t.Fatalf("history %+v, want one message for both good events", hist)
	}
	// The event without an id got one of its stream, entry and place.
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	for _, id := range []string{"p1", router.PackedEventID(stream, entryID, 3)} {
		if err := e.busC.ZScore(context.Background(), "{invalidate:acme:active}:events", id).Err(); err != nil {
			t.Errorf("event id %s not recorded: %v", id, err)
		}
	}
	if got := metric(t, reg, "routerd_events_routed_total"); got != 2 {
		t.Errorf("routed %v events, want 2", got)
	}
}

// A redelivery that groups events otherwise — entries repeating ids already
// published, packed with new ones and with each other — sends one message
// with the new events' keys only: none for the events recorded, none of
// their keys, no key of a new event lost.
func TestRegroupedRedeliverySendsOnlyNewEvents(t *testing.T) {
	e := newEnv(t, "")
	e.subscriber("profile-svc", subscriber.Options{})
	_, stop := e.router(router.Options{})
	const ch = "invalidate:acme:active"
	e.xaddPacked("acme", ev("e1", "acme", "user:1"), ev("e2", "acme", "user:2"))
	e.waitVersion(ch, 1)
	stop()

	// Read in one batch by the next router: e2 with a new e3, e1 with a
	// new e4, and e1 and e2 together again.
	for _, k := range []string{"user:1", "user:2", "user:3", "user:4"} {
		e.seed("profile-svc", "acme", k, "active")
	}
	e.xaddPacked("acme", ev("e2", "acme", "user:2"), ev("e3", "acme", "user:3"))
	e.xaddPacked("acme", ev("e1", "acme", "user:1"), ev("e4", "acme", "user:4"))
	e.xaddPacked("acme", ev("e2", "acme", "user:2"), ev("e1", "acme", "user:1"))
	e.router(router.Options{})
	e.waitGone("profile-svc", "acme", "user:3")
	e.waitGone("profile-svc", "acme", "user:4")
	redistest.Eventually(t, 10*time.Second, "every entry acknowledged", func() bool { return e.pending() == 0 })

	hist := e.history(ch)
	if len(hist) != 2 {
		t.Fatalf("%d messages, want 2 (the first, then one for e3 and e4): %+v", len(hist), hist)
	}
	if !slices.Equal(hist[1].Keys, []string{"user:3", "user:4"}) || hist[1].Event != "e3" {
		t.Errorf("second message %+v, want keys user:3 and user:4 only", hist[1])
	}
	for _, k := range []string{"user:1", "user:2"} {
		if !e.cached("profile-svc", "acme", k) {
			t.Errorf("%s invalidated again for an event already published", k)
		}
	}
	for _, id := range []string{"e1", "e2", "e3", "e4"} {
		v, err := e.busC.ZScore(context.Background(), "{"+ch+"}:events", id).Result()
		if err != nil {
			t.Errorf("event id %s not recorded: %v", id, err)
		}
		if want := map[string]float64{"e1": 1, "e2": 1, "e3": 2, "e4": 2}[id]; v != want {
			t.Errorf("event %s recorded with version %v, want %v", id, v, want)
		}
	}
}

// The events of one read batch for a channel merge into messages of at
// most max_keys keys: past it the merge splits into another key-level
// message, each recording its own events, and no key goes that no event
// named.
func TestBatchMergeAboveMaxKeysSplits(t *testing.T) {
	e := newEnv(t, `
version: 1
ingress: {partitions: 1}
defaults: {max_keys: 3}
tags:
  active: {services: [profile-svc]}
domains:
  user: {tags: [active]}
services:
  profile-svc: {tenants: all}
`)
	e.running("acme")
	e.subscriber("profile-svc", subscriber.Options{})
	for _, k := range []string{"user:1", "user:2", "user:3", "user:4", "user:other"} {
		e.seed("profile-svc", "acme", k, "active")
	}
	// Appended before the router starts: its first read takes both.
	e.xaddPacked("acme", ev("w1", "acme", "user:1", "user:2"), ev("w2", "acme", "user:2", "user:3"))
	e.xaddPacked("acme", ev("w3", "acme", "user:4"))
	e.router(router.Options{})
	const ch = "invalidate:acme:active"
	e.waitVersion(ch, 2)
	e.waitGone("profile-svc", "acme", "user:4")
	hist := e.history(ch)
	if len(hist) != 2 || !slices.Equal(hist[0].Keys, []string{"user:1", "user:2", "user:3"}) || !slices.Equal(hist[1].Keys, []string{"user:4"}) {
		t.Fatalf("history %+v, want two key-level messages", hist)
	}
	for id, v := range map[string]float64{"w1": 1, "w2": 1, "w3": 2} {
		if got, err := e.busC.ZScore(context.Background(), "{"+ch+"}:events", id).Result(); err != nil || got != v {
			t.Errorf("event id %s recorded with version %v (%v), want %v", id, got, err, v)
		}
	}
	if !e.cached("profile-svc", "acme", "user:other") {
		t.Error("user:other, which no event named, was dropped")
	}
}

// An entry whose events partly succeeded (one channel refused its publish)
// is tried again until all are done; the events already published are not
// published a second time.
func TestPartlyPublishedEntryRetriedWithoutSecondMessage(t *testing.T) {
	e := newEnv(t, "")
	ctx := context.Background()
	e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "user:a", "active")
	e.seed("profile-svc", "globex", "user:g", "active")
	// globex's channel meta of the wrong type: its publish fails (WRONGTYPE).
	const broken = "{invalidate:globex:active}:meta"
	if err := e.busC.Set(ctx, broken, "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	e.router(router.Options{})
	e.xaddPacked("acme", ev("a1", "acme", "user:a"), ev("g1", "globex", "user:g"))
	e.waitGone("profile-svc", "acme", "user:a")
	redistest.Eventually(t, 10*time.Second, "acme published, the entry still pending", func() bool {
		return len(e.history("invalidate:acme:active")) == 1 && e.pending() == 1
	})
	e.seed("profile-svc", "acme", "user:a", "active")
	if err := e.busC.Del(ctx, broken).Err(); err != nil {
		t.Fatal(err)
	}
	e.waitGone("profile-svc", "globex", "user:g")
	redistest.Eventually(t, 10*time.Second, "the entry acknowledged", func() bool { return e.pending() == 0 })
	if n := len(e.history("invalidate:acme:active")); n != 1 {
		t.Errorf("acme's channel has %d messages, want 1: its event was published again", n)
	}
	if !e.cached("profile-svc", "acme", "user:a") {
		t.Error("user:a invalidated again by a retry")
	}
}

// An entry that is not one event nor an array of them is refused whole, with
// no index: both fields, a packed field that is no JSON array, an empty array.
func TestBadPackedEntryRefusedWhole(t *testing.T) {
	e := newEnv(t, "")
	e.router(router.Options{})
	stream := names.IngressStream("invalidate", 0)
	good := `{"tenant":"acme","domain":"user","keys":["user:1"]}`
	for _, values := range [][]any{
		{wire.EventField, good, wire.EventsField, "[" + good + "]"},
		{wire.EventsField, good},
		{wire.EventsField, "[]"},
	} {
		if err := e.busC.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: values}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	dead := e.deadLetters(3)
	for i, want := range []string{`both an "event" and an "events" field`, "events: not a JSON array", "events: an empty array"} {
		d := dead[i].Values
		if d["reason"] != router.ReasonMalformed || !strings.Contains(d["error"].(string), want) || d["index"] != nil {
			t.Errorf("dead letter %d: %v, want %q and no index", i, d, want)
		}
	}
	redistest.Eventually(t, 10*time.Second, "the entries acknowledged", func() bool { return e.pending() == 0 })
}
