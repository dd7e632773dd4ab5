package soak

import (
	"testing"
)

// The checker's judgement, on histories built by hand: what counts as
// stale and what does not.
func TestCheckerJudgesStaleness(t *testing.T) {
	profile := func(key string) entryKey { return entryKey{"profile-svc", "acme", key} }
	search := func(key string) entryKey { return entryKey{"search-svc", "acme", key} }
	type step struct {
		write  *entryKey // a write of this entry (start and end ticks around nothing)
		begin  *inval    // an invalidation's publish starts
		ack    *inval    // … and is acknowledged
		open   *entryKey // a write starts …
		closeW bool      // … and the open write ends
	}
	w := func(e entryKey) step { return step{write: &e} }
	cases := []struct {
		name  string
		steps func() ([]step, map[entryKey]int) // cached entry → index of the write whose value it holds (1-based among writes)
		lost  []string
		stale []entryKey
	}{
		{"written, then invalidated by key: stale if still cached", func() ([]step, map[entryKey]int) {
			in := &inval{id: "e1", tenant: "acme", domain: "user", keys: []string{"user:1"}, how: "publish"}
			return []step{w(profile("user:1")), {begin: in}, {ack: in}}, map[entryKey]int{profile("user:1"): 1}
		}, nil, []entryKey{profile("user:1")}},
		{"written again after the invalidation: not stale", func() ([]step, map[entryKey]int) {
			in := &inval{id: "e1", tenant: "acme", domain: "user", keys: []string{"user:1"}, how: "publish"}
			return []step{w(profile("user:1")), {begin: in}, {ack: in}, w(profile("user:1"))}, map[entryKey]int{profile("user:1"): 2}
		}, nil, nil},
		{"an old value back (restored snapshot) after a newer write: stale", func() ([]step, map[entryKey]int) {
			in := &inval{id: "e1", tenant: "acme", domain: "user", keys: []string{"user:1"}, how: "publish"}
			return []step{w(profile("user:1")), {begin: in}, {ack: in}, w(profile("user:1"))}, map[entryKey]int{profile("user:1"): 1}
		}, nil, []entryKey{profile("user:1")}},
		{"a write overlapping the publish: not stale", func() ([]step, map[entryKey]int) {
			in := &inval{id: "e1", tenant: "acme", domain: "user", keys: []string{"user:1"}, how: "publish"}
			e := profile("user:1")
			return []step{{open: &e}, {begin: in}, {closeW: true}, {ack: in}}, map[entryKey]int{e: 1}
		}, nil, nil},
		{"never acknowledged: not held", func() ([]step, map[entryKey]int) {
			in := &inval{id: "e1", tenant: "acme", domain: "user", keys: []string{"user:1"}, how: "publish"}
			return []step{w(profile("user:1")), {begin: in}}, map[entryKey]int{profile("user:1"): 1}
		}, nil, nil},
		{"flushed before any router read it: not held", func() ([]step, map[entryKey]int) {
			in := &inval{id: "e1", tenant: "acme", domain: "user", keys: []string{"user:1"}, how: "publish"}
			return []step{w(profile("user:1")), {begin: in}, {ack: in}}, map[entryKey]int{profile("user:1"): 1}
		}, []string{"e1"}, nil},
		{"whole tag active reaches product keys under active, not other tenants' or tags'", func() ([]step, map[entryKey]int) {
			in := &inval{id: "e1", tenant: "acme", domain: "user", how: "publish"} // user → active
			other := entryKey{"profile-svc", "globex", "user:1"}
			billing := entryKey{"billing-svc", "acme", "invoice:1"}
			return []step{w(profile("product:1")), w(search("product:2")), w(other), w(billing), {begin: in}, {ack: in}},
				map[entryKey]int{profile("product:1"): 1, search("product:2"): 2, other: 3, billing: 4}
		}, nil, []entryKey{profile("product:1"), search("product:2")}},
		{"key-level product event reaches the key in both services", func() ([]step, map[entryKey]int) {
			in := &inval{id: "e1", tenant: "acme", domain: "product", keys: []string{"product:3"}, how: "publish"}
			return []step{w(profile("product:3")), w(search("product:3")), {begin: in}, {ack: in}},
				map[entryKey]int{profile("product:3"): 1, search("product:3"): 2}
		}, nil, []entryKey{profile("product:3"), search("product:3")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRecorder()
			steps, cached := c.steps()
			var writes []*write
			var open *write
			for _, s := range steps {
				switch {
				case s.write != nil:
					wr := r.beginWrite(*s.write)
					r.endWrite(wr, nil)
					writes = append(writes, wr)
				case s.open != nil:
					open = r.beginWrite(*s.open)
					writes = append(writes, open)
				case s.closeW:
					r.endWrite(open, nil)
				case s.begin != nil:
					r.beginInval(s.begin)
				case s.ack != nil:
					r.acked(s.ack)
				}
			}
			r.lost(c.lost, nil)
			values := map[entryKey]string{}
			for e, i := range cached {
				values[e] = writes[i-1].value()
			}
			stale, unknown, _ := r.checker().stale(values)
			if len(unknown) > 0 {
				t.Fatalf("unknown values: %v", unknown)
			}
			var got []entryKey
			for _, s := range stale {
				got = append(got, s.e)
			}
			if len(got) != len(c.stale) {
				t.Fatalf("stale %v, want %v", got, c.stale)
			}
			for _, want := range c.stale {
				found := false
				for _, g := range got {
					found = found || g == want
				}
				if !found {
					t.Errorf("stale %v, want %v", got, c.stale)
				}
			}
		})
	}
}
