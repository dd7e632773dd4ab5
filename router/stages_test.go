package router

import (
	"errors"
	"testing"
)

// Reads grow while they come back full, up to 16 × BatchSize (4,096 at
// the default), and a short read goes back to BatchSize.
func TestReadsFollowTheBacklog(t *testing.T) {
	count, seen := 256, []int{256}
	for range 8 {
		count = nextCount(count, true, 256)
		seen = append(seen, count)
	}
	want := []int{256, 512, 1024, 2048, 4096, 4096, 4096, 4096, 4096}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("reads asked for %v while full, want %v", seen, want)
		}
	}
	if got := nextCount(4096, false, 256); got != 256 {
		t.Errorf("after a short read of 4,095: %d, want 256", got)
	}
}

// A batch read during a publish joins the one waiting only while the two
// hold at most maxJoined entries, and never a batch that failed.
func TestJoinedBatchesStayBounded(t *testing.T) {
	of := func(n int) *batch { return &batch{entries: make([]*entry, n)} }
	for _, c := range []struct {
		waiting, next int
		want          bool
	}{
		{4000, 96, true},
		{4000, 97, false},
		{1, 4096, false},
		{0, 4096, true},
		{2048, 2048, true},
	} {
		if got := joins(of(c.waiting), of(c.next), 4096); got != c.want {
			t.Errorf("%d waiting, %d read: joins %v, want %v", c.waiting, c.next, got, c.want)
		}
	}
	failed := of(10)
	failed.failed = errors.New("the bus refused")
	if joins(failed, of(10), 4096) {
		t.Error("a batch joined one that failed as a whole")
	}
}

// Reads through read.lua (the shared client, which go-redis retries when
// a connection fails) take at most 4 × BatchSize; reads on the stream's
// own connection up to 16 ×.
func TestScriptReadsStaySmaller(t *testing.T) {
	s := &streamReader{r: &Router{opt: Options{BatchSize: 256}}}
	if got := s.bound(4096); got != 4096 {
		t.Errorf("on the stream's own connection: %d, want 4096", got)
	}
	s.pause()
	if got := s.bound(4096); got != 1024 {
		t.Errorf("through the read script: %d, want 1024", got)
	}
	if got := s.bound(512); got != 512 {
		t.Errorf("through the read script, a read of 512: %d, want 512", got)
	}
}
