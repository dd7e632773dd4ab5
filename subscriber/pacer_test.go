package subscriber

import (
	"testing"
	"time"
)

// A run of failures waits longer each time up to the limit, and warns on the
// first one only (then at most every 30s), however fast they come.
func TestPacer(t *testing.T) {
	p := pacer{first: 100 * time.Millisecond, limit: 5 * time.Second}
	var waits []time.Duration
	warnings := 0
	for range 100 {
		wait, warn := p.failed()
		waits = append(waits, wait)
		if warn {
			warnings++
		}
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i, w := range want {
		if waits[i] != w*time.Millisecond {
			t.Errorf("wait %d = %v, want %v", i+1, waits[i], w*time.Millisecond)
		}
	}
	if waits[99] != 5*time.Second {
		t.Errorf("wait 100 = %v, want the limit", waits[99])
	}
	if warnings != 1 {
		t.Errorf("%d warnings for 100 failures in a moment, want 1", warnings)
	}
	p.logged = p.logged.Add(-31 * time.Second)
	if _, warn := p.failed(); !warn {
		t.Error("no warning 31s after the last one")
	}
	p.failures = 0
	if wait, warn := p.failed(); wait != 100*time.Millisecond || !warn {
		t.Errorf("after a success: wait %v warn %v, want 100ms and a warning", wait, warn)
	}
}

// The applier takes the fresh channels in parts, and is woken again for
// the rest of them.
func TestFreshChannelsTakenInParts(t *testing.T) {
	f := newFreshChannels()
	f.confirmed("a", false)
	select {
	case <-f.ready:
		t.Fatal("woken before every added channel was confirmed")
	default:
	}
	f.confirmed("b", false)
	f.confirmed("c", true)
	<-f.ready
	if got := f.take(2); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("first part %v, want [a b]", got)
	}
	select {
	case <-f.ready:
	default:
		t.Fatal("not woken again for the rest")
	}
	if got := f.take(2); len(got) != 1 || got[0] != "c" {
		t.Fatalf("second part %v, want [c]", got)
	}
	if got := f.take(2); len(got) != 0 {
		t.Fatalf("third part %v, want none", got)
	}
}

// A tenant's channels are complete once its own are confirmed: another
// tenant's, added before and not confirmed yet (a flood of announcements
// keeps some waiting all the time), do not hold them back.
func TestConfirmedAddedByTenant(t *testing.T) {
	c := &conn{added: map[string]*int{}}
	c.markAdded([]string{"a:1", "a:2"})
	c.markAdded([]string{"b:1"})
	if added, all := c.confirmedAdded("b:1"); !added || !all {
		t.Errorf("b:1: added %v all %v, want both: b has no other channel", added, all)
	}
	if added, all := c.confirmedAdded("a:1"); !added || all {
		t.Errorf("a:1: added %v all %v, want added, not all", added, all)
	}
	if added, all := c.confirmedAdded("a:2"); !added || !all {
		t.Errorf("a:2: added %v all %v, want both", added, all)
	}
	if added, _ := c.confirmedAdded("a:2"); added {
		t.Error("a:2 confirmed twice")
	}
}
