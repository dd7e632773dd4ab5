package router

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

func message(channel, tag string, ids ...string) *outgoing {
	return &outgoing{route: matrix.Route{Channel: channel, Tag: tag, Limits: matrix.Limits{History: 1000}},
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
		calls := publishCalls(out, idx, cluster)
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
