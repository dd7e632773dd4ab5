package integration

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/wire"
)

// A routerd serve is killed (SIGKILL) after it wrote the dead letters of a
// batch and before it acknowledged its entries (here its user may not run
// XACK, which holds it in that window), and a second router claims and
// routes the batch again: each refused entry, and each refused event of a
// packed entry, has one dead letter, not one per router that routed it.
func TestBusLossDeadLettersOnceAfterARouterKilledMidBatch(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "noack", "on", ">pw", "~*", "&*", "+@all", "-xack").Err())
	for _, fields := range [][]any{
		{wire.EventField, `{"tenant":"acme","domain":"nosuch","keys":["k:0"]}`},
		{wire.EventField, `{"tenant":"acme","domain":`},
		{wire.EventsField, `[{"tenant":"acme","domain":"user","keys":["k:1"]},{"tenant":"acme","domain":"nosuch","keys":["k:2"]}]`},
	} {
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: fields}).Err())
	}
	const letters = 3
	var log lockedBuffer
	cmd := e.serveProcess(backlogMatrix(), &log, "--consumer", "doomed", "--redis", "redis://noack:pw@"+e.bus.Addr)
	redistest.Eventually(t, 20*time.Second, "the doomed router's dead letters", func() bool { return len(allDeadLetters(t, e.busC)) >= letters })
	must(t, cmd.Process.Kill())
	_ = cmd.Wait()

	e.router(router.Options{Consumer: "heir", ClaimIdle: 200 * time.Millisecond})
	redistest.Eventually(t, 20*time.Second, "the batch routed again and acknowledged", func() bool { return e.pending() == 0 })
	seen := map[string]int{}
	for _, d := range allDeadLetters(t, e.busC) {
		id, _ := d.Values["entry_id"].(string)
		index, _ := d.Values["index"].(string)
		seen[id+" "+index]++
	}
	if len(seen) != letters {
		t.Errorf("dead letters of %d entries or events, want %d: %v", len(seen), letters, seen)
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%d dead letters of %s, want 1", n, k)
		}
	}
}
