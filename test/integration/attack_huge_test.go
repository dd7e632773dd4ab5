package integration

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// attack (precision, issue 21): one event naming 10,000 keys (the most an
// event may name), default limits, on a channel that never published
// before. The router splits it into 20 key-level messages, well within the
// budget; the running subscriber sees the channel's first message, checks,
// finds the meta already past version 16 and drops the whole tag
// ("new_channel"), although it had completed a check under the current
// generation and the history holds every version. 1,000 keys no event
// named are dropped: collateral in a scenario within the budget.
func TestAttackFirstMessagesOfAChannelGoWholeTag(t *testing.T) {
	e := newEnv(t, precisionMatrix("rate: 100, burst: 200, max_keys: 500"))
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	named := keyRange("u", 0, 10000)
	other := keyRange("u", 10000, 11000)
	st := e.stores["profile-svc"]
	ctx := context.Background()
	for _, k := range append(append([]string{}, named...), other...) {
		must(t, st.Set(ctx, "acme", k, []byte("v"), 0, "active"))
	}
	b, _ := json.Marshal(map[string]any{"tenant": "acme", "domain": "user", "keys": named})
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, string(b)}}).Err())
	redistest.Eventually(t, 30*time.Second, "every named key gone", func() bool {
		return e.cachedCount("profile-svc", "acme", named) == 0
	})
	if n := e.cachedCount("profile-svc", "acme", other); n != len(other) {
		t.Errorf("%d of %d keys no event named were dropped", len(other)-n, len(other))
	}
}
