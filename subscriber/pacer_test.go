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
