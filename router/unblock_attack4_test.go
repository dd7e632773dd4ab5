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

// A hostile client keeps breaking the router's blocked reads while events
// flow: CLIENT UNBLOCK <id> ERROR on every connection blocked in
// XREADGROUP, and CLIENT PAUSE WRITE for 20 ms every hundredth round. An error reply sends
// reads through the read script for a while; every event goes out once
// (counted on pub/sub) and nothing is left pending. Coverage the other
// tests lack: error replies on the stream's own connection mid-read.
// (Holds.)
func TestAttack4UnblockedAndPausedReadsLoseNothing(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	admin := srv.Client(t)
	m := runMatrix(t)
	channel := names.Channel(m.Prefix, "acme", "a")
	sub := srv.Client(t).Subscribe(ctx, channel)
	t.Cleanup(func() { _ = sub.Close() })
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	key := regexp.MustCompile(`user:e(\d+)`)
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
	r, err := New(srv.Client(t), m, Options{Block: 50 * time.Millisecond, ClaimInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	stopRouter := runRouter(t, r)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	hits := 0
	go func() {
		defer wg.Done()
		for round := 0; ; round++ {
			select {
			case <-stop:
				return
			default:
			}
			if round%100 == 99 {
				_ = admin.Do(ctx, "CLIENT", "PAUSE", 20, "WRITE").Err()
			}
			list, err := admin.Do(ctx, "CLIENT", "LIST").Text()
			if err != nil {
				continue
			}
			for _, line := range strings.Split(list, "\n") {
				if !strings.Contains(line, "cmd=xreadgroup") {
					continue
				}
				for _, f := range strings.Fields(line) {
					if id, ok := strings.CutPrefix(f, "id="); ok {
						// Not TIMEOUT: Redis 7.0.15 crashes (blocked.c:230,
						// "Unknown btype in replyToBlockedClientTimedOut")
						// on CLIENT UNBLOCK TIMEOUT of a client that CLIENT
						// PAUSE postponed.
						if n, _ := admin.Do(ctx, "CLIENT", "UNBLOCK", id, "ERROR").Int(); n == 1 {
							hits++
						}
					}
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	const n = 2000
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	for i := range n {
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","id":"e%d","keys":["user:e%d"]}`, i, i)
		if err := c.Do(ctx, "XADD", stream, "*", wire.EventField, ev).Err(); err != nil {
			t.Fatal(err)
		}
	}
	redistest.Eventually(t, 60*time.Second, "every event published", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == n
	})
	close(stop)
	wg.Wait()
	redistest.Eventually(t, 20*time.Second, "nothing pending, no lag", drained(c, stream, -1))
	stopRouter()
	_ = sub.Close()
	<-received
	for id, k := range seen {
		if k != 1 {
			t.Errorf("event e%s went out %d times", id, k)
		}
	}
	t.Logf("%d events routed through %d unblocked reads", n, hits)
	if hits == 0 {
		t.Fatal("no read was unblocked: the attack did not run")
	}
}
