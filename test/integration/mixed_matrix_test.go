package integration

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/cli"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
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
	stream := names.IngressStream("invalidate", wire.Partition(tenant, e.mtx.Partitions))
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
	e.waitAllGone(30*time.Second, "every order key invalidated", "profile-svc", "acme", keys)
	redistest.Eventually(t, 10*time.Second, "no dead letter left", func() bool {
		return e.busC.XLen(context.Background(), names.DeadLetterStream("invalidate")).Val() == 0
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
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: names.IngressStream("invalidate", 0), Values: []any{wire.EventField, ghost}}).Err())
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
	if n := e.busC.XLen(ctx, names.DeadLetterStream("invalidate")).Val(); n != 1 {
		t.Errorf("%d dead letters left, want the ghost's alone", n)
	}
	for _, k := range keys {
		if !e.cached("profile-svc", "acme", k) {
			t.Fatalf("%s invalidated before any router knew its domain", k)
		}
	}
	// A replay stopped between its two steps and run again: each entry
	// is re-driven twice.
	again, err := e.busC.XRange(ctx, names.RedriveStream("invalidate"), "-", "+").Result()
	must(t, err)
	for _, m := range again {
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: names.RedriveStream("invalidate"), Values: m.Values}).Err())
	}
	e.router(router.Options{Consumer: "new"})
	for _, k := range keys {
		e.waitGone("profile-svc", "acme", k)
	}
	redistest.Eventually(t, 10*time.Second, "every re-driven entry routed", func() bool {
		groups, err := e.busC.XInfoGroups(ctx, names.RedriveStream("invalidate")).Result()
		return err == nil && len(groups) == 1 && groups[0].Pending == 0 && groups[0].Lag == 0
	})
	if _, v := e.meta("invalidate:acme:active"); v > int64(len(keys)) {
		t.Errorf("channel at version %d after %d events: published twice", v, len(keys))
	}
}

// A reload that adds a domain re-drives the events of that domain the
// router dead-lettered before it knew it.
func TestReloadAddingADomainRedrivesItsDeadLetters(t *testing.T) {
	e := newEnv(t, newDomainMatrix)
	old, err := matrix.Parse("old.yaml", []byte(testMatrix))
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(e.bus.Client(t), old, router.Options{ClaimInterval: 100 * time.Millisecond, Block: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "order:1", "active")
	e.xaddOrders("acme", "order:1")
	e.deadLetters(1)
	if err := r.SetMatrix(e.mtx); err != nil {
		t.Fatal(err)
	}
	e.waitGone("profile-svc", "acme", "order:1")
	redistest.Eventually(t, 10*time.Second, "the dead letter gone", func() bool {
		return e.busC.XLen(context.Background(), names.DeadLetterStream("invalidate")).Val() == 0
	})
}

// A router on the old matrix that reads an entry re-driven by a live router
// that knows its domain hands it over to that router instead of
// dead-lettering it again; the other routes it when it runs.
func TestRedrivenEntryHandedOverToTheRouterThatKnowsItsDomain(t *testing.T) {
	e := newEnv(t, newDomainMatrix)
	ctx := context.Background()
	stream := names.RedriveStream("invalidate")
	// The router "new" is alive: it reads the re-drive stream (here, by hand).
	must(t, e.busC.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err())
	must(t, e.busC.XGroupCreateConsumer(ctx, stream, "routerd", "new").Err())
	e.busC.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "routerd", Consumer: "new", Streams: []string{stream, ">"}, Block: -1})
	e.oldRouter("old")
	e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "order:7", "active")
	from := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{
		"stream", from, "entry_id", "1764000000000-0", "deadletter", "1764000000001-0", "for", "new",
		wire.EventField, `{"tenant":"acme","domain":"order","keys":["order:7"]}`,
	}}).Err())
	redistest.Eventually(t, 10*time.Second, "the entry pending for router new", func() bool {
		p, err := e.busC.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "routerd", Start: "-", End: "+", Count: 10}).Result()
		return err == nil && len(p) == 1 && p[0].Consumer == "new"
	})
	if n := e.busC.XLen(ctx, names.DeadLetterStream("invalidate")).Val(); n != 0 {
		t.Fatalf("%d dead letters: the old router dead-lettered an entry a live router can route", n)
	}
	if !e.cached("profile-svc", "acme", "order:7") {
		t.Fatal("order:7 invalidated by a router that does not know its domain")
	}
	e.router(router.Options{Consumer: "new"})
	e.waitGone("profile-svc", "acme", "order:7")
}

// attack: a rolling deploy that adds a tag to an existing domain (user now
// also drops billing-svc's cache under billing). The router still on the
// old matrix knows the domain, so nothing is dead-lettered or re-driven: it
// routes the events it reads to the old tags only and acknowledges them,
// and the keys billing-svc (already on the new matrix) cached under the new
// tag stay cached for good. A live router could route them.
func TestAttackMixedMatricesTagAddedToDomain(t *testing.T) {
	newTag := strings.Replace(testMatrix, "  user:    {tags: [active]}\n", "  user:    {tags: [active, billing]}\n", 1)
	if newTag == testMatrix {
		t.Fatal("the matrix did not change: the test proves nothing")
	}
	e := newEnv(t, newTag)
	e.router(router.Options{Consumer: "new"})
	e.oldRouter("old")
	e.subscriber("billing-svc", subscriber.Options{})
	var keys []string
	for i := range 200 {
		k := fmt.Sprintf("user:%d", i)
		keys = append(keys, k)
		e.seed("billing-svc", "acme", k, "billing")
	}
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	for _, k := range keys {
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","keys":[%q]}`, k)
		must(t, e.busC.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err())
	}
	e.waitAllGone(30*time.Second, "every user key invalidated under the new tag", "billing-svc", "acme", keys)
}

// attack: a rolling deploy that widens a publisher's grant (shop may now
// publish products of globex too). The router still on the old matrix
// dead-letters shop's globex events as not_granted and acknowledges them;
// routers re-drive only unknown_domain dead letters by themselves, so the
// events a live router would route are lost until an operator runs
// routerd deadletter replay, and their keys stay cached.
func TestAttackMixedMatricesGrantWidened(t *testing.T) {
	const oldGrants = testMatrix + `
publishers:
  shop: {domains: [product], tenants: [acme]}
`
	newGrants := strings.Replace(oldGrants, "shop: {domains: [product], tenants: [acme]}", "shop: {domains: [product], tenants: [acme, globex]}", 1)
	if newGrants == oldGrants {
		t.Fatal("the matrix did not change: the test proves nothing")
	}
	old, err := matrix.Parse("old.yaml", []byte(oldGrants))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, newGrants)
	e.router(router.Options{Consumer: "new"})
	r, err := router.New(e.bus.Client(t), old, router.Options{Consumer: "old", ClaimInterval: 100 * time.Millisecond, Block: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	redistest.Eventually(t, 10*time.Second, "old router ready", r.Ready)
	e.subscriber("search-svc", subscriber.Options{})
	var keys []string
	for i := range 100 {
		k := fmt.Sprintf("product:%d", i)
		keys = append(keys, k)
		e.seed("search-svc", "globex", k, "electronics")
	}
	ctx := context.Background()
	for i, k := range keys {
		stream := names.PublisherStream("invalidate", "shop", wire.Partition("globex", e.mtx.Partitions))
		ev := fmt.Sprintf(`{"tenant":"globex","domain":"product","id":"p%d","keys":[%q]}`, i, k)
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err())
	}
	e.waitAllGone(30*time.Second, "every globex product key invalidated", "search-svc", "globex", keys)
}

// attack: a rolling deploy that adds a tenant to a service (billing-svc now
// caches globex too). The router still on the old matrix finds no service
// serving globex on the billing tag, publishes nothing and acknowledges the
// events it read; the keys billing-svc cached for globex stay for good.
func TestAttackMixedMatricesTenantAddedToService(t *testing.T) {
	newTenant := strings.Replace(testMatrix, "billing-svc: {tenants: [acme]}", "billing-svc: {tenants: [acme, globex]}", 1)
	if newTenant == testMatrix {
		t.Fatal("the matrix did not change: the test proves nothing")
	}
	e := newEnv(t, newTenant)
	e.router(router.Options{Consumer: "new"})
	e.oldRouter("old")
	e.subscriber("billing-svc", subscriber.Options{})
	var keys []string
	for i := range 200 {
		k := fmt.Sprintf("invoice:%d", i)
		keys = append(keys, k)
		e.seed("billing-svc", "globex", k, "billing")
	}
	stream := names.IngressStream("invalidate", wire.Partition("globex", e.mtx.Partitions))
	for _, k := range keys {
		ev := fmt.Sprintf(`{"tenant":"globex","domain":"invoice","keys":[%q]}`, k)
		must(t, e.busC.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err())
	}
	e.waitAllGone(30*time.Second, "every globex invoice key invalidated", "billing-svc", "globex", keys)
}

// handingRouter runs a router on m and returns its count of events handed
// over to routers on other matrices.
func (e *env) handingRouter(m *matrix.Matrix, consumer string, claimIdle time.Duration) func() float64 {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	r, err := router.New(e.bus.Client(e.t), m, router.Options{Consumer: consumer, Registerer: reg, ClaimInterval: 100 * time.Millisecond, Block: 100 * time.Millisecond, ClaimIdle: claimIdle})
	if err != nil {
		e.t.Fatal(err)
	}
	run(e.t, r.Run)
	redistest.Eventually(e.t, 10*time.Second, consumer+" ready", r.Ready)
	return func() float64 {
		families, err := reg.Gather()
		must(e.t, err)
		for _, f := range families {
			if f.GetName() == "routerd_handed_over_events_total" {
				return f.GetMetric()[0].GetCounter().GetValue()
			}
		}
		e.t.Fatal("routerd_handed_over_events_total not exported")
		return 0
	}
}

// Two live routers on different matrices hand over to each other every
// event they read from the ingress, once: an entry that came by hand-over
// is routed (or dead-lettered) by the router it was handed to, never handed
// back. Each channel both matrices route gets each event once.
func TestHandoverNeverPingPongs(t *testing.T) {
	e := newEnv(t, newDomainMatrix)
	ctx := context.Background()
	old, err := matrix.Parse("old.yaml", []byte(testMatrix))
	must(t, err)
	newHanded := e.handingRouter(e.mtx, "new", 0)
	oldHanded := e.handingRouter(old, "old", 0)
	e.subscriber("profile-svc", subscriber.Options{})
	const n = 100
	var keys []string
	for i := range n {
		k := fmt.Sprintf("user:%d", i)
		keys = append(keys, k)
		e.seed("profile-svc", "acme", k, "active")
	}
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	for _, k := range keys {
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","keys":[%q]}`, k)
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err())
	}
	for _, k := range keys {
		e.waitGone("profile-svc", "acme", k)
	}
	settled := func(s string) bool {
		groups, err := e.busC.XInfoGroups(ctx, s).Result()
		return err == nil && len(groups) == 1 && groups[0].Pending == 0 && groups[0].Lag == 0
	}
	redistest.Eventually(t, 20*time.Second, "the ingress and the re-drive stream routed", func() bool {
		return settled(stream) && settled(names.RedriveStream("invalidate"))
	})
	if a, b := newHanded(), oldHanded(); a+b != n {
		t.Fatalf("handed over %v (new) + %v (old) events for %d events read once each: want each once", a, b, n)
	}
	if _, v := e.meta("invalidate:acme:active"); v > n {
		t.Errorf("channel at version %d after %d events: a handed-over event was published twice", v, n)
	}
	if dl := e.busC.XLen(ctx, names.DeadLetterStream("invalidate")).Val(); dl != 0 {
		t.Errorf("%d dead letters of events both matrices route", dl)
	}
}

// A router hands entries over to a router on another matrix only while that
// router's registration lasts: once it expired (the router died without
// marking itself stopped), the router routes alone again, handing nothing
// over, and housekeeping removes it.
func TestHandoverStopsWhenPeerRegistrationExpires(t *testing.T) {
	e := newEnv(t, testMatrix)
	ctx := context.Background()
	// Its own registration lasts 5 s (claim idle), and one expired for 5 s
	// more is removed. The entry handed to the ghost is claimed back after
	// 5 s, when the ghost's registration (3 s: time enough to read the
	// first event on a loaded machine) has expired: it is routed here and
	// handed to no one.
	handed := e.handingRouter(e.mtx, "alive", 5*time.Second)
	e.subscriber("profile-svc", subscriber.Options{})
	routers := names.RoutersKey("invalidate")
	expires := time.Now().Add(3 * time.Second).UnixMilli()
	must(t, e.busC.HSet(ctx, routers, "ghost", fmt.Sprintf("%064x %d", 1, expires)).Err())
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	publish := func(k string) {
		e.seed("profile-svc", "acme", k, "active")
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","keys":[%q]}`, k)
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err())
		e.waitGone("profile-svc", "acme", k)
		redistest.Eventually(t, 10*time.Second, "the ingress routed", func() bool {
			groups, err := e.busC.XInfoGroups(ctx, stream).Result()
			return err == nil && len(groups) == 1 && groups[0].Pending == 0 && groups[0].Lag == 0
		})
	}
	publish("user:1")
	if n := handed(); n != 1 {
		t.Fatalf("%v events handed over to the live ghost, want 1", n)
	}
	for time.Now().UnixMilli() <= expires {
		time.Sleep(50 * time.Millisecond) // the ghost's registration expires: the clock is the cause here
	}
	publish("user:2")
	if n := handed(); n != 1 {
		t.Fatalf("%v events handed over: one went to a router whose registration expired", n)
	}
	redistest.Eventually(t, 20*time.Second, "the ghost's expired registration removed", func() bool {
		return !e.busC.HExists(ctx, routers, "ghost").Val()
	})
	if !e.busC.HExists(ctx, routers, "alive").Val() {
		t.Fatal("the live router is not registered")
	}
}

// A router that stops marks itself stopped in the live routers: the one
// left on another matrix hands nothing over to it from then on, and routes
// alone.
func TestHandoverStopsWhenPeerStops(t *testing.T) {
	e := newEnv(t, newDomainMatrix)
	ctx := context.Background()
	_, stopNew := e.router(router.Options{Consumer: "new"})
	old, err := matrix.Parse("old.yaml", []byte(testMatrix))
	must(t, err)
	handed := e.handingRouter(old, "old", 0)
	stopNew()
	if v := e.busC.HGet(ctx, names.RoutersKey("invalidate"), "new").Val(); !strings.HasPrefix(v, "- ") {
		t.Fatalf("the stopped router's registration is %q, not marked stopped", v)
	}
	e.subscriber("profile-svc", subscriber.Options{})
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	e.seed("profile-svc", "acme", "user:1", "active")
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["user:1"]}`}}).Err())
	e.waitGone("profile-svc", "acme", "user:1")
	redistest.Eventually(t, 10*time.Second, "the ingress routed", func() bool {
		groups, err := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && len(groups) == 1 && groups[0].Pending == 0 && groups[0].Lag == 0
	})
	if n := handed(); n != 0 {
		t.Fatalf("%v events handed over to a router that stopped", n)
	}
}

// A router that reloads a matrix that adds a tag to a domain registers it at
// once: the router still on the old matrix hands it every event it reads,
// so the keys cached under the new tag are invalidated.
func TestHandoverAfterReload(t *testing.T) {
	newTag := strings.Replace(testMatrix, "  user:    {tags: [active]}\n", "  user:    {tags: [active, billing]}\n", 1)
	updated, err := matrix.Parse("new.yaml", []byte(newTag))
	must(t, err)
	e := newEnv(t, testMatrix)
	ctx := context.Background()
	reloaded, _ := e.router(router.Options{Consumer: "reloaded"})
	e.oldRouter("old")
	must(t, reloaded.SetMatrix(updated))
	if v := e.busC.HGet(ctx, names.RoutersKey("invalidate"), "reloaded").Val(); !strings.HasPrefix(v, updated.Digest()+" ") {
		t.Fatalf("after the reload the router is registered as %q, not with the new matrix's digest", v)
	}
	// The subscriber runs the new matrix too.
	e.mtx = updated
	e.subscriber("billing-svc", subscriber.Options{})
	var keys []string
	for i := range 100 {
		k := fmt.Sprintf("user:%d", i)
		keys = append(keys, k)
		e.seed("billing-svc", "acme", k, "billing")
	}
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	for _, k := range keys {
		ev := fmt.Sprintf(`{"tenant":"acme","domain":"user","keys":[%q]}`, k)
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, ev}}).Err())
	}
	for _, k := range keys {
		e.waitGone("billing-svc", "acme", k)
	}
}
