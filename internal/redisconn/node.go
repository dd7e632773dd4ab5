package redisconn

import (
	"context"
	"runtime"
	"sync"
	"weak"

	"github.com/redis/go-redis/v9"
)

// OnNode returns what a call that must run on node, one master of c
// (Masters, ClusterClient.MasterForKey), is made with: a client and a
// context. On a cluster they are c itself and a context that sends the
// call to node, so that the cluster client's hooks see it: go-redis runs
// a cluster client's hooks (ClusterClient.AddHook: a service's metrics,
// redisotel's cluster-level spans) for the commands sent through it only,
// never gives them to its node clients, and tells no one what they are. A
// durable write, whose WAIT must follow its XADD on the master's own
// connection, or an INFO or SCAN of each master, would otherwise pass
// only the node clients' own hooks (those given through
// ClusterOptions.NewClient or ClusterClient.OnNewNode, as redisotel's
// per-node hooks are). Anywhere else they are node and ctx.
//
// The first call for a cluster client adds to it the hook that does the
// routing (routeHook). go-redis runs hooks in the order they were added,
// each around those added after it: the hooks added before that first
// call see the routed calls, those added after it do not (routeHook sends
// a routed call to node rather than on down the chain).
func OnNode(ctx context.Context, c redis.UniversalClient, node *redis.Client) (context.Context, redis.UniversalClient) {
	cc := Cluster(c)
	if cc == nil {
		return ctx, node
	}
	key := weak.Make(cc)
	once, ok := routed.Load(key) // no allocation on the calls after the first: one a durable publish
	if !ok {
		var loaded bool
		if once, loaded = routed.LoadOrStore(key, new(sync.Once)); !loaded {
			runtime.AddCleanup(cc, func(key weak.Pointer[redis.ClusterClient]) { routed.Delete(key) }, key)
		}
	}
	once.(*sync.Once).Do(func() { cc.AddHook(routeHook{}) })
	return context.WithValue(ctx, nodeKey{}, node), cc
}

// routed holds a sync.Once for each cluster client given a routeHook. Its
// keys keep no client alive, and a client's entry goes with it.
var routed sync.Map

// nodeKey marks a context whose calls through a cluster client run on the
// *redis.Client it holds.
type nodeKey struct{}

// routeHook sends the commands and pipelines of a context OnNode marked to
// its node client, which runs them (with its own hooks) on one of its
// connections, in order, as a call made on the node client itself would:
// the cluster client's routing by slot, its redirects and its retries are
// not applied. Other calls go on as they came.
type routeHook struct{}

func (routeHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (routeHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if node, ok := ctx.Value(nodeKey{}).(*redis.Client); ok {
			return node.Process(ctx, cmd)
		}
		return next(ctx, cmd)
	}
}

func (routeHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		node, ok := ctx.Value(nodeKey{}).(*redis.Client)
		if !ok {
			return next(ctx, cmds)
		}
		pipe := node.Pipeline()
		for _, cmd := range cmds {
			_ = pipe.Process(ctx, cmd)
		}
		_, err := pipe.Exec(ctx)
		return err
	}
}
