package cli

import (
	"context"
	"strings"
	"testing"

	"github.com/routerd/routerd/internal/redistest"
)

// routerd publish whose write fails (here a bus out of memory; a bus that
// does not answer in time the same) names the event's id: publishing it
// again with --id cannot make a second event of one that was appended all
// the same.
func TestPublishFailedWriteNamesTheID(t *testing.T) {
	bus := redistest.Start(t)
	c := bus.Client(t)
	must(t, c.SetNX(context.Background(), "invalidate:ingress:partitions", "1", 0).Err())
	must(t, c.ConfigSet(context.Background(), "maxmemory", "1").Err())
	code, _, errs := runCLI(t, "publish", "--redis", bus.URL, "--tenant", "acme", "--domain", "user", "--keys", "user:1")
	if code == 0 || !strings.Contains(errs, "OOM") || !strings.Contains(errs, "publishing it again with --id ") {
		t.Fatalf("publish to a bus out of memory: exit %d, %s; want the OOM refusal and the event's --id", code, errs)
	}
}
