package subscriber

import (
	"fmt"
	"testing"
)

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

// Channels confirmed while their connection keeps getting more (tenants
// announced one after the other) are checked once a check's worth is held,
// not only once the connection has none unconfirmed: that may not come
// until the connection is full, and they stay unchecked and held until then.
func TestFreshChannelsWakeAtACheckChunk(t *testing.T) {
	f := newFreshChannels()
	for i := range checkChunk - 1 {
		f.confirmed(fmt.Sprint("c", i), false)
	}
	select {
	case <-f.ready:
		t.Fatal("woken before a check's worth was held")
	default:
	}
	f.confirmed("last", false)
	select {
	case <-f.ready:
	default:
		t.Fatalf("%d channels held, none of them checked: the applier was not woken", checkChunk)
	}
	if got := f.take(checkChunk); len(got) != checkChunk {
		t.Fatalf("took %d, want %d", len(got), checkChunk)
	}
}

// A tenant's channels are complete once its own are confirmed: another
// tenant's, added before and not confirmed yet (a flood of announcements
// keeps some waiting all the time), do not hold them back.
func TestConfirmedAddedByTenant(t *testing.T) {
	c := &conn{added: map[string]*int{}}
	f := newFreshChannels()
	woken := func() bool {
		select {
		case <-f.ready:
			return true
		default:
			return false
		}
	}
	c.markAdded([]string{"a:1", "a:2"})
	c.markAdded([]string{"b:1"})
	if !c.confirmedAdded("b:1", f) || !woken() {
		t.Error("b:1 confirmed: not added, or the applier not woken (b has no other channel)")
	}
	if !c.confirmedAdded("a:1", f) || woken() {
		t.Error("a:1 confirmed: not added, or the applier woken before a:2")
	}
	if !c.confirmedAdded("a:2", f) || !woken() {
		t.Error("a:2 confirmed: not added, or the applier not woken")
	}
	if c.confirmedAdded("a:2", f) {
		t.Error("a:2 confirmed twice")
	}
	if got := f.take(10); len(got) != 3 {
		t.Errorf("held %v, want b:1, a:1 and a:2", got)
	}
}
