package cli

import (
	"context"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/tagstore"
)

// attack2Agent runs routerd serve and a ready search-svc agent on bus and
// cache, with extra agent flags, and returns the agent's address and log.
func attack2Agent(t *testing.T, bus, cache *redistest.Server, extra ...string) (string, *syncBuffer) {
	t.Helper()
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	args := append([]string{"agent", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--cache-redis", cache.URL,
		"--service", "search-svc", "--listen", anyPort}, extra...)
	log := daemon(t, nil, args...)
	addr := listening(t, log)
	redistest.Eventually(t, 20*time.Second, "agent ready", func() bool { code, _ := readyz(t, addr); return code == 200 })
	return addr, log
}

// `CLIENT PAUSE … WRITE` on the cache Redis (an operator's maintenance, a
// failover script): PING and reads answer, every script call waits. The
// agent applies nothing; /readyz must be 503 within seconds, and 200 again
// after CLIENT UNPAUSE with the waiting invalidation applied.
func TestAttack2AgentReadyzCachePausedForWrites(t *testing.T) {
	bus, cache := redistest.Start(t), redistest.Start(t)
	addr, log := attack2Agent(t, bus, cache, "--check-interval", "1h")
	ctx := context.Background()
	store, err := tagstore.New(cache.Client(t), tagstore.Options{})
	must0(t, err)
	must0(t, store.Set(ctx, "acme", "user:paused", []byte("x"), 0, "active"))

	admin := cache.Client(t)
	must0(t, admin.Do(ctx, "CLIENT", "PAUSE", "120000", "WRITE").Err())
	defer admin.Do(context.Background(), "CLIENT", "UNPAUSE")
	publishKeys(t, bus.URL, "user", "user:paused")
	if err := redistest.Wait(ctx, 20*time.Second, "/readyz 503 while the cache's writes are paused", func() bool {
		code, _ := readyz(t, addr)
		return code == 503
	}); err != nil {
		_, getErr := store.Get(ctx, "acme", "user:paused") // reads are not paused
		code, body := readyz(t, addr)
		t.Fatalf("%v: /readyz %d %q while user:paused is still cached (get: %v)\nagent log:\n%s", err, code, body, getErr, log.String())
	}
	must0(t, admin.Do(ctx, "CLIENT", "UNPAUSE").Err())
	redistest.Eventually(t, 20*time.Second, "the paused invalidation applied after CLIENT UNPAUSE", func() bool {
		_, err := store.Get(ctx, "acme", "user:paused")
		return err != nil
	})
	redistest.Eventually(t, 20*time.Second, "/readyz 200 after CLIENT UNPAUSE", func() bool { code, _ := readyz(t, addr); return code == 200 })
}
