package integration

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// These tests attack the cache side the way a full cache Redis does: at
// maxmemory with maxmemory-policy noeviction (what operations.md advises
// for a cache with entity references) Redis refuses every command that may
// grow memory (SET, SADD, …) with OOM, while reads and deletions (GET,
// DEL, UNLINK, SREM) still run. An invalidation frees memory: it must land
// when the cache is full, and stale values stay readable until it does.

// fill makes a cache Redis full: every command that may grow its memory is
// refused with OOM from now on, until the test ends.
func fill(t *testing.T, c *redis.Client) {
	t.Helper()
	ctx := context.Background()
	must(t, c.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err())
	must(t, c.ConfigSet(ctx, "maxmemory", "1").Err())
	t.Cleanup(func() { _ = c.ConfigSet(context.Background(), "maxmemory", "0").Err() })
	if err := c.Set(ctx, "attack8:probe", "x", 0).Err(); !redis.HasErrorPrefix(err, "OOM") {
		t.Fatalf("a SET on the full cache answered %v, want OOM", err)
	}
}

// A subscriber that starts (or restarts) while its cache is full has
// indexed no tenant yet in this run. Its first invalidation of a tenant
// records the tenant in the position index (a SADD) before the script
// runs: refused with OOM, the invalidation never ran and the key named
// stayed cached for as long as the cache was full.
func TestAttack8CacheFullStillInvalidates(t *testing.T) {
	e := newEnv(t, "")
	e.running("acme")
	e.seed("profile-svc", "acme", "user:1", "active")
	e.seed("profile-svc", "acme", "user:2", "active")
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	fill(t, e.caches["profile-svc"].Client(t))

	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "acme", "user:1")
	if !e.cached("profile-svc", "acme", "user:2") {
		t.Error("user:2, not named, was invalidated too")
	}
	epoch, _ := e.meta("invalidate:acme:active")
	if p, _ := e.position("profile-svc", "acme", "active"); p.Epoch != epoch || p.Version != 1 {
		t.Errorf("position = %v, want %s:1", p, epoch)
	}
}
