package cli

import (
	"strings"
	"testing"
	"time"
)

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"2026-12-06T10:00:00Z", time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)},
		{"90m", now.Add(-90 * time.Minute)},
		{"0s", now},
	} {
		got, err := parseSince(tc.in, now)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "yesterday", "-1h", "2026-12-06"} {
		if _, err := parseSince(bad, now); err == nil || !strings.Contains(err.Error(), "--since") {
			t.Errorf("parseSince(%q): %v, want an error naming --since", bad, err)
		}
	}
}

// parseSince never panics, and what it accepts is no later than now unless
// it is an explicit time.
func FuzzParseSince(f *testing.F) {
	f.Add("2026-12-06T10:00:00Z")
	f.Add("90m")
	f.Add("-5s")
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseSince(s, now)
		if err != nil {
			return
		}
		if _, perr := time.Parse(time.RFC3339, s); perr != nil && got.After(now) {
			t.Fatalf("parseSince(%q) = %v, after now", s, got)
		}
	})
}

func TestDeadletterUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"deadletter"}, 2, "Usage: routerd deadletter replay"},
		{[]string{"deadletter", "purge"}, 2, `unknown subcommand "purge"`},
		{[]string{"deadletter", "replay"}, 2, "--redis"},
		{[]string{"deadletter", "replay", "--redis", "redis://127.0.0.1:1", "--reason", "lost"}, 2, `--reason "lost": must be one of malformed, unknown_domain`},
		{[]string{"deadletter", "replay", "--redis", "redis://127.0.0.1:1", "--since", "soon"}, 2, `--since "soon"`},
		{[]string{"deadletter", "replay", "--redis", "redis://127.0.0.1:1", "--domain", "a b"}, 2, "--domain"},
	} {
		code, _, errs := runCLI(t, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.msg) {
			t.Errorf("routerd %s: exit %d, stderr %q; want exit %d and %q", strings.Join(tc.args, " "), code, errs, tc.code, tc.msg)
		}
	}
}
