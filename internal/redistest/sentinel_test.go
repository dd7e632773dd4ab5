package redistest

import (
	"context"
	"os"
	"testing"
	"time"
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
