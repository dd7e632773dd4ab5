// Command bench measures routerd end to end on this machine against real
// redis-server processes it starts itself, next to a reference measured in
// the same run (absolute figures drift on a shared machine; ratios less so).
// `make bench` runs it; it prints a table and writes the figures as JSON.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// Row is one figure of the run.
type Row struct {
	Scenario  string  `json:"scenario"`
	Metric    string  `json:"metric"`
	Value     float64 `json:"value"`
	Unit      string  `json:"unit"`
	Reference string  `json:"reference,omitempty"`
	RefValue  float64 `json:"reference_value,omitempty"`
	Ratio     float64 `json:"ratio,omitempty"` // Value / RefValue, or RefValue / Value for times
}

var (
	out   = flag.String("out", "bench-results.json", "where to write the figures")
	quick = flag.Bool("quick", false, "smaller runs (a smoke test of the harness)")
	only  = flag.String("only", "", "run only the scenarios whose name contains this")
	cpu   = flag.String("cpuprofile", "", "write a CPU profile of the run (router, subscriber and publisher are in this process)")
	mem   = flag.String("memprofile", "", "write an allocation profile at the end of the run")
)

func main() {
	flag.Parse()
	if *cpu != "" {
		f, err := os.Create(*cpu)
		if err != nil {
			fail(err)
		}
		// 1 kHz rather than 100 Hz: a scenario lasts a second or two.
		runtime.SetCPUProfileRate(1000)
		if err := pprof.StartCPUProfile(f); err != nil {
			fail(err)
		}
		defer pprof.StopCPUProfile()
	}
	if *mem != "" {
		defer func() {
			f, err := os.Create(*mem)
			if err == nil {
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	dir, err := os.MkdirTemp("", "routerd-bench")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(dir)
	var rows []Row
	for _, sc := range []struct {
		name string
		run  func(dir string) ([]Row, error)
	}{
		{"throughput-raw", rawThroughput},
		{"throughput-raw-hot", rawHotTenant},
		{"throughput-packed", throughput},
		{"throughput-packed-hot", hotTenant},
		{"cluster", clusterThroughput},
		{"latency", latency},
		{"fan-out", fanOut},
		{"bulk", bulk},
		{"storm", storm},
		{"scale", scaleOfSubscriber},
		{"scale-cluster", scaleOfClusterSubscriber},
		{"pubsub", pubsubCost},
		{"capacity", capacity},
		{"capacity-agent", agentCapacity},
		{"history-worst", worstHistory},
		{"leases", leases},
		{"bin-precision", precisionScenarios},
		{"bin-throughput-100-tenants", throughputAllTenants},
		{"bin-throughput-100-tags", throughputOneTenant100Tags},
		{"bin-throughput-one-tag", throughputOneTag},
		{"bin-failover", failover},
	} {
		if *only != "" && !strings.Contains(sc.name, *only) {
			continue
		}
		fmt.Fprintf(os.Stderr, "running %s…\n", sc.name)
		r, err := sc.run(dir)
		if err != nil {
			fail(fmt.Errorf("%s: %w", sc.name, err))
		}
		rows = append(rows, r...)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SCENARIO\tMETRIC\tVALUE\tREFERENCE\tREF VALUE\tRATIO")
	for _, r := range rows {
		ref, ratio := "", ""
		if r.Reference != "" {
			ref, ratio = r.Reference, fmt.Sprintf("%.2f×", r.Ratio)
		}
		refv := ""
		if r.RefValue != 0 {
			refv = fmt.Sprintf("%.4g %s", r.RefValue, r.Unit)
		}
		fmt.Fprintf(w, "%s\t%s\t%.4g %s\t%s\t%s\t%s\n", r.Scenario, r.Metric, r.Value, r.Unit, ref, refv, ratio)
	}
	w.Flush()
	data, _ := json.MarshalIndent(map[string]any{"when": time.Now().UTC(), "rows": rows}, "", "  ")
	if err := os.WriteFile(*out, data, 0o644); err != nil {
		fail(err)
	}
	fmt.Fprintf(os.Stderr, "figures written to %s\n", *out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func scale(n int) int {
	if *quick {
		return max(1, n/20)
	}
	return n
}

// system is a bus Redis (one server or a cluster), a cache Redis, a router
// and subscribers.
type system struct {
	bus, cache *redistest.Server
	cluster    *redistest.Cluster // the bus, when it is a cluster
	busC       redis.UniversalClient
	mtx        *matrix.Matrix
	pub        *publisher.Publisher
	stores     []*tagstore.Store
	regs       []*prometheus.Registry
	routerReg  *prometheus.Registry
	cancel     context.CancelFunc
	done       []chan struct{}
}

func startSystem(dir, yaml string, services ...string) (*system, error) {
	return startSystemWith(dir, yaml, nil, services...)
}

// startSystemWith gives every service's subscriber a Handler too.
func startSystemWith(dir, yaml string, handler subscriber.Handler, services ...string) (*system, error) {
	return startSystemOn(dir, yaml, 0, 0, handler, services...)
}

// startSystemOn starts the system with the bus on a cluster of masters ×
// (1 + replicas) nodes, or on one server when masters is 0.
func startSystemOn(dir, yaml string, masters, replicas int, handler subscriber.Handler, services ...string) (*system, error) {
	mtx, err := matrix.Parse("bench.yaml", []byte(yaml))
	if err != nil {
		return nil, err
	}
	s := &system{mtx: mtx}
	if masters > 0 {
		if s.cluster, err = redistest.LaunchCluster(dir, masters, replicas); err != nil {
			return nil, err
		}
		s.busC = redis.NewClusterClient(&redis.ClusterOptions{Addrs: s.cluster.Addrs, PoolSize: 64})
	} else {
		if s.bus, err = redistest.Launch(dir); err != nil {
			return nil, err
		}
		s.busC = redis.NewClient(&redis.Options{Addr: s.bus.Addr, PoolSize: 64})
	}
	if s.cache, err = redistest.Launch(dir); err != nil {
		s.stopBus()
		return nil, err
	}
	if s.pub, err = publisher.New(s.busC, publisher.Options{Prefix: mtx.Prefix}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.routerReg = prometheus.NewRegistry()
	r, err := router.New(s.busC, mtx, router.Options{Registerer: s.routerReg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	s.goRun(func() { _ = r.Run(ctx) })
	for i, svc := range services {
		cacheC := redis.NewClient(&redis.Options{Addr: s.cache.Addr, DB: i})
		store, err := tagstore.New(cacheC, tagstore.Options{})
		if err != nil {
			return nil, err
		}
		reg := prometheus.NewRegistry()
		sub, err := subscriber.New(s.busC, subscriber.Options{Service: svc, Matrix: mtx, Cache: cacheC, Handler: handler, Registerer: reg, CheckInterval: time.Minute})
		if err != nil {
			return nil, err
		}
		s.stores, s.regs = append(s.stores, store), append(s.regs, reg)
		s.goRun(func() { _ = sub.Run(ctx) })
		if !waitFor(10*time.Second, sub.Ready) {
			return nil, fmt.Errorf("subscriber %s not ready", svc)
		}
	}
	if !waitFor(10*time.Second, r.Ready) {
		return nil, fmt.Errorf("router not ready")
	}
	return s, nil
}

func (s *system) goRun(fn func()) {
	d := make(chan struct{})
	s.done = append(s.done, d)
	go func() { defer close(d); fn() }()
}

func (s *system) stop() {
	s.cancel()
	for _, d := range s.done {
		<-d
	}
	s.stopBus()
	s.cache.Stop()
}

func (s *system) stopBus() {
	s.busC.Close()
	if s.cluster != nil {
		s.cluster.Stop()
	} else {
		s.bus.Stop()
	}
}

// busStats sums the stats of every bus node (masters and replicas).
func (s *system) busStats(ctx context.Context) (stats, error) {
	addrs := []string{}
	if s.cluster != nil {
		addrs = s.cluster.Addrs
	} else {
		addrs = append(addrs, s.bus.Addr)
	}
	sum := stats{calls: map[string]int64{}, usec: map[string]int64{}}
	for _, a := range addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		st, err := serverStats(ctx, c)
		c.Close()
		if err != nil {
			return sum, err
		}
		sum.cpu += st.cpu
		if st.replica {
			sum.replicaCPU += st.cpu
		}
		for k, v := range st.calls {
			sum.calls[k] += v
			sum.usec[k] += st.usec[k]
		}
	}
	return sum, nil
}

// applied sums subscriber_messages_applied_total over the subscribers.
func (s *system) applied() float64 {
	var sum float64
	for _, reg := range s.regs {
		sum += metricSum(reg, "subscriber_messages_applied_total")
	}
	return sum
}

func metricSum(reg *prometheus.Registry, name string) float64 {
	families, _ := reg.Gather()
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += counterOrGauge(m)
		}
	}
	return sum
}

func counterOrGauge(m *dto.Metric) float64 {
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	if m.Gauge != nil {
		return m.Gauge.GetValue()
	}
	return 0
}

func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// redisBenchmark runs redis-benchmark PUBLISH against a fresh server with one
// subscriber attached (redis-cli, in its own process, so this process's
// profile holds only routerd's work), and returns requests per second.
func redisBenchmark(dir string, pipeline int) (rate, cpuPerOp float64, err error) {
	srv, err := redistest.Launch(dir)
	if err != nil {
		return 0, 0, err
	}
	defer srv.Stop()
	_, port, _ := strings.Cut(srv.Addr, ":")
	sub := exec.Command("redis-cli", "-p", port, "subscribe", "ch")
	if err := sub.Start(); err != nil { // output discarded
		return 0, 0, fmt.Errorf("redis-cli subscribe: %w", err)
	}
	defer func() { _ = sub.Process.Kill(); _ = sub.Wait() }()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer c.Close()
	if !waitFor(10*time.Second, func() bool { return c.PubSubNumSub(context.Background(), "ch").Val()["ch"] == 1 }) {
		return 0, 0, fmt.Errorf("redis-cli did not subscribe")
	}
	before, err := serverStats(context.Background(), c)
	if err != nil {
		return 0, 0, err
	}
	n := scale(200000)
	outp, err := exec.Command("redis-benchmark", "-p", port, "-c", "50", "-n", strconv.Itoa(n), "-P", strconv.Itoa(pipeline), "-q", "publish", "ch", "x").CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("redis-benchmark: %v: %s", err, outp)
	}
	m := regexp.MustCompile(`([0-9.]+) requests per second`).FindSubmatch(outp)
	if m == nil {
		return 0, 0, fmt.Errorf("redis-benchmark output: %s", outp)
	}
	after, err := serverStats(context.Background(), c)
	if err != nil {
		return 0, 0, err
	}
	rate, err = strconv.ParseFloat(string(m[1]), 64)
	return rate, (after.cpu - before.cpu) / float64(n) * 1e6, err
}

const fastLimits = `defaults: {rate: 1000000, burst: 1000000, coalesce: 0s, max_keys: 500, history: 1000}`

// throughputLimits lets a merged message carry as many keys as it records
// event ids (1,000), so the throughput scenarios stay key-level: a merge
// above max_keys would invalidate the whole tag, which is cheaper and not
// what they measure.
const throughputLimits = `defaults: {rate: 1000000, burst: 1000000, coalesce: 0s, max_keys: 1000, history: 1000}`

// throughput: key-level events of 100 tenants (100 channels), published
// with PublishBatch (packed up to 100 events an ingress entry), routed and
// applied to a cache Redis; against redis-benchmark PUBLISH unpipelined and
// with -P 32. The cache holds none of the keys: the clock stops when every
// channel's last version is applied. The raw scenarios (raw.go) are issue
// 14's measurement.
func throughput(dir string) ([]Row, error) {
	return throughputOn(dir, "1p throughput, packed (PublishBatch), 100 tenants", 0, 0, 100)
}

// hotTenant is the same with every event for one tenant: one partition,
// one reader, one channel.
func hotTenant(dir string) ([]Row, error) {
	return throughputOn(dir, "1p throughput, packed (PublishBatch), one hot tenant", 0, 0, 1)
}

// clusterThroughput is the same on a bus of 3 masters with a replica each:
// publishes go out per channel's master, each pipeline ending with WAIT 1.
func clusterThroughput(dir string) ([]Row, error) {
	return throughputOn(dir, "1p throughput, packed (PublishBatch), cluster", 3, 1, 100)
}

func throughputOn(dir, name string, masters, replicas, nTenants int) ([]Row, error) {
	tenants := make([]string, nTenants)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("t%d", i)
	}
	yaml := fmt.Sprintf("version: 1\n%s\ntags:\n  active: {services: [svc]}\ndomains:\n  user: {tags: [active]}\nservices:\n  svc: {tenants: [%s]}\n",
		throughputLimits, strings.Join(tenants, ", "))
	s, err := startSystemOn(dir, yaml, masters, replicas, nil, "svc")
	if err != nil {
		return nil, err
	}
	defer s.stop()
	n := scale(100000)
	events := make([]wire.Event, n)
	for i := range events {
		events[i] = wire.Event{Tenant: tenants[i%len(tenants)], Domain: "user", Keys: []string{fmt.Sprintf("user:%d", i)}}
	}
	ctx := context.Background()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	bus0, err := s.busStats(ctx)
	if err != nil {
		return nil, err
	}
	cacheC := redis.NewClient(&redis.Options{Addr: s.cache.Addr})
	defer cacheC.Close()
	cache0, err := serverStats(ctx, cacheC)
	if err != nil {
		return nil, err
	}
	cpu0 := processCPU()
	start := time.Now()
	for i := 0; i < n; i += 1000 {
		if _, err := s.pub.PublishBatch(ctx, events[i:min(i+1000, n)]); err != nil {
			return nil, err
		}
	}
	published := time.Since(start)
	if !waitFor(5*time.Minute, func() bool { return metricSum(s.routerReg, "routerd_events_routed_total") >= float64(n) }) {
		return nil, fmt.Errorf("only %v of %d routed", metricSum(s.routerReg, "routerd_events_routed_total"), n)
	}
	routed := time.Since(start)
	// Merged messages carry many events: done when the subscriber has
	// applied every channel's last version.
	var versions float64
	for _, t := range tenants {
		v, err := s.busC.HGet(ctx, "{invalidate:"+t+":active}:meta", "version").Int64()
		if err != nil {
			return nil, err
		}
		versions += float64(v)
	}
	if !waitFor(time.Minute, func() bool { return s.applied() >= versions }) {
		for _, m := range []string{"subscriber_messages_received_total", "subscriber_duplicates_total", "subscriber_gaps_total", "subscriber_recoveries_total", "subscriber_invalid_messages_total", "subscriber_apply_errors_total", "subscriber_position_checks_total"} {
			fmt.Fprintln(os.Stderr, m, metricSum(s.regs[0], m))
		}
		return nil, fmt.Errorf("only %v of %v messages applied", s.applied(), versions)
	}
	rate := float64(n) / time.Since(start).Seconds()
	goCPU := processCPU() - cpu0
	runtime.ReadMemStats(&m1)
	allocs := float64(m1.Mallocs-m0.Mallocs) / float64(n)
	allocBytes := float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n)
	bus1, err := s.busStats(ctx)
	if err != nil {
		return nil, err
	}
	cache1, err := serverStats(ctx, cacheC)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "%s: bus Redis commands per event: %s\n", name, bus1.callsSince(bus0, n))
	messages := metricSum(s.routerReg, "routerd_messages_published_total")
	whole := metricSum(s.routerReg, "routerd_whole_tag_messages_total")
	batching := []Row{
		{Scenario: name, Metric: "channel messages published (events merged per channel per read batch)", Value: messages, Unit: "messages"},
		{Scenario: name, Metric: "of them whole-tag (routerd_whole_tag_messages_total)", Value: whole, Unit: "messages"},
	}
	p1, p1CPU, err := redisBenchmark(dir, 1)
	if err != nil {
		return nil, err
	}
	busNodes := "bus Redis"
	if masters > 0 {
		busNodes = fmt.Sprintf("bus Redis (%d masters, %d replicas)", masters, masters*replicas)
		return append(batching, []Row{
			{Scenario: name, Metric: fmt.Sprintf("%d events, 100 channels, end to end", n), Value: rate, Unit: "events/s",
				Reference: "redis-benchmark -c 50 PUBLISH -P 1", RefValue: p1, Ratio: rate / p1},
			{Scenario: name, Metric: "Go CPU per event (publisher, router and subscriber together)", Value: goCPU.Seconds() / float64(n) * 1e6, Unit: "µs"},
			{Scenario: name, Metric: busNodes + " CPU per event: masters", Value: (bus1.cpu - bus1.replicaCPU - bus0.cpu + bus0.replicaCPU) / float64(n) * 1e6, Unit: "µs"},
			{Scenario: name, Metric: busNodes + " CPU per event: replicas", Value: (bus1.replicaCPU - bus0.replicaCPU) / float64(n) * 1e6, Unit: "µs"},
			{Scenario: name, Metric: "cache Redis CPU per event", Value: (cache1.cpu - cache0.cpu) / float64(n) * 1e6, Unit: "µs"},
		}...), nil
	}
	rows := []Row{
		{Scenario: name, Metric: "published (PublishBatch of 1,000)", Value: float64(n) / published.Seconds(), Unit: "events/s"},
		{Scenario: name, Metric: "routed (read, published to channels, acknowledged)", Value: float64(n) / routed.Seconds(), Unit: "events/s"},
		{Scenario: name, Metric: fmt.Sprintf("%d events, %d channels, end to end (every channel's last version applied)", n, nTenants), Value: rate, Unit: "events/s",
			Reference: "redis-benchmark -c 50 PUBLISH -P 1", RefValue: p1, Ratio: rate / p1},
	}
	if nTenants > 1 {
		p32, _, err := redisBenchmark(dir, 32)
		if err != nil {
			return nil, err
		}
		rows = append(rows, Row{Scenario: name, Metric: "same", Value: rate, Unit: "events/s",
			Reference: "redis-benchmark -c 50 PUBLISH -P 32", RefValue: p32, Ratio: rate / p32})
	}
	rows = append(rows, batching...)
	return append(rows,
		Row{Scenario: name, Metric: "Go allocations per event (publisher, router and subscriber together)", Value: allocs, Unit: "allocs"},
		Row{Scenario: name, Metric: "Go bytes allocated per event", Value: allocBytes, Unit: "B"},
		Row{Scenario: name, Metric: "Go CPU per event (publisher, router and subscriber together)", Value: goCPU.Seconds() / float64(n) * 1e6, Unit: "µs"},
		Row{Scenario: name, Metric: "bus Redis CPU per event", Value: (bus1.cpu - bus0.cpu) / float64(n) * 1e6, Unit: "µs",
			Reference: "Redis CPU per PUBLISH of redis-benchmark -P 1", RefValue: p1CPU, Ratio: (bus1.cpu - bus0.cpu) / float64(n) * 1e6 / p1CPU},
		Row{Scenario: name, Metric: "cache Redis CPU per event", Value: (cache1.cpu - cache0.cpu) / float64(n) * 1e6, Unit: "µs"},
	), nil
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// stats is what INFO tells of a server's work so far.
type stats struct {
	cpu        float64          // seconds of CPU, user + system
	replicaCPU float64          // of which replicas used (a cluster bus)
	replica    bool             // the server is a replica
	calls      map[string]int64 // command -> calls, scripts' inner commands included
	usec       map[string]int64 // command -> microseconds spent in it
}

func serverStats(ctx context.Context, c *redis.Client) (stats, error) {
	info, err := c.InfoMap(ctx, "cpu", "commandstats", "replication").Result()
	if err != nil {
		return stats{}, err
	}
	st := stats{calls: map[string]int64{}, usec: map[string]int64{}, replica: info["Replication"]["role"] == "slave"}
	for _, k := range []string{"used_cpu_sys", "used_cpu_user"} {
		f, _ := strconv.ParseFloat(info["CPU"][k], 64)
		st.cpu += f
	}
	for k, v := range info["Commandstats"] { // cmdstat_xadd: calls=…,usec=…,…
		var calls, usec int64
		if _, err := fmt.Sscanf(v, "calls=%d,usec=%d,", &calls, &usec); err == nil {
			cmd := strings.TrimPrefix(k, "cmdstat_")
			st.calls[cmd], st.usec[cmd] = calls, usec
		}
	}
	return st, nil
}

// callsSince lists the commands run since before, per event, busiest first.
func (st stats) callsSince(before stats, events int) string {
	type kv struct {
		cmd string
		n   int64
	}
	var all []kv
	var total int64
	for cmd, n := range st.calls {
		if d := n - before.calls[cmd]; d > 0 {
			all = append(all, kv{cmd, d})
			total += d
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n })
	parts := []string{fmt.Sprintf("%.2f in all", float64(total)/float64(events))}
	for _, e := range all {
		us := float64(st.usec[e.cmd]-before.usec[e.cmd]) / float64(events)
		parts = append(parts, fmt.Sprintf("%s %.3f (%.2f µs)", e.cmd, float64(e.n)/float64(events), us))
	}
	return strings.Join(parts, ", ")
}

// fanOut: one event to 10 tags × 3 services (30 invalidations).
func fanOut(dir string) ([]Row, error) {
	var tags, domainTags []string
	for i := 0; i < 10; i++ {
		tags = append(tags, fmt.Sprintf("  tag%d: {services: [a, b, c]}", i))
		domainTags = append(domainTags, fmt.Sprintf("tag%d", i))
	}
	yaml := fmt.Sprintf("version: 1\n%s\ntags:\n%s\ndomains:\n  product: {tags: [%s]}\nservices:\n  a: {tenants: [acme]}\n  b: {tenants: [acme]}\n  c: {tenants: [acme]}\n",
		fastLimits, strings.Join(tags, "\n"), strings.Join(domainTags, ", "))
	// The subscribers' Handler runs after each invalidation is applied to
	// the cache; the 30th of an event ends its wait.
	var count, target atomic.Int64
	complete := make(chan struct{}, 1)
	s, err := startSystemWith(dir, yaml, func(context.Context, subscriber.Invalidation) error {
		if count.Add(1) == target.Load() {
			complete <- struct{}{}
		}
		return nil
	}, "a", "b", "c")
	if err != nil {
		return nil, err
	}
	defer s.stop()
	n := scale(500)
	var lat []time.Duration
	ctx := context.Background()
	start := time.Now()
	for i := 0; i < n; i++ {
		target.Store(count.Load() + 30)
		t0 := time.Now()
		if _, err := s.pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "product", Keys: []string{fmt.Sprintf("p:%d", i)}}); err != nil {
			return nil, err
		}
		select {
		case <-complete:
		case <-time.After(10 * time.Second):
			return nil, fmt.Errorf("fan-out of event %d incomplete: %d of 30 applied", i, 30-(target.Load()-count.Load()))
		}
		lat = append(lat, time.Since(t0))
	}
	elapsed := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return []Row{
		{Scenario: "3 fan-out", Metric: "1 event → 10 tags × 3 services, one at a time", Value: float64(n) / elapsed.Seconds(), Unit: "events/s"},
		{Scenario: "3 fan-out", Metric: "publish → all 30 applied, p50", Value: ms(lat[len(lat)/2]), Unit: "ms"},
		{Scenario: "3 fan-out", Metric: "publish → all 30 applied, p99", Value: ms(lat[len(lat)*99/100]), Unit: "ms"},
	}, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// bulk: invalidating a 5,000-key tag in a 1,000,000-key keyspace, against
// finding the same keys with SCAN and deleting them with UNLINK.
func bulk(dir string) ([]Row, error) {
	srv, err := redistest.Launch(dir, "--enable-debug-command", "local")
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer c.Close()
	ctx := context.Background()
	keyspace := scale(1000000)
	if err := c.Do(ctx, "DEBUG", "POPULATE", keyspace, "filler").Err(); err != nil {
		return nil, err
	}
	store, err := tagstore.New(c, tagstore.Options{})
	if err != nil {
		return nil, err
	}
	seed := func() error {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := 0; i < 5000; i++ {
				k := fmt.Sprintf("{tenant:acme}:bulk:%d", i)
				p.Set(ctx, k, "v", 0)
				p.SAdd(ctx, "{tenant:acme}:tag:bulk", k)
			}
			return nil
		})
		return err
	}
	if err := seed(); err != nil {
		return nil, err
	}
	t0 := time.Now()
	res, err := store.InvalidateTag(ctx, "acme", "bulk")
	if err != nil || res.Deleted != 5000 {
		return nil, fmt.Errorf("invalidate: %+v %v", res, err)
	}
	byTag := time.Since(t0)
	if err := seed(); err != nil {
		return nil, err
	}
	t0 = time.Now()
	var cursor uint64
	deleted := 0
	for {
		keys, next, err := c.Scan(ctx, cursor, "{tenant:acme}:bulk:*", 1000).Result()
		if err != nil {
			return nil, err
		}
		if len(keys) > 0 {
			deleted += int(c.Unlink(ctx, keys...).Val())
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	byScan := time.Since(t0)
	if deleted != 5000 {
		return nil, fmt.Errorf("SCAN+UNLINK deleted %d", deleted)
	}
	return []Row{{Scenario: "4 bulk", Metric: fmt.Sprintf("5,000-key tag in %d keys", keyspace), Value: ms(byTag), Unit: "ms",
		Reference: "SCAN MATCH + UNLINK", RefValue: ms(byScan), Ratio: ms(byScan) / ms(byTag)}}, nil
}

// storm: 100,000 events on 10 hot channels under the default limits (rate
// 100/s, burst 200, coalesce 20ms): messages out, time to the last
// invalidation.
func storm(dir string) ([]Row, error) {
	yaml := "version: 1\ndefaults: {rate: 100, burst: 200, coalesce: 20ms, max_keys: 10000}\ntags:\n  hot: {services: [svc]}\ndomains:\n  stock: {tags: [hot]}\nservices:\n  svc: {tenants: [t0, t1, t2, t3, t4, t5, t6, t7, t8, t9]}\n"
	s, err := startSystem(dir, yaml, "svc")
	if err != nil {
		return nil, err
	}
	defer s.stop()
	n := scale(100000)
	ctx := context.Background()
	events := make([]wire.Event, n)
	for i := range events {
		events[i] = wire.Event{Tenant: fmt.Sprintf("t%d", i%10), Domain: "stock", Keys: []string{fmt.Sprintf("sku:%d", i)}}
	}
	start := time.Now()
	for i := 0; i < n; i += 1000 {
		if _, err := s.pub.PublishBatch(ctx, events[i:min(i+1000, n)]); err != nil {
			return nil, err
		}
	}
	if !waitFor(5*time.Minute, func() bool {
		return metricSum(s.routerReg, "routerd_events_routed_total") >= float64(n) && metricSum(s.routerReg, "routerd_pending_channels") == 0
	}) {
		return nil, fmt.Errorf("storm not drained")
	}
	// Every channel's last message applied.
	if !waitFor(time.Minute, func() bool {
		for t := 0; t < 10; t++ {
			ch := fmt.Sprintf("invalidate:t%d:hot", t)
			v, _ := s.busC.HGet(ctx, "{"+ch+"}:meta", "version").Int64()
			p, ok, _ := s.stores[0].ReadPosition(ctx, fmt.Sprintf("t%d", t), "svc", "hot")
			if !ok || p.Version < v {
				return false
			}
		}
		return true
	}) {
		return nil, fmt.Errorf("storm not applied")
	}
	elapsed := time.Since(start)
	messages := metricSum(s.routerReg, "routerd_messages_published_total")
	return []Row{
		{Scenario: "6 storm", Metric: fmt.Sprintf("%d events on 10 channels: messages out", n), Value: messages, Unit: "messages"},
		{Scenario: "6 storm", Metric: "time to the last invalidation", Value: elapsed.Seconds(), Unit: "s"},
	}, nil
}

func hundredChannels() string {
	tenants := make([]string, 100)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("t%d", i)
	}
	return fmt.Sprintf("version: 1\n%s\ntags:\n  active: {services: [svc]}\ndomains:\n  user: {tags: [active]}\nservices:\n  svc: {tenants: [%s]}\n",
		fastLimits, strings.Join(tenants, ", "))
}

// latency: events published at a fixed rate over 100 channels; the time from
// the publish call to the keys being gone from the cache (the Handler runs
// right after the cache script).
func latency(dir string) ([]Row, error) {
	var rows []Row
	for _, perSecond := range []int{1000, 10000} {
		var mu sync.Mutex
		applied := map[string]time.Time{} // by key
		wholeTag := 0
		s, err := startSystemWith(dir, hundredChannels(), func(_ context.Context, inv subscriber.Invalidation) error {
			// A message may carry several events (one read batch): each
			// event's key marks it applied.
			now := time.Now()
			mu.Lock()
			for _, k := range inv.Keys {
				applied[k] = now
			}
			if len(inv.Keys) == 0 {
				wholeTag++
			}
			mu.Unlock()
			return nil
		}, "svc")
		if err != nil {
			return nil, err
		}
		duration := 3 * time.Second
		if *quick {
			duration = 500 * time.Millisecond
		}
		sent := map[string]time.Time{}
		ctx := context.Background()
		// Every channel's first message starts its epoch, and the
		// subscriber, holding no position on it, checks it before applying
		// (a new channel's first burst is replayed from version 1): that
		// happens once in a channel's life. The figures are of a running
		// system: one event per channel first, its time reported apart.
		var warm []wire.Event
		for t := 0; t < 100; t++ {
			warm = append(warm, wire.Event{ID: fmt.Sprintf("warm-%d", t), Tenant: fmt.Sprintf("t%d", t), Domain: "user", Keys: []string{fmt.Sprintf("user:warm-%d", t)}})
		}
		warmStart := time.Now()
		if _, err := s.pub.PublishBatch(ctx, warm); err != nil {
			s.stop()
			return nil, err
		}
		if !waitFor(time.Minute, func() bool { mu.Lock(); defer mu.Unlock(); return len(applied) >= len(warm) }) {
			s.stop()
			return nil, fmt.Errorf("latency at %d/s: the first message of %d channels not applied within a minute", perSecond, len(warm))
		}
		var firstMax time.Duration
		mu.Lock()
		for _, at := range applied {
			firstMax = max(firstMax, at.Sub(warmStart))
		}
		clear(applied)
		mu.Unlock()
		start := time.Now()
		tick := time.NewTicker(time.Millisecond)
		n := 0
		for now := range tick.C {
			if now.Sub(start) > duration {
				break
			}
			// What is due this millisecond goes out in one PublishBatch.
			due := int(now.Sub(start).Seconds() * float64(perSecond))
			var batch []wire.Event
			t0 := time.Now()
			for ; n < due; n++ {
				id := fmt.Sprintf("lat-%d", n)
				sent["user:"+id] = t0
				batch = append(batch, wire.Event{ID: id, Tenant: fmt.Sprintf("t%d", n%100), Domain: "user", Keys: []string{"user:" + id}})
			}
			if len(batch) == 0 {
				continue
			}
			if _, err := s.pub.PublishBatch(ctx, batch); err != nil {
				tick.Stop()
				s.stop()
				return nil, err
			}
		}
		tick.Stop()
		ok := waitFor(time.Minute, func() bool { mu.Lock(); defer mu.Unlock(); return len(applied) >= n || wholeTag > 0 })
		s.stop()
		if wholeTag > 0 {
			return nil, fmt.Errorf("latency at %d/s: %d whole-tag invalidations; the figures are per key", perSecond, wholeTag)
		}
		if !ok {
			return nil, fmt.Errorf("latency at %d/s: %d of %d applied", perSecond, len(applied), n)
		}
		lat := make([]time.Duration, 0, n)
		for key, t0 := range sent {
			lat = append(lat, applied[key].Sub(t0))
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		q := func(p float64) float64 { return ms(lat[min(len(lat)-1, int(float64(len(lat))*p))]) }
		name := fmt.Sprintf("2 latency %d/s", perSecond)
		rows = append(rows,
			Row{Scenario: name, Metric: fmt.Sprintf("%d events: publish → keys gone, p50", n), Value: q(0.5), Unit: "ms"},
			Row{Scenario: name, Metric: "p99", Value: q(0.99), Unit: "ms"},
			Row{Scenario: name, Metric: "p99.9", Value: q(0.999), Unit: "ms"},
			Row{Scenario: name, Metric: "max", Value: ms(lat[len(lat)-1]), Unit: "ms"},
			Row{Scenario: name, Metric: "before the clock: the first message of 100 new channels at once, the last applied after", Value: ms(firstMax), Unit: "ms"},
		)
	}
	return rows, nil
}

// scaleOfSubscriber: one subscriber of 10,000 tenants × 10 tags (100,000
// channels): time to subscribe and check every position, time to recover
// after its pub/sub connection is killed, and memory.
func scaleOfSubscriber(dir string) ([]Row, error) { return scaleOn(dir, "5 scale", 0) }

// scaleOfClusterSubscriber is the same with the bus on 3 masters: sharded
// subscriptions, one connection per master, one SSUBSCRIBE per slot.
func scaleOfClusterSubscriber(dir string) ([]Row, error) {
	return scaleOn(dir, "5 scale, cluster", 3)
}

func scaleOn(dir, name string, masters int) ([]Row, error) {
	tenants := scale(10000)
	var names []string
	for i := 0; i < tenants; i++ {
		names = append(names, fmt.Sprintf("t%d", i))
	}
	var tags []string
	for i := 0; i < 10; i++ {
		tags = append(tags, fmt.Sprintf("  tag%d: {services: [svc]}", i))
	}
	yaml := fmt.Sprintf("version: 1\ntags:\n%s\ndomains:\n  d: {tags: [tag0]}\nservices:\n  svc: {tenants: [%s]}\n", strings.Join(tags, "\n"), strings.Join(names, ", "))
	mtx, err := matrix.Parse("scale.yaml", []byte(yaml))
	if err != nil {
		return nil, err
	}
	var busC redis.UniversalClient
	if masters > 0 {
		bus, err := redistest.LaunchCluster(dir, masters, 0)
		if err != nil {
			return nil, err
		}
		defer bus.Stop()
		busC = redis.NewClusterClient(&redis.ClusterOptions{Addrs: bus.Addrs})
	} else {
		bus, err := redistest.Launch(dir)
		if err != nil {
			return nil, err
		}
		defer bus.Stop()
		busC = redis.NewClient(&redis.Options{Addr: bus.Addr})
	}
	cache, err := redistest.Launch(dir)
	if err != nil {
		return nil, err
	}
	defer cache.Stop()
	defer busC.Close()
	cacheC := redis.NewClient(&redis.Options{Addr: cache.Addr})
	defer cacheC.Close()
	if err := markBus(context.Background(), busC, mtx.Prefix); err != nil {
		return nil, err
	}
	heapBefore := liveHeap()
	reg := prometheus.NewRegistry()
	sub, err := subscriber.New(busC, subscriber.Options{Service: "svc", Matrix: mtx, Cache: cacheC, Registerer: reg, CheckInterval: time.Hour})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	go func() { defer close(done); _ = sub.Run(ctx) }()
	defer func() { cancel(); <-done }()
	channels := tenants * 10
	if !waitFor(5*time.Minute, func() bool { return sub.Ready() && subscribedChannels(busC) == int64(channels) }) {
		return nil, fmt.Errorf("not ready: %d of %d channels subscribed", subscribedChannels(busC), channels)
	}
	ready := time.Since(start)
	heapAfter, rssAfter := liveHeap(), rss()
	checks := metricSum(reg, "subscriber_position_checks_total")
	start = time.Now()
	kill := func(ctx context.Context, c *redis.Client) error {
		return c.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err()
	}
	if err := forEachMaster(busC, kill); err != nil {
		return nil, err
	}
	// Recovered: every channel subscribed again, as the servers count them,
	// and a position check run since the kill.
	if !waitFor(5*time.Minute, func() bool {
		return subscribedChannels(busC) == int64(channels) && metricSum(reg, "subscriber_position_checks_total") > checks
	}) {
		return nil, fmt.Errorf("not resubscribed and checked after the kill: %d of %d channels", subscribedChannels(busC), channels)
	}
	recovered := time.Since(start)
	return []Row{
		{Scenario: name, Metric: fmt.Sprintf("%d channels: subscribed and positions checked", channels), Value: ready.Seconds(), Unit: "s"},
		{Scenario: name, Metric: "pub/sub connection killed → resubscribed and checked", Value: recovered.Seconds(), Unit: "s"},
		{Scenario: name, Metric: "Go heap the subscriber holds (live, after GC)", Value: float64(heapAfter-heapBefore) / (1 << 20), Unit: "MB"},
		{Scenario: name, Metric: "resident memory of the whole bench process then (an upper bound)", Value: float64(rssAfter) / (1 << 20), Unit: "MB"},
	}, nil
}

// rss is the process's resident memory in bytes.
// subscribedChannels is how many channels have a subscriber, summed over
// the bus's masters (INFO stats: pubsub_channels, pubsubshard_channels).
func subscribedChannels(c redis.UniversalClient) int64 {
	var n atomic.Int64 // ForEachMaster runs side by side
	count := func(ctx context.Context, c *redis.Client) error {
		info, err := c.InfoMap(ctx, "stats").Result()
		for _, k := range []string{"pubsub_channels", "pubsubshard_channels"} {
			x, _ := strconv.ParseInt(info["Stats"][k], 10, 64)
			n.Add(x)
		}
		return err
	}
	_ = forEachMaster(c, count)
	return n.Load()
}

// forEachMaster runs fn on every master of the bus (the one server when it
// is not a cluster), one after the other.
func forEachMaster(c redis.UniversalClient, fn func(context.Context, *redis.Client) error) error {
	ctx := context.Background()
	masters, err := redisconn.Masters(ctx, c)
	if err != nil {
		return err
	}
	for _, m := range masters {
		if err := fn(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// liveHeap is the Go heap in use after a collection.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func rss() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
