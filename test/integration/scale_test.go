package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// registerTenants fills the router's tenant registry with n tenants
// t-00000… in pipelined batches.
func registerTenants(t *testing.T, e *env, n int) []string {
	t.Helper()
	ctx := context.Background()
	tenants := make([]string, n)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("t-%05d", i)
	}
	for i := 0; i < n; i += 1000 {
		args := make([]any, 0, 1000)
		for _, tn := range tenants[i:min(i+1000, n)] {
			args = append(args, tn)
		}
		must(t, e.busC.SAdd(ctx, names.TenantsKey(e.mtx.Prefix), args...).Err())
	}
	return tenants
}

// closedForOutputBuffer counts the clients the bus closed for exceeding
// their output buffer limit, from its log (Redis 7.0 has no INFO field).
func closedForOutputBuffer(t *testing.T, e *env) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(e.bus.Addr)
	log, err := os.ReadFile(filepath.Join(e.bus.Dir, "redis-"+port+".log"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(log), "overcoming of output buffer limits")
}

// pubsubClients lists the ids of the bus's pub/sub connections and how
// many channels each holds (CLIENT LIST TYPE pubsub).
func pubsubClients(t *testing.T, e *env) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, line := range strings.Split(e.busC.ClientList(context.Background()).Val(), "\n") {
		f := map[string]string{}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			f[k] = v
		}
		if f["flags"] != "P" && !strings.Contains(f["flags"], "P") {
			continue
		}
		n, _ := strconv.Atoi(f["sub"])
		out[f["id"]] = n
	}
	return out
}

// A subscriber of every tenant reads the registry of 20,000 tenants in SSCAN
// pages, and holds its subscriptions on a bus whose
// pub/sub output buffer limit is far below what the confirmations of all
// its channels take at once (here 256 KB for 6,000 channels, as 32 MB is for
// a million): it subscribes in chunks it reads the replies of before
// sending more, over several connections, so the bus never closes one; it
// is ready only once every subscription is confirmed, and says so in
// subscriber_subscriptions{state}. Before, the agent sent every chunk
// without reading, the bus closed the connection, go-redis resubscribed
// everything in one command, and the loop went on while it said ready.
func TestSubscriptionsHoldUnderATinyPubSubBuffer(t *testing.T) {
	ctx := context.Background()
	e := newEnvBus(t, "", "--client-output-buffer-limit", "pubsub 128kb 64kb 60")
	const n = 20000
	tenants := registerTenants(t, e, n)
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	s, _ := e.subscriberReadyWithin(30*time.Second, e.bus.Client(t), "profile-svc", subscriber.Options{Registerer: reg, ChannelsPerConn: 5000})

	want := float64(n + 1) // every tenant's channel and the announcements
	if got := metric(t, reg, "subscriber_subscriptions", "state", "held"); got != want {
		t.Errorf("ready with %v subscriptions held, want %v", got, want)
	}
	if got := metric(t, reg, "subscriber_subscriptions", "state", "expected"); got != want {
		t.Errorf("subscriber_subscriptions{state=expected} = %v, want %v", got, want)
	}
	last := tenants[n-1]
	channel := "invalidate:" + last + ":active"
	if got := e.busC.PubSubNumSub(ctx, channel).Val()[channel]; got != 1 {
		t.Errorf("%s has %d subscribers, want 1", channel, got)
	}
	// The registry is read in SSCAN pages, never in one SMEMBERS that
	// holds the bus while it answers all of it.
	if stats := e.busC.Info(ctx, "commandstats").Val(); strings.Contains(stats, "cmdstat_smembers:") {
		t.Errorf("the bus ran SMEMBERS: %s", stats[strings.Index(stats, "cmdstat_smembers:"):][:60])
	}
	conns := pubsubClients(t, e)
	held := 0
	for _, n := range conns {
		held += n
	}
	if held != n+1 {
		t.Errorf("the bus's pub/sub connections hold %d subscriptions (%v), want %d", held, conns, n+1)
	}
	e.seed("profile-svc", last, "user:1", "active")
	e.publish(wire.Event{Tenant: last, Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", last, "user:1")
	if !s.Ready() {
		t.Errorf("not ready after the live invalidation: %v", s.Problems())
	}
	if n := closedForOutputBuffer(t, e); n != 0 {
		t.Errorf("the bus closed %d pub/sub connections for exceeding their output buffer limit", n)
	}
	if after := pubsubClients(t, e); fmt.Sprint(after) != fmt.Sprint(conns) {
		t.Errorf("the pub/sub connections changed (closed by the bus?): %v, then %v", conns, after)
	}
}

// k instances of a service of every tenant, each with --tenant-shard i/k,
// subscribe every channel of the registry exactly once between them, and
// a tenant's invalidation is applied by its instance; a tenant announced
// while they run joins exactly one of them.
func TestTenantShardsSubscribeEveryChannelOnce(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	tenants := registerTenants(t, e, 300)
	e.router(router.Options{})
	const k = 3
	for i := 0; i < k; i++ {
		e.subscriber("profile-svc", subscriber.Options{TenantShard: wire.TenantShard{I: i, K: k}})
	}
	subscribers := func(tenant string) int64 {
		ch := "invalidate:" + tenant + ":active"
		return e.busC.PubSubNumSub(ctx, ch).Val()[ch]
	}
	for _, tn := range tenants {
		if n := subscribers(tn); n != 1 {
			t.Errorf("%s's channel has %d subscribers among the %d shards, want 1", tn, n, k)
		}
	}
	e.seed("profile-svc", "newco", "user:1", "active")
	e.publish(wire.Event{Tenant: "newco", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "newco", "user:1")
	redistest.Eventually(t, 10*time.Second, "the new tenant's channel subscribed", func() bool { return subscribers("newco") == 1 })
	last := tenants[len(tenants)-1]
	e.seed("profile-svc", last, "user:1", "active")
	e.publish(wire.Event{Tenant: last, Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", last, "user:1")
	if n := subscribers("newco"); n != 1 {
		t.Errorf("the announced tenant's channel has %d subscribers, want 1", n)
	}
}

// With a history TTL, the publish script expires a channel's history and
// event ids that long after its last message, and keeps the meta (the
// epoch and version, the truth of positions). A subscriber whose channel's
// history expired while it was away finds that the history does not reach
// back, and invalidates the tag whole.
func TestHistoryTTLExpiresHistoriesAndSubscribersRecoverWhole(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, strings.Replace(testMatrix, "ingress: {partitions: 4}", "ingress: {partitions: 4}\ndefaults: {history_ttl: 1h}", 1))
	e.router(router.Options{})
	const ch = "invalidate:acme:active"
	_, stop := e.subscriber("profile-svc", subscriber.Options{})
	e.seed("profile-svc", "acme", "user:1", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "acme", "user:1")
	for key, want := range map[string]bool{"{" + ch + "}:history": true, "{" + ch + "}:events": true, "{" + ch + "}:meta": false} {
		ttl := e.busC.PTTL(ctx, key).Val()
		if expires := ttl > 0 && ttl <= time.Hour; expires != want {
			t.Errorf("%s: PTTL %v, want an expiry: %v", key, ttl, want)
		}
	}
	stop()

	// Away: two messages, then the history expires (as its TTL would).
	e.seed("profile-svc", "acme", "user:2", "active")
	e.seed("profile-svc", "acme", "user:3", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitVersion(ch, 2)
	must(t, e.busC.PExpire(ctx, "{"+ch+"}:history", time.Millisecond).Err())
	must(t, e.busC.PExpire(ctx, "{"+ch+"}:events", time.Millisecond).Err())
	redistest.Eventually(t, 5*time.Second, "the history expired", func() bool {
		return e.busC.Exists(ctx, "{"+ch+"}:history").Val() == 0
	})
	reg := prometheus.NewRegistry()
	e.subscriber("profile-svc", subscriber.Options{Registerer: reg})
	e.waitGone("profile-svc", "acme", "user:2")
	if e.cached("profile-svc", "acme", "user:3") {
		t.Error("user:3 is still cached: the channel whose history expired was not invalidated whole")
	}
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "whole_tag"); got != 1 {
		t.Errorf("%v whole-tag recoveries, want 1", got)
	}
}

// The first check of a service with no stored position replays every
// channel from its history: the histories are read in pipelines, not one
// XRANGE round trip a channel (a new service of 10M channels took half an
// hour that way), and every channel ends at its meta. The service ran on
// this bus before (it recorded the bus's generation with its cache Redis)
// and every channel published first while it was down: the channels are
// fresh, replayed from version 1 (a service that never recorded the
// generation takes each such channel whole, recovery.Check).
func TestFirstCheckBatchesItsRecoveries(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	const n = 300
	events := make([]wire.Event, n)
	for i := range events {
		events[i] = wire.Event{Tenant: fmt.Sprintf("t-%05d", i), Domain: "user", Keys: []string{"user:1"}}
	}
	if _, err := e.pub.PublishBatch(ctx, events); err != nil {
		t.Fatal(err)
	}
	for i := range events {
		e.waitVersion("invalidate:"+events[i].Tenant+":active", 1)
	}
	for i := range events {
		e.seed("profile-svc", events[i].Tenant, "user:1", "active")
	}
	must(t, e.caches["profile-svc"].Client(t).Set(ctx, names.GenerationSeenKey("profile-svc"), e.busIdentity(), 0).Err())
	bus := e.bus.Client(t)
	counter := &redistest.Counter{Name: "xrange"}
	bus.AddHook(counter)
	reg := prometheus.NewRegistry()
	e.subscriberOn(bus, "profile-svc", subscriber.Options{Registerer: reg})
	for i := range events {
		e.waitGone("profile-svc", events[i].Tenant, "user:1")
	}
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "replay"); got != n {
		t.Errorf("%v replays, want %d", got, n)
	}
	if got := counter.N(); got != 0 {
		t.Errorf("%d XRANGE round trips of their own for %d channels to replay, want them in pipelines", got, n)
	}
}

// The first check of a service that never recorded the bus's generation
// takes every channel already published whole (recovery.Check: an epoch
// may have started after a bus loss), in pipelines (wholeTags), and every
// channel ends at its meta with the keys gone.
func TestFirstCheckOfANewServiceTakesPublishedChannelsWhole(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	const n = 300
	events := make([]wire.Event, n)
	for i := range events {
		events[i] = wire.Event{Tenant: fmt.Sprintf("t-%05d", i), Domain: "user", Keys: []string{"user:1"}}
	}
	if _, err := e.pub.PublishBatch(ctx, events); err != nil {
		t.Fatal(err)
	}
	for i := range events {
		e.waitVersion("invalidate:"+events[i].Tenant+":active", 1)
	}
	for i := range events {
		e.seed("profile-svc", events[i].Tenant, "user:1", "active")
	}
	reg := prometheus.NewRegistry()
	e.subscriber("profile-svc", subscriber.Options{Registerer: reg})
	for i := range events {
		e.waitGone("profile-svc", events[i].Tenant, "user:1")
	}
	if got := metric(t, reg, "subscriber_recoveries_total", "kind", "whole_tag"); got != n {
		t.Errorf("%v whole-tag recoveries, want %d", got, n)
	}
}
