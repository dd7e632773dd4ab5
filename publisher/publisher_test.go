package publisher_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/wire"
)

func entries(t *testing.T, c *redis.Client, stream string) []wire.Event {
	t.Helper()
	msgs, err := c.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []wire.Event
	for _, m := range msgs {
		out = append(out, entryEvents(t, m)...)
	}
	return out
}

// entryEvents decodes the event of an entry, or its packed events.
func entryEvents(t *testing.T, m redis.XMessage) []wire.Event {
	t.Helper()
	if len(m.Values) != 1 {
		t.Fatalf("entry has fields %v, want only %q or %q", m.Values, wire.EventField, wire.EventsField)
	}
	if packed, ok := m.Values[wire.EventsField].(string); ok {
		var evs []wire.Event
		if err := json.Unmarshal([]byte(packed), &evs); err != nil || len(evs) < 2 {
			t.Fatalf("packed entry %s: %v (a packed entry has at least two events)", packed, err)
		}
		return evs
	}
	var ev wire.Event
	if err := json.Unmarshal([]byte(m.Values[wire.EventField].(string)), &ev); err != nil {
		t.Fatal(err)
	}
	return []wire.Event{ev}
}

// PublishBatch packs a partition's events, in order, into entries of at
// most MaxPacked events and MaxEventBytes bytes; a lone event keeps the
// field event.
func TestPublishBatchPacks(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	p, err := publisher.New(c, publisher.Options{Partitions: 2, MaxPacked: 3, MaxEventBytes: 300})
	if err != nil {
		t.Fatal(err)
	}
	var events []publisher.Event
	for i := range 7 {
		events = append(events, publisher.Event{Tenant: "acme", Domain: "user", Keys: []string{fmt.Sprintf("user:%d", i)}})
	}
	// Alone in its partition.
	other := "t0"
	for i := 1; wire.Partition(other, 2) == wire.Partition("acme", 2); i++ {
		other = fmt.Sprintf("t%d", i)
	}
	events = append(events, publisher.Event{Tenant: other, Domain: "user", WholeTag: true})
	ids, err := p.PublishBatch(ctx, events)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := c.XRange(ctx, names.IngressStream("invalidate", wire.Partition("acme", 2)), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	var got []string
	for _, m := range msgs {
		evs := entryEvents(t, m)
		sizes = append(sizes, len(evs))
		for _, ev := range evs {
			got = append(got, ev.ID)
		}
		if len(evs) > 1 && len(m.Values[wire.EventsField].(string)) > 300 {
			t.Errorf("a packed entry of %d bytes, above MaxEventBytes", len(m.Values[wire.EventsField].(string)))
		}
	}
	if !slices.Equal(got, ids[:7]) {
		t.Errorf("acme's events %v, want in order %v", got, ids[:7])
	}
	if slices.Max(sizes) > 3 || len(sizes) < 3 {
		t.Errorf("entries of %v events, want at most 3 each", sizes)
	}
	lone, err := c.XRange(ctx, names.IngressStream("invalidate", wire.Partition(other, 2)), "-", "+").Result()
	if err != nil || len(lone) != 1 || lone[0].Values[wire.EventField] == nil {
		t.Errorf("the lone event's partition holds %v (%v), want one entry with the field event", lone, err)
	}
	if _, err := publisher.New(c, publisher.Options{MaxPacked: wire.MaxPacked + 1}); err == nil {
		t.Error("MaxPacked above wire.MaxPacked accepted")
	}
}

func TestPublishToTenantPartition(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	now := time.UnixMilli(1764000000123)
	p, err := publisher.New(c, publisher.Options{Origin: "profile-svc", Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	// No partition count in Redis yet: the default 8.
	id, err := p.Publish(ctx, publisher.Event{Tenant: "acme", Domain: "user", Entity: "1042", Keys: []string{"user:1042"}})
	if err != nil {
		t.Fatal(err)
	}
	got := entries(t, c, names.IngressStream("invalidate", wire.Partition("acme", 8)))
	if len(got) != 1 || got[0].ID != id || got[0].TS != now.UnixMilli() || got[0].Origin != "profile-svc" || got[0].Keys[0] != "user:1042" {
		t.Fatalf("entries %+v (id %s)", got, id)
	}
	if len(id) != 28 || !strings.HasPrefix(id, "019ab697e87b") {
		t.Errorf("id %q is not 12 hex digits of time and 16 of randomness", id)
	}
}

func TestPartitionCountFromRedis(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	if err := c.Set(ctx, names.PartitionsKey("inv"), 3, 0).Err(); err != nil {
		t.Fatal(err)
	}
	p, err := publisher.New(c, publisher.Options{Prefix: "inv"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, publisher.Event{Tenant: "acme", Domain: "user", WholeTag: true}); err != nil {
		t.Fatal(err)
	}
	if n := len(entries(t, c, names.IngressStream("inv", wire.Partition("acme", 3)))); n != 1 {
		t.Errorf("%d entries in the 3-partition stream", n)
	}
	// A key that holds no count is treated like a missing one: the count
	// known before, or the default when none, with a warning naming the key.
	for _, bad := range []func() error{
		func() error { return c.Set(ctx, names.PartitionsKey("inv"), "many", 0).Err() },
		func() error { return c.Set(ctx, names.PartitionsKey("inv"), 0, 0).Err() },
		func() error { return c.Set(ctx, names.PartitionsKey("inv"), 100000, 0).Err() },
		func() error {
			c.Del(ctx, names.PartitionsKey("inv"))
			return c.HSet(ctx, names.PartitionsKey("inv"), "n", 3).Err()
		},
	} {
		if err := bad(); err != nil {
			t.Fatal(err)
		}
		var log bytes.Buffer
		p2, _ := publisher.New(c, publisher.Options{Prefix: "inv", Logger: slog.New(slog.NewTextHandler(&log, nil))})
		before := len(entries(t, c, names.IngressStream("inv", wire.Partition("acme", wire.DefaultPartitions))))
		if _, err := p2.Publish(ctx, publisher.Event{Tenant: "acme", Domain: "user", WholeTag: true}); err != nil {
			t.Errorf("a partition count key that holds no count refuses the event: %v", err)
		}
		if n := len(entries(t, c, names.IngressStream("inv", wire.Partition("acme", wire.DefaultPartitions)))); n != before+1 {
			t.Errorf("%d entries in the default partition's stream, want %d", n, before+1)
		}
		if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), names.PartitionsKey("inv")) {
			t.Errorf("no warning naming the key: %q", log.String())
		}
		c.Del(ctx, names.PartitionsKey("inv"))
	}
}

func TestPublishBatchValidatesFirst(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	p, _ := publisher.New(c, publisher.Options{Partitions: 1})
	_, err := p.PublishBatch(ctx, []publisher.Event{
		{Tenant: "acme", Domain: "user", WholeTag: true},
		{Tenant: "acme", Domain: "user", Keys: []string{"bad key"}},
	})
	if err == nil || !strings.Contains(err.Error(), "event 1") || !strings.Contains(err.Error(), "keys[0]") {
		t.Fatalf("err = %v, want one naming event 1 and keys[0]", err)
	}
	if n := c.Exists(ctx, names.IngressStream("invalidate", 0)).Val(); n != 0 {
		t.Error("something was sent though an event was invalid")
	}
	ids, err := p.PublishBatch(ctx, []publisher.Event{{Tenant: "acme", Domain: "user", WholeTag: true}, {Tenant: "globex", Domain: "user", Keys: []string{"user:1"}}})
	if err != nil || len(ids) != 2 || ids[0] == ids[1] {
		t.Fatalf("PublishBatch = %v, %v", ids, err)
	}
	if n := len(entries(t, c, names.IngressStream("invalidate", 0))); n != 2 {
		t.Errorf("%d entries, want 2", n)
	}
}

func TestPublishCarriesTraceContext(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	p, _ := publisher.New(c, publisher.Options{Partitions: 1})
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5, 6}, TraceFlags: trace.FlagsSampled,
	})
	if _, err := p.Publish(trace.ContextWithSpanContext(ctx, sc), publisher.Event{Tenant: "acme", Domain: "user", WholeTag: true}); err != nil {
		t.Fatal(err)
	}
	got := entries(t, c, names.IngressStream("invalidate", 0))
	want := "00-01020300000000000000000000000000-0405060000000000-01"
	if got[0].Traceparent != want {
		t.Errorf("traceparent %q, want %q", got[0].Traceparent, want)
	}
}

func TestInvalidEventSendsNothing(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never reached
	defer c.Close()
	p, _ := publisher.New(c, publisher.Options{Partitions: 1})
	for _, ev := range []publisher.Event{{Domain: "user", WholeTag: true}, {Tenant: "acme", WholeTag: true}, {Tenant: "a b", Domain: "user", WholeTag: true},
		{Tenant: "acme", Domain: "user"}, {Tenant: "acme", Domain: "user", Keys: []string{}}, {Tenant: "acme", Domain: "user", Keys: []string{"a"}, WholeTag: true}} {
		if _, err := p.Publish(context.Background(), ev); err == nil || !strings.Contains(err.Error(), "publisher:") {
			t.Errorf("Publish(%+v) = %v", ev, err)
		}
	}
}

// A whole-tag event is published only when the caller says so: an event
// whose key list came out empty (nil or not) is refused, naming keys.
func TestWholeTagMustBeExplicit(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	p, _ := publisher.New(c, publisher.Options{Partitions: 1})
	var computed []string
	for _, keys := range [][]string{nil, computed, {}} {
		_, err := p.Publish(ctx, publisher.Event{Tenant: "acme", Domain: "user", Keys: keys})
		if err == nil || !strings.Contains(err.Error(), "keys: none given; set WholeTag") {
			t.Errorf("Publish with keys %#v = %v, want an error naming keys", keys, err)
		}
	}
	if n := c.Exists(ctx, names.IngressStream("invalidate", 0)).Val(); n != 0 {
		t.Fatal("an event without keys was sent")
	}
	if _, err := p.Publish(ctx, publisher.Event{Tenant: "acme", Domain: "user", WholeTag: true}); err != nil {
		t.Fatal(err)
	}
	raw, err := c.XRange(ctx, names.IngressStream("invalidate", 0), "-", "+").Result()
	if err != nil || len(raw) != 1 {
		t.Fatalf("entries %v, %v", raw, err)
	}
	ev, err := wire.ParseEvent([]byte(raw[0].Values[wire.EventField].(string)))
	if err != nil || !ev.WholeTag || strings.Contains(raw[0].Values[wire.EventField].(string), "keys") {
		t.Errorf("published %v: %+v, %v; want a whole-tag event without keys", raw[0].Values, ev, err)
	}
}

// An event the router would refuse for its size is not sent.
func TestOversizedEventRefused(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never reached
	defer c.Close()
	p, _ := publisher.New(c, publisher.Options{Partitions: 1})
	keys := make([]string, 3000)
	for i := range keys {
		keys[i] = fmt.Sprintf("%0400d", i)
	}
	_, err := p.Publish(context.Background(), publisher.Event{Tenant: "acme", Domain: "user", Keys: keys})
	if err == nil || !strings.Contains(err.Error(), "above the limit of 1048576 bytes") {
		t.Errorf("Publish of a 1.2 MB event = %v", err)
	}
}

func TestOptionsValidated(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for _, opt := range []publisher.Options{{Prefix: "a b"}, {Partitions: -1}, {Partitions: 2000}, {Refresh: -time.Second}} {
		if _, err := publisher.New(c, opt); err == nil {
			t.Errorf("New(%+v) accepted", opt)
		}
	}
}

// With a publisher name, events go to that publisher's own partition streams
// (and only there); a bad name is refused at construction.
func TestPublishToOwnStreams(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	if err := c.Set(ctx, names.PartitionsKey("invalidate"), 4, 0).Err(); err != nil {
		t.Fatal(err)
	}
	p, err := publisher.New(c, publisher.Options{Publisher: "profile-svc"})
	if err != nil {
		t.Fatal(err)
	}
	id, err := p.Publish(ctx, publisher.Event{Tenant: "acme", Domain: "user", WholeTag: true})
	if err != nil {
		t.Fatal(err)
	}
	own := names.PublisherStream("invalidate", "profile-svc", wire.Partition("acme", 4))
	if got := entries(t, c, own); len(got) != 1 || got[0].ID != id {
		t.Fatalf("%s holds %+v, want event %s", own, got, id)
	}
	if n := c.Exists(ctx, names.IngressStream("invalidate", wire.Partition("acme", 4))).Val(); n != 0 {
		t.Errorf("the shared ingress was written too")
	}
	for _, bad := range []string{"a b", "x{1}", "*", ":x"} {
		if _, err := publisher.New(c, publisher.Options{Publisher: bad}); err == nil || !strings.Contains(err.Error(), "publisher name") {
			t.Errorf("Publisher %q: err %v, want a refusal naming the publisher name", bad, err)
		}
	}
}

// A publish that fails after validation returns the ids it gave the events
// with the error: the XADD may have been appended though its reply was
// lost, and only a retry with the same ids is harmless
// (TestAttack8PubRetryAfterALostReplyInvalidatesOnce has the lost reply).
func TestFailedPublishReturnsTheIDs(t *testing.T) {
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: redistest.RefusedAddr(t), MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	p, err := publisher.New(c, publisher.Options{Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	ev := publisher.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
	if id, err := p.Publish(ctx, ev); err == nil || id == "" {
		t.Errorf("Publish to a server that is not there: id %q, error %v; want an id and an error", id, err)
	}
	ids, err := p.PublishBatch(ctx, []publisher.Event{ev, ev})
	if err == nil || len(ids) != 2 || ids[0] == "" || ids[0] == ids[1] {
		t.Errorf("PublishBatch to a server that is not there: ids %q, error %v; want the two ids and an error", ids, err)
	}
}

// attack: every option a service team can get wrong is refused by New with
// an error naming the option, not accepted and then failing each Publish
// (an Origin that is not printable ASCII was: every event got it stamped,
// and each Publish failed on an "origin" the caller never set).
func TestAttack8PubBadOptionsNamedAtNew(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for _, tc := range []struct {
		opt  publisher.Options
		name string
	}{
		{publisher.Options{Prefix: "a b"}, "prefix"},
		{publisher.Options{Partitions: -1}, "partitions"},
		{publisher.Options{Refresh: -time.Second}, "refresh"},
		{publisher.Options{Publisher: "profile svc"}, "publisher"},
		{publisher.Options{Origin: "profile-svc\n"}, "origin"},
		{publisher.Options{Origin: "profil\xe9-svc"}, "origin"},
		{publisher.Options{Origin: strings.Repeat("o", wire.MaxIDLen+1)}, "origin"},
		{publisher.Options{WaitTimeout: -time.Second}, "waittimeout"},
		{publisher.Options{MaxEventBytes: -1}, "maxeventbytes"},
		{publisher.Options{MaxPacked: -1}, "maxpacked"},
	} {
		_, err := publisher.New(c, tc.opt)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), tc.name) {
			t.Errorf("New with a bad %s: %v, want an error naming it", tc.name, err)
		}
	}
}

// attack: a service retries a failed Publish "unless the event is bad"; it
// can tell only if every refusal of the event itself wraps ErrMalformed
// (retrying cannot help), and no failure to write does.
// An event above MaxEventBytes did not, and was retried for ever.
func TestAttack8PubRefusalsTellRetryFromBadEvent(t *testing.T) {
	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: redistest.RefusedAddr(t), MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	p, err := publisher.New(c, publisher.Options{Partitions: 4, MaxEventBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	good := publisher.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
	for i, bad := range []publisher.Event{
		{Tenant: "ac:me", Domain: "user", WholeTag: true},
		{Tenant: "acme", Domain: "user"},
		{ID: "a/b", Tenant: "acme", Domain: "user", WholeTag: true},
		{Tenant: "acme", Domain: "user", Keys: []string{strings.Repeat("k", 500), strings.Repeat("k", 500)}},
	} {
		_, err := p.Publish(ctx, bad)
		_, berr := p.PublishBatch(ctx, []publisher.Event{good, bad})
		for _, err := range []error{err, berr} {
			if !errors.Is(err, publisher.ErrMalformed) {
				t.Errorf("the refusal of bad event %d: %.200v, want it to wrap ErrMalformed", i, err)
			}
		}
	}
	if _, err := p.Publish(ctx, good); err == nil || errors.Is(err, publisher.ErrMalformed) {
		t.Errorf("a failed write: %v, want an error that does not wrap ErrMalformed", err)
	}
}
