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
