package integration

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
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

// Faults of the input side: what a publisher (or a hostile client with a raw
// XADD) can send must never cost an invalidation, nor grow a message, a
// channel's history or the dead letters without bound.

// history returns the messages of a channel's history, oldest first.
func (e *env) history(channel string) []*wire.Message {
	e.t.Helper()
	entries, err := e.busC.XRange(context.Background(), "{"+channel+"}:history", "-", "+").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	out := make([]*wire.Message, len(entries))
	for i, en := range entries {
		m, err := wire.ParseMessage([]byte(en.Values[names.HistoryField].(string)))
		if err != nil {
			e.t.Fatalf("history entry %s: %v", en.ID, err)
		}
		out[i] = m
	}
	return out
}

// deadLetters waits until the dead-letter streams hold n entries and returns them.
func (e *env) deadLetters(n int) []redis.XMessage {
	e.t.Helper()
	var entries []redis.XMessage
	redistest.Eventually(e.t, 10*time.Second, fmt.Sprintf("%d dead letters", n), func() bool {
		entries = allDeadLetters(e.t, e.busC)
		return len(entries) >= n
	})
	return entries
}

// allDeadLetters returns the dead letters of both streams (those that can
// be re-driven, and the malformed and too large ones) in the order of the
// entries (and packed events) they came from (one batch's letters share a millisecond, and each
// stream numbers its own entries within it).
func allDeadLetters(t *testing.T, c *redis.Client) []redis.XMessage {
	t.Helper()
	var all []redis.XMessage
	for _, dl := range []string{names.DeadLetterStream("invalidate"), names.InvalidDeadLetterStream("invalidate")} {
		msgs, err := c.XRange(context.Background(), dl, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, msgs...)
	}
	slices.SortStableFunc(all, func(a, b redis.XMessage) int {
		from := func(m redis.XMessage) string { s, _ := m.Values["entry_id"].(string); return s }
		index := func(m redis.XMessage) int { s, _ := m.Values["index"].(string); i, _ := strconv.Atoi(s); return i }
		return cmp.Or(compareEntryIDs(from(a), from(b)), cmp.Compare(index(a), index(b)), compareEntryIDs(a.ID, b.ID))
	})
	return all
}

// compareEntryIDs orders two stream entry ids.
func compareEntryIDs(a, b string) int {
	split := func(id string) (uint64, uint64) {
		ms, seq, _ := strings.Cut(id, "-")
		m, _ := strconv.ParseUint(ms, 10, 64)
		s, _ := strconv.ParseUint(seq, 10, 64)
		return m, s
	}
	am, as := split(a)
	bm, bs := split(b)
	return cmp.Or(cmp.Compare(am, bm), cmp.Compare(as, bs))
}

// An event older (source_version) than one already routed for its entity is
// suppressed only when the newer events invalidated every key it names: a
// retried or late event naming another key is still routed.
func TestOlderSourceVersionStillInvalidatesOtherKeys(t *testing.T) {
	e := newEnv(t, "")
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})
	e.subscriber("profile-svc", subscriber.Options{})
	for _, k := range []string{"user:a", "user:b", "user:c"} {
		e.seed("profile-svc", "acme", k, "active")
	}
	const ch = "invalidate:acme:active"
	ev := func(sv int64, keys ...string) wire.Event {
		return wire.Event{Tenant: "acme", Domain: "user", Entity: "1", SourceVersion: sv, Keys: keys}
	}

	e.publish(ev(6, "user:b"))
	e.waitGone("profile-svc", "acme", "user:b")
	e.publish(ev(5, "user:a")) // older, but user:a was never invalidated by a newer event
	e.waitGone("profile-svc", "acme", "user:a")
	e.waitVersion(ch, 2)

	// Older and fully covered by newer events: suppressed.
	e.publish(ev(4, "user:a", "user:b"))
	e.publish(ev(7, "user:c"))
	e.waitGone("profile-svc", "acme", "user:c")
	redistest.Eventually(t, 10*time.Second, "one suppressed", func() bool {
		return metric(t, reg, "routerd_events_suppressed_total") == 1
	})
	if _, v := e.meta(ch); v != 3 {
		t.Errorf("version %d, want 3: the covered older event was routed", v)
	}

	// A newer whole-tag event covers every key; an older whole-tag event is
	// covered only by a newer whole-tag one.
	e.seed("profile-svc", "acme", "user:d", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "2", SourceVersion: 10, Keys: []string{"user:d"}})
	e.waitGone("profile-svc", "acme", "user:d")
	e.seed("profile-svc", "acme", "user:e", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "2", SourceVersion: 9, WholeTag: true})
	e.waitGone("profile-svc", "acme", "user:e") // older whole-tag, only keys covered: routed
	e.waitVersion(ch, 5)
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "2", SourceVersion: 8, Keys: []string{"user:zz"}})
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "2", SourceVersion: 8, WholeTag: true})
	e.seed("profile-svc", "acme", "user:f", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Entity: "3", Keys: []string{"user:f"}})
	e.waitGone("profile-svc", "acme", "user:f")
	redistest.Eventually(t, 10*time.Second, "three suppressed", func() bool {
		return metric(t, reg, "routerd_events_suppressed_total") == 3
	})
	if _, v := e.meta(ch); v != 6 {
		t.Errorf("version %d, want 6: an event covered by a newer whole-tag one was routed", v)
	}
}

// Raw events without an id, written with the same entry id to two partitions
// (as two XADDs at the same millisecond do), are two events: both are routed.
func TestRawEventsWithSameEntryIDOnTwoPartitions(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.seed("profile-svc", "acme", "user:1", "active")
	e.seed("profile-svc", "acme", "user:2", "active")
	for p, key := range []string{"user:1", "user:2"} {
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: names.IngressStream("invalidate", p), ID: "5-1",
			Values: []any{"event", `{"tenant":"acme","domain":"user","keys":["` + key + `"]}`}}).Err())
	}
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	e.waitGone("profile-svc", "acme", "user:1")
	e.waitGone("profile-svc", "acme", "user:2")
	hist := e.history("invalidate:acme:active")
	if len(hist) != 2 || hist[0].Event == hist[1].Event {
		t.Fatalf("history %+v: want two messages with distinct event ids", hist)
	}
	for _, m := range hist {
		if !strings.HasPrefix(m.Event, "invalidate:ingress:{") || !strings.HasSuffix(m.Event, ":5-1") {
			t.Errorf("event id %q: want the stream name and the entry id", m.Event)
		}
	}
}

// A supplied id cannot spell the id of an event published without one (its
// stream and entry id): the later raw event was dropped as a duplicate of
// it. Such an id is refused (the Go publisher refuses it before sending:
// it comes here raw, as from another language).
func TestSuppliedIDCannotSpellARawEventID(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "user:1", "active")
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"event",
		`{"id":"` + stream + `:9999999999999-0","tenant":"acme","domain":"user","keys":["user:0"]}`}}).Err())
	dl := e.deadLetters(1)
	if dl[0].Values["reason"] != router.ReasonMalformed || !strings.Contains(dl[0].Values["error"].(string), "reserved") {
		t.Errorf("dead letter %v: want malformed, the id reserved", dl[0].Values)
	}
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, ID: "9999999999999-0",
		Values: []any{"event", `{"tenant":"acme","domain":"user","keys":["user:1"]}`}}).Err())
	e.waitGone("profile-svc", "acme", "user:1")
}

// An event naming more keys than the tag's max_keys is split into
// messages of at most max_keys keys, one per share of its keys, each
// recording its share's id: no message carries more than max_keys keys, and
// no key goes that the event did not name.
func TestEventAboveMaxKeysIsSplit(t *testing.T) {
	e := newEnv(t, "")
	e.running("acme")
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})
	e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "k:17", "active")
	e.seed("profile-svc", "acme", "k:9999", "active")
	e.seed("profile-svc", "acme", "not-named", "active")
	keys := make([]string, wire.MaxKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k:%d", i)
	}
	id := e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: keys})
	max := e.mtx.Defaults.MaxKeys
	shares := wire.MaxKeys / max
	e.waitVersion("invalidate:acme:active", int64(shares))
	e.waitGone("profile-svc", "acme", "k:17")
	e.waitGone("profile-svc", "acme", "k:9999")
	hist := e.history("invalidate:acme:active")
	if len(hist) != shares {
		t.Fatalf("history holds %d messages, want %d of %d keys", len(hist), shares, max)
	}
	for i, m := range hist {
		if want := fmt.Sprintf("%s#keys:%d-%d", id, i*max, (i+1)*max); m.WholeTag() || !slices.Equal(m.Keys, keys[i*max:(i+1)*max]) || m.Event != want {
			t.Errorf("message %d: %d keys, event %s; want keys %d to %d, event %s", i+1, len(m.Keys), m.Event, i*max, (i+1)*max, want)
		}
	}
	if !e.cached("profile-svc", "acme", "not-named") {
		t.Error("a key the event did not name was dropped")
	}
	if w := metric(t, reg, "routerd_whole_tag_messages_total"); w != 0 {
		t.Errorf("%v whole-tag messages", w)
	}
}

// An event above the byte limit goes to the dead letters with a reason naming
// the limit, and its dead letter is bounded in size; the events after it are
// routed.
func TestOversizedEventDeadLettered(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})
	keys := make([]string, 4000)
	for i := range keys {
		keys[i] = fmt.Sprintf("%0500d", i) // 4,000 keys of 500 bytes: 2 MB, each key valid
	}
	big, _ := json.Marshal(map[string]any{"tenant": "acme", "domain": "user", "keys": keys})
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"event", string(big)}}).Err())
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitVersion("invalidate:acme:active", 1)

	dl := e.deadLetters(1)
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dl))
	}
	v := dl[0].Values
	if v["reason"] != router.ReasonTooLarge || !strings.Contains(v["error"].(string), "1048576") {
		t.Errorf("dead letter reason %v error %v: want too_large naming the limit of 1048576 bytes", v["reason"], v["error"])
	}
	size := 0
	for k, x := range v {
		size += len(k) + len(x.(string))
	}
	if size > 100_000 {
		t.Errorf("the dead letter of a %d-byte event takes %d bytes", len(big), size)
	}
	if hist := e.history("invalidate:acme:active"); len(hist) != 1 || len(hist[0].Keys) != 1 {
		t.Errorf("history %+v: want only the small event", hist)
	}
	if got := metric(t, reg, "routerd_events_dead_lettered_total", "reason", router.ReasonTooLarge); got != 1 {
		t.Errorf("dead-lettered metric = %v", got)
	}
}

// `"keys": []` and `"keys": null` are refused (a publisher whose computed
// key list came out empty — encoded as [] or, from a nil list, as null —
// must not flush whole tags): they go to the dead letters and nothing is
// invalidated.
func TestEmptyKeysRefused(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "user:1", "active")
	e.seed("profile-svc", "acme", "user:2", "active")
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"event", `{"tenant":"acme","domain":"user","keys":[]}`}}).Err())
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"event", `{"tenant":"acme","domain":"user","keys":null}`}}).Err())
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("profile-svc", "acme", "user:2")

	dl := e.deadLetters(2)
	if len(dl) != 2 || dl[0].Values["reason"] != router.ReasonMalformed ||
		!strings.Contains(dl[0].Values["error"].(string), "empty keys; omit keys to invalidate whole tags") ||
		dl[1].Values["reason"] != router.ReasonMalformed ||
		!strings.Contains(dl[1].Values["error"].(string), "null keys; omit keys to invalidate whole tags") {
		t.Errorf("dead letters %v: want two, malformed, saying keys are empty, then null", dl)
	}
	// The Go publisher refuses an empty key list too; whole tags take WholeTag.
	if _, err := e.pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{}}); err == nil {
		t.Error("the publisher sent an event with an empty key list")
	}
	if !e.cached("profile-svc", "acme", "user:1") {
		t.Error(`"keys":[] flushed the whole tag`)
	}
	if hist := e.history("invalidate:acme:active"); len(hist) != 1 {
		t.Errorf("history %+v: want only the key-level event", hist)
	}
}
