package redistest

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Sentinel set-up fails over: a write the replica has survives the
// master's kill -9, and a failover client of the sentinels writes to the
// promoted replica. (Three sentinels work the same, 2.5 s to set up as
// they must hear each other's hellos, 2 s to fail over: too slow for
// make test, so REDISTEST_SENTINELS=3 runs them.)
func TestSentinelFailsOver(t *testing.T) {
	sentinels := []int{1}
	if os.Getenv("REDISTEST_SENTINELS") == "3" {
		sentinels = append(sentinels, 3)
	}
	for _, sentinels := range sentinels {
		start := time.Now()
		s := StartSentinel(t, 1, sentinels)
		ctx := context.Background()
		c := s.Client(t)
		if err := c.Set(ctx, "k", "before", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.Do(ctx, "WAIT", 1, 5000).Err(); err != nil {
			t.Fatal(err)
		}
		old := s.Master(t)
		slowIsNotDown(t, s, old)
		started := time.Since(start)
		promoted := s.KillMaster(t)
		t.Logf("%d sentinels: set up in %v, failed over in %v", sentinels, started, time.Since(start)-started)
		if promoted == old || promoted != s.Servers[1] {
			t.Fatalf("promoted %s, want the replica %s", promoted.Addr, s.Servers[1].Addr)
		}
		Eventually(t, 10*time.Second, "a write through the failover client", func() bool {
			return c.Set(ctx, "k2", "after", 0).Err() == nil
		})
		if v, err := promoted.Client(t).Get(ctx, "k").Result(); err != nil || v != "before" {
			t.Errorf("k on the promoted replica: %q, %v", v, err)
		}
	}
}

// slowIsNotDown checks that the sentinels take a master that stalls for
// 400 ms (CLIENT PAUSE ALL: as a loaded machine, a slow fork) for slow, not down:
// a down-after-milliseconds that short would fail it over, and a test
// that restarts the old master would find it empty.
func slowIsNotDown(t *testing.T, s *Sentinel, master *Server) {
	t.Helper()
	ctx := context.Background()
	events := redis.NewClient(&redis.Options{Addr: s.Sentinels[0].Addr, TLSConfig: s.TLS})
	defer events.Close()
	sub := events.Subscribe(ctx, "+sdown", "+odown", "+try-failover")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}
	mc := master.Client(t)
	if err := mc.Do(ctx, "client", "pause", 400, "all").Err(); err != nil {
		t.Fatal(err)
	}
	if err := mc.Ping(ctx).Err(); err != nil { // answered once the pause is over
		t.Fatal(err)
	}
	// The sentinel has seen the master answer again once it reports a
	// fresh ping reply; what it published before that is in the
	// subscription ahead of the PING's reply.
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Sentinels[0].Addr, TLSConfig: s.TLS})
	defer sc.Close()
	Eventually(t, 10*time.Second, "the sentinel's ping answered after the stall", func() bool {
		m, err := sc.Master(ctx, s.Name).Result()
		if err != nil {
			return false
		}
		ms, err := strconv.Atoi(m["last-ok-ping-reply"])
		return err == nil && ms < 100 && !strings.Contains(m["flags"], "s_down")
	})
	if err := sub.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := sub.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m, ok := msg.(*redis.Message); ok {
			t.Fatalf("a master stalled 400 ms: the sentinel said %s %s", m.Channel, m.Payload)
		}
		if _, ok := msg.(*redis.Pong); ok {
			return
		}
	}
}
