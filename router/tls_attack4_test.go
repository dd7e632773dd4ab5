package router

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// A router on a TLS bus (client certificates required) as the user
// routerd acl --role router prints: the stream's own bounded connection
// dials with TLS too, reads new entries itself (no fallback to the read
// script), and a read cut for a value above MaxEventBytes leaves its
// entries to the pending read, over TLS: every good event published, the
// huge one dead-lettered, nothing pending. Coverage the other tests lack:
// none runs the bounded connection over TLS. (Holds.)
func TestAttack4BoundedReadsOverTLSWithTheRouterUser(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartTLS(t, redistest.NewPKI(t))
	c := srv.Client(t)
	m := runMatrix(t)
	routerUser(t, c, m, "router")
	user := redis.NewClient(&redis.Options{Addr: srv.Addr, TLSConfig: srv.TLS, Username: "router", Password: "pw"})
	t.Cleanup(func() { _ = user.Close() })
	var logs lockedBuffer
	r, err := New(user, m, Options{Block: 100 * time.Millisecond, ClaimInterval: time.Hour, MaxEventBytes: 64 << 10,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	stopRouter := runRouter(t, r)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	const n = 50
	pipe := c.Pipeline()
	for i := range n {
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"e%d","keys":["user:%d"]}`, i, i)
		pipe.Do(ctx, "XADD", stream, "*", wire.EventField, ev)
		if i == n/2 {
			pipe.Do(ctx, "XADD", stream, "*", wire.EventField, strings.Repeat("x", 1<<20))
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	events := names.EventsKey(names.Channel(m.Prefix, "acme", "a"))
	redistest.Eventually(t, 20*time.Second, "every good event published, the huge one dead-lettered", func() bool {
		return c.ZCard(ctx, events).Val() == n && c.XLen(ctx, names.InvalidDeadLetterStream(m.Prefix)).Val() == 1
	})
	redistest.Eventually(t, 10*time.Second, "nothing pending, no lag", drained(c, stream, -1))
	stopRouter()
	if s := logs.String(); strings.Contains(s, "through the read script") || strings.Contains(s, "may not run") {
		t.Errorf("over TLS the router does not read through its own connection:\n%s", s)
	}
}
