package cli

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/subscriber"
)

// A subscriber without --deliver that runs when an agent with --deliver
// starts, and is killed (no stop takes the mark away) before its next
// renewal takes the agent's token: it may have moved the cache's
// positions past what the process was given while the agent ran. Its
// presence expires, so a stop that counts only the presences there at the
// stop, and finds its token still there, would mark the cache clean, and
// the next start would skip the reset. The subscriber is its presence
// here, written with its expiry two seconds away and the mark taken as
// its start does.
func TestReview10PlainKilledWhileADeliverAgentRuns(t *testing.T) {
	ctx := context.Background()
	bus, cache := redistest.Start(t), redistest.Start(t)
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	rcv := &receiver{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	c := cache.Client(t)
	must(t, c.SAdd(ctx, names.DeliveryPlainKey("search-svc"), fmt.Sprintf("killed@%d", time.Now().Add(2*time.Second).Unix())).Err())
	must(t, c.Del(ctx, names.DeliveryKey("search-svc")).Err())

	a := startAgent(t, "--redis", bus.URL, "--cache-redis", cache.URL, "--deliver", srv.URL)
	a.waitReady(t)
	a.waitDelivered(t, rcv)
	redistest.Eventually(t, 10*time.Second, "the killed subscriber's presence expired", func() bool {
		n, err := subscriber.Undelivering(ctx, c, "search-svc")
		return err == nil && n == 0
	})
	a.stop(t)
	if v, _ := c.Get(ctx, names.DeliveryKey("search-svc")).Result(); v == lua.DeliveryClean {
		t.Errorf("the agent marked the cache clean although a subscriber without --deliver ran beside it:\n%s", grep(a.errb.String(), "mark"))
	}
}
