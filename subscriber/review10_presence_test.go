package subscriber

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
)

// The cache Redis comes back, while a subscriber without --deliver runs,
// holding what it held after an agent with --deliver stopped cleanly: the
// clean mark, and no presence of this subscriber (a restart from a
// snapshot, a replica promoted that missed the mark's removal; here a
// FLUSHALL and the mark in one transaction). The check it makes then moves
// the cache's positions again; an agent with --deliver starting before the
// presence's next renewal (up to 10 s) would find the clean mark and no
// presence and skip the reset. So the subscriber records its presence and
// takes the mark away again before it is ready again.
func TestReview10PresenceRecordedAgainAfterTheCacheChanged(t *testing.T) {
	f := newBurst(t, 1, true, false)
	f.cached(t, "t0", "user:1")
	stop := runUntilCancelled(t, f.s)
	defer stop()
	plain, mark := names.DeliveryPlainKey("svc"), names.DeliveryKey("svc")
	redistest.Eventually(t, 10*time.Second, "ready, its presence recorded", func() bool {
		return f.s.Ready() && f.cache.SCard(f.ctx, plain).Val() == 1
	})
	changes := f.s.health.cacheChanges.Load()
	if _, err := f.cache.TxPipelined(f.ctx, func(p redis.Pipeliner) error {
		p.FlushAll(f.ctx)
		p.Set(f.ctx, mark, lua.DeliveryClean, 0)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the change seen, and ready again", func() bool {
		return f.s.health.cacheChanges.Load() > changes && f.s.Ready()
	})
	ctx := context.Background()
	if v, _ := f.cache.Get(ctx, mark).Result(); v == lua.DeliveryClean {
		t.Errorf("ready again after the cache changed, its positions checked, with the clean mark still there")
	}
	if n := f.cache.SCard(ctx, plain).Val(); n != 1 {
		t.Errorf("ready again after the cache changed with %d presences, want this subscriber's", n)
	}
}
