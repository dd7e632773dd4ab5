package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// attack5 on the burst's deferred checks (a channel's first message, a new
// epoch or a gap is checked at the end of its burst with the others, what
// its channel received after it handled once the check is done): many new
// channels' first and second messages arrive in bursts, among forged ones a
// raw client PUBLISHes (another epoch, a version far ahead), while the bus
// refuses the subscriber the histories its checks read, or the cache
// refuses its scripts. The checks fail and drop what came behind them; the
// service says it is not ready; once the bus or the cache answers again,
// every genuine message is applied, each channel stands at its meta, and
// nothing forged moved a position.
func TestAttack5BurstChecksFailingWithForgeriesRecover(t *testing.T) {
	for _, tc := range []struct {
		name          string
		refuse, allow []any // ACL SETUSER rules
		onCache       bool
	}{
		{"bus refuses the histories", []any{"-xrange"}, []any{"+xrange"}, false},
		{"cache refuses scripts", []any{"-eval", "-evalsha"}, []any{"+eval", "+evalsha"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			burstChecksFailing(t, tc.refuse, tc.allow, tc.onCache)
		})
	}
}

func burstChecksFailing(t *testing.T, refuse, allow []any, onCache bool) {
	ctx := context.Background()
	const tenants = 60
	list, yaml := burstMatrix(tenants)
	e := newEnv(t, yaml)
	e.running(list...)
	admin, addr := e.busC, e.bus.Addr
	if onCache {
		admin, addr = e.caches["svc"].Client(t), e.caches["svc"].Addr
	}
	must(t, admin.Do(ctx, "ACL", "SETUSER", "sub", "on", ">pw", "~*", "&*", "+@all").Err())
	user := redis.NewClient(&redis.Options{Addr: addr, Username: "sub", Password: "pw"})
	t.Cleanup(func() { _ = user.Close() })
	bus, cache := redis.UniversalClient(user), redis.UniversalClient(e.caches["svc"].Client(t))
	if onCache {
		bus, cache = e.bus.Client(t), user
	}
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	s, _ := e.subscriberOn(bus, "svc", subscriber.Options{Cache: cache, Registerer: reg})
	for _, tenant := range list {
		e.seed("svc", tenant, "user:1", "active")
		e.seed("svc", tenant, "user:2", "active")
		e.seed("svc", tenant, "forged", "active")
	}

	must(t, admin.Do(ctx, append([]any{"ACL", "SETUSER", "sub"}, refuse...)...).Err())
	forge := func(tenant, epoch string, v int64) {
		raw, err := json.Marshal(&wire.Message{Tenant: tenant, Tag: "active", Epoch: epoch, Version: v, Keys: []string{"forged"}, Event: fmt.Sprint("x/", tenant, v)})
		must(t, err)
		must(t, e.busC.Publish(ctx, names.Channel("invalidate", tenant, "active"), raw).Err())
	}
	for _, tenant := range list {
		forge(tenant, "evil", 1)
	}
	for v := 1; v <= 2; v++ {
		for _, tenant := range list {
			e.publish(wire.Event{Tenant: tenant, Domain: "user", Keys: []string{fmt.Sprint("user:", v)}})
			if v == 1 {
				// Far ahead of the meta, behind the channel's pending check.
				forge(tenant, "", 1000)
			}
		}
	}
	for _, tenant := range list {
		// Published (a channel's two events may merge into one message).
		e.waitAllRead(tenant)
	}
	redistest.Eventually(t, 10*time.Second, "svc not ready while its checks fail", func() bool {
		for _, p := range s.Problems() {
			if p.Reason == subscriber.ReasonCheckFailing || p.Reason == subscriber.ReasonCacheFailing {
				return true
			}
		}
		return false
	})
	// Forge the real epoch's far versions too, now the metas are there.
	for _, tenant := range list {
		ep, _ := e.meta(names.Channel("invalidate", tenant, "active"))
		forge(tenant, ep, 1000)
	}

	must(t, admin.Do(ctx, append([]any{"ACL", "SETUSER", "sub"}, allow...)...).Err())
	for _, tenant := range list {
		e.waitAllGone(15*time.Second, tenant+"'s user:1 and user:2 invalidated", "svc", tenant, []string{"user:1", "user:2"})
	}
	redistest.Eventually(t, 10*time.Second, "svc ready again", s.Ready)
	for _, tenant := range list {
		ch := names.Channel("invalidate", tenant, "active")
		ep, v := e.meta(ch)
		p, _, err := e.stores["svc"].ReadPosition(ctx, tenant, "svc", "active")
		must(t, err)
		if p.Epoch != ep || p.Version != v {
			t.Errorf("%s stored at %s:%d, its meta is %s:%d", ch, p.Epoch, p.Version, ep, v)
		}
		if !e.cached("svc", tenant, "forged") {
			t.Errorf("%s: the key only forged messages named was invalidated", tenant)
		}
	}
	if n := metric(t, reg, "subscriber_unconfirmed_messages_total"); n == 0 {
		t.Errorf("no forged message counted unconfirmed")
	}
}

// attack5: the bus loses its data (FLUSHALL) under a service of many
// channels, with a Handler and a cache: every channel's next message is a
// new epoch, checked at the end of its burst with the others, among forged
// messages of the epochs the bus lost (a raw client replaying what it
// heard, a version on). Every channel's tag goes whole in the cache and to
// the Handler — the lost epoch may have hidden changes — and each channel
// stands at its new meta, not at a forged old-epoch version.
func TestAttack5BusFlushedUnderManyChannelsNewEpochsChecked(t *testing.T) {
	ctx := context.Background()
	const tenants = 80
	list, yaml := burstMatrix(tenants)
	e := newEnv(t, yaml)
	e.running(list...)
	e.router(router.Options{})
	var mu sync.Mutex
	handled := map[string][]subscriber.Invalidation{}
	e.subscriber("svc", subscriber.Options{Cache: e.caches["svc"].Client(t), Handler: func(_ context.Context, inv subscriber.Invalidation) error {
		mu.Lock()
		defer mu.Unlock()
		handled[inv.Tenant] = append(handled[inv.Tenant], inv)
		return nil
	}})
	old := map[string]string{}
	for _, tenant := range list {
		e.publish(wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}})
	}
	for _, tenant := range list {
		ch := names.Channel("invalidate", tenant, "active")
		e.waitVersion(ch, 1)
		old[tenant], _ = e.meta(ch)
		e.seed("svc", tenant, "user:2", "active")
		e.seed("svc", tenant, "other", "active")
	}
	redistest.Eventually(t, 10*time.Second, "every first message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, tenant := range list {
			if len(handled[tenant]) == 0 {
				return false
			}
		}
		return true
	})
	mu.Lock()
	clear(handled)
	mu.Unlock()

	must(t, e.busC.FlushAll(ctx).Err())
	for _, tenant := range list {
		raw, err := json.Marshal(&wire.Message{Tenant: tenant, Tag: "active", Epoch: old[tenant], Version: 2, Keys: []string{"user:2"}, Event: "x/" + tenant})
		must(t, err)
		must(t, e.busC.Publish(ctx, names.Channel("invalidate", tenant, "active"), raw).Err())
		e.publish(wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:2"}})
	}
	for _, tenant := range list {
		e.waitAllGone(15*time.Second, tenant+"'s tag invalidated whole", "svc", tenant, []string{"user:2", "other"})
	}
	redistest.Eventually(t, 10*time.Second, "the Handler got every tag whole", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, tenant := range list {
			whole := false
			for _, inv := range handled[tenant] {
				whole = whole || len(inv.Keys) == 0 && len(inv.Refs) == 0
			}
			if !whole {
				return false
			}
		}
		return true
	})
	for _, tenant := range list {
		ch := names.Channel("invalidate", tenant, "active")
		ep, v := e.meta(ch)
		if ep == old[tenant] {
			t.Fatalf("%s: the router kept the lost epoch %s", ch, ep)
		}
		redistest.Eventually(t, 10*time.Second, ch+" stored at its meta", func() bool {
			p, _, err := e.stores["svc"].ReadPosition(ctx, tenant, "svc", "active")
			must(t, err)
			return p.Epoch == ep && p.Version == v
		})
	}
}

// attack5 on a cluster bus: one master of three is flushed under a service
// of many channels. The channels on it start new epochs, each checked at
// the end of its burst together with the others, while the channels on the
// other masters go on in order in the same bursts: the flushed ones' tags
// go whole, the others' stay key-level (nothing flushed that was not
// asked for), and every change is applied.
func TestAttack5ClusterMasterFlushedNewEpochsInBursts(t *testing.T) {
	ctx := context.Background()
	e := newClusterEnv(t)
	var tenants []string
	for i := range 48 {
		tenants = append(tenants, fmt.Sprint("cf", i))
	}
	mtx := e.startRouter(oneTenantMatrix(strings.Join(tenants, ", ")))
	e.subscribe(mtx, "search-svc")
	channel := func(tenant string) string { return names.Channel("invalidate", tenant, "active") }
	for _, tenant := range tenants {
		_, err := e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}})
		must(t, err)
	}
	for _, tenant := range tenants {
		redistest.Eventually(t, 10*time.Second, tenant+" applied", func() bool {
			return e.position(tenant, "active").Version >= 1
		})
		e.seed(tenant, "user:2", "active")
		e.seed(tenant, "other", "active")
	}
	flushed := e.masterOf("{" + channel(tenants[0]) + "}:meta")
	lost := map[string]bool{}
	for _, tenant := range tenants {
		lost[tenant] = e.masterOf("{"+channel(tenant)+"}:meta") == flushed
	}
	if n := len(slices.DeleteFunc(slices.Clone(tenants), func(t string) bool { return !lost[t] })); n == 0 || n == len(tenants) {
		t.Fatalf("%d of %d channels on the master flushed: want some on it and some not", n, len(tenants))
	}
	must(t, flushed.Client(t).FlushAll(ctx).Err())
	for _, tenant := range tenants {
		_, err := e.pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:2"}})
		must(t, err)
	}
	for _, tenant := range tenants {
		e.waitGone(tenant, "user:2")
		if lost[tenant] {
			e.waitGone(tenant, "other")
		}
	}
	for _, tenant := range tenants {
		ch := channel(tenant)
		meta, err := e.busC.HMGet(ctx, "{"+ch+"}:meta", "epoch", "version").Result()
		must(t, err)
		redistest.Eventually(t, 10*time.Second, ch+" stored at its meta", func() bool {
			p := e.position(tenant, "active")
			return p.Epoch == meta[0] && fmt.Sprint(p.Version) == meta[1]
		})
		if !lost[tenant] {
			if _, err := e.store.Get(ctx, tenant, "other"); err != nil {
				t.Errorf("%s, on a master that kept its data: other invalidated (%v), want key-level", ch, err)
			}
		}
	}
}

// attack5 with the real agent: a routerd agent whose bus user loses XRANGE
// (an ACL edited by mistake) while new channels' first and second messages
// arrive in bursts among forged ones. Its /readyz says 503 with the reason
// while its burst checks fail, 200 once the bus answers again, and then
// every genuine message is applied and no forged one.
func TestAttack5AgentBurstChecksFailingReadyzTruthful(t *testing.T) {
	ctx := context.Background()
	const tenants = 40
	list, yaml := burstMatrix(tenants)
	e := newEnv(t, yaml)
	e.running(list...)
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "agent", "on", ">pw", "~*", "&*", "+@all").Err())
	e.router(router.Options{})
	path := filepath.Join(t.TempDir(), "matrix.yaml")
	must(t, os.WriteFile(path, []byte(yaml), 0o644))
	cmd := exec.Command(testbin.Routerd(t), "agent", "--matrix", path, "--service", "svc", "--redis", "redis://agent:pw@"+e.bus.Addr,
		"--cache-redis", e.caches["svc"].URL, "--listen", testbin.AnyPort, "--check-interval", "1h")
	var log lockedBuffer
	cmd.Stderr = &log
	must(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := testbin.ListenAddr(t, log.String)
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	redistest.Eventually(t, 10*time.Second, "agent ready", func() bool { code, _ := readyz(); return code == 200 })
	for _, tenant := range list {
		e.seed("svc", tenant, "user:1", "active")
		e.seed("svc", tenant, "user:2", "active")
		e.seed("svc", tenant, "forged", "active")
	}

	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "agent", "-xrange").Err())
	forge := func(tenant, epoch string, v int64) {
		raw, err := json.Marshal(&wire.Message{Tenant: tenant, Tag: "active", Epoch: epoch, Version: v, Keys: []string{"forged"}, Event: fmt.Sprint("x/", tenant, v)})
		must(t, err)
		must(t, e.busC.Publish(ctx, names.Channel("invalidate", tenant, "active"), raw).Err())
	}
	for v := 1; v <= 2; v++ {
		for _, tenant := range list {
			forge(tenant, "evil", int64(v))
			e.publish(wire.Event{Tenant: tenant, Domain: "user", Keys: []string{fmt.Sprint("user:", v)}})
			forge(tenant, "", 1000)
		}
	}
	for _, tenant := range list {
		e.waitAllRead(tenant)
	}
	redistest.Eventually(t, 10*time.Second, "/readyz 503 naming the failing check", func() bool {
		code, body := readyz()
		return code == 503 && strings.Contains(body, subscriber.ReasonCheckFailing)
	})
	if !e.cached("svc", list[0], "user:1") {
		t.Fatal("user:1 applied with the histories refused: the attack did not hold the checks back")
	}

	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "agent", "+xrange").Err())
	for _, tenant := range list {
		e.waitAllGone(15*time.Second, tenant+"'s user:1 and user:2 invalidated", "svc", tenant, []string{"user:1", "user:2"})
	}
	redistest.Eventually(t, 10*time.Second, "/readyz 200 again", func() bool { code, _ := readyz(); return code == 200 })
	for _, tenant := range list {
		if !e.cached("svc", tenant, "forged") {
			t.Errorf("%s: the key only forged messages named was invalidated", tenant)
		}
	}
}

// burstMatrix is a matrix of service svc on tag active of tenants t0…tn-1,
// and those tenants.
func burstMatrix(tenants int) ([]string, string) {
	var list []string
	for i := range tenants {
		list = append(list, fmt.Sprint("t", i))
	}
	return list, `
version: 1
tags:
  active: {services: [svc]}
domains:
  user: {tags: [active]}
services:
  svc: {tenants: [` + strings.Join(list, ", ") + `]}
`
}
