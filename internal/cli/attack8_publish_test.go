package cli

import (
	"context"
	"regexp"
	"testing"

	"github.com/routerd/routerd/internal/redistest"
)

// attack: `routerd publish` in a script that retries on a non-zero exit.
// The XADD may be on the bus although the command failed (its reply lost),
// and a retry without the event's id is a second event: the error names the
// id to retry with, and that retry succeeds. (The failure here is a user
// that may not XADD; the CLI cannot tell it from a lost reply.)
func TestAttack8PubFailedPublishNamesTheIDToRetryWith(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	must(t, c.Do(context.Background(), "ACL", "SETUSER", "noxadd", "on", ">secret", "~*", "+@all", "-xadd").Err())
	args := []string{"publish", "--tenant", "acme", "--domain", "user", "--keys", "user:1"}
	code, _, errs := runCLI(t, append(args, "--redis", "redis://noxadd:secret@"+srv.Addr)...)
	m := regexp.MustCompile(`--id ([0-9a-f]{28})\b`).FindStringSubmatch(errs)
	if code != 1 || m == nil {
		t.Fatalf("a failed publish: exit %d %q, want 1 and the --id to retry with", code, errs)
	}
	code, out, errs := runCLI(t, append(args, "--redis", srv.URL, "--id", m[1])...)
	if code != 0 || out != m[1]+"\n" {
		t.Errorf("the retry with --id %s: exit %d %q %q", m[1], code, out, errs)
	}
}
