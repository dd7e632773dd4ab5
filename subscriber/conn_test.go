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
