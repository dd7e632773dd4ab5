package router

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// lockedBuffer is a log sink safe for the router's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A router whose Redis user is exactly what routerd acl --role router
// prints, speaking RESP2 or RESP3: the stream's own bounded connection
// (HELLO, AUTH, CLIENT SETINFO on connect, then XREADGROUP) is allowed, so
// new entries are never read through the read script, and everything is
// routed once. Coverage the other tests lack: they read as the default
// user, and TestReadsWithAnOlderRouterUser only with an older user's rules.
func TestAttack4CurrentRouterUserReadsThroughItsOwnConnection(t *testing.T) {
	for _, proto := range []int{2, 3} {
		t.Run(fmt.Sprintf("RESP%d", proto), func(t *testing.T) {
			ctx := context.Background()
			srv := redistest.Start(t)
			c := srv.Client(t)
			m := runMatrix(t)
			routerUser(t, c, m, "router")
			user := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "router", Password: "pw", Protocol: proto})
			t.Cleanup(func() { _ = user.Close() })
			var logs lockedBuffer
			r, err := New(user, m, Options{Block: 100 * time.Millisecond, ClaimInterval: time.Hour, ReadBytes: 2000,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
			if err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- r.Run(rctx) }()
			redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
			stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
			const n = 200
			for i := range n {
				ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"e%d","keys":["user:%d"]}`, i, i)
				if err := c.Do(ctx, "XADD", stream, "*", wire.EventField, ev).Err(); err != nil {
					t.Fatal(err)
				}
			}
			events := names.EventsKey(names.Channel(m.Prefix, "acme", "a"))
			redistest.Eventually(t, 20*time.Second, "every event published", func() bool { return c.ZCard(ctx, events).Val() == n })
			redistest.Eventually(t, 10*time.Second, "nothing pending, no lag", drained(c, stream, -1))
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if s := logs.String(); strings.Contains(s, "through the read script") || strings.Contains(s, "may not run") {
				t.Errorf("the router user made by routerd acl --role router does not read through its own connection:\n%s", s)
			}
		})
	}
}
