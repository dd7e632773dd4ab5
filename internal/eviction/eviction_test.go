package eviction

import "testing"

func TestCacheProblem(t *testing.T) {
	for _, tc := range []struct {
		policy string
		refs   bool
		risky  bool
	}{
		{"noeviction", false, false},
		{"noeviction", true, false},
		{"volatile-lru", false, false},
		{"volatile-ttl", true, true},
		{"volatile-lfu", true, true},
		{"allkeys-lru", false, true},
		{"allkeys-random", true, true},
		{"", false, false},
	} {
		if got := CacheProblem(tc.policy, tc.refs) != ""; got != tc.risky {
			t.Errorf("CacheProblem(%q, refs=%v) risky = %v, want %v", tc.policy, tc.refs, got, tc.risky)
		}
	}
}
