package router

import (
	"context"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/wire"
)

// sink records what the coalescer publishes, in place of the router.
type sink struct {
	mtx   *matrix.Matrix
	mu    sync.Mutex
	out   [][]*outgoing
	force []bool
	// during, when set, runs inside publishMerged (the send in flight).
	during func(out []*outgoing)
}

func (s *sink) Matrix() *matrix.Matrix { return s.mtx }

func (s *sink) publishMerged(out []*outgoing, force bool) {
	if s.during != nil {
		s.during(out)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out = append(s.out, out)
	s.force = append(s.force, force)
}

func (s *sink) published() [][]*outgoing {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.out)
}

// coalescerFor parses a matrix whose tag t allows one message (burst 1, 10
// a second), merges for window, and turns whole above 3 keys.
func coalescerFor(t *testing.T, window string) (*coalescer, *sink, matrix.Route) {
	t.Helper()
	m, err := matrix.Parse("m.yaml", []byte("version: 1\ntags:\n  t: {services: [s], rate: 10, burst: 1, max_keys: 3, coalesce: "+window+"}\ndomains:\n  user: {tags: [t]}\n  order: {tags: [t]}\nservices:\n  s: {tenants: all}\n"))
	if err != nil {
		t.Fatal(err)
	}
	routes, _ := m.Routes("acme", "user")
	s := &sink{mtx: m}
	return newCoalescer(s, newMetrics(nil)), s, routes[0]
}

// oneEvent is the sealed message of one event on rt.
func oneEvent(rt matrix.Route, id, domain string, ts int64, keys ...string) *outgoing {
	e := &entry{stream: "s", id: id + "-0"}
	e.events = e.one[:]
	e.events[0] = event{id: id, ev: &wire.Event{ID: id, Tenant: "acme", Domain: domain, Keys: keys, TS: ts}, routes: []matrix.Route{rt}}
	o := newOutgoing(rt, part{e: e, v: &e.events[0], id: id, keys: keys})
	o.seal()
	return o
}

// A message goes out at once while its channel holds nothing back; once a
// bucket refused one, the channel's events merge into one pending message
// that keeps every event, unites the keys, keeps the oldest timestamp and
// goes out whole-tag past max_keys.
func TestCoalescerMergesOverBudget(t *testing.T) {
	c, s, rt := coalescerFor(t, "1m")
	now := time.Now()
	if !c.admit(oneEvent(rt, "e1", "user", 100, "k1")) {
		t.Fatal("the first message, with nothing held, was not let through")
	}
	c.hold(now, oneEvent(rt, "e2", "user", 200, "k2"), time.Second) // refused by a bucket
	if o := oneEvent(rt, "e3", "order", 150, "k2", "k3"); c.admit(o) {
		t.Fatalf("%s let through past a held message", o.msg.Event)
	}
	if held := c.held(); !slices.Equal(held["s"], []string{"e2-0", "e3-0"}) {
		t.Errorf("held %v", held)
	}
	c.flush(false) // the window has a minute to run
	if len(s.published()) != 0 {
		t.Fatalf("published before its window: %v", s.published())
	}
	c.flush(true)
	got := s.published()
	if len(got) != 1 || len(got[0]) != 1 || !s.force[0] {
		t.Fatalf("flush published %v (force %v)", got, s.force)
	}
	o := got[0][0]
	if !slices.Equal(o.msg.Keys, []string{"k2", "k3"}) || !slices.Equal(o.ids, []string{"e2", "e3"}) ||
		len(o.parts) != 2 || o.msg.TS != 150 || o.msg.Domain != "" || o.msg.Event != "e2" {
		t.Errorf("merged message %+v, ids %v", o.msg, o.ids)
	}
	if len(c.held()) != 0 {
		t.Errorf("still held after the flush: %v", c.held())
	}

	// Past max_keys the pending work splits into another key-level message.
	c.hold(now, oneEvent(rt, "w0", "user", 1, "a", "b"), time.Second)
	if c.admit(oneEvent(rt, "w1", "user", 1, "c", "d")) {
		t.Fatal("let through past a held message")
	}
	c.flush(true)
	got = s.published()
	if len(got) != 2 || len(got[1]) != 2 || !slices.Equal(got[1][0].msg.Keys, []string{"a", "b"}) || !slices.Equal(got[1][1].msg.Keys, []string{"c", "d"}) ||
		!slices.Equal(got[1][1].ids, []string{"w1"}) || got[1][1].whole != "" {
		t.Errorf("over max_keys: %v", got[len(got)-1])
	}
}

// Pending work stays key-level while the channel's budget can carry it: a
// refused message and those the window adds may wait for the bucket's next
// token (rate 10/s, coalesce 100ms: 1 + 1 refused, 2 + burst 1 pending). Past
// that the pending work collapses into one whole-tag message, over_budget,
// which records every event and takes what follows.
func TestCoalescerWholeOnlyOverBudget(t *testing.T) {
	c, s, rt := coalescerFor(t, "100ms")
	now := time.Now()
	c.hold(now, oneEvent(rt, "e1", "user", 1, "a", "b", "c"), time.Second)
	c.hold(now, oneEvent(rt, "e2", "user", 1, "d"), time.Second)
	if c.admit(oneEvent(rt, "e3", "user", 1, "e", "f", "g")) {
		t.Fatal("let through past held work")
	}
	c.flush(true)
	got := s.published()
	if len(got) != 1 || len(got[0]) != 3 {
		t.Fatalf("within the budget: %v, want three key-level messages", got)
	}
	for i, keys := range [][]string{{"a", "b", "c"}, {"d"}, {"e", "f", "g"}} {
		if o := got[0][i]; !slices.Equal(o.msg.Keys, keys) || o.whole != "" {
			t.Errorf("message %d: %+v (whole %q), want keys %v", i, o.msg, o.whole, keys)
		}
	}

	// A third refused message: more than the bucket refills in the window.
	c.hold(now, oneEvent(rt, "e1", "user", 1, "a", "b", "c"), time.Second)
	c.hold(now, oneEvent(rt, "e2", "user", 1, "d", "e"), time.Second)
	c.hold(now, oneEvent(rt, "e3", "user", 1, "f", "g"), time.Second)
	c.admit(oneEvent(rt, "e4", "user", 1, "h"))
	c.flush(true)
	got = s.published()
	if len(got) != 2 || len(got[1]) != 1 {
		t.Fatalf("over the budget: %v, want one message", got[1:])
	}
	if o := got[1][0]; !o.msg.WholeTag() || o.whole != WholeOverBudget || !slices.Equal(o.ids, []string{"e1", "e2", "e3", "e4"}) {
		t.Errorf("over the budget: %+v (whole %q) ids %v, want the whole tag, over_budget, every event", o.msg, o.whole, o.ids)
	}

	// More pending at once than a full bucket and its refill could carry.
	c.hold(now, oneEvent(rt, "p0", "user", 1, "a", "b", "c"), time.Second)
	for i, k := range []string{"d", "g", "j"} {
		c.admit(oneEvent(rt, "p"+strconv.Itoa(i+1), "user", 1, k, k+"2", k+"3"))
	}
	c.flush(true)
	if got = s.published(); len(got[2]) != 1 || got[2][0].whole != WholeOverBudget {
		t.Errorf("four messages pending, three carried: %v", got[2])
	}
}

// A read batch's events for a channel split past max_keys into key-level
// messages, each recording its own events; an event naming more than
// max_keys keys is split into shares with ids of their key ranges; an event
// naming no keys makes the channel's messages one whole-tag message.
func TestPlaceSplitsPastMaxKeys(t *testing.T) {
	_, _, rt := coalescerFor(t, "1m") // max_keys 3
	var msgs []*outgoing
	for i := range 7 {
		o := oneEvent(rt, "e"+strconv.Itoa(i), "user", 1, "k"+strconv.Itoa(i))
		msgs = place(msgs, rt, o.parts[0], maxMergedIDs)
	}
	if len(msgs) != 3 {
		t.Fatalf("7 single-key events at max_keys 3: %d messages, want 3", len(msgs))
	}
	for i, want := range [][]string{{"k0", "k1", "k2"}, {"k3", "k4", "k5"}, {"k6"}} {
		msgs[i].seal()
		ids := make([]string, len(want))
		for j, k := range want {
			ids[j] = "e" + k[1:]
		}
		if !slices.Equal(msgs[i].msg.Keys, want) || !slices.Equal(msgs[i].ids, ids) || msgs[i].whole != "" {
			t.Errorf("message %d: keys %v ids %v whole %q, want %v %v", i, msgs[i].msg.Keys, msgs[i].ids, msgs[i].whole, want, ids)
		}
	}
	// A key already in the last message merges into it.
	if again := place(msgs, rt, oneEvent(rt, "r", "user", 1, "k6").parts[0], maxMergedIDs); len(again) != 3 {
		t.Errorf("a repeated key opened message %d", len(again))
	}

	big := oneEvent(rt, "big", "user", 1, "a", "b", "c", "d", "e", "f", "g")
	shares := keyShares(big.parts[0].e, big.parts[0].v, rt)
	var got [][]string
	var ids []string
	for _, p := range shares {
		got, ids = append(got, p.keys), append(ids, p.id)
	}
	if !reflect.DeepEqual(got, [][]string{{"a", "b", "c"}, {"d", "e", "f"}, {"g"}}) ||
		!slices.Equal(ids, []string{"big#keys:0-3", "big#keys:3-6", "big#keys:6-7"}) || sharesOf(big.parts[0].v, rt) != 3 {
		t.Errorf("shares of 7 keys at max_keys 3: %v %v", got, ids)
	}

	// Where every event must be recorded (a read batch), the whole tag
	// takes only the last messages that stay within the bound.
	var capped []*outgoing
	for i := range 7 {
		capped = place(capped, rt, oneEvent(rt, "c"+strconv.Itoa(i), "user", 1, "k"+strconv.Itoa(i)).parts[0], 4)
	}
	capped = place(capped, rt, oneEvent(rt, "w", "user", 1).parts[0], 4)
	if len(capped) != 3 || capped[1].isWhole() || !capped[2].isWhole() || len(capped[2].parts) != 2 {
		t.Errorf("a whole-tag event with at most 4 events a message: %d messages", len(capped))
	}
	capped = place(capped, rt, oneEvent(rt, "w2", "user", 1).parts[0], 2)
	if len(capped) != 4 || !capped[3].isWhole() || len(capped[3].parts) != 1 || capped[3].whole != WholeNoKeys {
		t.Errorf("a whole-tag event after a full message: %d messages", len(capped))
	}

	whole := oneEvent(rt, "w", "user", 1)
	msgs = place(msgs, rt, whole.parts[0], maxMergedIDs)
	msgs[0].seal()
	if len(msgs) != 1 || !msgs[0].msg.WholeTag() || msgs[0].whole != WholeNoKeys || len(msgs[0].ids) != 9 {
		t.Errorf("after a whole-tag event: %d messages, %+v whole %q ids %v", len(msgs), msgs[0].msg, msgs[0].whole, msgs[0].ids)
	}
}

// run publishes a pending message once its window and the wait a bucket
// gave have passed, and everything still pending when it stops.
func TestCoalescerRun(t *testing.T) {
	c, s, rt := coalescerFor(t, "10ms")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.run(ctx); close(done) }()
	now := time.Now()
	c.hold(now, oneEvent(rt, "e2", "user", 1, "e2"), time.Millisecond)
	redistest.Eventually(t, 10*time.Second, "the merged message published", func() bool { return len(s.published()) == 1 })
	if o := s.published()[0][0]; !slices.Equal(o.ids, []string{"e2"}) {
		t.Errorf("published %v", o.ids)
	}

	// Stopping publishes what is still pending, window or not.
	c2, s2, rt2 := coalescerFor(t, "1m")
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan struct{})
	go func() { c2.run(ctx2); close(done2) }()
	c2.hold(now, oneEvent(rt2, "e2", "user", 1, "e2"), time.Millisecond)
	cancel2()
	<-done2
	if got := s2.published(); len(got) != 1 || !slices.Equal(got[0][0].ids, []string{"e2"}) || !s2.force[0] {
		t.Errorf("on stop published %v", got)
	}
	cancel()
	<-done
}

// A message split by the publish script's flags keeps the parts not recorded
// (and those past the recorded ids), with their keys only; nothing is left
// when every part was recorded.
func TestOutgoingWithout(t *testing.T) {
	_, _, rt := coalescerFor(t, "1m")
	rt.Limits.MaxKeys = 10
	o := oneEvent(rt, "e1", "user", 5, "k1")
	for _, x := range []*outgoing{oneEvent(rt, "e2", "user", 3, "k2", "k1"), oneEvent(rt, "e3", "order", 4, "k3")} {
		o.merge(x.parts...)
	}
	o.seal()
	if !slices.Equal(o.msg.Keys, []string{"k1", "k2", "k3"}) || !slices.Equal(o.ids, []string{"e1", "e2", "e3"}) || o.msg.TS != 3 || o.msg.Domain != "" {
		t.Fatalf("merged %+v, ids %v", o.msg, o.ids)
	}
	rest, old := o.without([]bool{true, false, true})
	if len(old) != 2 || old[0].v.id != "e1" || old[1].v.id != "e3" {
		t.Errorf("recorded parts %v", old)
	}
	if rest == nil || !slices.Equal(rest.msg.Keys, []string{"k2", "k1"}) || !slices.Equal(rest.ids, []string{"e2"}) || rest.msg.Event != "e2" || rest.msg.TS != 3 || rest.msg.Domain != "user" {
		t.Fatalf("the rest %+v", rest)
	}
	// Parts past the flags (ids not recorded by the message) stay.
	rest, _ = o.without([]bool{true, true})
	if rest == nil || !slices.Equal(rest.ids, []string{"e3"}) || !slices.Equal(rest.msg.Keys, []string{"k3"}) {
		t.Errorf("past the flags: %+v", rest)
	}
	if rest, old := o.without([]bool{true, true, true}); rest != nil || len(old) != 3 {
		t.Errorf("all recorded: rest %+v, %d recorded", rest, len(old))
	}
}

// On a domain with entity_refs every event but a whole-tag one names refs:
// the entity's, or the domain's type level; one without keys drops the
// plain values too. Merged, a channel's events unite keys and refs, and
// are whole only when one of them is or above max_keys.
func TestMergeUnitesRefs(t *testing.T) {
	m, err := matrix.Parse("m.yaml", []byte("version: 1\ntags:\n  t: {services: [s], max_keys: 3}\ndomains:\n  user: {tags: [t], entity_refs: true}\nservices:\n  s: {tenants: all}\n"))
	if err != nil {
		t.Fatal(err)
	}
	routes, _ := m.Routes("acme", "user")
	rt := routes[0]
	partOf := func(ev wire.Event) part {
		e := &entry{stream: "s", id: "1-0"}
		e.events = e.one[:]
		e.events[0] = event{id: ev.Entity + strings.Join(ev.Keys, ","), ev: &ev, routes: routes}
		return newPart(e, &e.events[0], rt, ev.Keys)
	}
	entity := partOf(wire.Event{Tenant: "acme", Domain: "user", Entity: "1"})
	both := partOf(wire.Event{Tenant: "acme", Domain: "user", Entity: "5", Keys: []string{"user:5"}})
	keys := partOf(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:9"}})
	whole := partOf(wire.Event{Tenant: "acme", Domain: "user", Entity: "1", WholeTag: true})
	for _, c := range []struct {
		p     part
		refs  []string
		plain bool
	}{{entity, []string{"user/1"}, true}, {both, []string{"user/5"}, false}, {keys, []string{"user"}, false}, {whole, nil, false}} {
		if !reflect.DeepEqual(c.p.refs, c.refs) || c.p.plain != c.plain {
			t.Errorf("part of %+v: refs %v plain %v; want %v %v", c.p.v.ev, c.p.refs, c.p.plain, c.refs, c.plain)
		}
	}
	o := newOutgoing(rt, entity)
	o.merge(both, keys)
	o.seal()
	if !reflect.DeepEqual(o.msg.Keys, []string{"user:5", "user:9"}) || !reflect.DeepEqual(o.msg.Refs, []string{"user/1", "user/5", "user"}) || !o.msg.Plain {
		t.Errorf("merged message %+v, want both keys, the three refs and plain", o.msg)
	}
	o = newOutgoing(rt, entity)
	o.merge(whole)
	o.seal()
	if !o.msg.WholeTag() || o.msg.Plain {
		t.Errorf("merged with a whole tag: %+v, want the whole tag", o.msg)
	}
	var msgs []*outgoing
	for _, p := range []part{entity, partOf(wire.Event{Tenant: "acme", Domain: "user", Entity: "2"}), partOf(wire.Event{Tenant: "acme", Domain: "user", Entity: "3"}),
		partOf(wire.Event{Tenant: "acme", Domain: "user", Entity: "4"})} {
		msgs = place(msgs, rt, p, maxMergedIDs)
	}
	if len(msgs) != 2 || msgs[0].isWhole() || msgs[1].isWhole() {
		t.Errorf("four refs above max_keys 3: %d messages, want two entity-level ones", len(msgs))
	}
}

// A message admitted while its channel's pending work is being sent waits
// behind it: what the buckets refuse of that work comes back first, and the
// channel's messages keep their order.
func TestCoalescerKeepsOrderBehindASend(t *testing.T) {
	c, s, rt := coalescerFor(t, "10ms")
	now := time.Now()
	c.hold(now, oneEvent(rt, "e1", "user", 1, "a", "b", "c"), time.Millisecond)
	s.during = func(out []*outgoing) {
		s.during = nil
		if c.admit(oneEvent(rt, "e2", "user", 1, "d")) {
			t.Error("a message let through while its channel's work was being sent")
		}
		c.hold(time.Now(), out[0], time.Millisecond) // the bucket refused it
	}
	c.flush(true)
	got := s.published()
	if len(got) != 2 || len(got[1]) != 2 {
		t.Fatalf("published %v, want the refused work, then it and the message behind it", got)
	}
	if !slices.Equal(got[1][0].ids, []string{"e1"}) || !slices.Equal(got[1][1].ids, []string{"e2"}) {
		t.Errorf("second send %v then %v, want e1 then e2", got[1][0].ids, got[1][1].ids)
	}
	if len(c.held()) != 0 {
		t.Errorf("still held: %v", c.held())
	}
}

// keyShares returns every part of an event on rt (keyShare).
func keyShares(e *entry, v *event, rt matrix.Route) []part {
	out := make([]part, sharesOf(v, rt))
	for i := range out {
		out[i] = keyShare(e, v, rt, i)
	}
	return out
}
