package integration

import (
	"context"
	"fmt"
	"testing"

	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// attack3 (held): SCRIPT FLUSH on the bus and on the cache Redis while the
// router and the subscriber run (an operator freeing script memory): every
// pipelined EVALSHA then answers NOSCRIPT, and both must load their scripts
// again rather than retry the same call for ever.
func TestAttack3ScriptFlushMidTraffic(t *testing.T) {
	ctx := context.Background()
	const service = "search-svc"
	e := newEnv(t, "")
	e.router(router.Options{})
	e.subscriber(service, subscriber.Options{})
	for round := 0; round < 3; round++ {
		key := fmt.Sprintf("user:%d", round)
		e.seed(service, "acme", key, "active")
		must(t, e.busC.ScriptFlush(ctx).Err())
		must(t, e.caches[service].Client(t).ScriptFlush(ctx).Err())
		e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{key}})
		e.waitGone(service, "acme", key)
	}
}
