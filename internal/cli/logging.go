package cli

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// redisLogger routes go-redis's own log lines (pool dial failures and the
// like, printed to stderr by default ahead of the error a command reports)
// into a command's slog logger at debug level.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if !l.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	l.log.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
}

// routeRedisLogs makes log the destination of go-redis's logger. go-redis
// has one logger per process (swapped atomically); a process runs one
// command, so the command's logger is it.
func routeRedisLogs(log *slog.Logger) { redis.SetLogger(redisLogger{log}) }
