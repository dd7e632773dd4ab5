package cli

import (
	"strings"
	"testing"

	"github.com/routerd/routerd/internal/redistest"
)

// A publish whose connection was refused sent nothing: it says so, and
// still gives the id to publish again with. It used to say the event "may
// be on the bus all the same", which sends an operator looking for an
// event that cannot be there.
func TestPublishRefusedSaysNothingWasAppended(t *testing.T) {
	code, out, errs := runCLI(t, "publish", "--redis", "redis://"+redistest.RefusedAddr(t), "--tenant", "acme", "--domain", "user", "--keys", "k:1")
	if code != 1 {
		t.Fatalf("publish to a refused address: %d %q %q, want 1", code, out, errs)
	}
	if strings.Contains(errs, "may be on the bus") || !strings.Contains(errs, "nothing was appended") || !strings.Contains(errs, "--id ") {
		t.Errorf("publish to a refused address does not say that nothing was appended, with the id to retry with:\n%s", errs)
	}
}
