package redisconn

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
)

// OnNode on a cluster client it routed for already allocates only the
// context it returns: it runs once a durable publish.
func TestOnNodeAllocations(t *testing.T) {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer cc.Close()
	node := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer node.Close()
	ctx := context.Background()
	OnNode(ctx, cc, node)
	if n := testing.AllocsPerRun(100, func() { OnNode(ctx, cc, node) }); n > 1 {
		t.Errorf("OnNode allocates %v times a call, want the context alone", n)
	}
}
