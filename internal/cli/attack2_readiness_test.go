package cli

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/tagstore"
)

// attack2Agent runs routerd serve and a ready search-svc agent on bus and
// cache, with extra agent flags, and returns the agent's address and log.
func attack2Agent(t *testing.T, bus, cache *redistest.Server, extra ...string) (string, *syncBuffer) {
	t.Helper()
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	args := append([]string{"agent", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--cache-redis", cache.URL,
		"--service", "search-svc", "--listen", anyPort}, extra...)
	log := daemon(t, nil, args...)
	addr := listening(t, log)
	redistest.Eventually(t, 20*time.Second, "agent ready", func() bool { code, _ := readyz(t, addr); return code == 200 })
	return addr, log
}

// `CLIENT PAUSE … WRITE` on the cache Redis (an operator's maintenance, a
// failover script): PING and reads answer, every script call waits. The
// agent applies nothing; /readyz must be 503 within seconds, and 200 again
// after CLIENT UNPAUSE with the waiting invalidation applied.
func TestAttack2AgentReadyzCachePausedForWrites(t *testing.T) {
	bus, cache := redistest.Start(t), redistest.Start(t)
	addr, log := attack2Agent(t, bus, cache, "--check-interval", "1h")
	ctx := context.Background()
	store, err := tagstore.New(cache.Client(t), tagstore.Options{})
	must0(t, err)
	must0(t, store.Set(ctx, "acme", "user:paused", []byte("x"), 0, "active"))

	admin := cache.Client(t)
	must0(t, admin.Do(ctx, "CLIENT", "PAUSE", "120000", "WRITE").Err())
	defer admin.Do(context.Background(), "CLIENT", "UNPAUSE")
	publishKeys(t, bus.URL, "user", "user:paused")
	if err := redistest.Wait(ctx, 20*time.Second, "/readyz 503 while the cache's writes are paused", func() bool {
		code, _ := readyz(t, addr)
		return code == 503
	}); err != nil {
		_, getErr := store.Get(ctx, "acme", "user:paused") // reads are not paused
		code, body := readyz(t, addr)
		t.Fatalf("%v: /readyz %d %q while user:paused is still cached (get: %v)\nagent log:\n%s", err, code, body, getErr, log.String())
	}
	must0(t, admin.Do(ctx, "CLIENT", "UNPAUSE").Err())
	redistest.Eventually(t, 20*time.Second, "the paused invalidation applied after CLIENT UNPAUSE", func() bool {
		_, err := store.Get(ctx, "acme", "user:paused")
		return err != nil
	})
	redistest.Eventually(t, 20*time.Second, "/readyz 200 after CLIENT UNPAUSE", func() bool { code, _ := readyz(t, addr); return code == 200 })
}

// hangingReceiver takes deliveries like receiver, but while hanging it
// accepts each request and never answers (a process stuck in a lock, a
// full worker pool) until released.
type hangingReceiver struct {
	receiver
	mu      sync.Mutex
	hang    bool
	release chan struct{}
}

func (h *hangingReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	h.mu.Lock()
	hang, release := h.hang, h.release
	h.mu.Unlock()
	if hang {
		select {
		case <-release:
		case <-req.Context().Done():
		}
		http.Error(w, "too late", http.StatusServiceUnavailable)
		return
	}
	h.receiver.ServeHTTP(w, req)
}

func (h *hangingReceiver) setHang(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if on && !h.hang {
		h.release = make(chan struct{})
	}
	if !on && h.hang {
		close(h.release)
	}
	h.hang = on
}

// A --deliver target that accepts connections and never answers is as
// failing as one that answers 500: /readyz must be 503 (deliver_failing)
// within 5 s of the outage (issue 19). Each attempt waits the HTTP timeout
// (10 s) and the breaker opens after two, so /readyz stays 200 "ready"
// for about 20 s while nothing is delivered.
func TestAttack2AgentReadyzTellsAHangingDeliverTarget(t *testing.T) {
	bus := redistest.Start(t)
	rcv := &hangingReceiver{}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	defer rcv.setHang(false) // before Close, which waits for the handlers
	serveReady(t, "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	agentLog := daemon(t, nil, "agent", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--deliver", srv.URL,
		"--service", "search-svc", "--listen", anyPort, "--check-interval", "1h")
	addr := listening(t, agentLog)
	redistest.Eventually(t, 20*time.Second, "agent ready", func() bool { code, _ := readyz(t, addr); return code == 200 })

	rcv.setHang(true)
	publishKeys(t, bus.URL, "user", "user:hangs")
	start := time.Now()
	// 5 s promised; 15 s leaves room for a loaded machine and is still
	// below the 20 s two timed-out attempts take.
	redistest.Eventually(t, 15*time.Second, "/readyz 503 while the deliver target hangs", func() bool {
		code, _ := readyz(t, addr)
		return code == 503
	})
	t.Logf("503 after %v", time.Since(start).Round(10*time.Millisecond))
	rcv.setHang(false)
	redistest.Eventually(t, 30*time.Second, "the waiting invalidation delivered after the target answers again", func() bool {
		for _, d := range rcv.objects() {
			if len(d.Keys) == 1 && d.Keys[0] == "user:hangs" {
				return true
			}
		}
		return false
	})
}

// The bus refuses the router's channel publishing but not its reads (an
// ACL edit that drops +publish: the scripts' PUBLISH fails NOPERM): every
// entry read fails to route and is retried, nothing reaches any channel,
// and the log fills with "retrying failed entries" — yet routerd serve's
// /readyz stays 200 "ready", as its reasons cover only the bus's pings and
// the ingress reads. Readiness must mean invalidations are flowing.
func TestAttack2ServeReadyzTellsPublishingRefused(t *testing.T) {
	bus := redistest.Start(t)
	serveLog := daemon(t, nil, "serve", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	addr := listening(t, serveLog)
	redistest.Eventually(t, 20*time.Second, "router ready", func() bool { code, _ := readyz(t, addr); return code == 200 })
	ctx := context.Background()
	acl := func(rules ...any) {
		must0(t, bus.Client(t).Do(ctx, append([]any{"ACL", "SETUSER", "default"}, rules...)...).Err())
	}
	acl("-publish", "-spublish")
	publishKeys(t, bus.URL, "user", "user:refused")
	redistest.Eventually(t, 15*time.Second, "/readyz 503 while no entry can be published", func() bool {
		code, _ := readyz(t, addr)
		return code == 503
	})
	acl("+publish", "+spublish")
	redistest.Eventually(t, 20*time.Second, "/readyz 200 after the ACL is fixed", func() bool { code, _ := readyz(t, addr); return code == 200 })
}
