package storm

import (
	"reflect"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestKeysUnion(t *testing.T) {
	k := NewKeys(3)
	k.Add([]string{"a", "b"})
	k.Add([]string{"b", "c"})
	if k.Whole() || !reflect.DeepEqual(k.List(), []string{"a", "b", "c"}) {
		t.Fatalf("union = %v whole %v", k.List(), k.Whole())
	}
	k.Add([]string{"d"})
	if !k.Whole() || k.List() != nil {
		t.Errorf("above max: %v whole %v", k.List(), k.Whole())
	}
	k.Add([]string{"e"})
	if !k.Whole() {
		t.Error("whole stays whole")
	}
	w := NewKeys(10)
	w.Add([]string{"a"})
	w.Add(nil)
	if !w.Whole() {
		t.Error("an invalidation of the whole tag makes the union whole")
	}
}

// A union of keys, refs and plain stays what its parts name, and is the
// whole tag when a part is, or above either bound.
func TestUnion(t *testing.T) {
	u := NewUnion(2, 2)
	if !u.Whole() {
		t.Error("an empty union is not a message")
	}
	u.Add(nil, []string{"user/1"}, true)
	u.Add([]string{"user:5"}, []string{"user/5"}, false)
	u.Add([]string{"user:5"}, []string{"user/1"}, false)
	if u.Whole() || !reflect.DeepEqual(u.Keys(), []string{"user:5"}) || !reflect.DeepEqual(u.Refs(), []string{"user/1", "user/5"}) || !u.Plain() {
		t.Fatalf("union = keys %v refs %v plain %v whole %v", u.Keys(), u.Refs(), u.Plain(), u.Whole())
	}
	u.Add(nil, []string{"user/7"}, false)
	if !u.Whole() || u.Keys() != nil || u.Refs() != nil || u.Plain() {
		t.Errorf("above max refs: keys %v refs %v plain %v whole %v", u.Keys(), u.Refs(), u.Plain(), u.Whole())
	}
	k := NewUnion(2, 2)
	k.Add([]string{"a"}, nil, false)
	if k.Whole() || k.Refs() != nil || k.Plain() {
		t.Errorf("key-level union: refs %v plain %v whole %v", k.Refs(), k.Plain(), k.Whole())
	}
	k.Add(nil, nil, false)
	if !k.Whole() {
		t.Error("a whole-tag part does not make the union whole")
	}
	p := NewUnion(2, 2)
	p.Add([]string{"a"}, nil, true)
	if p.Plain() {
		t.Error("plain without refs counted")
	}
}

func TestReserveTakesAllOrNone(t *testing.T) {
	now := time.Now()
	ch := rate.NewLimiter(10, 2)
	tenant := rate.NewLimiter(1, 1)
	if d := Reserve(now, ch, nil, tenant); d != 0 {
		t.Fatalf("first reserve waits %v", d)
	}
	// The tenant is empty now: nothing is taken from the channel.
	d := Reserve(now, ch, tenant)
	if d <= 0 || d > time.Second {
		t.Fatalf("wait = %v, want up to 1s", d)
	}
	if got := ch.TokensAt(now); got < 0.99 {
		t.Errorf("channel tokens %v: a refused reservation took one", got)
	}
	if d := Reserve(now.Add(time.Second), ch, tenant); d != 0 {
		t.Errorf("after a refill: wait %v", d)
	}
}

func TestReserveWaitsExactly(t *testing.T) {
	now := time.Now()
	l := rate.NewLimiter(4, 1) // one token every 250ms
	if d := Reserve(now, l); d != 0 {
		t.Fatalf("first: %v", d)
	}
	d := Reserve(now.Add(100*time.Millisecond), l)
	if d < 149*time.Millisecond || d > 151*time.Millisecond {
		t.Fatalf("wait %v, want 150ms", d)
	}
	if d := Reserve(now.Add(100*time.Millisecond+d), l); d != 0 {
		t.Errorf("after the wait it still waits %v", d)
	}
	if n := testing.AllocsPerRun(100, func() { Reserve(now, l, l) }); n != 0 {
		t.Errorf("%v allocations per Reserve", n)
	}
}

// A merge splits past its bounds into unions within them, in order; an
// invalidation naming more than the bounds alone is a union of its own,
// never cut, so each invalidation adds at most one union; one of the whole
// tag makes the list one whole union.
func TestChunks(t *testing.T) {
	c := NewChunks(3, 2)
	c.Add([]string{"a", "b"}, nil, false)
	c.Add([]string{"b", "c"}, nil, false)
	c.Add([]string{"d"}, nil, false)
	c.Add([]string{"e", "f", "g", "h"}, []string{"user/1"}, true)
	c.Add([]string{"i"}, nil, false)
	var keys [][]string
	for _, u := range c.List() {
		if u.Whole() {
			t.Fatalf("a union of the split is whole: %v", u.Keys())
		}
		keys = append(keys, u.Keys())
	}
	want := [][]string{{"a", "b", "c"}, {"d"}, {"e", "f", "g", "h"}, {"i"}}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("chunks %v, want %v", keys, want)
	}
	if refs := c.List()[2].Refs(); !reflect.DeepEqual(refs, []string{"user/1"}) || !c.List()[2].Plain() {
		t.Errorf("the large one keeps its refs: %v plain %v", refs, c.List()[2].Plain())
	}
	c.Drop(2)
	if c.Len() != 2 || c.List()[0].Keys()[0] != "e" {
		t.Errorf("after Drop(2): %d unions", c.Len())
	}
	c.Add([]string{"j"}, nil, false)
	if c.Len() != 2 || !reflect.DeepEqual(c.List()[1].Keys(), []string{"i", "j"}) {
		t.Errorf("after Drop, the last union takes what fits: %d unions", c.Len())
	}
	c.Add(nil, nil, false)
	if c.Len() != 1 || !c.List()[0].Whole() {
		t.Errorf("a whole-tag invalidation: %d unions, whole %v", c.Len(), c.List()[0].Whole())
	}
	c.Add([]string{"z"}, nil, false)
	if c.Len() != 1 || !c.List()[0].Whole() {
		t.Error("the whole tag takes what follows")
	}
}

// What a budget carries key-level: the token it will have and what it
// refills during the window, and a full burst more at once.
func TestCarries(t *testing.T) {
	for _, c := range []struct {
		rate             float64
		burst            int
		window           time.Duration
		refused, pending int
	}{
		{100, 200, 20 * time.Millisecond, 3, 203},
		{1, 1, 20 * time.Millisecond, 1, 2},
		{10, 1, 100 * time.Millisecond, 2, 3},
		{0, 0, 0, 1, 2},
	} {
		if r, p := Carries(c.rate, c.burst, c.window); r != c.refused || p != c.pending {
			t.Errorf("Carries(%v, %d, %v) = %d, %d; want %d, %d", c.rate, c.burst, c.window, r, p, c.refused, c.pending)
		}
	}
}

// Fits: a union takes what keeps it within its bounds; a whole one takes anything.
func TestUnionFits(t *testing.T) {
	u := NewUnion(2, 1)
	u.Add([]string{"a"}, nil, false)
	for _, c := range []struct {
		keys, refs []string
		fits       bool
	}{
		{[]string{"a", "b"}, nil, true},
		{[]string{"b", "c"}, nil, false},
		{nil, []string{"user/1"}, true},
		{nil, []string{"user/1", "user/2"}, false},
	} {
		if got := u.Fits(c.keys, c.refs); got != c.fits {
			t.Errorf("Fits(%v, %v) = %v", c.keys, c.refs, got)
		}
	}
	u.SetWhole()
	if !u.Whole() || !u.Fits([]string{"x", "y", "z"}, nil) {
		t.Error("a whole union takes anything")
	}
}

// A union made with room for some keys unites and bounds them as any other.
func TestUnionSized(t *testing.T) {
	for _, room := range []int{-1, 0, 2, 3, 100} {
		u := NewUnionSized(3, 2, room)
		if !u.Whole() {
			t.Errorf("room %d: an empty union is not a message", room)
		}
		u.Add([]string{"a", "b"}, nil, false)
		u.Add([]string{"b", "c"}, nil, false)
		if u.Whole() || !reflect.DeepEqual(u.Keys(), []string{"a", "b", "c"}) || !u.Fits([]string{"a"}, nil) || u.Fits([]string{"d"}, nil) {
			t.Errorf("room %d: keys %v whole %v", room, u.Keys(), u.Whole())
		}
		u.Add([]string{"d"}, nil, false)
		if !u.Whole() || u.Keys() != nil {
			t.Errorf("room %d: above max: keys %v whole %v", room, u.Keys(), u.Whole())
		}
	}
}
