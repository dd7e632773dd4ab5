package cli

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/faultproxy"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/tagstore"
)

// readyz returns the daemon's /readyz status and body.
func readyz(t *testing.T, addr string) (int, string) {
	t.Helper()
	return get(t, "http://"+addr+"/readyz")
}

// outage waits for /readyz to answer 503 naming reason, then heals the
// fault and waits for 200 again. It logs how long each took (the
// guarantees, 5s and 2s, are measured on an idle machine; the deadlines
// here leave room for a loaded one).
func outage(t *testing.T, addr, reason string, fault func(), heal func()) {
	t.Helper()
	start := time.Now()
	fault()
	redistest.Eventually(t, 20*time.Second, "/readyz 503 with "+reason, func() bool {
		code, body := readyz(t, addr)
		return code == 503 && strings.Contains(body, reason)
	})
	down := time.Since(start)
	healed := time.Now()
	heal()
	redistest.Eventually(t, 20*time.Second, "/readyz 200 after "+reason+" healed", func() bool {
		code, _ := readyz(t, addr)
		return code == 200
	})
	t.Logf("%s: 503 after %v, 200 again %v after the heal", reason, down.Round(10*time.Millisecond), time.Since(healed).Round(10*time.Millisecond))
}

func must0(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// /readyz of routerd agent tells the truth through a blackhole of its bus
// link and of its cache link (data silently dropped, connections left
// open): 503 naming the reason, 200 again after the heal. An invalidation
// published while the cache was unreachable is applied after it, not
// dropped; the outage is logged once, not once per failed apply.
func TestAgentReadyzTellsEachOutage(t *testing.T) {
	bus, cache := redistest.Start(t), redistest.Start(t)
	busLink, cacheLink := faultproxy.Start(t, bus.Addr), faultproxy.Start(t, cache.Addr)
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	agentLog := daemon(t, nil, "agent", "--matrix", "../../matrix.yaml", "--redis", "redis://"+busLink.Addr(), "--cache-redis", "redis://"+cacheLink.Addr(),
		"--service", "search-svc", "--listen", anyPort, "--check-interval", "1h")
	addr := listening(t, agentLog)
	redistest.Eventually(t, 20*time.Second, "agent ready", func() bool { code, _ := readyz(t, addr); return code == 200 })

	outage(t, addr, "bus_link_silent", func() { must0(t, busLink.Blackhole()) }, func() { must0(t, busLink.Heal()) })

	store, err := tagstore.New(cache.Client(t), tagstore.Options{})
	must0(t, err)
	ctx := context.Background()
	must0(t, store.Set(ctx, "acme", "user:during", []byte("x"), 0, "active"))
	outage(t, addr, "cache_failing", func() {
		must0(t, cacheLink.Blackhole())
		redistest.Eventually(t, 20*time.Second, "cache breaker open", func() bool {
			_, m := get(t, "http://"+addr+"/metrics")
			return strings.Contains(m, `subscriber_breaker_state{dependency="cache"} 2`) &&
				strings.Contains(m, `subscriber_not_ready{reason="cache_failing"} 1`)
		})
		publishKeys(t, bus.URL, "user", "user:during") // while the cache cannot take it
	}, func() { must0(t, cacheLink.Heal()) })
	redistest.Eventually(t, 20*time.Second, "the invalidation published during the outage applied", func() bool {
		_, err := store.Get(ctx, "acme", "user:during")
		return err != nil
	})
	logs := agentLog.String()
	if n := strings.Count(logs, "dependency failing"); n != 1 {
		t.Errorf("%d \"dependency failing\" lines for one outage, want 1:\n%s", n, logs)
	}
	if n := strings.Count(logs, "applying messages failed"); n > 1 {
		t.Errorf("%d \"applying messages failed\" lines while the breaker was open:\n%s", n, logs)
	}
}

// /readyz of routerd serve is 503 (bus_unreachable) while its bus link is
// a blackhole, and (ingress_reads_failing) while the bus refuses its reads;
// 200 again after each.
func TestServeReadyzTellsBusOutage(t *testing.T) {
	bus := redistest.Start(t)
	link := faultproxy.Start(t, bus.Addr)
	serveLog := daemon(t, nil, "serve", "--matrix", "../../matrix.yaml", "--redis", "redis://"+link.Addr(), "--listen", anyPort)
	addr := listening(t, serveLog)
	redistest.Eventually(t, 20*time.Second, "router ready", func() bool { code, _ := readyz(t, addr); return code == 200 })
	outage(t, addr, "bus_unreachable", func() { must0(t, link.Blackhole()) }, func() { must0(t, link.Heal()) })
	// A bus that answers pings but refuses the reads (an ACL change).
	acl := func(rule string) func() {
		return func() { must0(t, bus.Client(t).Do(context.Background(), "ACL", "SETUSER", "default", rule).Err()) }
	}
	outage(t, addr, "ingress_reads_failing", acl("-xreadgroup"), acl("+xreadgroup"))
}

// /readyz of an agent with --deliver is 503 (deliver_failing) while the
// service's process refuses invalidations, and 200 again once it takes
// them; what waited is delivered.
func TestAgentReadyzTellsDeliverOutage(t *testing.T) {
	bus := redistest.Start(t)
	rcv := &receiver{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	agentLog := daemon(t, nil, "agent", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--deliver", srv.URL,
		"--service", "search-svc", "--listen", anyPort, "--check-interval", "1h")
	addr := listening(t, agentLog)
	redistest.Eventually(t, 20*time.Second, "agent ready", func() bool { code, _ := readyz(t, addr); return code == 200 })
	outage(t, addr, "deliver_failing", func() {
		rcv.setDown(true)
		publishKeys(t, bus.URL, "user", "user:waits")
	}, func() { rcv.setDown(false) })
	redistest.Eventually(t, 20*time.Second, "the waiting invalidation delivered", func() bool {
		for _, d := range rcv.objects() {
			if len(d.Keys) == 1 && d.Keys[0] == "user:waits" {
				return true
			}
		}
		return false
	})
}

// An agent on a cache Redis whose eviction policy can evict tag sets
// (allkeys-lru) does not report ready, and says why, unless started with
// --accept-eviction-risk.
func TestAgentRefusesAnEvictingCache(t *testing.T) {
	bus := redistest.Start(t)
	// As a router marks the bus: an agent is ready only on a marked bus.
	must(t, bus.Client(t).Set(context.Background(), "invalidate:generation", "g1", 0).Err())
	cache := redistest.Start(t, "--maxmemory-policy", "allkeys-lru")
	agentLog := daemon(t, nil, "agent", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--cache-redis", cache.URL,
		"--service", "search-svc", "--listen", anyPort)
	addr := listening(t, agentLog)
	redistest.Eventually(t, 20*time.Second, "/readyz 503 with eviction_policy", func() bool {
		code, body := readyz(t, addr)
		return code == 503 && strings.Contains(body, "eviction_policy") && strings.Contains(body, "allkeys-lru")
	})
	if !strings.Contains(agentLog.String(), "eviction policy can lose invalidations") {
		t.Errorf("the agent did not say why it is not ready:\n%s", agentLog.String())
	}
	accepted := daemon(t, nil, "agent", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--cache-redis", cache.URL,
		"--service", "search-svc", "--listen", anyPort, "--accept-eviction-risk")
	addr = listening(t, accepted)
	redistest.Eventually(t, 20*time.Second, "/readyz 200 with the risk accepted", func() bool { code, _ := readyz(t, addr); return code == 200 })
	if !strings.Contains(accepted.String(), "eviction risk accepted") {
		t.Errorf("the accepted risk is not logged:\n%s", accepted.String())
	}
}
