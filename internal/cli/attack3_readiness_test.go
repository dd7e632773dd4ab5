package cli

import (
	"context"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
)

// attack3: `CLIENT PAUSE … WRITE` on the bus (an operator's maintenance, a
// failover script): PING answers, XADD, XREADGROUP and every script wait.
// Nothing is routed; routerd serve's /readyz must say so within seconds
// (issue 19: 503 within 5 s of an outage; 8 s here leaves room for a
// loaded machine), and be 200 again after CLIENT UNPAUSE. On b5aa0d5 it
// stays 200 for 20 s and more without -race; with -race an XREADGROUP
// sometimes times out (go-redis: its block + 10 s) and turns it 503 as
// ingress_reads_failing after about 12 s.
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
	if err := redistest.Wait(ctx, 8*time.Second, "/readyz 503 while the bus's writes are paused", func() bool {
		code, _ := readyz(t, addr)
		return code == 503
	}); err != nil {
		code, body := readyz(t, addr)
		late := redistest.Wait(ctx, 22*time.Second, "/readyz 503 at all", func() bool { c, _ := readyz(t, addr); return c == 503 })
		t.Fatalf("%v: /readyz %d %q (503 after %v: %v)\nserve log:\n%s", err, code, body, time.Since(paused).Round(time.Second), late, serveLog.String())
	}
	code, body := readyz(t, addr)
	t.Logf("paused: /readyz %d %q", code, body)
	must0(t, admin.Do(ctx, "CLIENT", "UNPAUSE").Err())
	redistest.Eventually(t, 20*time.Second, "/readyz 200 after CLIENT UNPAUSE", func() bool { code, _ := readyz(t, addr); return code == 200 })
}
