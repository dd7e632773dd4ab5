package integration

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/wire"
)

// commandLog is a hook that notes the name of every command it sees,
// alone or in a pipeline: a user's metrics or tracing hook.
type commandLog struct {
	mu    sync.Mutex
	names []string
}

func (l *commandLog) note(cmds ...redis.Cmder) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range cmds {
		l.names = append(l.names, c.Name())
	}
}

// take returns the names noted since the last take.
func (l *commandLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.names
	l.names = nil
	return out
}

func (l *commandLog) DialHook(next redis.DialHook) redis.DialHook { return next }

func (l *commandLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		l.note(cmd)
		return next(ctx, cmd)
	}
}

func (l *commandLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		l.note(cmds...)
		return next(ctx, cmds)
	}
}

// A hook on the cluster client a durable publisher is given sees what the
// publisher sends to one master's node client (go-redis gives a cluster
// client's hooks to none of its node clients): the INFO that counts the
// master's replicas, the XADD and its WAIT. And so do routerd's walks of
// every master (SCAN for the ingress streams).
func TestClusterDurablePublishPassesClientHooks(t *testing.T) {
	ctx := context.Background()
	bus := redistest.StartCluster(t, 3, 1)
	cc := bus.Client(t)
	log := &commandLog{}
	cc.AddHook(log)
	pub, err := publisher.New(cc, publisher.Options{Partitions: 8, Durable: true})
	if err != nil {
		t.Fatal(err)
	}
	ev := wire.Event{ID: "hooked-1", Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
	var last error
	if err := redistest.Wait(ctx, 10*time.Second, "a durable publish acknowledged", func() bool {
		_, last = pub.Publish(ctx, ev)
		return last == nil
	}); err != nil {
		t.Fatalf("%v: %v", err, last)
	}
	seen := log.take()
	for _, want := range []string{"info", "xadd", "wait"} {
		if !slices.Contains(seen, want) {
			t.Errorf("the cluster client's hook saw %v, no %s", seen, want)
		}
	}
	if _, err := redisconn.ScanStreams(ctx, cc, "invalidate:ingress:*"); err != nil {
		t.Fatal(err)
	}
	if seen := log.take(); !slices.Contains(seen, "scan") {
		t.Errorf("the cluster client's hook saw %v for a scan of every master, no scan", seen)
	}
}
