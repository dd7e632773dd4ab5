package redistest

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Counter is a go-redis hook that counts the commands named Name (lower
// case, as redis.Cmder.Name gives it: "info", "incr") that a client sends
// on their own, not in a pipeline.
type Counter struct {
	Name string
	n    atomic.Int64
}

// N is how many it counted.
func (h *Counter) N() int64 { return h.n.Load() }

func (h *Counter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *Counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == h.Name {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (h *Counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
