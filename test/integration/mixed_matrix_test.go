package integration

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/cli"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// newDomainMatrix is testMatrix after a deploy that adds the domain order.
var newDomainMatrix = strings.Replace(testMatrix, "  invoice: {tags: [billing]}\n", "  invoice: {tags: [billing]}\n  order:   {tags: [active]}\n", 1)

// oldRouter runs a router on the matrix before the deploy (testMatrix, no
// domain order), in the same consumer group as the others.
func (e *env) oldRouter(consumer string) func() {
	e.t.Helper()
	old, err := matrix.Parse("old.yaml", []byte(testMatrix))
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := router.New(e.bus.Client(e.t), old, router.Options{Consumer: consumer, ClaimInterval: 100 * time.Millisecond, Block: 100 * time.Millisecond})
	if err != nil {
		e.t.Fatal(err)
	}
	stop := run(e.t, r.Run)
	redistest.Eventually(e.t, 10*time.Second, "old router ready", r.Ready)
	return stop
}

// xaddOrders appends one raw event of the domain order per key, as a
// publisher in any language would.
func (e *env) xaddOrders(tenant string, keys ...string) {
	e.t.Helper()
	stream := wire.IngressStream("invalidate", wire.Partition(tenant, e.mtx.Partitions))
	for _, k := range keys {
		ev := fmt.Sprintf(`{"tenant":%q,"domain":"order","keys":[%q]}`, tenant, k)
		must(e.t, e.busC.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err())
	}
}

// During a rolling deploy that adds a domain, a router still on the old
// matrix reads events of the new domain from the shared consumer group. It
// does not know the domain; a live router does: none of those events may be
// lost (they were dead-lettered and acknowledged, and their keys stayed).
func TestMixedMatricesLoseNoEvent(t *testing.T) {
	e := newEnv(t, newDomainMatrix)
	e.router(router.Options{Consumer: "new"})
	e.oldRouter("old")
	e.subscriber("profile-svc", subscriber.Options{})
	var keys []string
	for i := range 200 {
		k := fmt.Sprintf("order:%d", i)
		keys = append(keys, k)
		e.seed("profile-svc", "acme", k, "active")
	}
	e.xaddOrders("acme", keys...)
	redistest.Eventually(t, 30*time.Second, "every order key invalidated", func() bool {
		for _, k := range keys {
			if e.cached("profile-svc", "acme", k) {
				return false
			}
		}
		return true
	})
	redistest.Eventually(t, 10*time.Second, "no dead letter left", func() bool {
		return e.busC.XLen(context.Background(), wire.DeadLetterStream("invalidate")).Val() == 0
	})
}

// routerdCLI runs a routerd command in-process and returns its output.
func routerdCLI(t *testing.T, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := cli.Main(context.Background(), args, cli.Env{Stdout: &out, Stderr: &errOut}); code != 0 {
		t.Fatalf("routerd %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	return out.String()
}

// Events dead-lettered by a router on an older matrix are re-driven by
// `routerd deadletter replay` once a router knows their domain, each once:
// a second replay finds nothing, and the filters leave other dead letters.
func TestDeadLetterReplayAfterOlderMatrix(t *testing.T) {
	e := newEnv(t, newDomainMatrix)
	ctx := context.Background()
	stopOld := e.oldRouter("old")
	e.subscriber("profile-svc", subscriber.Options{})
	keys := []string{"order:1", "order:2", "order:3"}
	for _, k := range keys {
		e.seed("profile-svc", "acme", k, "active")
	}
	e.xaddOrders("acme", keys...)
	ghost := `{"tenant":"acme","domain":"ghost","keys":["ghost:1"]}` // no matrix knows it
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: wire.IngressStream("invalidate", 0), Values: []any{wire.EventField, ghost}}).Err())
	e.deadLetters(4)
	stopOld()

	url := "redis://" + e.bus.Addr
	if out := routerdCLI(t, "deadletter", "replay", "--redis", url, "--domain", "order", "--since", time.Now().Add(time.Hour).Format(time.RFC3339)); !strings.Contains(out, "0 re-driven") {
		t.Errorf("replay of dead letters since an hour from now: %q", out)
	}
	if out := routerdCLI(t, "deadletter", "replay", "--redis", url, "--reason", "unknown_domain", "--domain", "order"); !strings.Contains(out, "3 re-driven") {
		t.Errorf("first replay: %q, want 3 re-driven", out)
	}
	if out := routerdCLI(t, "deadletter", "replay", "--redis", url, "--reason", "unknown_domain", "--domain", "order"); !strings.Contains(out, "0 re-driven") {
		t.Errorf("second replay: %q, want 0 re-driven", out)
	}
	if n := e.busC.XLen(ctx, wire.DeadLetterStream("invalidate")).Val(); n != 1 {
		t.Errorf("%d dead letters left, want the ghost's alone", n)
	}
	for _, k := range keys {
		if !e.cached("profile-svc", "acme", k) {
			t.Fatalf("%s invalidated before any router knew its domain", k)
		}
	}
	e.router(router.Options{Consumer: "new"})
	for _, k := range keys {
		e.waitGone("profile-svc", "acme", k)
	}
	if _, v := e.meta("invalidate:acme:active"); v > int64(len(keys)) {
		t.Errorf("channel at version %d after %d events: published twice", v, len(keys))
	}
}
