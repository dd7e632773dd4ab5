package integration

import (
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// An operator runs billing-svc (tenants: [acme]) as two tenant shards:
// one shard owns no tenant of the service, so it has no channel. It has
// nothing to keep fresh and should be ready; found while attacking the
// leaving of channels with shards (attack 4): it is never ready, so a
// deploy waiting on readiness never completes.
func TestAttack4ShardWithoutTenantsIsReady(t *testing.T) {
	e := newEnv(t, "")
	e.router(router.Options{})
	acme := wire.Partition("acme", 2)
	s, _ := e.subscriber("billing-svc", subscriber.Options{TenantShard: wire.TenantShard{I: 1 - acme, K: 2}})
	redistest.Eventually(t, 10*time.Second, "the shard without tenants ready", s.Ready)
}
