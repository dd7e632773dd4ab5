package doctor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/tagsize"
)

// A growth file that is not one (edited, truncated, another tool's) is a
// warning naming it, never a crash; the file is left for the operator.
func FuzzGrowthFile(f *testing.F) {
	f.Add([]byte(`{"taken":"2026-12-06T10:00:00Z","sets":[{"key":"{tenant:acme}:tag:big","members":100}]}`))
	f.Add([]byte(`{"taken":"x"}`))
	f.Add([]byte(`[]`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "growth.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		sets := []tagsize.Set{{Key: "{tenant:acme}:tag:big", Members: 130}}
		got := growth(Options{GrowthFile: path, CardinalityGuard: 5000}, sets, time.Now())
		if got.Check != "growth" || got.Message == "" {
			t.Fatalf("finding %+v", got)
		}
		if got.Level == Warn && strings.Contains(got.Message, "is not a growth file") {
			if after, _ := os.ReadFile(path); string(after) != string(data) {
				t.Error("an unreadable growth file was overwritten")
			}
		}
	})
}

func TestGrowthReportsRate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "growth.json")
	opt := Options{GrowthFile: path, CardinalityGuard: 1000}
	start := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	if f := growth(opt, []tagsize.Set{{Key: "a", Members: 100}, {Key: "b", Members: 50}}, start); f.Level != OK || !strings.Contains(f.Message, "no earlier run") {
		t.Fatalf("first run: %+v", f)
	}
	f := growth(opt, []tagsize.Set{{Key: "a", Members: 300}, {Key: "b", Members: 50}, {Key: "c", Members: 10}}, start.Add(2*time.Hour))
	if f.Level != Warn || !strings.Contains(f.Message, "a +200 to 300 (+100/hour)") || !strings.Contains(f.Message, "a in 7.0 hours") || strings.Contains(f.Message, "b ") {
		t.Errorf("second run: %+v", f)
	}
}
