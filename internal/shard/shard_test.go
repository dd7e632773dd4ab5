package shard

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/faultproxy"
	"github.com/routerd/routerd/internal/redistest"
)

// A master that does not answer holds each caller of Replicas only until
// its own context ends, and the callers share one INFO: they do not queue
// behind a lock, each sending its INFO and waiting the client's whole read
// timeout in turn.
func TestReplicasStalledMasterSharesOneInfo(t *testing.T) {
	srv := redistest.Start(t)
	proxy := faultproxy.Start(t, srv.Addr)
	c := redis.NewClient(&redis.Options{Addr: proxy.Addr(), ReadTimeout: 500 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	infos := &redistest.Counter{Name: "info"}
	c.AddHook(infos)
	ctx := context.Background()
	if err := c.Ping(ctx).Err(); err != nil { // the connection made before the pause
		t.Fatal(err)
	}
	sh := &Shard{C: c}
	if err := proxy.Blackhole(); err != nil { // the master stalls
		t.Fatal(err)
	}
	const callers = 4
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			_, errs[i] = sh.Replicas(cctx)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("caller %d: %v, want its context's deadline", i, err)
		}
	}
	if n := infos.N(); n != 1 {
		t.Errorf("%d INFO sent for %d callers at once, want 1", n, callers)
	}
	if err := proxy.Heal(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 5*time.Second, "the replica count once the master answers", func() bool {
		n, err := sh.Replicas(ctx)
		return err == nil && n == 0
	})
}
