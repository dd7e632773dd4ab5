package integration

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/cli"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// grantMatrix is testMatrix with a publishers section: profile-svc may
// publish users of every tenant, shop products of acme only.
const grantMatrix = testMatrix + `
publishers:
  profile-svc: {domains: [user], tenants: all}
  shop:        {domains: [product], tenants: [acme]}
`

// A publisher's own streams carry only what its grant allows: a granted
// event is routed, one outside the grant (another tenant, another domain)
// goes to the dead letters with the reason, and is counted.
func TestPublisherGrants(t *testing.T) {
	e := newEnv(t, grantMatrix)
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})
	e.subscriber("search-svc", subscriber.Options{})
	e.seed("search-svc", "acme", "product:1", "electronics")
	e.seed("search-svc", "globex", "product:2", "electronics")

	shop, err := publisher.New(e.busC, publisher.Options{Publisher: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, ev := range []wire.Event{
		{Tenant: "globex", Domain: "product", Keys: []string{"product:2"}}, // not granted: tenant
		{Tenant: "acme", Domain: "user", WholeTag: true},                   // not granted: domain
		{Tenant: "acme", Domain: "product", Keys: []string{"product:1"}},   // granted
	} {
		if _, err := shop.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	e.waitGone("search-svc", "acme", "product:1")
	dead := e.deadLetters(2)
	want := map[string]bool{
		`publisher "shop" is not granted domain "product" for tenant "globex"`: true,
		`publisher "shop" is not granted domain "user" for tenant "acme"`:      true,
	}
	for _, d := range dead {
		if d.Values["reason"] != router.ReasonNotGranted || !want[d.Values["error"].(string)] {
			t.Errorf("dead letter %v", d.Values)
		}
		delete(want, d.Values["error"].(string))
	}
	if len(want) != 0 {
		t.Errorf("no dead letter for %v", want)
	}
	if !e.cached("search-svc", "globex", "product:2") {
		t.Errorf("an event outside shop's grant invalidated globex's cache")
	}
	redistest.Eventually(t, 5*time.Second, "dead letters counted", func() bool {
		return metric(t, reg, "routerd_events_dead_lettered_total", "reason", router.ReasonNotGranted) == 2
	})
	if v := e.history("invalidate:globex:electronics"); len(v) != 0 {
		t.Errorf("globex's channel got %d messages", len(v))
	}
}

// aclMatrix is grantMatrix with tight limits on tag active (one message a
// second, one kept in history), so that coalescing holds entries and the
// history and event ids are trimmed.
const aclMatrix = `
version: 1
ingress: {partitions: 4}
tags:
  active:      {services: [profile-svc, search-svc], rate: 1, burst: 1, coalesce: 10ms, history: 1}
  electronics: {services: [search-svc]}
  billing:     {services: [billing-svc]}
domains:
  user:    {tags: [active]}
  product: {tags: [electronics, active]}
  invoice: {tags: [billing]}
services:
  profile-svc: {tenants: all}
  search-svc:  {tenants: [acme, globex]}
  billing-svc: {tenants: [acme]}
publishers:
  profile-svc: {domains: [user], tenants: all}
  shop:        {domains: [product], tenants: [acme]}
`

// writeMatrix writes a matrix file for routerd acl.
func writeMatrix(t *testing.T, yaml string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "matrix.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// aclUser creates a user on a Redis from the line `routerd acl` prints for
// the matrix file, with "on >pw", and returns a client logged in as it.
func aclUser(t *testing.T, srv *redistest.Server, matrixFile, user string, flags ...string) *redis.Client {
	t.Helper()
	var out, errOut bytes.Buffer
	args := append([]string{"acl", "--matrix", matrixFile, "--user", user}, flags...)
	if code := cli.Main(context.Background(), args, cli.Env{Stdout: &out, Stderr: &errOut}); code != 0 {
		t.Fatalf("routerd %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
	}
	line := strings.TrimSpace(out.String())
	if !strings.HasPrefix(line, "ACL SETUSER "+user+" reset ") || strings.Contains(line, ">") || strings.Contains(line, "\n") {
		t.Fatalf("routerd acl printed %q, want one ACL SETUSER line without a password", line)
	}
	var cmd []any
	for _, f := range strings.Fields(line) {
		cmd = append(cmd, f)
	}
	cmd = append(cmd, "on", ">pw-"+user)
	if err := srv.Client(t).Do(context.Background(), cmd...).Err(); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: user, Password: "pw-" + user})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// nopermLog is a logger that fails the test on any NOPERM it logs: the
// router and the subscriber log and retry their Redis errors, so a role
// that lacks a permission shows it there.
func nopermLog(t *testing.T, who string) *slog.Logger {
	return slog.New(slog.NewTextHandler(nopermWriter{t, who}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("who", who)
}

type nopermWriter struct {
	t   *testing.T
	who string
}

func (w nopermWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if strings.Contains(line, "NOPERM") {
		w.t.Errorf("%s was refused by its ACL: %s", w.who, line)
	} else {
		w.t.Log(line)
	}
	return len(p), nil
}

// noRefusals fails the test when a server's ACL LOG holds a refusal.
func noRefusals(t *testing.T, name string, srv *redistest.Server) {
	t.Helper()
	entries, err := srv.Client(t).Do(context.Background(), "acl", "log").Slice()
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		t.Errorf("%s refused: %v", name, en)
	}
}

func wantNoPerm(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil || !strings.HasPrefix(err.Error(), "NOPERM") {
		t.Errorf("%s: err %v, want NOPERM", what, err)
	}
}

// The whole path runs with each part logged in as the user `routerd acl`
// made for its role: serve as router, the agents as subscriber (bus) and
// cache (cache Redis), publishers as publisher, with and without a grant.
// Under those users run: routing with source_version, durable publishing
// (WAIT, the bus has a replica), coalescing (held entries refreshed by
// XCLAIM), duplicates, trimmed histories, the chunked path of a large tag,
// an agent catching up from the history after downtime, dead letters, the
// claim of a dead consumer's entry and its removal from the group. Any
// NOPERM, logged or in Redis's ACL LOG, fails the test.
func TestACLRolesRunTheWholePath(t *testing.T) {
	e := newEnv(t, aclMatrix)
	_, busPort, _ := strings.Cut(e.bus.Addr, ":")
	replica := redistest.Start(t, "--replicaof", "127.0.0.1", busPort)
	redistest.Eventually(t, 10*time.Second, "replica in sync", func() bool {
		info, _ := replica.Client(t).Info(context.Background(), "replication").Result()
		return strings.Contains(info, "master_link_status:up")
	})
	file := writeMatrix(t, aclMatrix)
	routerC := aclUser(t, e.bus, file, "router", "--role", "router")
	sharedPub := aclUser(t, e.bus, file, "pub", "--role", "publisher", "--durable")
	profilePub := aclUser(t, e.bus, file, "pub-profile", "--role", "publisher", "--publisher", "profile-svc")
	ctx := context.Background()

	reg := prometheus.NewRegistry()
	r, err := router.New(routerC, e.mtx, router.Options{ClaimInterval: 100 * time.Millisecond, Block: 100 * time.Millisecond,
		ClaimIdle: 300 * time.Millisecond, ForgetConsumers: time.Millisecond, Registerer: reg, Logger: nopermLog(t, "router")})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)

	startAgent := func(service string) func() {
		bus := aclUser(t, e.bus, file, "sub-"+service, "--role", "subscriber", "--service", service)
		cache := aclUser(t, e.caches[service], file, "cache-"+service, "--role", "cache", "--service", service)
		_, stop := e.subscriberOn(bus, service, subscriber.Options{Cache: cache, Logger: nopermLog(t, service),
			Store: tagstore.Options{CardinalityGuard: 2, ChunkSize: 2}})
		return stop
	}
	stopProfile := startAgent("profile-svc")
	startAgent("search-svc")

	grantedPub, err := publisher.New(profilePub, publisher.Options{Publisher: "profile-svc"})
	if err != nil {
		t.Fatal(err)
	}
	otherPub, err := publisher.New(sharedPub, publisher.Options{Durable: true})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(p *publisher.Publisher, ev wire.Event) {
		t.Helper()
		if _, err := p.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}

	// A granted publisher's event, with a source_version.
	e.seed("profile-svc", "acme", "user:1", "active")
	publish(grantedPub, wire.Event{Tenant: "acme", Domain: "user", Entity: "1", SourceVersion: 3, Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "acme", "user:1")

	// The shared ingress, durably, to a service of listed tenants; a whole
	// tag above the cardinality guard goes the chunked path. The same event
	// again is a duplicate.
	for _, k := range []string{"product:1", "product:2", "product:3"} {
		e.seed("search-svc", "globex", k, "electronics")
	}
	dup := wire.Event{ID: "acl-dup", Tenant: "globex", Domain: "product", WholeTag: true}
	publish(otherPub, dup)
	e.waitGone("search-svc", "globex", "product:3")
	publish(otherPub, dup)
	redistest.Eventually(t, 10*time.Second, "the duplicate noticed", func() bool {
		return metric(t, reg, "routerd_publish_duplicates_total") >= 1
	})

	// An agent that was down catches up from the channel history; the
	// second message of acme:active within a second is held by coalescing.
	stopProfile()
	e.seed("profile-svc", "acme", "user:2", "active")
	e.seed("profile-svc", "initech", "user:3", "active")
	publish(grantedPub, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	publish(grantedPub, wire.Event{Tenant: "initech", Domain: "user", Keys: []string{"user:3"}})
	e.waitVersion("invalidate:acme:active", 2)
	e.waitVersion("invalidate:initech:active", 1)
	startAgent("profile-svc")
	e.waitGone("profile-svc", "acme", "user:2")
	e.waitGone("profile-svc", "initech", "user:3")
	if metric(t, reg, "routerd_messages_delayed_total") == 0 {
		t.Errorf("no message was held by coalescing")
	}

	// Outside the grant: dead-lettered by the router user.
	publish(grantedPub, wire.Event{Tenant: "acme", Domain: "product", WholeTag: true})
	if dead := e.deadLetters(1); dead[0].Values["reason"] != router.ReasonNotGranted {
		t.Errorf("dead letter %v", dead[0].Values)
	}

	// A router that died holding an entry: the router user claims and
	// routes it, then removes the dead consumer from the group.
	e.seed("search-svc", "acme", "product:9", "electronics")
	stream := names.IngressStream("invalidate", wire.Partition("acme", 4))
	if _, err := e.busC.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"product","keys":["product:9"]}`}})
		pipe.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "routerd", Consumer: "dead", Streams: []string{stream, ">"}, Count: 1})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("search-svc", "acme", "product:9")
	redistest.Eventually(t, 10*time.Second, "the dead consumer removed", func() bool {
		consumers, err := e.busC.XInfoConsumers(ctx, stream, "routerd").Result()
		if err != nil {
			return false
		}
		for _, c := range consumers {
			if c.Name == "dead" {
				return false
			}
		}
		return true
	})
	if metric(t, reg, "routerd_entries_claimed_total") == 0 {
		t.Errorf("nothing claimed")
	}

	// Redis refused nothing, logged or not.
	noRefusals(t, "bus", e.bus)
	for _, svc := range []string{"profile-svc", "search-svc"} {
		noRefusals(t, svc+" cache", e.caches[svc])
	}
}

// What each role must not do answers NOPERM.
func TestACLRolesRefuseTheRest(t *testing.T) {
	e := newEnv(t, grantMatrix)
	file := writeMatrix(t, grantMatrix)
	ctx := context.Background()
	own := names.PublisherStream("invalidate", "profile-svc", 0)
	shop := names.PublisherStream("invalidate", "shop", 0)
	shared := names.IngressStream("invalidate", 0)
	for _, s := range []string{own, shared, shop} { // as a router makes them
		if err := e.busC.XGroupCreateMkStream(ctx, s, "routerd", "0").Err(); err != nil {
			t.Fatal(err)
		}
	}

	for _, pc := range []struct {
		user, stream string
		flags        []string
	}{
		{"pub-profile", own, []string{"--publisher", "profile-svc"}},
		{"pub", shared, nil},
	} {
		c := aclUser(t, e.bus, file, pc.user, append([]string{"--role", "publisher"}, pc.flags...)...)
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: pc.stream, Values: []any{"event", "{}"}}).Err(); err != nil {
			t.Errorf("%s: XADD to its stream %s: %v", pc.user, pc.stream, err)
		}
		if err := c.Get(ctx, names.PartitionsKey("invalidate")).Err(); err != nil && err != redis.Nil {
			t.Errorf("%s: GET the partition count: %v", pc.user, err)
		}
		wantNoPerm(t, pc.user+": PUBLISH to a channel", c.Publish(ctx, "invalidate:acme:active", `{"forged":true}`).Err())
		wantNoPerm(t, pc.user+": XTRIM of its ingress", c.XTrimMaxLen(ctx, pc.stream, 0).Err())
		wantNoPerm(t, pc.user+": DEL of its ingress", c.Del(ctx, pc.stream).Err())
		wantNoPerm(t, pc.user+": XGROUP DESTROY", c.XGroupDestroy(ctx, pc.stream, "routerd").Err())
		wantNoPerm(t, pc.user+": XRANGE of its ingress", c.XRange(ctx, pc.stream, "-", "+").Err())
		wantNoPerm(t, pc.user+": SET of the partition count", c.Set(ctx, names.PartitionsKey("invalidate"), 1, 0).Err())
		wantNoPerm(t, pc.user+": HSET of a channel's meta", c.HSet(ctx, "{invalidate:acme:active}:meta", "version", 1).Err())
		for _, other := range []string{own, shop, shared} {
			if other != pc.stream {
				wantNoPerm(t, pc.user+": XADD to "+other, c.XAdd(ctx, &redis.XAddArgs{Stream: other, Values: []any{"event", "{}"}}).Err())
			}
		}
	}

	sub := aclUser(t, e.bus, file, "sub-search", "--role", "subscriber", "--service", "search-svc")
	wantNoPerm(t, "subscriber: XADD to the ingress", sub.XAdd(ctx, &redis.XAddArgs{Stream: shared, Values: []any{"event", "{}"}}).Err())
	wantNoPerm(t, "subscriber: PUBLISH", sub.Publish(ctx, "invalidate:acme:active", "{}").Err())
	wantNoPerm(t, "subscriber: HSET of its channel's meta", sub.HSet(ctx, "{invalidate:acme:active}:meta", "version", 1).Err())
	wantNoPerm(t, "subscriber: HMGET of another service's channel meta", sub.HMGet(ctx, "{invalidate:acme:billing}:meta", "version").Err())
	if err := sub.HMGet(ctx, "{invalidate:acme:active}:meta", "version").Err(); err != nil {
		t.Errorf("subscriber: HMGET of its channel's meta: %v", err)
	}
	subscribe := func(ps *redis.PubSub) error {
		defer ps.Close()
		_, err := ps.Receive(ctx) // the subscribe reply, or its error
		return err
	}
	if err := subscribe(sub.Subscribe(ctx, "invalidate:acme:electronics")); err != nil {
		t.Errorf("subscriber: SUBSCRIBE to its channel: %v", err)
	}
	wantNoPerm(t, "subscriber: SUBSCRIBE to another service's channel", subscribe(sub.Subscribe(ctx, "invalidate:acme:billing")))
	wantNoPerm(t, "subscriber: SUBSCRIBE to a tenant it does not serve", subscribe(sub.Subscribe(ctx, "invalidate:initech:active")))
	wantNoPerm(t, "subscriber: PSUBSCRIBE to every channel", subscribe(sub.PSubscribe(ctx, "invalidate:*")))

	every := aclUser(t, e.bus, file, "sub-profile", "--role", "subscriber", "--service", "profile-svc")
	if err := subscribe(every.Subscribe(ctx, "invalidate:newco:active", "invalidate:tenants")); err != nil {
		t.Errorf("subscriber of every tenant: SUBSCRIBE to a tenant's channel and the announcements: %v", err)
	}
	// It subscribes to exact channels only: a pattern taxes every PUBLISH.
	wantNoPerm(t, "subscriber of every tenant: PSUBSCRIBE", subscribe(every.PSubscribe(ctx, "invalidate:*:active")))
	wantNoPerm(t, "subscriber of every tenant: SUBSCRIBE to another tag", subscribe(every.Subscribe(ctx, "invalidate:acme:billing")))

	cache := aclUser(t, e.caches["search-svc"], file, "cache-search", "--role", "cache", "--service", "search-svc")
	if err := cache.Get(ctx, "{tenant:acme}:product:1").Err(); err != nil && err != redis.Nil {
		t.Errorf("cache: GET of a served tenant's key: %v", err)
	}
	wantNoPerm(t, "cache: GET of a tenant it does not serve", cache.Get(ctx, "{tenant:initech}:product:1").Err())
	wantNoPerm(t, "cache: FLUSHALL", cache.FlushAll(ctx).Err())
	wantNoPerm(t, "cache: KEYS", cache.Keys(ctx, "*").Err())
	wantNoPerm(t, "cache: CONFIG SET", cache.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err())
}

// clusterUser creates the user of `routerd acl --cluster` on every node of a
// cluster and returns a cluster client logged in as it.
func clusterUser(t *testing.T, cl *redistest.Cluster, matrixFile, user string, flags ...string) *redis.ClusterClient {
	t.Helper()
	for _, n := range cl.Nodes {
		aclUser(t, n, matrixFile, user, append(flags, "--cluster")...)
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs, Username: user, Password: "pw-" + user,
		ClusterStateReloadInterval: 500 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// On Redis Cluster too, with sharded pub/sub: a granted publisher's event
// and one of a tenant first seen by the router (announced to the subscriber
// of every tenant) reach the caches, all under the users of `routerd acl
// --cluster`, and no node refused anything.
func TestACLRolesOnCluster(t *testing.T) {
	const yaml = `
version: 1
ingress: {partitions: 4}
tags:
  active: {services: [profile-svc]}
domains:
  user: {tags: [active]}
services:
  profile-svc: {tenants: all}
publishers:
  profile-svc: {domains: [user], tenants: all}
`
	mtx, err := matrix.Parse("cluster.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	file := writeMatrix(t, yaml)
	cs := redistest.StartClusters(t, redistest.Shape{Masters: 3}, redistest.Shape{Masters: 3})
	bus, caches := cs[0], cs[1]
	ctx := context.Background()

	r, err := router.New(clusterUser(t, bus, file, "router", "--role", "router"), mtx, router.Options{
		Block: 100 * time.Millisecond, ClaimInterval: 100 * time.Millisecond, Logger: nopermLog(t, "router")})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.Run)
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)

	cacheC := clusterUser(t, caches, file, "cache", "--role", "cache", "--service", "profile-svc")
	s, err := subscriber.New(clusterUser(t, bus, file, "sub", "--role", "subscriber", "--service", "profile-svc"),
		subscriber.Options{Service: "profile-svc", Matrix: mtx, Cache: cacheC, CheckInterval: time.Hour, Logger: nopermLog(t, "subscriber")})
	if err != nil {
		t.Fatal(err)
	}
	run(t, s.Run)
	redistest.Eventually(t, 10*time.Second, "subscriber ready", s.Ready)

	store, err := tagstore.New(caches.Client(t), tagstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := publisher.New(clusterUser(t, bus, file, "pub", "--role", "publisher", "--publisher", "profile-svc", "--durable"),
		publisher.Options{Publisher: "profile-svc", Durable: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tenant := range []string{"acme", "globex", "initech"} {
		if err := store.Set(ctx, tenant, "user:1", []byte("v"), 0, "active"); err != nil {
			t.Fatal(err)
		}
		if _, err := pub.Publish(ctx, wire.Event{Tenant: tenant, Domain: "user", Keys: []string{"user:1"}}); err != nil {
			t.Fatal(err)
		}
		redistest.Eventually(t, 15*time.Second, tenant+"/user:1 invalidated", func() bool {
			_, err := store.Get(ctx, tenant, "user:1")
			return err == redis.Nil
		})
	}
	for _, n := range append(bus.Nodes, caches.Nodes...) {
		noRefusals(t, n.Addr, n)
	}
}

// Two publishers granted the same domain cannot silence each other: an event
// id or a source_version one of them chose does not make the other's event a
// duplicate, nor an older one, on the channels they share.
func TestPublishersCannotSilenceEachOther(t *testing.T) {
	e := newEnv(t, testMatrix+`
publishers:
  profile-svc: {domains: [user], tenants: all}
  rogue:       {domains: [user], tenants: all}
`)
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	ctx := context.Background()
	pubs := map[string]*publisher.Publisher{}
	for _, name := range []string{"profile-svc", "rogue"} {
		p, err := publisher.New(e.busC, publisher.Options{Publisher: name})
		if err != nil {
			t.Fatal(err)
		}
		pubs[name] = p
	}
	publish := func(who string, ev wire.Event) {
		t.Helper()
		if _, err := pubs[who].Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}

	// The rogue takes the victim's next event id first.
	publish("rogue", wire.Event{ID: "victim-1", Tenant: "acme", Domain: "user", Keys: []string{"user:0"}})
	e.waitVersion("invalidate:acme:active", 1)
	e.seed("profile-svc", "acme", "user:1", "active")
	publish("profile-svc", wire.Event{ID: "victim-1", Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	e.waitGone("profile-svc", "acme", "user:1")

	// The rogue claims a source_version far ahead for the victim's entity.
	publish("rogue", wire.Event{Tenant: "acme", Domain: "user", Entity: "42", SourceVersion: 1 << 50, Keys: []string{"user:42"}})
	e.waitVersion("invalidate:acme:active", 3)
	e.seed("profile-svc", "acme", "user:42", "active")
	publish("profile-svc", wire.Event{Tenant: "acme", Domain: "user", Entity: "42", SourceVersion: 7, Keys: []string{"user:42"}})
	e.waitGone("profile-svc", "acme", "user:42")
}

// An event on the shared ingress cannot suppress a granted publisher's
// events: whatever entity it names ("profile-svc/42" spells the publisher's
// entity 42), its source_version is kept apart from every publisher's. The
// attack is a raw XADD, as redis-cli would send it.
func TestSharedIngressCannotSuppressAPublisher(t *testing.T) {
	e := newEnv(t, grantMatrix)
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})
	ctx := context.Background()
	forged := `{"tenant":"acme","domain":"user","entity":"profile-svc/42","source_version":1125899906842624,"keys":["user:42"]}`
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, forged}}).Err())
	e.waitVersion("invalidate:acme:active", 1)

	e.seed("profile-svc", "acme", "user:42", "active")
	victim, err := publisher.New(e.busC, publisher.Options{Publisher: "profile-svc"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := victim.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Entity: "42", SourceVersion: 7, Keys: []string{"user:42"}}); err != nil {
		t.Fatal(err)
	}
	e.waitGone("profile-svc", "acme", "user:42")
}

// What a publisher user can still do to a stream it may write: XADD's own
// options (MAXLEN 0, an id at the end of the id space), which no Redis ACL
// can forbid. With grants that harms only the attacker's own streams: the
// shared ingress and the other publishers route on. An exhausted stream
// refuses every later XADD until an operator DELetes it; once the router has
// read and acknowledged everything in it (XPENDING 0, lag 0) the DEL loses
// nothing, and the router makes the group again and routes what comes next.
func TestPublisherCanExhaustOnlyItsOwnStream(t *testing.T) {
	e := newEnv(t, grantMatrix)
	file := writeMatrix(t, grantMatrix)
	ctx := context.Background()
	e.router(router.Options{})
	e.subscriber("profile-svc", subscriber.Options{})

	attacker := aclUser(t, e.bus, file, "pub-profile", "--role", "publisher", "--publisher", "profile-svc")
	granted, err := publisher.New(attacker, publisher.Options{Publisher: "profile-svc"})
	if err != nil {
		t.Fatal(err)
	}
	n := e.mtx.Partitions
	own := names.PublisherStream("invalidate", "profile-svc", wire.Partition("acme", n))
	const last = "18446744073709551615-18446744073709551615"
	if err := attacker.XAdd(ctx, &redis.XAddArgs{Stream: own, ID: last, Values: []any{"e", "x"}}).Err(); err != nil {
		t.Fatalf("XADD of the last id to its own stream: %v (Redis ACLs allow it; the docs say so)", err)
	}
	// Its own stream is exhausted: its own events for acme are refused.
	if _, err := granted.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}); err == nil ||
		!strings.Contains(err.Error(), "exhausted") {
		t.Fatalf("publish to an exhausted stream: err %v, want Redis's 'exhausted the last possible ID'", err)
	}
	// Nobody else's: the shared ingress and the other publishers' streams.
	for _, s := range []string{names.IngressStream("invalidate", 0), names.PublisherStream("invalidate", "shop", 0)} {
		wantNoPerm(t, "XADD MAXLEN 0 to "+s, attacker.XAdd(ctx, &redis.XAddArgs{Stream: s, MaxLen: 0, ID: last, Values: []any{"e", "x"}}).Err())
	}
	e.seed("profile-svc", "acme", "user:2", "active")
	e.publish(wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}})
	e.waitGone("profile-svc", "acme", "user:2")

	// The operator's recovery: wait until the router has read and
	// acknowledged the stream (the forged entry is dead-lettered), DEL it.
	redistest.Eventually(t, 10*time.Second, "exhausted stream read and acknowledged", func() bool {
		groups, err := e.busC.XInfoGroups(ctx, own).Result()
		return err == nil && len(groups) == 1 && groups[0].Pending == 0 && groups[0].Lag == 0 &&
			groups[0].LastDeliveredID == last
	})
	dead, err := e.busC.XRange(ctx, names.InvalidDeadLetterStream("invalidate"), "-", "+").Result()
	if err != nil || len(dead) != 1 || dead[0].Values["reason"] != "malformed" || dead[0].Values["entry_id"] != last {
		t.Errorf("dead letters %v (%v), want the forged entry %s as malformed", dead, err, last)
	}
	if err := e.busC.Del(ctx, own).Err(); err != nil {
		t.Fatal(err)
	}
	e.seed("profile-svc", "acme", "user:3", "active")
	redistest.Eventually(t, 10*time.Second, "publishing again after the DEL", func() bool {
		_, err := granted.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:3"}})
		return err == nil
	})
	e.waitGone("profile-svc", "acme", "user:3")
}
