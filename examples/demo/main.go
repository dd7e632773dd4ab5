// Command demo shows routerd at work: it caches values under tags for two
// services, publishes domain changes with the publisher library, and prints
// each service's cache after the invalidations arrive. search-svc embeds the
// subscriber library; profile-svc is served by the `routerd agent` sidecar
// that `make run` starts.
//
//	go run ./examples/demo --redis redis://127.0.0.1:6390/0 \
//	    --search-cache redis://127.0.0.1:6390/2 --profile-cache redis://127.0.0.1:6390/1
//
// The URLs take the forms routerd's --redis takes (package redisurl): one
// server, a cluster's comma-separated seeds, or a Sentinel URL
// (redis://SENTINEL:26379?master_name=NAME).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/redisurl"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
)

type cached struct {
	key  string
	tags []string
}

var catalogue = []cached{
	{"product:1", []string{"electronics", "active"}},
	{"product:2", []string{"electronics", "active"}},
	{"user:1", []string{"active"}},
	{"user:2", []string{"active"}},
}

type change struct {
	what  string
	event publisher.Event
}

var changes = []change{
	{"acme changed product 2", publisher.Event{Tenant: "acme", Domain: "product", Entity: "2", Keys: []string{"product:2"}}},
	{"globex changed user 1", publisher.Event{Tenant: "globex", Domain: "user", Entity: "1", Keys: []string{"user:1"}}},
	{"acme reloaded its whole catalogue (no keys: whole tags)", publisher.Event{Tenant: "acme", Domain: "product", WholeTag: true}},
}

func main() {
	bus := flag.String("redis", "redis://127.0.0.1:6390/0", "bus Redis URL (one server, cluster seeds, or a Sentinel URL)")
	searchCache := flag.String("search-cache", "redis://127.0.0.1:6390/2", "search-svc's cache Redis (embedded subscriber)")
	profileCache := flag.String("profile-cache", "redis://127.0.0.1:6390/1", "profile-svc's cache Redis (routerd agent)")
	path := flag.String("matrix", "matrix.yaml", "routing matrix")
	interval := flag.Duration("interval", 3*time.Second, "time between changes")
	rounds := flag.Int("rounds", 0, "changes to publish; 0 runs until interrupted")
	listen := flag.String("listen", "", "serve the embedded subscriber's /metrics on this address (e.g. :9466)")
	logs := flag.String("logs", "", "where routerd's and the agent's logs are (routerd.log, agent.log), to point at when invalidations do not arrive")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reg := prometheus.NewRegistry()
	if *listen != "" {
		srv := &http.Server{Addr: *listen, Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.ListenAndServe() }()
		defer srv.Close()
	}
	if err := run(ctx, reg, *bus, *searchCache, *profileCache, *path, *interval, *rounds, *logs); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// open opens a client as routerd's commands do: the URL may name one
// server, a cluster's comma-separated seeds or the master that Redis
// Sentinel fails over (redis://SENTINEL:26379?master_name=NAME), whose
// every connection, the subscriber's pub/sub ones included, then follows
// a failover.
func open(url string) (redis.UniversalClient, error) {
	return redisurl.Open(url, redisurl.Options{})
}

func run(ctx context.Context, reg prometheus.Registerer, busURL, searchURL, profileURL, path string, interval time.Duration, rounds int, logs string) error {
	m, err := matrix.Load(path)
	if err != nil {
		return err
	}
	busC, err := open(busURL)
	if err != nil {
		return err
	}
	defer busC.Close()
	stores := map[string]*tagstore.Store{}
	for svc, url := range map[string]string{"search-svc": searchURL, "profile-svc": profileURL} {
		c, err := open(url)
		if err != nil {
			return err
		}
		defer c.Close()
		if stores[svc], err = tagstore.New(c, tagstore.Options{}); err != nil {
			return err
		}
	}
	searchC, err := open(searchURL)
	if err != nil {
		return err
	}
	defer searchC.Close()

	// search-svc embeds the subscriber; the Handler only narrates. narrating
	// keeps its lines after the header of the change that caused them: the
	// subscriber can apply an event before Publish has returned its id.
	// applied holds the channels search-svc's Handler was called for since
	// the last change was published: a round waits for each of its routes
	// to search-svc, not only for the keys to leave the cache (a key under
	// two of the change's tags is gone after the first message).
	var narrating sync.Mutex
	applied := map[string]bool{}
	sub, err := subscriber.New(busC, subscriber.Options{
		Service: "search-svc", Matrix: m, Cache: searchC, CheckInterval: 10 * time.Second, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Handler: func(_ context.Context, inv subscriber.Invalidation) error {
			what := "keys " + strings.Join(inv.Keys, ",")
			if len(inv.Keys) == 0 {
				what = "the whole tag"
			}
			narrating.Lock()
			defer narrating.Unlock()
			applied[inv.Tenant+"/"+inv.Tag] = true
			fmt.Printf("  search-svc applied %s/%s v%d: %s\n", inv.Tenant, inv.Tag, inv.Version, what)
			return nil
		},
	})
	if err != nil {
		return err
	}
	subCtx, stopSub := context.WithCancel(ctx)
	subDone := make(chan struct{})
	go func() { defer close(subDone); _ = sub.Run(subCtx) }()
	defer func() { stopSub(); <-subDone }()

	pub, err := publisher.New(busC, publisher.Options{Prefix: m.Prefix, Origin: "demo"})
	if err != nil {
		return err
	}
	fmt.Println("routerd demo: caching values under tags, publishing changes, watching them disappear.")
	for i := 0; rounds == 0 || i < rounds; i++ {
		if err := seed(ctx, stores); err != nil {
			return err
		}
		if i == 0 {
			show(ctx, stores)
		}
		c := changes[i%len(changes)]
		if !sleep(ctx, interval) {
			return nil
		}
		routes, _ := m.Routes(c.event.Tenant, c.event.Domain)
		var chans []string
		for _, r := range routes {
			chans = append(chans, r.Channel+" → "+strings.Join(r.Services, ","))
		}
		narrating.Lock()
		clear(applied)
		id, err := pub.Publish(ctx, c.event)
		if err == nil {
			fmt.Printf("\n» %s: published event %s\n  routes: %s\n", c.what, id, strings.Join(chans, "; "))
		}
		narrating.Unlock()
		if err != nil {
			return err
		}
		want := expected(routes, c.event)
		unapplied := func() []string {
			narrating.Lock()
			defer narrating.Unlock()
			var out []string
			for _, r := range routes {
				if slices.Contains(r.Services, "search-svc") && !applied[c.event.Tenant+"/"+r.Tag] {
					out = append(out, "search-svc did not apply "+r.Channel)
				}
			}
			return out
		}
		late := await(ctx, stores, want, unapplied, arrivalTimeout)
		if ctx.Err() != nil {
			return nil
		}
		// profile-svc's agent applies in another process: narrate what
		// left its cache, as search-svc's Handler narrates its own.
		if dropped := want["profile-svc"]; len(dropped) > 0 && !slices.ContainsFunc(late, func(l string) bool { return strings.HasPrefix(l, "profile-svc ") }) {
			narrating.Lock()
			fmt.Printf("  profile-svc (routerd agent) dropped %s\n", strings.Join(slashed(dropped), ","))
			narrating.Unlock()
		}
		if len(late) > 0 {
			fmt.Printf("  ! not invalidated within %v: %s\n", arrivalTimeout, strings.Join(late, "; "))
			fmt.Printf("    is routerd routing, and the agent applying? see %s\n", logHint(logs))
		}
		show(ctx, stores)
	}
	return nil
}

// arrivalTimeout is how long a round waits for its invalidations.
const arrivalTimeout = 5 * time.Second

// expected returns, per service, the cached entries ("tenant key") a change
// must remove: its keys under each tag routed to the service, or every key
// of the tag for a whole-tag change.
func expected(routes []matrix.Route, ev publisher.Event) map[string][]string {
	out := map[string][]string{}
	for _, r := range routes {
		for _, svc := range r.Services {
			for _, c := range catalogue {
				if !slices.Contains(c.tags, r.Tag) || !caches(svc, c.key) {
					continue
				}
				if len(ev.Keys) == 0 || slices.Contains(ev.Keys, c.key) {
					out[svc] = append(out[svc], ev.Tenant+" "+c.key)
				}
			}
		}
	}
	return out
}

// await waits up to timeout for the entries to leave the services' caches
// and for unapplied to return nothing, and returns what is still there, per
// service, and what unapplied still returns.
func await(ctx context.Context, stores map[string]*tagstore.Store, want map[string][]string, unapplied func() []string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		late := unapplied()
		for svc, entries := range want {
			var still []string
			for _, e := range entries {
				tenant, key, _ := strings.Cut(e, " ")
				if _, err := stores[svc].Get(ctx, tenant, key); err == nil {
					still = append(still, tenant+"/"+key)
				}
			}
			if len(still) > 0 {
				late = append(late, svc+" still caches "+strings.Join(slices.Compact(still), ","))
			}
		}
		slices.Sort(late)
		if len(late) == 0 || time.Now().After(deadline) || !sleep(ctx, 50*time.Millisecond) {
			return late
		}
	}
}

// slashed writes expected's "tenant key" entries as tenant/key.
func slashed(entries []string) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = strings.Replace(e, " ", "/", 1)
	}
	return slices.Compact(out)
}

func logHint(dir string) string {
	if dir == "" {
		return "the logs of routerd serve and routerd agent"
	}
	return filepath.Join(dir, "routerd.log") + " and " + filepath.Join(dir, "agent.log")
}

// caches reports whether a service caches a key: profile-svc caches users only.
func caches(svc, key string) bool {
	return svc != "profile-svc" || !strings.HasPrefix(key, "product:")
}

func seed(ctx context.Context, stores map[string]*tagstore.Store) error {
	for svc, st := range stores {
		for _, tenant := range []string{"acme", "globex"} {
			for _, c := range catalogue {
				if _, err := st.Get(ctx, tenant, c.key); err == nil {
					continue
				}
				if !caches(svc, c.key) {
					continue
				}
				if err := st.Set(ctx, tenant, c.key, []byte("cached"), 10*time.Minute, c.tags...); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func show(ctx context.Context, stores map[string]*tagstore.Store) {
	for _, svc := range []string{"search-svc", "profile-svc"} {
		line := fmt.Sprintf("  %-12s", svc)
		for _, tenant := range []string{"acme", "globex"} {
			line += " " + tenant + ":"
			for _, c := range catalogue {
				if !caches(svc, c.key) {
					continue
				}
				mark := "✓"
				if _, err := stores[svc].Get(ctx, tenant, c.key); err != nil {
					mark = "✗"
				}
				line += " " + c.key + mark
			}
		}
		fmt.Println(line)
	}
	fmt.Println("  (✓ cached, ✗ invalidated; the next round caches them again)")
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
