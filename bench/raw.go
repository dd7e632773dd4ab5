package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// The raw throughput scenarios are issue 14's measurement, taken from
// outside as a user would: raw single-event ingress entries (the event
// field, one event an XADD, a key of its own each) appended by redis-cli
// --pipe, under the matrix's default max_keys (500), to a system whose
// cache holds every key the events name, registered to the tag through the
// tag store before the clock starts; the clock stops when the cache holds
// none of them. The reference is redis-benchmark -c 50 PUBLISH on the same
// machine in the same run.

// rawThroughput is the raw scenario with 100 tenants (100 channels).
func rawThroughput(dir string) ([]Row, error) {
	return rawOn(dir, "1r throughput, raw entries, 100 tenants", 100)
}

// rawHotTenant is the raw scenario with every event for one tenant: one
// partition, one reader, one channel.
func rawHotTenant(dir string) ([]Row, error) {
	return rawOn(dir, "1r throughput, raw entries, one hot tenant", 1)
}

// rawLimits lifts the rate limit and the coalescing window, as the packed
// scenarios do (the storm scenario measures those), and keeps every other
// limit at the matrix's default: max_keys 500, history 1000.
const rawLimits = `defaults: {rate: 1000000, burst: 1000000, coalesce: 0s}`

func rawOn(dir, name string, nTenants int) ([]Row, error) {
	tenants := make([]string, nTenants)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("t%d", i)
	}
	yaml := fmt.Sprintf("version: 1\n%s\ntags:\n  active: {services: [svc]}\ndomains:\n  user: {tags: [active]}\nservices:\n  svc: {tenants: [%s]}\n",
		rawLimits, strings.Join(tenants, ", "))
	s, err := startSystem(dir, yaml, "svc")
	if err != nil {
		return nil, err
	}
	defer s.stop()
	ctx := context.Background()
	n := scale(100000)
	tenantOf := func(i int) string { return tenants[i%len(tenants)] }
	keyOf := func(i int) string { return "user:" + strconv.Itoa(i) }

	// The cache holds every key the events name, each registered to the
	// tag through the tag store, before the clock starts.
	store := s.stores[0]
	if err := fill(ctx, n, func(i int) error {
		return store.Set(ctx, tenantOf(i), keyOf(i), []byte("v"), 0, "active")
	}); err != nil {
		return nil, fmt.Errorf("filling the cache: %w", err)
	}
	cacheC := redis.NewClient(&redis.Options{Addr: s.cache.Addr}) // DB 0: the service's cache
	defer cacheC.Close()
	tagSets := make([]string, len(tenants))
	for i, t := range tenants {
		tagSets[i] = names.TagSetKey(t, "active")
	}
	held, err := cardinality(ctx, cacheC, tagSets)
	if err != nil {
		return nil, err
	}
	if held != int64(n) {
		return nil, fmt.Errorf("the cache's tag sets hold %d keys after the fill, not %d", held, n)
	}

	// What redis-cli --pipe reads: one XADD of one raw event per line, in
	// RESP, written out before the clock starts (a user's file).
	parts := s.mtx.Partitions
	var resp bytes.Buffer
	for i := 0; i < n; i++ {
		event := fmt.Sprintf(`{"tenant":%q,"domain":"user","keys":[%q]}`, tenantOf(i), keyOf(i))
		respCommand(&resp, "XADD", names.IngressStream(s.mtx.Prefix, wire.Partition(tenantOf(i), parts)), "*", wire.EventField, event)
	}
	_, port, _ := strings.Cut(s.bus.Addr, ":")

	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	bus0, err := s.busStats(ctx)
	if err != nil {
		return nil, err
	}
	cache0, err := serverStats(ctx, cacheC)
	if err != nil {
		return nil, err
	}
	cpu0 := processCPU()
	start := time.Now()
	pipe := exec.Command("redis-cli", "-p", port, "--pipe")
	pipe.Stdin = &resp
	var outp bytes.Buffer
	pipe.Stdout, pipe.Stderr = &outp, &outp
	if err := pipe.Start(); err != nil {
		return nil, fmt.Errorf("redis-cli --pipe: %w", err)
	}
	var appended time.Duration
	piped := make(chan error, 1)
	go func() {
		err := pipe.Wait()
		appended = time.Since(start)
		piped <- err
	}()

	// The cheap probe, while redis-cli appends: the tag sets' cardinality.
	// Each invalidation script unlinks keys and drops them from the tag set
	// in the same call, so none left means no key left (checked key by key
	// below).
	// It gives up 10 s after every event was routed with keys still held
	// (the full check below then names them), or after 5 minutes.
	var probeErr error
	var allRouted time.Time
	polls := 0
	waitEvery(5*time.Minute, 5*time.Millisecond, func() bool {
		held, probeErr = cardinality(ctx, cacheC, tagSets)
		if probeErr != nil || held == 0 {
			return true
		}
		if polls++; polls%20 == 0 && allRouted.IsZero() && metricSum(s.routerReg, "routerd_events_routed_total") >= float64(n) {
			allRouted = time.Now()
		}
		return !allRouted.IsZero() && time.Since(allRouted) > 10*time.Second
	})
	gone := probeErr == nil && held == 0
	keysGone := time.Since(start)
	if err := <-piped; err != nil {
		return nil, fmt.Errorf("redis-cli --pipe: %v: %s", err, outp.Bytes())
	}
	if m := regexp.MustCompile(`errors: (\d+), replies: (\d+)`).FindSubmatch(outp.Bytes()); m == nil || string(m[1]) != "0" || string(m[2]) != strconv.Itoa(n) {
		return nil, fmt.Errorf("redis-cli --pipe did not append %d entries without error: %s", n, outp.Bytes())
	}
	cliCPU := pipe.ProcessState.UserTime() + pipe.ProcessState.SystemTime()
	if probeErr != nil {
		return nil, probeErr
	}
	// Every event routed and every channel's last version applied: the
	// cache may lose every key earlier, when a merge above max_keys
	// invalidated a whole tag before the last events were even read.
	if !waitFor(5*time.Minute, func() bool { return metricSum(s.routerReg, "routerd_events_routed_total") >= float64(n) }) {
		return nil, fmt.Errorf("only %v of %d events routed", metricSum(s.routerReg, "routerd_events_routed_total"), n)
	}
	var versions float64
	for _, t := range tenants {
		v, err := s.busC.HGet(ctx, "{"+s.mtx.Prefix+":"+t+":active}:meta", "version").Int64()
		if err != nil {
			return nil, err
		}
		versions += float64(v)
	}
	if !waitFor(time.Minute, func() bool { return s.applied() >= versions }) {
		return nil, fmt.Errorf("only %v of %v messages applied", s.applied(), versions)
	}
	drained := time.Since(start)
	goCPU := processCPU() - cpu0
	runtime.ReadMemStats(&m1)
	bus1, err := s.busStats(ctx)
	if err != nil {
		return nil, err
	}
	cache1, err := serverStats(ctx, cacheC)
	if err != nil {
		return nil, err
	}
	// The full check: not one of the keys survived, nor a tag set.
	survivors, err := surviving(ctx, store, cacheC, n, tenantOf, keyOf)
	if err != nil {
		return nil, err
	}
	if len(survivors) > 0 {
		return nil, fmt.Errorf("FAILED: %d of the %d keys (or their tag sets) survived every invalidation, e.g. %v", len(survivors), n, survivors[:min(5, len(survivors))])
	}
	if !gone {
		return nil, fmt.Errorf("FAILED: the tag sets still hold %d members though every key is gone", held)
	}
	if dead := metricSum(s.routerReg, "routerd_events_dead_lettered_total"); dead > 0 {
		return nil, fmt.Errorf("FAILED: %v raw events dead-lettered", dead)
	}
	fmt.Fprintf(os.Stderr, "%s: bus Redis commands per event: %s\n", name, bus1.callsSince(bus0, n))
	fmt.Fprintf(os.Stderr, "%s: cache Redis commands per event (SCARD is the bench's probe): %s\n", name, cache1.callsSince(cache0, n))
	if keysGone < appended {
		fmt.Fprintf(os.Stderr, "%s: the cache lost every key %v after the start, before redis-cli had appended every event (%v)\n", name, keysGone.Round(time.Millisecond), appended.Round(time.Millisecond))
	}

	p1, p1CPU, err := redisBenchmark(dir, 1)
	if err != nil {
		return nil, err
	}
	ref := "redis-benchmark -c 50 PUBLISH -P 1"
	perEvent := func(d float64) float64 { return d / float64(n) * 1e6 }
	busCPU := perEvent(bus1.cpu - bus0.cpu)
	rate := func(d time.Duration) float64 { return float64(n) / d.Seconds() }
	return []Row{
		{Scenario: name, Metric: fmt.Sprintf("%d raw entries appended (redis-cli --pipe)", n), Value: rate(appended), Unit: "events/s"},
		{Scenario: name, Metric: "until the cache lost every key (issue 14's clock)", Value: rate(keysGone), Unit: "events/s",
			Reference: ref, RefValue: p1, Ratio: rate(keysGone) / p1},
		{Scenario: name, Metric: "until every event routed and every channel's last version applied", Value: rate(drained), Unit: "events/s",
			Reference: ref, RefValue: p1, Ratio: rate(drained) / p1},
		{Scenario: name, Metric: "channel messages published (events merged per channel per read batch)", Value: metricSum(s.routerReg, "routerd_messages_published_total"), Unit: "messages"},
		{Scenario: name, Metric: "of them whole-tag (routerd_whole_tag_messages_total)", Value: metricSum(s.routerReg, "routerd_whole_tag_messages_total"), Unit: "messages"},
		{Scenario: name, Metric: "Go allocations per event (router and subscriber; the publisher is redis-cli)", Value: float64(m1.Mallocs-m0.Mallocs) / float64(n), Unit: "allocs"},
		{Scenario: name, Metric: "Go CPU per event (router and subscriber, and the bench's probe)", Value: perEvent(goCPU.Seconds()), Unit: "µs"},
		{Scenario: name, Metric: "redis-cli --pipe CPU per event", Value: perEvent(cliCPU.Seconds()), Unit: "µs"},
		{Scenario: name, Metric: "bus Redis CPU per event", Value: busCPU, Unit: "µs",
			Reference: "Redis CPU per PUBLISH of redis-benchmark -P 1", RefValue: p1CPU, Ratio: busCPU / p1CPU},
		{Scenario: name, Metric: "cache Redis CPU per event (the bench's probe included)", Value: perEvent(cache1.cpu - cache0.cpu), Unit: "µs"},
	}, nil
}

// fill runs set for 0..n-1 on 32 goroutines.
func fill(ctx context.Context, n int, set func(i int) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	next := make(chan int, 1024)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := set(i); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return ctx.Err()
	}
}

// cardinality sums SCARD of the sets, in one pipeline.
func cardinality(ctx context.Context, c *redis.Client, sets []string) (int64, error) {
	cmds, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, s := range sets {
			p.SCard(ctx, s)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	var sum int64
	for _, cmd := range cmds {
		sum += cmd.(*redis.IntCmd).Val()
	}
	return sum, nil
}

// surviving returns the cache keys of 0..n-1 that still exist, checked one
// by one (EXISTS in pipelines of 1,000), and the tag sets that do.
func surviving(ctx context.Context, store interface {
	Key(tenant, key string) (string, error)
}, c *redis.Client, n int, tenantOf func(int) string, keyOf func(int) string) ([]string, error) {
	var out []string
	for lo := 0; lo < n; lo += 1000 {
		full := make([]string, 0, 1000)
		for i := lo; i < min(lo+1000, n); i++ {
			k, err := store.Key(tenantOf(i), keyOf(i))
			if err != nil {
				return nil, err
			}
			full = append(full, k)
		}
		cmds, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range full {
				p.Exists(ctx, k)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for i, cmd := range cmds {
			if cmd.(*redis.IntCmd).Val() != 0 {
				out = append(out, full[i])
			}
		}
	}
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		t := tenantOf(i)
		if seen[t] {
			continue
		}
		seen[t] = true
		set := names.TagSetKey(t, "active")
		if x, err := c.Exists(ctx, set).Result(); err != nil {
			return nil, err
		} else if x != 0 {
			out = append(out, set)
		}
	}
	return out, nil
}

// respCommand writes a command in RESP, as redis-cli --pipe reads it.
func respCommand(b *bytes.Buffer, args ...string) {
	fmt.Fprintf(b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(b, "$%d\r\n%s\r\n", len(a), a)
	}
}

// waitEvery is waitFor polling every interval.
func waitEvery(timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
	return true
}
