package cli

import (
	"context"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
)

// attack3: `CLIENT PAUSE … WRITE` on the bus (an operator's maintenance, a
// failover script): PING answers, XADD, XREADGROUP and every script wait.
// Nothing is routed; routerd serve's /readyz must say so within seconds,
// and be 200 again after CLIENT UNPAUSE.
func TestAttack3ServeReadyzBusPausedForWrites(t *testing.T) {
	bus := redistest.Start(t)
	serveLog := daemon(t, nil, "serve", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	addr := listening(t, serveLog)
	redistest.Eventually(t, 20*time.Second, "router ready", func() bool { code, _ := readyz(t, addr); return code == 200 })
	ctx := context.Background()
	admin := bus.Client(t)
	must0(t, admin.Do(ctx, "CLIENT", "PAUSE", "120000", "WRITE").Err())
	defer admin.Do(context.Background(), "CLIENT", "UNPAUSE")
	if err := redistest.Wait(ctx, 20*time.Second, "/readyz 503 while the bus's writes are paused", func() bool {
		code, _ := readyz(t, addr)
		return code == 503
	}); err != nil {
		code, body := readyz(t, addr)
		t.Fatalf("%v: /readyz %d %q\nserve log:\n%s", err, code, body, serveLog.String())
	}
	code, body := readyz(t, addr)
	t.Logf("paused: /readyz %d %q", code, body)
	must0(t, admin.Do(ctx, "CLIENT", "UNPAUSE").Err())
	redistest.Eventually(t, 20*time.Second, "/readyz 200 after CLIENT UNPAUSE", func() bool { code, _ := readyz(t, addr); return code == 200 })
}
