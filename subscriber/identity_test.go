package subscriber

import (
	"slices"
	"testing"
)

// A master whose identity changed, or that is new (a cluster master that
// took over another's address, or was added), counts as changed; one that
// left does not.
func TestCacheIDsChanged(t *testing.T) {
	was := cacheIDs{"a:1": "run-a", "b:1": "run-b", "c:1": "run-c"}
	now := cacheIDs{"a:1": "run-a", "b:1": "run-b2", "d:1": "run-d"}
	got := was.changed(now)
	slices.Sort(got)
	want := []string{"b:1 run-b→run-b2", "d:1 none→run-d"}
	if !slices.Equal(got, want) {
		t.Errorf("changed = %q, want %q", got, want)
	}
	if c := now.changed(now); len(c) != 0 {
		t.Errorf("the same identities changed: %q", c)
	}
	if c := (cacheIDs{"a:1": "run"}).changed(cacheIDs{"a:1": "run+flushes=1"}); len(c) != 1 {
		t.Errorf("a flush since is not a change: %q", c)
	}
}
