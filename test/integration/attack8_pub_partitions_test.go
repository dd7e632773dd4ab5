package integration

import (
	"context"
	"testing"
	"time"

	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// attack: the matrix went from 8 partitions to 4 and the router restarted
// on it, while a service's publisher still uses 8 (it reads the count
// again only every Refresh, 30 s by default; or a team fixed Partitions).
// Its events land on partitions 4 to 7 before and after the router drained
// them; each is routed within seconds, not at the router's next look for
// partition streams (an hour here, a minute by default).
func TestAttack8PubStaleHigherCountRouted(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "") // 4 partitions
	stale, err := publisher.New(e.busC, publisher.Options{Partitions: 8})
	if err != nil {
		t.Fatal(err)
	}
	tenant := "acme" // partition 7 of 8, 3 of 4
	if wire.Partition(tenant, 8) < 4 {
		t.Fatalf("%s is on partition %d of 8: below 4, the test proves nothing", tenant, wire.Partition(tenant, 8))
	}
	e.subscriber("search-svc", subscriber.Options{})
	for _, k := range []string{"user:1", "user:2"} {
		e.seed("search-svc", tenant, k, "active")
	}
	if _, err := stale.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}}); err != nil {
		t.Fatal(err)
	}
	e.router(router.Options{DiscoverInterval: time.Hour})
	e.waitGone("search-svc", tenant, "user:1")
	if _, err := stale.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:2"}}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("search-svc", tenant, "user:2")
}
