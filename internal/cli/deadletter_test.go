package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
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

// A replay without --reason also sends back the malformed and too large
// letters, which the routers refuse again: its count says how many of
// those it re-drove, so "2 re-driven" does not read as two events fixed.
func TestDeadletterReplaySaysWhatComesBack(t *testing.T) {
	bus := redistest.Start(t)
	c := bus.Client(t)
	letter := func(stream, reason, event string) {
		entry, err := json.Marshal(map[string]string{"event": event})
		must(t, err)
		must(t, c.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: []any{"reason", reason, "error", "x",
			"stream", "invalidate:ingress:{7}", "entry_id", "1-0", "entry", string(entry)}}).Err())
	}
	letter("invalidate:deadletter", "unknown_domain", `{"tenant":"acme","domain":"order","keys":["o:1"]}`)
	letter("invalidate:deadletter:invalid", "malformed", `{"tenant":"acme","domain":"user","keys":[]}`)
	code, out, errs := runCLI(t, "deadletter", "replay", "--redis", bus.URL)
	want := "2 re-driven, 1 of them malformed or too large (from invalidate:deadletter:invalid): the routers refuse those again unless they accept them now\n"
	if code != 0 || out != want {
		t.Errorf("replay of one letter of each stream: exit %d, stdout %q, stderr %q; want %q", code, out, errs, want)
	}
	letter("invalidate:deadletter", "unknown_domain", `{"tenant":"acme","domain":"order","keys":["o:2"]}`)
	if code, out, _ := runCLI(t, "deadletter", "replay", "--redis", bus.URL, "--reason", "unknown_domain"); code != 0 || out != "1 re-driven\n" {
		t.Errorf("replay of unknown_domain letters: exit %d, stdout %q; want %q", code, out, "1 re-driven\n")
	}
}
