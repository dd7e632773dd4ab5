package integration

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// Attaching the first replica to a standalone bus (setting up high
// availability) gives the master a new replication id, with no restart and
// no loss. A channel's next message must not start a new epoch for it: that
// makes every service drop the whole tag of every channel that publishes
// next, a flush of every cache across the platform for a routine change.
func TestAttachingAReplicaToTheBusFlushesNothing(t *testing.T) {
	ctx := context.Background()
	const ch = "invalidate:acme:active"
	e := newEnv(t, "")
	e.router(router.Options{})
	e.subscriber("search-svc", subscriber.Options{})
	e.seed("search-svc", "acme", "user:1", "active")
	e.seed("search-svc", "acme", "user:2", "active")
	e.seed("search-svc", "acme", "user:3", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("search-svc", "acme", "user:1")
	epoch, _ := e.meta(ch)
	replid := func() string {
		return e.busC.InfoMap(ctx, "replication").Item("Replication", "master_replid")
	}
	before := replid()

	replica := redistest.Start(t)
	replicate(t, replica, e.bus) // redis-cli REPLICAOF <bus>
	if replid() == before {
		t.Fatalf("the bus kept its replication id %s when its first replica attached: the attack needs a new one", before)
	}

	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("search-svc", "acme", "user:2")
	if now, _ := e.meta(ch); now != epoch {
		t.Errorf("the channel started a new epoch (%s, was %s) when the bus got a replica", now, epoch)
	}
	if !e.cached("search-svc", "acme", "user:3") {
		t.Error("user:3, never named, was dropped: the whole tag went when the bus got a replica")
	}
}

// attack: the bus takes an older copy's data with REPLICAOF <copy> and is
// made a master again with REPLICAOF NO ONE, while a service is down: the
// same process and run_id, no flush, the copy's generation — the bus went
// back to before the event routed meanwhile. Its identity must change (the
// server followed another master), so a service without a position on the
// channel drops the tag instead of replaying the next epoch alone.
func TestBusTakingAnOlderCopyHidesNoEpoch(t *testing.T) {
	ctx := context.Background()
	const service = "search-svc"
	e := newEnv(t, "")
	e.router(router.Options{})
	e.generationRecorded(service)
	follow := func(replica, master *redistest.Server) {
		replicate(t, replica, master)
		must(t, replica.Client(t).ReplicaOf(ctx, "NO", "ONE").Err())
	}
	copied := redistest.Start(t)
	follow(copied, e.bus) // a disaster-recovery copy of the bus, detached
	e.lostEpoch(service, func() { follow(e.bus, copied) })
}

// replicate makes replica a replica of master (REPLICAOF) and waits until
// it is in sync.
func replicate(t *testing.T, replica, master *redistest.Server) {
	t.Helper()
	ctx := context.Background()
	host, port, _ := net.SplitHostPort(master.Addr)
	must(t, replica.Client(t).ReplicaOf(ctx, host, port).Err())
	redistest.Eventually(t, 20*time.Second, "in sync with "+master.Addr, func() bool {
		info, err := replica.Client(t).Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
}
