package router

import (
	"slices"
	"testing"
	"time"
)

// The view of the live routers keeps, for each, the registration that
// expires last (a reply read earlier but taken later hides nothing), picks
// one router of each other digest, and forgets the expired ones.
func TestPeers(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	reg := func(digest string, in time.Duration) string {
		return registration{digest: digest, expires: now.Add(in)}.value()
	}
	var p peers
	p.merge(map[string]string{"self": reg("A", time.Minute), "b1": reg("B", time.Minute), "b2": reg("B", 2*time.Minute), "a2": reg("A", time.Minute)})
	p.merge(map[string]string{"c": reg("C", time.Second), "b2": reg("B", time.Second), "junk": "no-expiry"})
	if got := p.others("self", "A", now); !slices.Equal(sorted(got), []string{"b2", "c"}) {
		t.Errorf("others = %v, want b2 (B, expiring last) and c", got)
	}
	if d := p.digestOf("c", now); d != "C" {
		t.Errorf("digestOf(c) = %q", d)
	}
	if n := p.digests("A", now); n != 3 {
		t.Errorf("digests = %d, want 3", n)
	}
	later := now.Add(90 * time.Second)
	if got := p.others("self", "A", later); !slices.Equal(got, []string{"b2"}) {
		t.Errorf("others after c and b1 expired = %v, want b2", got)
	}
	if d := p.digestOf("c", later); d != "" {
		t.Errorf("digestOf(c) after it expired = %q", d)
	}
	p.merge(map[string]string{"b2": registration{digest: stopped, expires: now.Add(3 * time.Minute)}.value()})
	if got := p.others("self", "A", later); len(got) != 0 || p.digestOf("b2", later) != "" || p.digests("A", later) != 1 {
		t.Errorf("others after b2 stopped = %v", got)
	}
	p.merge(map[string]string{"b2": reg("B", 2*time.Minute)}) // read before it stopped, taken in after
	if got := p.others("self", "A", later); len(got) != 0 {
		t.Errorf("others after an older registration of the stopped b2 = %v", got)
	}
	if got := p.others("self", "A", now.Add(time.Hour)); len(got) != 0 {
		t.Errorf("others when every registration expired = %v", got)
	}
}

func sorted(s []string) []string { slices.Sort(s); return s }

// A registration parses back to what was written; anything else is refused.
func FuzzParseRegistration(f *testing.F) {
	f.Add("ab12 1764000000123")
	f.Add("ab12")
	f.Add(" 12")
	f.Add("x -5")
	f.Fuzz(func(t *testing.T, s string) {
		g, ok := parseRegistration(s)
		if !ok {
			return
		}
		if g.digest == "" {
			t.Fatalf("%q accepted with no digest", s)
		}
		if again, ok := parseRegistration(g.value()); !ok || again != g {
			t.Fatalf("%q read as %+v, which writes %q", s, g, g.value())
		}
	})
}
