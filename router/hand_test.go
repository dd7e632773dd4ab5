package router

import (
	"testing"
	"time"
)

// What is in hand counts from when it was taken until it is dropped, per
// stream; the zero time stands for entries of unknown age, in hand for
// any duration.
func TestHandHeldFor(t *testing.T) {
	var h hand
	if h.heldFor("s", 0) {
		t.Error("an empty hand holds something")
	}
	young := h.take("s", time.Now())
	old := h.take("s", time.Now().Add(-time.Minute))
	if !h.heldFor("s", time.Second) || h.heldFor("other", 0) {
		t.Error("a read a minute old is not held for a second on its stream, or is on another")
	}
	h.drop("s", old, 0)
	if h.heldFor("s", time.Second) || !h.heldFor("s", 0) {
		t.Error("after the old read is dropped, the young one should be all that is held")
	}
	pass := h.take("s", time.Time{})
	if !h.heldFor("s", time.Hour) {
		t.Error("entries of unknown age are not held for an hour")
	}
	h.drop("s", young, pass)
	if h.heldFor("s", 0) {
		t.Error("everything dropped, something still held")
	}
}
