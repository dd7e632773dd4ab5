package router

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// Two routers read one partition with a small ReadBytes, while a client
// appends events of mixed sizes (200 B to 6 KB): most reads of new entries
// are cut at their total, and each router takes the entries of its cut
// reads from its pending list while the other reads on. Every event goes
// out on the channel exactly once (counted on pub/sub, not in the event
// ids set, which would hide a duplicate), and nothing is left pending.
// Coverage the other tests lack: cuts with two consumers at once. (Holds.)
func TestAttack4TwoRoutersCutReadsRouteEachEventOnce(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	m := runMatrix(t)
	channel := names.Channel(m.Prefix, "acme", "a")
	sub := srv.Client(t).Subscribe(ctx, channel)
	t.Cleanup(func() { _ = sub.Close() })
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	key := regexp.MustCompile(`user:e(\d+):`)
	var mu sync.Mutex
	seen := map[string]int{}
	received := make(chan struct{})
	go func() {
		defer close(received)
		for msg := range sub.Channel() {
			mu.Lock()
			for _, k := range key.FindAllStringSubmatch(msg.Payload, -1) {
				seen[k[1]]++
			}
			mu.Unlock()
		}
	}()
	stops := []func(){}
	for _, consumer := range []string{"a", "b"} {
		r, err := New(srv.Client(t), m, Options{Consumer: consumer, Block: 20 * time.Millisecond, ClaimInterval: time.Hour, ReadBytes: 16 << 10})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		redistest.Eventually(t, 10*time.Second, "router "+consumer+" ready", r.Ready)
		stops = append(stops, func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	const n = 600
	conns := func() int {
		for _, l := range strings.Split(c.Info(ctx, "stats").Val(), "\r\n") {
			if v, ok := strings.CutPrefix(l, "total_connections_received:"); ok {
				var k int
				fmt.Sscan(v, &k)
				return k
			}
		}
		return 0
	}
	before := conns()
	// In bursts of 50 (one pipeline): a read then takes more than ReadBytes.
	pipe := c.Pipeline()
	for i := range n {
		size := 200 + (i*7919)%6000
		pad := strings.Repeat("k", min(400, size))
		keys := []string{fmt.Sprintf(`"user:e%d:0"`, i)}
		for j := 1; j*400 < size; j++ {
			keys = append(keys, fmt.Sprintf(`"pad:%d:%d:%s"`, i, j, pad[:300]))
		}
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"e%d","keys":[%s]}`, i, strings.Join(keys, ","))
		pipe.Do(ctx, "XADD", stream, "*", wire.EventField, ev)
		if i%50 == 49 {
			if _, err := pipe.Exec(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	redistest.Eventually(t, 60*time.Second, "every event published", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n
	})
	redistest.Eventually(t, 20*time.Second, "nothing pending, no lag", drained(c, stream, -1))
	for _, stop := range stops {
		stop()
	}
	_ = sub.Close()
	<-received
	for id, k := range seen {
		if k != 1 {
			t.Errorf("event e%s went out %d times", id, k)
		}
	}
	// A cut drops the stream's connection: the routers dialled again.
	redials := conns() - before
	t.Logf("%d connections made while routing", redials)
	if redials < 1 {
		t.Fatalf("only %d connections made: no read was cut, the attack did not run", redials)
	}
}
