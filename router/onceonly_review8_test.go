package router

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
)

// onceOnly's client runs a command whose reply was lost once, on a server
// and on a cluster: a script that counts its runs and answers more than
// the bus's client-output-buffer-limit normal lets through (its
// connection closed, the reply lost) has run once. On a cluster go-redis
// retries such a command itself (up to MaxRedirects), whatever MaxRetries
// says.
func TestReview8OnceOnlyRunsALostCommandOnce(t *testing.T) {
	ctx := context.Background()
	script := redis.NewScript("redis.call('INCR', KEYS[1]) return string.rep('x', 4000000)")
	limit := func(t *testing.T, c *redis.Client) {
		if err := c.ConfigSet(ctx, "client-output-buffer-limit", "normal 1mb 0 0").Err(); err != nil {
			t.Fatal(err)
		}
	}
	runs := func(t *testing.T, c redis.UniversalClient) {
		t.Helper()
		once := onceOnly(c)
		defer once.Close()
		if err := script.Run(ctx, once, []string{"{runs}"}).Err(); err == nil {
			t.Fatal("the reply above the output buffer limit was read")
		}
		if n, err := c.Get(ctx, "{runs}").Int(); err != nil || n != 1 {
			t.Errorf("the script ran %d times (%v), want once", n, err)
		}
	}
	t.Run("server", func(t *testing.T) {
		c := redistest.Start(t).Client(t)
		limit(t, c)
		runs(t, c)
	})
	t.Run("cluster", func(t *testing.T) {
		c := redistest.StartCluster(t, 3, 0).Client(t)
		if err := c.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error {
			limit(t, n)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		runs(t, c)
	})
}
