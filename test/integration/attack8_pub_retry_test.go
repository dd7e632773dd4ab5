package integration

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/faultproxy"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// attack: the XADD reaches Redis and is appended, but its reply never
// reaches the publisher — the connection is cut right then (as CLIENT KILL
// or a dying load balancer would), the reply is lost until the read times
// out, or the caller's context ends while it waits. Publish returns an
// error, though the event is in the stream; the caller, who did not set an
// id (the README's example sets none), retries as the error tells it to:
// with the same id, which Publish must therefore return with the error.
// The retry leaves exactly one invalidation on the channel, not two with
// two versions, and nothing is lost.
func TestAttack8PubRetryAfterALostReplyInvalidatesOnce(t *testing.T) {
	for _, tc := range []struct {
		name  string
		toxic faultproxy.Toxic
		opt   redis.Options
		quit  bool // the caller cancels its context once the XADD is in
	}{
		{"connection cut", faultproxy.Toxic{Name: "cut", Type: "limit_data", Stream: "downstream", Attributes: map[string]any{"bytes": 0}}, redis.Options{}, false},
		{"reply lost, read timeout", faultproxy.Toxic{Name: "lost", Type: "timeout", Stream: "downstream", Attributes: map[string]any{"timeout": 0}},
			redis.Options{ReadTimeout: 300 * time.Millisecond, MaxRetries: -1}, false},
		{"reply lost, the caller gives up", faultproxy.Toxic{Name: "lost", Type: "timeout", Stream: "downstream", Attributes: map[string]any{"timeout": 0}},
			redis.Options{ReadTimeout: time.Second, MaxRetries: -1, ContextTimeoutEnabled: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "")
			e.router(router.Options{})
			e.subscriber("search-svc", subscriber.Options{})
			e.seed("search-svc", "acme", "user:1", "active")

			proxy := faultproxy.Start(t, e.bus.Addr)
			opt := tc.opt
			opt.Addr, opt.PoolSize = proxy.Addr(), 1 // the one connection, open before the fault
			c := redis.NewClient(&opt)
			t.Cleanup(func() { _ = c.Close() })
			pub, err := publisher.New(c, publisher.Options{Partitions: 4})
			if err != nil {
				t.Fatal(err)
			}
			must(t, c.Ping(ctx).Err())
			must(t, proxy.Add(tc.toxic))

			ev := wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
			stream := names.IngressStream("invalidate", wire.Partition("acme", 4))
			pctx, cancel := context.WithCancel(ctx)
			defer cancel()
			if tc.quit {
				go func() {
					_ = redistest.Wait(ctx, 10*time.Second, "the XADD in", func() bool { return e.busC.XLen(ctx, stream).Val() > 0 })
					cancel()
				}()
			}
			id, err := pub.Publish(pctx, ev)
			if err == nil {
				t.Fatal("Publish returned nil though the XADD's reply never came")
			}
			written := e.busC.XRange(ctx, stream, "-", "+").Val()
			if len(written) == 0 {
				t.Fatalf("the XADD was not appended (Publish: %v): the fault came too early, the test proves nothing", err)
			}
			got, err2 := wire.ParseEventString(written[0].Values[wire.EventField].(string))
			if err2 != nil {
				t.Fatal(err2)
			}
			if id != got.ID {
				t.Fatalf("Publish failed with %q and returned the id %q; the event appended has the id %q: the caller cannot retry with the same id", err, id, got.ID)
			}

			must(t, proxy.Heal())
			ev.ID = id
			if _, err := pub.Publish(ctx, ev); err != nil {
				t.Fatalf("the retry: %v", err)
			}
			e.waitGone("search-svc", "acme", "user:1")
			redistest.Eventually(t, 10*time.Second, "every entry routed", func() bool {
				groups, err := e.busC.XInfoGroups(ctx, stream).Result()
				return err == nil && len(groups) == 1 && groups[0].Lag == 0 && groups[0].Pending == 0
			})
			if hist := e.history("invalidate:acme:active"); len(hist) != 1 || hist[0].Event != id {
				t.Errorf("the channel's messages: %+v, want one, of the event %s", hist, id)
			}
		})
	}
}

// attack: the publisher's connection is killed with CLIENT KILL (from
// redis-cli, as an operator or a proxy's idle reaper would) after its XADD
// ran and before the reply reached it. go-redis sends the pipeline again on
// a new connection by itself, so the stream holds the event twice, under
// one id; whatever Publish returns, the channel gets one invalidation.
func TestAttack8PubClientKilledBeforeTheReplyInvalidatesOnce(t *testing.T) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal("redis-cli is not installed: apt-get install -y redis-tools")
	}
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	e.subscriber("search-svc", subscriber.Options{})
	e.seed("search-svc", "acme", "user:1", "active")

	proxy := faultproxy.Start(t, e.bus.Addr)
	c := redis.NewClient(&redis.Options{Addr: proxy.Addr(), PoolSize: 1, ClientName: "attack8-pub"})
	t.Cleanup(func() { _ = c.Close() })
	pub, err := publisher.New(c, publisher.Options{Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	must(t, c.Ping(ctx).Err())
	must(t, proxy.Add(faultproxy.Toxic{Name: "held", Type: "timeout", Stream: "downstream", Attributes: map[string]any{"timeout": 0}}))

	type result struct {
		id  string
		err error
	}
	done := make(chan result, 1)
	ev := wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
	go func() {
		id, err := pub.Publish(ctx, ev)
		done <- result{id, err}
	}()
	stream := names.IngressStream("invalidate", wire.Partition("acme", 4))
	redistest.Eventually(t, 10*time.Second, "the XADD appended", func() bool { return e.busC.XLen(ctx, stream).Val() > 0 })
	var clientID string
	for _, line := range strings.Split(e.busC.ClientList(ctx).Val(), "\n") {
		if strings.Contains(line, " name=attack8-pub ") {
			clientID, _, _ = strings.Cut(strings.TrimPrefix(line, "id="), " ")
		}
	}
	host, port, _ := strings.Cut(e.bus.Addr, ":")
	if out, err := exec.Command(cli, "-h", host, "-p", port, "CLIENT", "KILL", "ID", clientID).CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("redis-cli CLIENT KILL ID %q: %v %s", clientID, err, out)
	}
	must(t, proxy.Heal()) // the kill reaches the publisher

	r := <-done
	if r.id == "" {
		t.Fatalf("Publish returned no id (error %v)", r.err)
	}
	if r.err != nil {
		ev.ID = r.id
		if _, err := pub.Publish(ctx, ev); err != nil {
			t.Fatalf("the retry with the id: %v", err)
		}
	}
	e.waitGone("search-svc", "acme", "user:1")
	redistest.Eventually(t, 10*time.Second, "every entry routed", func() bool {
		groups, err := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && len(groups) == 1 && groups[0].Lag == 0 && groups[0].Pending == 0
	})
	if hist := e.history("invalidate:acme:active"); len(hist) != 1 || hist[0].Event != r.id {
		t.Errorf("the channel's messages: %+v, want one, of the event %s", hist, r.id)
	}
	t.Logf("Publish: %v; the stream held the event %d times", r.err, e.busC.XLen(ctx, stream).Val())
}
