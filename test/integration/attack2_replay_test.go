package integration

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/wire"
)

// `routerd deadletter replay` on a bus that refuses the re-drive's XADD —
// out of memory under the noeviction policy operations.md requires of the
// bus (XADD is refused with OOM, XDEL is not), or a re-drive stream an
// operator overwrote with another type (WRONGTYPE) — pipelines each chunk's
// XADDs with the XDEL of its dead letters, and Redis runs the XDEL whatever
// the XADDs answered: the dead letters are deleted and nothing was
// re-driven. They are gone for good; a failed replay must leave them.
func TestAttack2ReplayThatCannotAppendDeletesTheDeadLetters(t *testing.T) {
	for _, fault := range []struct {
		name        string
		break_, fix func(ctx context.Context, c *redis.Client) error
	}{
		{"bus out of memory", func(ctx context.Context, c *redis.Client) error {
			return c.ConfigSet(ctx, "maxmemory", "1").Err()
		}, func(ctx context.Context, c *redis.Client) error {
			return c.ConfigSet(ctx, "maxmemory", "0").Err()
		}},
		{"re-drive stream of another type", func(ctx context.Context, c *redis.Client) error {
			return c.Set(ctx, names.RedriveStream("invalidate"), "x", 0).Err()
		}, func(ctx context.Context, c *redis.Client) error {
			return c.Del(ctx, names.RedriveStream("invalidate")).Err()
		}},
	} {
		t.Run(fault.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "")
			_, stop := e.router(router.Options{})
			stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
			must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"order","keys":["order:1"]}`}}).Err())
			redistest.Eventually(t, 15*time.Second, "the event dead-lettered unknown_domain", func() bool {
				return e.busC.XLen(ctx, names.DeadLetterStream("invalidate")).Val() == 1
			})
			stop() // only the operator's replay re-drives now

			must(t, fault.break_(ctx, e.busC))
			res, err := router.Redrive(ctx, e.busC, "invalidate", router.RedriveFilter{})
			must(t, fault.fix(ctx, e.busC))
			if err == nil {
				t.Fatalf("replay on a bus that refuses the re-drive reported no error (%+v)", res)
			}
			dead := e.busC.XLen(ctx, names.DeadLetterStream("invalidate")).Val()
			redriven := e.busC.XLen(ctx, names.RedriveStream("invalidate")).Val()
			if dead+redriven != 1 {
				t.Fatalf("after a failed replay (%v): %d dead letters, %d re-driven entries: the dead letter is lost", err, dead, redriven)
			}
		})
	}
}
