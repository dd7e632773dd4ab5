package router

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

func message(channel, tag string, ids ...string) *outgoing {
	return &outgoing{route: matrix.Route{Channel: channel, Tag: tag, Limits: matrix.DefaultLimits()},
		msg: wire.Message{Tenant: "acme", Tag: tag, Event: ids[0], Domain: "user"}, ids: ids}
}

func TestPublishCallsKeepOrderAndBounds(t *testing.T) {
	var out []*outgoing
	for i := 0; i < 250; i++ {
		ch := fmt.Sprintf("invalidate:acme:t%d", i%3)
		out = append(out, message(ch, "t", fmt.Sprint(i)))
	}
	idx := make([]int, len(out))
	for i := range idx {
		idx[i] = i
	}
	for _, cluster := range []bool{false, true} {
		calls, deferred := publishCalls(out, idx, cluster)
		if len(deferred) != 0 {
			t.Errorf("cluster=%v: %d messages deferred, want none", cluster, len(deferred))
		}
		var seen []int
		perChannel := map[string][]int{}
		for _, call := range calls {
			if call.messages > maxCallMessages {
				t.Errorf("cluster=%v: a call of %d messages", cluster, call.messages)
			}
			if cluster && len(call.channels) != 1 {
				t.Errorf("cluster=%v: a call spans %d channels", cluster, len(call.channels))
			}
			n := 0
			for _, ch := range call.channels {
				for _, i := range ch {
					if out[i].route.Channel != out[ch[0]].route.Channel {
						t.Errorf("a channel group mixes channels")
					}
					perChannel[out[i].route.Channel] = append(perChannel[out[i].route.Channel], i)
					seen = append(seen, i)
					n++
				}
			}
			if n != call.messages {
				t.Errorf("call counts %d messages, holds %d", call.messages, n)
			}
		}
		if len(seen) != len(out) {
			t.Fatalf("cluster=%v: %d of %d messages planned", cluster, len(seen), len(out))
		}
		for ch, order := range perChannel {
			if !slices.IsSorted(order) {
				t.Errorf("cluster=%v: %s out of order: %v", cluster, ch, order)
			}
		}
		if !cluster && len(calls) != 3 {
			t.Errorf("on one server 250 messages take %d calls, want 3", len(calls))
		}
	}
	// A channel never spans calls (the script stops at the first of its
	// messages it does not send): beyond one call its messages are
	// deferred, in order.
	var one []*outgoing
	for i := 0; i < 150; i++ {
		one = append(one, message("invalidate:acme:hot", "hot", fmt.Sprint(i)))
	}
	calls, deferred := publishCalls(one, idx[:150], false)
	if len(calls) != 1 || calls[0].messages != maxCallMessages || len(deferred) != 150-maxCallMessages || deferred[0] != maxCallMessages || !slices.IsSorted(deferred) {
		t.Errorf("one channel of 150 messages: %d calls, deferred %v", len(calls), deferred)
	}
}

// The publish script takes many messages over several channels: versions
// follow on per channel, a repeated event id (in the same call or a later
// one) is a duplicate, and the history holds what was sent.
func TestPublishScriptBatch(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m, err := matrix.Parse("m.yaml", []byte("version: 1\ntags:\n  a: {services: [s]}\n  b: {services: [s]}\ndomains:\n  user: {tags: [a, b]}\nservices:\n  s: {tenants: all}\n"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(c, m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := []*outgoing{
		message("invalidate:acme:a", "a", "e1"),
		message("invalidate:acme:b", "b", "e1"),
		message("invalidate:acme:a", "a", "e2"),
		message("invalidate:acme:a", "a", "e1"), // again in the same call
		message("invalidate:acme:b", "b", "e3", "e4"),
		message("invalidate:acme:b", "b", "e4", "e1"), // every id seen
		message("invalidate:acme:a", "a", "e6", "e6"), // an id repeated, new
	}
	res := r.publishDurably(ctx, out, "ep", "PUBLISH")
	want := []published{{version: 1}, {version: 1}, {version: 2}, {version: 1, duplicate: true}, {version: 2}, {version: 2, duplicate: true}, {version: 3}}
	for i := range want {
		if !reflect.DeepEqual(res[i], want[i]) {
			t.Errorf("message %d: %+v, want %+v", i, res[i], want[i])
		}
	}
	// Some ids recorded before, others not: nothing is sent or recorded,
	// and the reply says which were.
	res = r.publishDurably(ctx, []*outgoing{message("invalidate:acme:a", "a", "e2"), message("invalidate:acme:a", "a", "e5", "e2", "e7")}, "other", "PUBLISH")
	if want := []published{{version: 2, duplicate: true}, {version: 3, recorded: []bool{false, true, false}}}; !reflect.DeepEqual(res, want) {
		t.Errorf("next call: %+v, want %+v", res, want)
	}
	if n, err := c.ZCard(ctx, "{invalidate:acme:a}:events").Result(); err != nil || n != 3 {
		t.Errorf("ids recorded after a mixed message: %d, %v; want e1, e2, e6", n, err)
	}
	res = r.publishDurably(ctx, []*outgoing{message("invalidate:acme:a", "a", "e5", "e7")}, "other", "PUBLISH")
	if want := []published{{version: 4}}; !reflect.DeepEqual(res, want) {
		t.Errorf("the message again without e2: %+v, want %+v", res, want)
	}
	hist, err := c.XRange(ctx, "{invalidate:acme:a}:history", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 4 || hist[3].ID != "4-0" {
		t.Fatalf("history: %v", hist)
	}
	msg, err := wire.ParseMessage([]byte(hist[3].Values[names.HistoryField].(string)))
	if err != nil || msg.Epoch != "ep" || msg.Version != 4 || msg.Event != "e5" {
		t.Errorf("history entry: %+v %v", msg, err)
	}
}

// A raw event's id is unique across streams and always a valid event id.
func TestRawEventID(t *testing.T) {
	a, b := RawEventID("invalidate:ingress:{0}", "5-1"), RawEventID("invalidate:ingress:{1}", "5-1")
	if a == b || a != "invalidate:ingress:{0}:5-1" {
		t.Errorf("ids %q and %q", a, b)
	}
	long := strings.Repeat("p", 200) + ":ingress:" + strings.Repeat("q", 100) + ":{3}"
	id1, id2 := RawEventID(long, "1764000000123-0"), RawEventID(long, "1764000000123-1")
	if id1 == id2 || len(id1) > wire.MaxIDLen {
		t.Errorf("long stream names give %q and %q", id1, id2)
	}
	m := wire.Message{Tenant: "acme", Tag: "active", Epoch: "e", Version: 1, Event: id1}
	if err := m.Validate(); err != nil {
		t.Error(err)
	}
}

// A dead letter keeps a bounded copy of the entry, and says when it is cut.
func TestEntryCopyIsBounded(t *testing.T) {
	small := map[string]any{"event": `{"tenant":"acme"}`}
	if got := entryCopy(small, 1000); got != `{"event":"{\"tenant\":\"acme\"}"}` {
		t.Errorf("small entry copied as %s", got)
	}
	big := map[string]any{"event": strings.Repeat("x", 100_000)}
	got := entryCopy(big, 1000)
	if len(got) > 1200 || !strings.HasPrefix(got, `{"event":"xxx`) || !strings.Contains(got, "truncated: the entry is 100012 bytes, the first 1000 are kept") {
		t.Errorf("a 100 kB entry copied as %d bytes ending %q", len(got), got[max(0, len(got)-120):])
	}
}

// parse refuses an event from a publisher's own stream outside its grant,
// and leaves the shared ingress as it was.
func TestParseChecksPublisherGrant(t *testing.T) {
	m, err := matrix.Parse("m", []byte(`
version: 1
tags: {active: {services: [s]}, electronics: {services: [s]}}
domains: {user: {tags: [active]}, product: {tags: [electronics]}}
services: {s: {tenants: all}}
publishers:
  shop: {domains: [product], tenants: [acme]}
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(redistest.Start(t).Client(t), m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		stream, tenant, domain, reason string
	}{
		{"invalidate:ingress:shop:{0}", "acme", "product", ""},
		{"invalidate:ingress:shop:{0}", "globex", "product", ReasonNotGranted},
		{"invalidate:ingress:shop:{1}", "acme", "user", ReasonNotGranted},
		{"invalidate:ingress:ghost:{0}", "acme", "product", ReasonNotGranted},
		{"invalidate:ingress:shop:{0}", "acme", "nothing", ReasonUnknownDomain},
		{"invalidate:ingress:{0}", "globex", "user", ""},
	} {
		var e entry
		ev := fmt.Sprintf(`{"tenant":%q,"domain":%q}`, tc.tenant, tc.domain)
		r.parse(&e, m, tc.stream, redis.XMessage{ID: "1-0", Values: map[string]any{wire.EventField: ev}}, nil)
		v := e.events[0]
		if v.reason != tc.reason {
			t.Errorf("%s %s/%s: reason %q (%s), want %q", tc.stream, tc.tenant, tc.domain, v.reason, v.detail, tc.reason)
		}
		if tc.reason == ReasonNotGranted && !strings.Contains(v.detail, fmt.Sprintf("is not granted domain %q for tenant %q", tc.domain, tc.tenant)) {
			t.Errorf("detail %q", v.detail)
		}
	}
}

// An event id given on a publisher's own stream is scoped by the publisher;
// one without an id gets the raw id, which names the stream.
func TestPublisherEventIDsAreScoped(t *testing.T) {
	m, err := matrix.Parse("m", []byte(`
version: 1
tags: {active: {services: [s]}}
domains: {user: {tags: [active]}}
services: {s: {tenants: all}}
publishers: {p: {domains: [user], tenants: all}}
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(redistest.Start(t).Client(t), m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", wire.MaxIDLen)
	for _, tc := range []struct{ stream, id, want string }{
		{"invalidate:ingress:p:{0}", "e1", "p/e1"},
		{"invalidate:ingress:{0}", "e1", "e1"},
		{"invalidate:ingress:p:{0}", "", "invalidate:ingress:p:{0}:1-0"},
		{"invalidate:ingress:p:{0}", long, boundedID("p/" + long)},
	} {
		var e entry
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":%q}`, tc.id)
		if tc.id == "" {
			ev = `{"tenant":"acme","domain":"user"}`
		}
		r.parse(&e, m, tc.stream, redis.XMessage{ID: "1-0", Values: map[string]any{wire.EventField: ev}}, nil)
		v := e.events[0]
		if v.reason != "" || v.id != tc.want || len(v.id) > wire.MaxIDLen {
			t.Errorf("%s id %.10q: event id %q (%s), want %q", tc.stream, tc.id, v.id, v.reason, tc.want)
		}
	}
}

// A reload that adds a publisher takes up its streams at once: an event it
// writes is routed without a restart.
func TestSetMatrixReadsNewPublishers(t *testing.T) {
	base := `
version: 1
ingress: {partitions: 1}
tags: {active: {services: [s]}}
domains: {user: {tags: [active]}}
services: {s: {tenants: all}}
`
	old, err := matrix.Parse("old", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	m, err := matrix.Parse("new", []byte(base+"publishers: {p: {domains: [user], tenants: all}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := redistest.Start(t).Client(t)
	r, err := New(c, old, Options{Block: 50 * time.Millisecond, ClaimInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	if err := r.SetMatrix(m); err != nil {
		t.Fatal(err)
	}
	if err := c.XAdd(context.Background(), &redis.XAddArgs{Stream: names.PublisherStream("invalidate", "p", 0),
		Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["user:1"]}`}}).Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the new publisher's event routed", func() bool {
		v, _ := c.HGet(context.Background(), names.MetaKey("invalidate:acme:active"), "version").Result()
		return v == "1"
	})
}

// An id supplied on the shared ingress may not take a form routerd makes
// itself: an event without id's, a publisher's (any id holding a "/",
// whether or not the publisher is granted yet), a hashed one, a share of an
// event above max_keys.
func TestReservedIDs(t *testing.T) {
	for id, reserved := range map[string]bool{
		"invalidate:ingress:{0}:5-1": true,
		"sha256:00ff":                true,
		"profile-svc/42":             true,
		"order/42":                   true, // no such publisher yet: it may be granted later
		"/":                          true,
		"01JDX9":                     false,
		"app:ingress:{0}:5-1":        false, // another prefix's form
		"42#keys:0-500":              true,  // a share of event 42 (keyShares)
		"42#keys":                    false,
	} {
		if got := reservedID("invalidate", id) != ""; got != reserved {
			t.Errorf("reservedID(%q) = %q, want reserved %v", id, reservedID("invalidate", id), reserved)
		}
	}
}

// FuzzReservedID: no id holding a "/" passes on the shared ingress, and a
// refusal names the id.
func FuzzReservedID(f *testing.F) {
	for _, s := range []string{"42", "p/42", "invalidate:ingress:{0}:1-1", "sha256:ab", "x#keys:0-1", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		why := reservedID("invalidate", id)
		if strings.Contains(id, "/") && why == "" {
			t.Fatalf("reservedID(%q) passes an id of the form <publisher>/…", id)
		}
		if why != "" && !strings.Contains(why, strconv.Quote(id)) {
			t.Fatalf("reservedID(%q) = %q: does not name the id", id, why)
		}
	})
}

// A batch read while the one before was being published joins the batch
// that waits: its events go into the same messages per channel, after the
// waiting batch's, so a channel's keys and ids keep the stream's order. A
// batch that failed as a whole joins nothing and leaves the waiting one as
// it was. No event has a source_version; the tenant registry is a Redis of
// its own.
func TestBatchJoinKeepsStreamOrder(t *testing.T) {
	m := runMatrix(t)
	r, err := New(redistest.Start(t).Client(t), m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	entries := func(from, n int) []redis.XMessage {
		var msgs []redis.XMessage
		for i := from; i < from+n; i++ {
			msgs = append(msgs, redis.XMessage{ID: fmt.Sprintf("1-%d", i),
				Values: map[string]any{wire.EventField: fmt.Sprintf(`{"tenant":"acme","domain":"user","keys":["k%d"]}`, i)}})
		}
		return msgs
	}
	ctx := context.Background()
	first, second := r.prepare(ctx, stream, entries(0, 3)), r.prepare(ctx, stream, entries(3, 1))
	if !second.entries[0].alone {
		t.Fatal("the entry of a batch of one is not marked alone")
	}
	if !first.join(second) {
		t.Fatal("a batch that did not fail was not joined")
	}
	failed := r.prepare(ctx, stream, entries(4, 1))
	failed.failed = fmt.Errorf("bus down")
	if first.join(failed) {
		t.Fatal("a batch that failed as a whole was joined")
	}
	defer first.cancel()
	ch := names.Channel(m.Prefix, "acme", "a")
	if len(first.entries) != 4 || len(first.channels) != 1 || len(first.open[ch].msgs) != 1 {
		t.Fatalf("joined batch: %d entries, channels %v, %d messages on %s; want 4, one channel, one message", len(first.entries), first.channels, len(first.open[ch].msgs), ch)
	}
	o := first.open[ch].msgs[0]
	o.seal()
	if want := []string{"k0", "k1", "k2", "k3"}; !slices.Equal(o.msg.Keys, want) {
		t.Errorf("keys %v, want %v", o.msg.Keys, want)
	}
	for i, id := range o.ids {
		if want := RawEventID(stream, fmt.Sprintf("1-%d", i)); id != want {
			t.Errorf("id %d is %s, want %s", i, id, want)
		}
	}
	for _, e := range first.entries {
		if e.alone {
			t.Errorf("entry %s of a joined batch is marked alone: a failure of the batch would count towards its dead letter", e.id)
		}
	}
}

// A channel that only the joining batch has keeps that batch's messages,
// after the waiting batch's channels; one both have gets the joining
// batch's events after the waiting one's, in a message made large enough
// for the two.
func TestBatchJoinTakesNewChannels(t *testing.T) {
	m := runMatrix(t)
	r, err := New(redistest.Start(t).Client(t), m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	stream := names.IngressStream(m.Prefix, 0)
	batchOf := func(from int, tenants ...string) *batch {
		var msgs []redis.XMessage
		for i, tenant := range tenants {
			msgs = append(msgs, redis.XMessage{ID: fmt.Sprintf("1-%d", from+i),
				Values: map[string]any{wire.EventField: fmt.Sprintf(`{"tenant":%q,"domain":"user","keys":["k%d"]}`, tenant, from+i)}})
		}
		return r.prepare(context.Background(), stream, msgs)
	}
	first, second := batchOf(0, "acme", "acme"), batchOf(2, "zeta", "acme", "zeta")
	defer first.cancel()
	if !first.join(second) {
		t.Fatal("a batch that did not fail was not joined")
	}
	acme, zeta := names.Channel(m.Prefix, "acme", "a"), names.Channel(m.Prefix, "zeta", "a")
	if !slices.Equal(first.channels, []string{acme, zeta}) {
		t.Fatalf("channels %v, want %v", first.channels, []string{acme, zeta})
	}
	for ch, want := range map[string][]string{acme: {"k0", "k1", "k3"}, zeta: {"k2", "k4"}} {
		msgs := first.open[ch].msgs
		if len(msgs) != 1 {
			t.Fatalf("%d messages on %s, want 1", len(msgs), ch)
		}
		msgs[0].seal()
		if !slices.Equal(msgs[0].msg.Keys, want) || len(msgs[0].ids) != len(want) {
			t.Errorf("%s: keys %v and %d ids, want %v", ch, msgs[0].msg.Keys, len(msgs[0].ids), want)
		}
	}
}

// The ids made in shared blocks are RawEventID's, across blocks, and stay
// as they were made while more are written.
func TestIDBlocksMakeRawEventIDs(t *testing.T) {
	var ids idBlocks
	var made, want []string
	for i := range 2 * idBlock / 30 {
		stream := "invalidate:ingress:{3}"
		if i%1000 == 7 {
			stream = strings.Repeat("s", wire.MaxIDLen) // too long: its SHA-256
		}
		entryID := fmt.Sprintf("1764000000123-%d", i)
		made = append(made, ids.raw(stream, entryID))
		want = append(want, RawEventID(stream, entryID))
	}
	if !slices.Equal(made, want) {
		t.Error("the ids made in blocks are not RawEventID's")
	}
	var none *idBlocks
	if got := none.raw("s", "1-0"); got != RawEventID("s", "1-0") {
		t.Errorf("without blocks: %s", got)
	}
}

// ack acknowledges the entries of every stream, whatever their order, and
// counts the routed events of each domain.
func TestAckGroupsStreamsAndDomains(t *testing.T) {
	m := runMatrix(t)
	c := redistest.Start(t).Client(t)
	r, err := New(c, m, Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, s := range []string{"s1", "s2"} {
		if err := c.XGroupCreateMkStream(ctx, s, r.opt.Group, "0").Err(); err != nil {
			t.Fatal(err)
		}
	}
	var entries []*entry
	for _, at := range []struct{ stream, domain string }{{"s1", "d1"}, {"s1", "d1"}, {"s2", "d2"}, {"s1", "d1"}, {"s2", "d1"}} {
		id, err := c.XAdd(ctx, &redis.XAddArgs{Stream: at.stream, Values: []any{"event", "x"}}).Result()
		if err != nil {
			t.Fatal(err)
		}
		e := &entry{stream: at.stream, id: id}
		e.events = e.one[:]
		e.events[0].ev = &wire.Event{Tenant: "acme", Domain: at.domain}
		entries = append(entries, e)
	}
	if err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: r.opt.Group, Consumer: "me", Streams: []string{"s1", "s2", ">", ">"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := r.ack(ctx, entries); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"s1", "s2"} {
		if p, err := c.XPending(ctx, s, r.opt.Group).Result(); err != nil || p.Count != 0 {
			t.Errorf("%s: %v pending after the acknowledgement (%v)", s, p, err)
		}
	}
	for domain, want := range map[string]float64{"d1": 4, "d2": 1} {
		var got dto.Metric
		if err := r.m.routed.WithLabelValues(domain).Write(&got); err != nil || got.GetCounter().GetValue() != want {
			t.Errorf("routed events of %s: %v, want %v (%v)", domain, got.GetCounter().GetValue(), want, err)
		}
	}
}
