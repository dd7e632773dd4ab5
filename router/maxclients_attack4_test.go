package router

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// An operator lowers maxclients to what is connected, and the router's
// stream connection is dropped (CLIENT KILL): the router's shared client
// keeps its pooled connections, but the stream's own connection cannot be
// made again. New entries must still be routed (through the read script,
// or once the connection comes back), and the router must not spin on
// reconnecting.
func TestAttack4ReaderThatCannotReconnectStillRoutes(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	m := runMatrix(t)
	user := srv.Client(t)
	r, err := New(user, m, Options{Block: 100 * time.Millisecond, ClaimInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	stopRouter := runRouter(t, r)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	events := names.EventsKey(names.Channel(m.Prefix, "acme", "a"))
	// Warm everything: one event routed.
	if err := c.Do(ctx, "XADD", stream, "*", wire.EventField, `{"tenant":"acme","domain":"user","id":"w","keys":["user:w"]}`).Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "warm event published", func() bool { return c.ZCard(ctx, events).Val() == 1 })
	admin := c.Conn()
	t.Cleanup(func() { _ = admin.Close() })
	if err := admin.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	connected := func() int {
		info := admin.Info(ctx, "clients").Val()
		for _, l := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(l, "connected_clients:"); ok {
				var n int
				fmt.Sscan(v, &n)
				return n
			}
		}
		return 0
	}
	// The stream's own connections (blocked in XREADGROUP): as many fewer
	// clients allowed, then they are killed.
	var readers []string
	for _, line := range strings.Split(admin.ClientList(ctx).Val(), "\n") {
		if strings.Contains(line, "cmd=xreadgroup") {
			for _, f := range strings.Fields(line) {
				if id, ok := strings.CutPrefix(f, "id="); ok {
					readers = append(readers, id)
				}
			}
		}
	}
	if len(readers) == 0 {
		t.Fatal("no connection of the router blocked in XREADGROUP")
	}
	if err := admin.Do(ctx, "CONFIG", "SET", "maxclients", connected()-len(readers)).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Do(context.Background(), "CONFIG", "SET", "maxclients", 10000).Err() })
	for _, id := range readers {
		_ = admin.Do(ctx, "CLIENT", "KILL", "ID", id).Err()
	}
	rejected := func() int {
		for _, l := range strings.Split(admin.Info(ctx, "stats").Val(), "\r\n") {
			if v, ok := strings.CutPrefix(l, "rejected_connections:"); ok {
				var n int
				fmt.Sscan(v, &n)
				return n
			}
		}
		return 0
	}
	before := rejected()
	const n = 20
	for i := range n {
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"e%d","keys":["user:%d"]}`, i, i)
		if err := admin.Do(ctx, "XADD", stream, "*", wire.EventField, ev).Err(); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	ok := false
	for time.Since(start) < 20*time.Second {
		if admin.ZCard(ctx, events).Val() == n+1 {
			ok = true
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	spent := time.Since(start)
	refused := rejected() - before
	t.Logf("after %v: %d connections refused; router ready: %v", spent.Round(time.Millisecond), refused, r.Ready())
	if !ok {
		t.Errorf("events appended while the stream's connection could not be made again were not routed within 20s (published %d of %d)", admin.ZCard(ctx, events).Val()-1, n)
	}
	// Each stream's connection is tried again once its reads went
	// through the script for a while (10 s), not in a loop; go-redis
	// dials up to 5 times for one connection (Options.DialerRetries), the
	// shared client's pool too when it needs one more. A loop made
	// thousands a second.
	if most := 100 * (1 + int(spent/(10*time.Second))); refused > most {
		t.Errorf("the router tried %d connections in %v for %d streams: it spins on reconnecting the stream's connection", refused, spent.Round(time.Millisecond), len(readers))
	}
	_ = admin.Do(ctx, "CONFIG", "SET", "maxclients", 10000).Err()
	stopRouter()
}
