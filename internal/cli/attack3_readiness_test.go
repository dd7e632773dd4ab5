package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
)

// attack3: `CLIENT PAUSE … WRITE` on the bus (an operator's maintenance, a
// failover script): PING answers, XADD, XREADGROUP and every script wait.
// Nothing is routed; routerd serve's /readyz must say so, naming the call
// the bus holds (issue 19: 503 within 5 s of an outage, measured about 3 s:
// docs/operations.md#readiness), and be 200 again after CLIENT UNPAUSE.
// On b5aa0d5 it stayed 200 for 20 s and more without -race; with -race an
// XREADGROUP sometimes timed out (its block + 10 s) and turned it 503 as
// an i/o timeout after about 12 s. The test waits for the outcome, not
// for a time: the body must name the wait.
func TestAttack3ServeReadyzBusPausedForWrites(t *testing.T) {
	bus := redistest.Start(t)
	serveLog := daemon(t, nil, "serve", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	addr := listening(t, serveLog)
	redistest.Eventually(t, 20*time.Second, "router ready", func() bool { code, _ := readyz(t, addr); return code == 200 })
	ctx := context.Background()
	admin := bus.Client(t)
	must0(t, admin.Do(ctx, "CLIENT", "PAUSE", "120000", "WRITE").Err())
	defer admin.Do(context.Background(), "CLIENT", "UNPAUSE")
	paused := time.Now()
	if err := redistest.Wait(ctx, 20*time.Second, "/readyz 503 naming a call the bus holds", func() bool {
		code, body := readyz(t, addr)
		return code == 503 && strings.Contains(body, "has waited")
	}); err != nil {
		code, body := readyz(t, addr)
		t.Fatalf("%v: /readyz %d %q\nserve log:\n%s", err, code, body, serveLog.String())
	}
	code, body := readyz(t, addr)
	t.Logf("paused: /readyz %d %q after %v", code, body, time.Since(paused).Round(100*time.Millisecond))
	must0(t, admin.Do(ctx, "CLIENT", "UNPAUSE").Err())
	redistest.Eventually(t, 20*time.Second, "/readyz 200 after CLIENT UNPAUSE", func() bool { code, _ := readyz(t, addr); return code == 200 })
}
