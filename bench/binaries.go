package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// The scenarios of issue 21, measured from outside as a user would: the
// real routerd binary as `routerd serve` and `routerd agent` processes,
// raw single-key ingress entries appended by redis-cli --pipe to the bus,
// a cache whose tag sets hold the keys (registered through the tag store
// before the clock starts). Precision scenarios count the keys dropped that
// no event named (collateral, required 0 within the budget); throughput
// scenarios time until every tag set is empty, beside redis-benchmark -c 50
// PUBLISH and the redis-cli --pipe append rate to a bus with no router,
// both measured in the same run.

// binSystem is a bus and a cache redis-server with routerd serve and
// routerd agent running on them as processes.
type binSystem struct {
	bin          string // the routerd binary
	path         string // its matrix file
	bus, cache   *redistest.Server
	busC, cacheC *redis.Client
	mtx          *matrix.Matrix
	store        *tagstore.Store
	procs        []*exec.Cmd
	logs         []*logBuffer
	serveAddr    string
	agentAddr    string
}

var (
	routerdFlag = flag.String("routerd", "", "the routerd binary the bin- scenarios run (default: built from ./cmd/routerd for the run)")
	runsFlag    = flag.Int("runs", 3, "runs of each bin-throughput scenario, each with its own PUBLISH reference: the table shows the median run and the lowest and highest ratio (1 with -quick)")
	perfFlag    = flag.String("perf", "", "record the routerd processes and the bus and cache Redis servers with perf over each bin-throughput run's clock, to FILE.<scenario>.run<i> (read with perf report -i, --sort pid; use -routerd with a kept binary so its symbols resolve)")
	routerdOnce sync.Once
	routerdPath string
	routerdErr  error
)

// routerdBinary builds cmd/routerd once for the run, unless -routerd names
// a binary to run (a build to compare, or one kept for perf to resolve).
func routerdBinary(dir string) (string, error) {
	routerdOnce.Do(func() {
		if *routerdFlag != "" {
			routerdPath = *routerdFlag
			return
		}
		routerdPath = filepath.Join(dir, "routerd")
		out, err := exec.Command("go", "build", "-o", routerdPath, "./cmd/routerd").CombinedOutput()
		if err != nil {
			routerdErr = fmt.Errorf("go build ./cmd/routerd: %v: %s", err, out)
		}
	})
	return routerdPath, routerdErr
}

// startBinaries starts a bus and a cache, routerd serve on the bus (with
// serveArgs besides --matrix and --redis) and routerd agent of service.
func startBinaries(dir, yaml, service string, serveArgs ...string) (*binSystem, error) {
	bin, err := routerdBinary(dir)
	if err != nil {
		return nil, err
	}
	mtx, err := matrix.Parse("bench.yaml", []byte(yaml))
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "bench-matrix.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		return nil, err
	}
	s := &binSystem{bin: bin, path: path, mtx: mtx}
	if s.bus, err = redistest.Launch(dir); err != nil {
		return nil, err
	}
	if s.cache, err = redistest.Launch(dir); err != nil {
		s.bus.Stop()
		return nil, err
	}
	s.busC = redis.NewClient(&redis.Options{Addr: s.bus.Addr})
	s.cacheC = redis.NewClient(&redis.Options{Addr: s.cache.Addr, PoolSize: 64})
	if s.store, err = tagstore.New(s.cacheC, tagstore.Options{}); err != nil {
		s.stop()
		return nil, err
	}
	// The router first, as a running system has it: an agent whose first
	// check finds no bus generation (no router ever ran on the bus) takes
	// each channel's first message as a whole tag (docs/protocol.md §5.2).
	if s.serveAddr, err = s.serve(serveArgs...); err != nil {
		s.stop()
		return nil, err
	}
	if s.agentAddr, err = s.start("agent", "--matrix", path, "--redis", s.bus.URL, "--cache-redis", s.cache.URL, "--service", service); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// serve starts a routerd serve on the bus, with args besides --matrix and
// --redis, and returns its listen address once it is ready.
func (s *binSystem) serve(args ...string) (string, error) {
	return s.start(append([]string{"serve", "--matrix", s.path, "--redis", s.bus.URL}, args...)...)
}

// start starts routerd with args and returns its listen address once it is
// ready; the process is s.procs' last.
func (s *binSystem) start(args ...string) (string, error) {
	cmd := exec.Command(s.bin, append(args, "--listen", testbin.AnyPort)...)
	log := &logBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return "", err
	}
	s.procs, s.logs = append(s.procs, cmd), append(s.logs, log)
	var addr string
	if !waitFor(20*time.Second, func() bool { addr = testbin.ListenAddrIn(log.String()); return addr != "" }) {
		return "", fmt.Errorf("routerd %s did not listen: %s", args[0], log.String())
	}
	if !waitFor(20*time.Second, func() bool { return ready(addr) }) {
		return "", fmt.Errorf("routerd %s not ready: %s", args[0], log.String())
	}
	return addr, nil
}

func (s *binSystem) stop() {
	for _, p := range s.procs {
		_ = p.Process.Kill()
		_ = p.Wait()
	}
	if s.busC != nil {
		s.busC.Close()
	}
	if s.cacheC != nil {
		s.cacheC.Close()
	}
	s.cache.Stop()
	s.bus.Stop()
}

// cpu is the CPU time the routerd processes used so far.
func (s *binSystem) cpu() time.Duration {
	var sum time.Duration
	for _, p := range s.procs {
		sum += procCPU(p.Process.Pid)
	}
	return sum
}

// perf starts perf record on the routerd processes when -perf
// is given, and returns what stops it.
func (s *binSystem) perf(scenario string) (stop func()) {
	if *perfFlag == "" {
		return func() {}
	}
	var pids []string
	for _, p := range s.procs {
		pids = append(pids, strconv.Itoa(p.Process.Pid))
	}
	// The bus and cache servers too (perf report --sort pid tells them apart).
	for _, c := range []*redis.Client{s.busC, s.cacheC} {
		if info, err := c.InfoMap(context.Background(), "server").Result(); err == nil {
			pids = append(pids, info["Server"]["process_id"])
		}
	}
	cmd := exec.Command("perf", "record", "-F", "2999", "-g", "-o", fmt.Sprintf("%s.%s.run%d", *perfFlag, scenario, perfRun), "-p", strings.Join(pids, ","))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "perf:", err)
		return func() {}
	}
	time.Sleep(500 * time.Millisecond) // perf attaches
	return func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}
}

func ready(addr string) bool {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// scrape sums the samples of a metric family on a daemon's /metrics,
// those whose labels contain match ("" for all).
func scrape(addr, name, match string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		if match != "" && !strings.Contains(line, match) {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			f, _ := strconv.ParseFloat(line[i+1:], 64)
			sum += f
		}
	}
	return sum
}

// procCPU is a process's CPU time, user and system (Linux /proc).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ 100
}

// logBuffer collects a process's output while the bench reads it.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// rawEvent is one single-key event of the piped file.
type rawEvent struct{ tenant, domain, key string }

// pipeFile is what redis-cli --pipe reads: one XADD of one raw event per
// event, in RESP.
func pipeFile(mtx *matrix.Matrix, events []rawEvent) *bytes.Buffer {
	var resp bytes.Buffer
	for _, e := range events {
		event := fmt.Sprintf(`{"tenant":%q,"domain":%q,"keys":[%q]}`, e.tenant, e.domain, e.key)
		respCommand(&resp, "XADD", names.IngressStream(mtx.Prefix, wire.Partition(e.tenant, mtx.Partitions)), "*", wire.EventField, event)
	}
	return &resp
}

// pipe runs redis-cli --pipe of resp against addr and returns how long it
// took, once every entry was appended without error.
func pipe(addr string, resp []byte, n int) (time.Duration, error) {
	_, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command("redis-cli", "-p", port, "--pipe")
	cmd.Stdin = bytes.NewReader(resp)
	var outp bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outp, &outp
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("redis-cli --pipe: %v: %s", err, outp.Bytes())
	}
	took := time.Since(start)
	if m := regexp.MustCompile(`errors: (\d+), replies: (\d+)`).FindSubmatch(outp.Bytes()); m == nil || string(m[1]) != "0" || string(m[2]) != strconv.Itoa(n) {
		return 0, fmt.Errorf("redis-cli --pipe did not append %d entries without error: %s", n, outp.Bytes())
	}
	return took, nil
}

// appendRate is the rate redis-cli --pipe appends resp to a fresh bus with
// no router reading it.
func appendRate(dir string, resp []byte, n int) (float64, error) {
	srv, err := redistest.Launch(dir)
	if err != nil {
		return 0, err
	}
	defer srv.Stop()
	took, err := pipe(srv.Addr, resp, n)
	if err != nil {
		return 0, err
	}
	return float64(n) / took.Seconds(), nil
}

// target is one channel of a scenario: its tenant and tag.
type target struct{ tenant, tag string }

// warm routes one event to every channel and waits until the agent has
// applied it, so that the agent knows every tenant and holds a position on
// every channel before the clock starts, as in a running system (a tenant
// the agent learns of during a burst is caught up by a position check,
// which may invalidate its tags whole: a new channel's first burst is not
// what these scenarios measure).
func (s *binSystem) warm(ctx context.Context, targets []target, domainOf func(tag string) string) error {
	events := make([]rawEvent, len(targets))
	for i, t := range targets {
		events[i] = rawEvent{t.tenant, domainOf(t.tag), "warm:" + strconv.Itoa(i)}
	}
	if _, err := pipe(s.bus.Addr, pipeFile(s.mtx, events).Bytes(), len(events)); err != nil {
		return err
	}
	if err := s.applied(ctx, targets); err != nil {
		return err
	}
	return s.checksDone(ctx)
}

// checksDone waits until the agent has checked every channel the warm-up
// made it subscribe to (each new tenant's channels, every tag of it: 10,000
// with 100 tenants of 100 tags), so that no check runs in the clocked run:
// until the bus has answered no INFO but this wait's own and no HMGET for
// 300ms. A check reads the bus's identity (INFO, three sections) before its
// channels and again after each 1,000 of their metas (HMGET, one a
// channel); the router calls them only while it publishes (its publish
// script reads INFO replication and the metas).
func (s *binSystem) checksDone(ctx context.Context) error {
	calls := func() (int64, bool) {
		stats := s.busC.InfoMap(ctx, "commandstats")
		if stats.Err() != nil {
			return 0, false
		}
		var total int64
		for _, cmd := range []string{"cmdstat_info", "cmdstat_hmget"} {
			var n int64
			_, _ = fmt.Sscanf(stats.Item("Commandstats", cmd), "calls=%d,", &n)
			total += n
		}
		return total, true
	}
	last, _ := calls()
	since := time.Now()
	if !waitEvery(2*time.Minute, 50*time.Millisecond, func() bool {
		n, ok := calls()
		if !ok || n-last > 1 { // more than this wait's own INFO
			since = time.Now()
		}
		last = n
		return time.Since(since) >= 300*time.Millisecond
	}) {
		return errors.New("the agent kept checking channels for 2 minutes after the warm-up")
	}
	return nil
}

// applied waits until the agent's position on every channel (stored with
// the cache) is the channel's last version.
func (s *binSystem) applied(ctx context.Context, targets []target) error {
	behind := 0
	ok := waitEvery(time.Minute, 10*time.Millisecond, func() bool {
		behind = 0
		for _, t := range targets {
			ch := names.Channel(s.mtx.Prefix, t.tenant, t.tag)
			meta, err := s.busC.HMGet(ctx, names.MetaKey(ch), "epoch", "version").Result()
			if err != nil || meta[0] == nil {
				behind++
				continue
			}
			pos, err := s.cacheC.Get(ctx, names.PositionKey(t.tenant, "svc", t.tag)).Result()
			// A position is "epoch:version:chain" (or "epoch:version").
			at := fmt.Sprintf("%v:%v", meta[0], meta[1])
			if err != nil || pos != at && !strings.HasPrefix(pos, at+":") {
				behind++
			}
		}
		return behind == 0
	})
	if !ok {
		return fmt.Errorf("the agent's position is behind on %d of %d channels", behind, len(targets))
	}
	return nil
}

// drained waits until the router has routed n events (and the warm-up's
// before them) and the agent has applied every channel's last version.
func (s *binSystem) drained(ctx context.Context, n int, targets []target) error {
	if !waitEvery(5*time.Minute, 10*time.Millisecond, func() bool {
		return scrape(s.serveAddr, "routerd_events_routed_total", "") >= float64(n+len(targets)) &&
			scrape(s.serveAddr, "routerd_ingress_pending_entries", "") == 0
	}) {
		return fmt.Errorf("only %v of %d events routed", scrape(s.serveAddr, "routerd_events_routed_total", ""), n+len(targets))
	}
	return s.applied(ctx, targets)
}

// precisionScenarios: one tenant, one tag holding K keys, N single-key
// events for N of them (spread over the tag) appended at once: issue 21's
// table, under the matrix's default limits (rate 100/s, burst 200, coalesce
// 20ms, max_keys 500), where no key the events did not name may go; and a
// storm beyond a tight budget (rate 1/s, burst 1, max_keys 50), which goes whole-tag
// (over_budget) and still loses no key the events named.
func precisionScenarios(dir string) ([]Row, error) {
	var rows []Row
	for _, c := range []struct {
		n, k       int
		limits     string
		overBudget bool
	}{
		{1000, 5000, "", false},
		{1000, 50000, "", false},
		{10000, 50000, "", false},
		{40000, 60000, "", false},
		{10000, 50000, "rate: 1, burst: 1, max_keys: 50", true},
	} {
		r, err := precisionOn(dir, scale(c.n), scale(c.k), c.limits, c.overBudget)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r...)
	}
	return rows, nil
}

func precisionOn(dir string, n, k int, limits string, overBudget bool) ([]Row, error) {
	name := fmt.Sprintf("7 precision, %d events, a tag of %d keys (binaries)", n, k)
	if overBudget {
		name = fmt.Sprintf("7 precision, %d events, a tag of %d keys, over a budget of {%s} (binaries)", n, k, limits)
	}
	yaml := "version: 1\ningress: {partitions: 1}\ntags:\n  active: {services: [svc], " + limits + "}\ndomains:\n  user: {tags: [active]}\nservices:\n  svc: {tenants: all}\n"
	s, err := startBinaries(dir, yaml, "svc")
	if err != nil {
		return nil, err
	}
	defer s.stop()
	ctx := context.Background()
	targets := []target{{"acme", "active"}}
	if err := s.warm(ctx, targets, func(string) string { return "user" }); err != nil {
		return nil, err
	}
	published0 := scrape(s.serveAddr, "routerd_messages_published_total", "")
	keyOf := func(i int) string { return "user:" + strconv.Itoa(i) }
	if err := fill(ctx, k, func(i int) error { return s.store.Set(ctx, "acme", keyOf(i), []byte("v"), 0, "active") }); err != nil {
		return nil, err
	}
	// Event i names key i·k/n, so what the events name is spread over the tag.
	named := make([]bool, k)
	events := make([]rawEvent, n)
	for i := range events {
		j := int(int64(i) * int64(k) / int64(n))
		named[j] = true
		events[i] = rawEvent{"acme", "user", keyOf(j)}
	}
	resp := pipeFile(s.mtx, events)
	start := time.Now()
	if _, err := pipe(s.bus.Addr, resp.Bytes(), n); err != nil {
		return nil, err
	}
	if err := s.drained(ctx, n, targets); err != nil {
		return nil, err
	}
	took := time.Since(start)
	var left, collateral int
	for i := 0; i < k; i++ {
		_, err := s.store.Get(ctx, "acme", keyOf(i))
		gone := err == redis.Nil
		if err != nil && !gone {
			return nil, err
		}
		switch {
		case named[i] && !gone:
			left++
		case !named[i] && gone:
			collateral++
		}
	}
	if left > 0 {
		return nil, fmt.Errorf("FAILED: %d keys the events named are still cached", left)
	}
	whole := scrape(s.serveAddr, "routerd_whole_tag_messages_total", "")
	overBudgetWhole := scrape(s.serveAddr, "routerd_whole_tag_messages_total", `reason="over_budget"`)
	switch {
	case !overBudget && collateral > 0:
		return nil, fmt.Errorf("FAILED: %d keys no event named were dropped (%v whole-tag messages): within the budget the required figure is 0", collateral, whole)
	case overBudget && (overBudgetWhole < 1 || overBudgetWhole != whole):
		return nil, fmt.Errorf("FAILED: over the budget %v whole-tag messages, %v of them over_budget: want at least one, all over_budget", whole, overBudgetWhole)
	}
	required := " (required 0)"
	if overBudget {
		required = " (the storm is over the budget: whole-tag allowed)"
	}
	return []Row{
		{Scenario: name, Metric: "keys named and still cached (required 0)", Value: float64(left), Unit: "keys"},
		{Scenario: name, Metric: "collateral keys (dropped, named by no event)" + required, Value: float64(collateral), Unit: "keys"},
		{Scenario: name, Metric: "channel messages published", Value: scrape(s.serveAddr, "routerd_messages_published_total", "") - published0, Unit: "messages"},
		{Scenario: name, Metric: "of them whole-tag (over_budget)", Value: whole, Unit: "messages"},
		{Scenario: name, Metric: "from the first XADD until every event routed and applied", Value: took.Seconds() * 1e3, Unit: "ms"},
	}, nil
}

// The throughput scenarios: 100,000 single-key events, limits lifted.
func throughputAllTenants(dir string) ([]Row, error) {
	return binThroughputRuns(dir, "8 throughput, 100 tenants × a tag each (binaries)", 100, 100)
}

func throughputOneTenant100Tags(dir string) ([]Row, error) {
	return binThroughputRuns(dir, "8 throughput, one tenant × 100 tags (binaries)", 1, 100)
}

func throughputOneTag(dir string) ([]Row, error) {
	return binThroughputRuns(dir, "8 throughput, one tenant × one tag (binaries)", 1, 1)
}

// perfRun numbers the run a perf recording is of (-perf with -runs).
var perfRun = 1

// binThroughputRuns runs binThroughput -runs times, each on fresh servers
// and processes with its own PUBLISH reference: on two shared cores one
// run's ratio moves by ±15 %. It reports the run of median ratio, then
// the lowest and the highest ratio of the runs.
func binThroughputRuns(dir, name string, tenants, tags int) ([]Row, error) {
	n := max(*runsFlag, 1)
	if *quick {
		n = 1
	}
	var runs [][]Row
	for i := range n {
		perfRun = i + 1
		rows, err := binThroughput(dir, name, tenants, tags)
		if err != nil {
			return nil, err
		}
		runs = append(runs, rows)
	}
	// Row 0 is the end to end rate, with its ratio to PUBLISH.
	sort.Slice(runs, func(i, j int) bool { return runs[i][0].Ratio < runs[j][0].Ratio })
	out := runs[len(runs)/2]
	if n > 1 {
		for _, r := range []struct {
			what string
			row  Row
		}{{"lowest", runs[0][0]}, {"highest", runs[n-1][0]}} {
			row := r.row
			row.Metric = fmt.Sprintf("the same, the %s of %d runs (above: the median run)", r.what, n)
			out = append(out, row)
		}
	}
	return out, nil
}

// binThroughput appends n events, event i to tenant i mod tenants and tag
// i mod tags (through domain d<i mod tags>), each naming a key of its own,
// and times until the cache's tag sets are empty.
func binThroughput(dir, name string, nTenants, nTags int) ([]Row, error) {
	var y strings.Builder
	y.WriteString("version: 1\n" + rawLimits + "\ntags:\n")
	for g := range nTags {
		fmt.Fprintf(&y, "  g%d: {services: [svc]}\n", g)
	}
	y.WriteString("domains:\n")
	for g := range nTags {
		fmt.Fprintf(&y, "  d%d: {tags: [g%d]}\n", g, g)
	}
	y.WriteString("services:\n  svc: {tenants: all}\n")
	s, err := startBinaries(dir, y.String(), "svc")
	if err != nil {
		return nil, err
	}
	defer s.stop()
	ctx := context.Background()
	n := scale(100000)
	events := make([]rawEvent, n)
	for i := range events {
		events[i] = rawEvent{"t" + strconv.Itoa(i%nTenants), "d" + strconv.Itoa(i%nTags), "user:" + strconv.Itoa(i)}
	}
	if err := fill(ctx, n, func(i int) error {
		return s.store.Set(ctx, events[i].tenant, events[i].key, []byte("v"), 0, "g"+events[i].domain[1:])
	}); err != nil {
		return nil, err
	}
	var tagSets []string
	var targets []target
	seen := map[target]bool{}
	for _, e := range events {
		if t := (target{e.tenant, "g" + e.domain[1:]}); !seen[t] {
			seen[t] = true
			targets = append(targets, t)
			tagSets = append(tagSets, names.TagSetKey(t.tenant, t.tag))
		}
	}
	if err := s.warm(ctx, targets, func(tag string) string { return "d" + tag[1:] }); err != nil {
		return nil, err
	}
	if held, err := cardinality(ctx, s.cacheC, tagSets); err != nil || held != int64(n) {
		return nil, fmt.Errorf("the tag sets hold %d keys after the fill, not %d (%v)", held, n, err)
	}
	resp := pipeFile(s.mtx, events)
	published0 := scrape(s.serveAddr, "routerd_messages_published_total", "")
	bus0, err := serverStats(ctx, s.busC)
	if err != nil {
		return nil, err
	}
	cache0, err := serverStats(ctx, s.cacheC)
	if err != nil {
		return nil, err
	}
	stopPerf := s.perf(name)
	cpu0 := s.cpu()
	start := time.Now()
	piped := make(chan error, 1)
	go func() { _, err := pipe(s.bus.Addr, resp.Bytes(), n); piped <- err }()
	var held int64
	var probeErr error
	waitEvery(5*time.Minute, 5*time.Millisecond, func() bool {
		held, probeErr = cardinality(ctx, s.cacheC, tagSets)
		return probeErr != nil || held == 0
	})
	emptied := time.Since(start)
	// Before drained, whose probe scrapes routerd serve's /metrics every
	// 10 ms until the pending gauge (refreshed by housekeeping, every 5 s)
	// reads 0: when a housekeeping round fell within the clock, that
	// probing took up to seconds of serve's CPU, more than the routing.
	cpuEmptied := s.cpu() - cpu0
	if err := <-piped; err != nil {
		return nil, err
	}
	if probeErr != nil || held != 0 {
		return nil, fmt.Errorf("FAILED: the tag sets still hold %d keys (%v)", held, probeErr)
	}
	if err := s.drained(ctx, n, targets); err != nil {
		return nil, err
	}
	drained := time.Since(start)
	cpu := s.cpu() - cpu0
	stopPerf()
	bus1, err := serverStats(ctx, s.busC)
	if err != nil {
		return nil, err
	}
	cache1, err := serverStats(ctx, s.cacheC)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "%s: bus Redis commands per event: %s\n", name, bus1.callsSince(bus0, n))
	fmt.Fprintf(os.Stderr, "%s: cache Redis commands per event (the probe's SCARDs included): %s\n", name, cache1.callsSince(cache0, n))
	p1, p1CPU, err := redisBenchmark(dir, 1)
	if err != nil {
		return nil, err
	}
	app, err := appendRate(dir, resp.Bytes(), n)
	if err != nil {
		return nil, err
	}
	rate := func(d time.Duration) float64 { return float64(n) / d.Seconds() }
	perEvent := func(sec float64) float64 { return sec / float64(n) * 1e6 }
	ref, refApp := "redis-benchmark -c 50 PUBLISH -P 1", "redis-cli --pipe append, no router"
	busCPU := perEvent(bus1.cpu - bus0.cpu)
	return []Row{
		{Scenario: name, Metric: fmt.Sprintf("%d events until every tag set is empty", n), Value: rate(emptied), Unit: "events/s", Reference: ref, RefValue: p1, Ratio: rate(emptied) / p1},
		{Scenario: name, Metric: "the same, beside the append rate", Value: rate(emptied), Unit: "events/s", Reference: refApp, RefValue: app, Ratio: rate(emptied) / app},
		{Scenario: name, Metric: "until every event routed and applied", Value: rate(drained), Unit: "events/s", Reference: ref, RefValue: p1, Ratio: rate(drained) / p1},
		{Scenario: name, Metric: "channel messages published", Value: scrape(s.serveAddr, "routerd_messages_published_total", "") - published0, Unit: "messages"},
		{Scenario: name, Metric: "of them whole-tag", Value: scrape(s.serveAddr, "routerd_whole_tag_messages_total", ""), Unit: "messages"},
		{Scenario: name, Metric: "bus Redis CPU per event", Value: busCPU, Unit: "µs", Reference: "Redis CPU per PUBLISH of redis-benchmark -P 1", RefValue: p1CPU, Ratio: busCPU / p1CPU},
		{Scenario: name, Metric: "routerd serve + agent CPU per event", Value: perEvent(cpu.Seconds()), Unit: "µs"},
		{Scenario: name, Metric: "the same, until every tag set is empty (before the /metrics probe)", Value: perEvent(cpuEmptied.Seconds()), Unit: "µs"},
		{Scenario: name, Metric: "cache Redis CPU per event (the probe's included)", Value: perEvent(cache1.cpu - cache0.cpu), Unit: "µs"},
	}, nil
}
