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

func TestLimiterUpdates(t *testing.T) {
	l := Limiter(nil, 5, 10)
	if l.Limit() != 5 || l.Burst() != 10 {
		t.Fatal("new limiter")
	}
	if Limiter(l, 7, 3) != l || l.Limit() != 7 || l.Burst() != 3 {
		t.Error("limiter not updated in place")
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
