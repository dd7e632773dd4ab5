package soak

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/routerd/routerd/internal/faultproxy"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/tagstore"
)

var (
	flagDuration  = flag.Duration("soak.duration", 20*time.Second, "time under faults, shared by the scenarios")
	flagSeed      = flag.Uint64("soak.seed", 0, "seed of the fault schedule and the workload (0: from the clock; the seed used is printed)")
	flagFaults    = flag.String("soak.faults", "all", "comma-separated fault kinds to inject, all, or none: "+strings.Join(allFaults, ","))
	flagScenarios = flag.String("soak.scenarios", "standalone,cluster", "bus setups to soak: standalone (one redis-server) and cluster (3 masters, 3 replicas)")
	flagCheck     = flag.Duration("soak.check-interval", 2*time.Second, "the agents' --check-interval, and the quiet the end waits for")
	flagSettle    = flag.Duration("soak.settle", 15*time.Second, "how long, beyond one check interval of quiet, the end waits for the caches to become consistent before it reports stale keys")
	// A killed router's pending entries are another router's once it has
	// been silent for --dead-after (5s): that is the bound routerd
	// promises for dead routers (a live one retries its own failures at
	// once), well inside the settle time; the routers run with the
	// defaults of both flags.
	flagClaimIdle = flag.Duration("soak.claim-idle", 30*time.Second, "the routers' --claim-idle")
	flagDeadAfter = flag.Duration("soak.dead-after", 5*time.Second, "the routers' --dead-after: how long a killed router's entries wait for another")
)

// readers is the number of goroutines reading the model database through
// Fetch.
const readers = 4

// faultGrace stretches each fault window for the delay report: the time a
// system needs to notice a fault undone (reconnect, check positions).
const faultGrace = time.Second

func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{})
	// go-redis retries a dead node's dial in a goroutine that sleeps a
	// second between tries before it sees its pool closed: it ends by itself.
	code := 0
	defer func() {
		if err := testbin.Cleanup(); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(code)
	}()
	code = m.Run()
	if code == 0 {
		// toxiproxy's link goroutines (the network faults) can stay
		// blocked after their links closed: theirs, not ours.
		opts := append(faultproxy.IgnoreLinks(), goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// TestSoak runs the soak: one scenario per bus setup, each for its share of
// -soak.duration under the faults of -soak.faults that apply to it.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak takes a while; not with -short")
	}
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatal("redis-cli is not installed: run `apt-get install -y redis-tools`")
	}
	seed := *flagSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano()) % 1_000_000_000
	}
	faults, err := parseFaults(*flagFaults)
	if err != nil {
		t.Fatal(err)
	}
	var scenarios []string
	for _, s := range strings.Split(*flagScenarios, ",") {
		if s = strings.TrimSpace(s); s != "" {
			if s != "standalone" && s != "cluster" {
				t.Fatalf("-soak.scenarios: unknown scenario %q (standalone, cluster)", s)
			}
			scenarios = append(scenarios, s)
		}
	}
	if len(scenarios) == 0 {
		t.Fatal("-soak.scenarios: no scenario")
	}
	faultList := strings.Join(faults, ",")
	switch {
	case faultList == "":
		faultList = "none"
	case faultList == strings.Join(allFaults, ","):
		faultList = "all"
	}
	reproduce := fmt.Sprintf("go test -count=1 -run TestSoak ./test/soak/ -v -args -soak.seed=%d -soak.duration=%v -soak.faults=%s -soak.scenarios=%s",
		seed, *flagDuration, faultList, strings.Join(scenarios, ","))
	if len(scenarios) == 2 {
		reproduce = fmt.Sprintf("make soak SOAK_SEED=%d SOAK_DURATION=%v SOAK_FAULTS=%s (or: %s)", seed, *flagDuration, faultList, reproduce)
	}
	t.Logf("soak seed %d; reproduce with: %s", seed, reproduce)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("soak FAILED with seed %d; reproduce with: %s", seed, reproduce)
		}
	})
	bin := testbin.Routerd(t)
	each := *flagDuration / time.Duration(len(scenarios))
	for i, name := range scenarios {
		var kinds []string
		for _, f := range faults {
			if faultApplies(f, name == "cluster") {
				kinds = append(kinds, f)
			}
		}
		t.Run(name, func(t *testing.T) {
			runScenario(t, scenario{name: name, cluster: name == "cluster", seed: seed + uint64(i), duration: each,
				faults: kinds, check: *flagCheck, bin: bin})
		})
	}
}

type scenario struct {
	name     string
	cluster  bool
	seed     uint64
	duration time.Duration
	faults   []string
	check    time.Duration
	bin      string
}

// cache is one service's cache Redis. The writer holds gate for reading
// around each write; a fault that restarts the server holds it for writing,
// so no write is cut off with an unknown outcome.
type cache struct {
	svc    string
	srv    *redistest.Server
	client *redis.Client
	store  *tagstore.Store
	gate   sync.RWMutex
}

// soak is one scenario's system.
type soak struct {
	t         *testing.T
	sc        scenario
	rec       *recorder
	dir       string // process logs
	busSrv    *redistest.Server
	busClu    *redistest.Cluster
	busURL    string
	bus       redis.UniversalClient
	caches    map[string]*cache
	routers   []*proc
	agents    []*proc
	links     map[string]*links // an agent's, by its name
	pub       *publisher.Publisher
	eventSeq  int
	tracerSeq atomic.Int64
	matrixOut string
	// db is the model database the readers Fetch from.
	db                  *database
	fetches, fetchLoads atomic.Int64
}

func runScenario(t *testing.T, sc scenario) {
	s := &soak{t: t, sc: sc, rec: newRecorder(), dir: t.TempDir(), caches: map[string]*cache{}, db: newDatabase()}
	t.Logf("%s: seed %d, %v under faults %v, agents checking every %v", sc.name, sc.seed, sc.duration, sc.faults, sc.check)
	s.startRedis()
	s.startProcesses()
	t.Cleanup(func() {
		if t.Failed() {
			s.keepLogs()
		}
	})

	// The workload and the keyspace listeners run until the end's check;
	// the scheduler for the scenario's duration.
	s.rec.t0 = time.Now() // fault and write times are told from here
	listenCtx, stopListening := context.WithCancel(context.Background())
	workCtx, stopWork := context.WithCancel(context.Background())
	var listeners, workers sync.WaitGroup
	for _, c := range s.caches {
		listeners.Add(1)
		go func() { defer listeners.Done(); s.listen(listenCtx, c) }()
	}
	workers.Add(1 + 2*len(tenants) + readers)
	go func() { defer workers.Done(); s.writeLoop(workCtx, rand.New(rand.NewPCG(sc.seed, 1))) }()
	for i, tenant := range tenants {
		go func() {
			defer workers.Done()
			s.publishLoop(workCtx, rand.New(rand.NewPCG(sc.seed, uint64(10+i))), tenant)
		}()
		go func() {
			defer workers.Done()
			s.changeLoop(workCtx, rand.New(rand.NewPCG(sc.seed, uint64(100+i))), tenant)
		}()
	}
	for i := range readers {
		go func() { defer workers.Done(); s.readLoop(workCtx, rand.New(rand.NewPCG(sc.seed, uint64(200+i)))) }()
	}
	stopAll := func() { stopWork(); workers.Wait(); stopListening(); listeners.Wait() }
	t.Cleanup(stopAll)

	faultErr := s.schedule(sc.duration, rand.New(rand.NewPCG(sc.seed, 3)))
	stopWork()
	workers.Wait()
	if faultErr != nil {
		t.Errorf("%s: fault injection failed: %v", sc.name, faultErr)
	}

	// Quiet: everything back up, no writes, no events, no faults.
	ctx := context.Background()
	for _, p := range append(slices.Clone(s.routers), s.agents...) {
		if !p.running() {
			if err := p.start(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, p := range append(slices.Clone(s.routers), s.agents...) {
		if err := p.waitReady(ctx, 30*time.Second); err != nil {
			t.Fatalf("%s: after the faults: %v", sc.name, err)
		}
	}
	quiet := time.Now()
	chk := s.rec.checker()
	deadline := quiet.Add(sc.check + *flagSettle)
	var stale []staleEntry
	var unknown, rows []string
	var uncertain, excused, polls int
	for {
		values, err := s.readCaches(ctx)
		if err != nil {
			t.Fatalf("%s: reading the caches: %v", sc.name, err)
		}
		stale, unknown, uncertain = chk.stale(values)
		fetched, err := s.readFetched(ctx)
		if err != nil {
			t.Fatalf("%s: reading the caches: %v", sc.name, err)
		}
		rows, excused = s.db.judge(s.rec, fetched)
		polls++
		if len(stale)+len(rows) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	consistentAfter := time.Since(quiet)
	stopListening()
	listeners.Wait()
	s.report(chk, consistentAfter, uncertain)
	t.Logf("%s: model database: %d Fetches, %d loads; %d cached rows older than the database with no change announced since (its event flushed or never acknowledged)",
		sc.name, s.fetches.Load(), s.fetchLoads.Load(), excused)
	if len(rows) > 0 {
		t.Errorf("%s (seed %d): %d row(s) cached through Fetch differ from the database after %v of quiet:\n  %s",
			sc.name, sc.seed, len(rows), consistentAfter.Round(time.Millisecond), strings.Join(rows, "\n  "))
	}
	for _, u := range unknown {
		t.Errorf("%s: a cached value no write of the soak made: %s", sc.name, u)
	}
	if len(stale) > 0 {
		var b strings.Builder
		for i, st := range stale {
			if i == 40 {
				fmt.Fprintf(&b, "\n  … and %d more", len(stale)-40)
				break
			}
			fmt.Fprintf(&b, "\n  %s", s.rec.describe(st))
			b.WriteString(s.positions(ctx, st.e))
		}
		t.Errorf("%s (seed %d): %d key(s) invalidated after their last write still cached %v after %v of quiet (%d checks):%s",
			sc.name, sc.seed, len(stale), consistentAfter.Round(time.Millisecond), sc.check+*flagSettle, polls, b.String())
	}
}

// startRedis starts the bus (one server or a 3+3 cluster) and one cache
// Redis per service, with keyspace notifications of deletions on for the
// delay report.
func (s *soak) startRedis() {
	t := s.t
	if s.sc.cluster {
		s.busClu = redistest.StartClusterOwnDirs(t, 3, 1)
		s.busURL = s.busClu.URL()
		s.bus = s.busClu.Client(t)
	} else {
		s.busSrv = redistest.Start(t)
		s.busURL = s.busSrv.URL
		s.bus = s.busSrv.Client(t)
	}
	for _, svc := range serviceNames {
		srv := redistest.Start(t, "--notify-keyspace-events", "Eg")
		// No read timeout: a write ends only when Redis answered or the
		// connection died, so its outcome is known when the call returns.
		cl := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: -1})
		t.Cleanup(func() { _ = cl.Close() })
		st, err := tagstore.New(cl, tagstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		s.caches[svc] = &cache{svc: svc, srv: srv, client: cl, store: st}
	}
	var err error
	s.pub, err = publisher.New(s.bus, publisher.Options{Origin: "soak", Partitions: partitions, Durable: s.sc.cluster})
	if err != nil {
		t.Fatal(err)
	}
}

// startProcesses writes the matrix and starts two routers and four agents
// (two for profile-svc on one cache, as several instances of a service
// would), and waits until all are ready.
func (s *soak) startProcesses() {
	t := s.t
	s.matrixOut = filepath.Join(s.dir, "matrix.yaml")
	if err := os.WriteFile(s.matrixOut, []byte(matrixYAML()), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		p := &proc{name: fmt.Sprintf("router%d", i), bin: s.sc.bin, log: filepath.Join(s.dir, fmt.Sprintf("router%d.log", i))}
		p.args = func(p *proc) []string {
			return []string{"serve", "--matrix", s.matrixOut, "--redis", s.busURL, "--listen", testbin.AnyPort, "--consumer", fmt.Sprintf("%s-%d", p.name, p.gen),
				"--claim-idle", flagClaimIdle.String(), "--dead-after", flagDeadAfter.String()}
		}
		s.routers = append(s.routers, p)
	}
	s.links = map[string]*links{}
	for i, svc := range []string{"profile-svc", "profile-svc", "search-svc", "billing-svc"} {
		c := s.caches[svc]
		p := &proc{name: fmt.Sprintf("agent%d-%s", i+1, svc), bin: s.sc.bin, log: filepath.Join(s.dir, fmt.Sprintf("agent%d-%s.log", i+1, svc))}
		// Each agent reaches both Redis through fault proxies of its own
		// (the bus directly on a cluster), for the network faults.
		l := s.agentLinks(c.srv.Addr)
		s.links[p.name] = l
		busURL := s.busURL
		if l.bus != nil {
			busURL = "redis://" + l.bus.Addr()
		}
		p.args = func(p *proc) []string {
			return []string{"agent", "--redis", busURL, "--cache-redis", "redis://" + l.cache.Addr(), "--service", svc, "--matrix", s.matrixOut,
				"--listen", testbin.AnyPort, "--check-interval", s.sc.check.String()}
		}
		s.agents = append(s.agents, p)
	}
	for _, p := range append(slices.Clone(s.routers), s.agents...) {
		if err := p.start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.kill)
	}
	for _, p := range append(slices.Clone(s.routers), s.agents...) {
		if err := p.waitReady(context.Background(), 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

// keepLogs copies the process logs out of the test's temporary directory,
// which is removed when the test ends.
func (s *soak) keepLogs() {
	dir, err := os.MkdirTemp("", "routerd-soak-logs-")
	if err != nil {
		return
	}
	entries, _ := os.ReadDir(s.dir)
	for _, e := range entries {
		if data, err := os.ReadFile(filepath.Join(s.dir, e.Name())); err == nil {
			_ = os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644)
		}
	}
	s.t.Logf("%s: process logs kept in %s", s.sc.name, dir)
}

// readCaches reads every entry ever written, from every cache.
func (s *soak) readCaches(ctx context.Context) (map[entryKey]string, error) {
	s.rec.mu.Lock()
	entries := make([]entryKey, 0, len(s.rec.hist))
	for e := range s.rec.hist {
		entries = append(entries, e)
	}
	s.rec.mu.Unlock()
	out := map[entryKey]string{}
	for _, svc := range serviceNames {
		c := s.caches[svc]
		var mine []entryKey
		var cmds []*redis.StringCmd
		_, err := c.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, e := range entries {
				if e.svc != svc {
					continue
				}
				full, err := c.store.Key(e.tenant, e.key)
				if err != nil {
					return err
				}
				mine = append(mine, e)
				cmds = append(cmds, pipe.Get(ctx, full))
			}
			return nil
		})
		if err != nil && err != redis.Nil {
			return nil, err
		}
		for i, cmd := range cmds {
			if v, err := cmd.Result(); err == nil {
				out[mine[i]] = v
			}
		}
	}
	return out, nil
}

// readFetched reads every row a service read through Fetch from its cache.
func (s *soak) readFetched(ctx context.Context) (map[entryKey]string, error) {
	s.db.mu.Lock()
	entries := make([]entryKey, 0, len(s.db.read))
	for e := range s.db.read {
		entries = append(entries, e)
	}
	s.db.mu.Unlock()
	out := map[entryKey]string{}
	for _, e := range entries {
		full, err := s.caches[e.svc].store.Key(e.tenant, e.key)
		if err != nil {
			return nil, err
		}
		v, err := s.caches[e.svc].client.Get(ctx, full).Result()
		switch {
		case err == nil:
			out[e] = v
		case err != redis.Nil:
			return nil, err
		}
	}
	return out, nil
}

// positions tells, for a stale entry, where its service's subscriber stands
// on each of the key's channels and where the channels are.
func (s *soak) positions(ctx context.Context, e entryKey) string {
	var b strings.Builder
	for _, tag := range registeredTags(e.svc, e.tenant, e.key) {
		ch := "invalidate:" + e.tenant + ":" + tag
		pos, _ := s.caches[e.svc].client.Get(ctx, "{tenant:"+e.tenant+"}:pos:"+e.svc+":"+tag).Result()
		meta, _ := s.bus.HMGet(ctx, "{"+ch+"}:meta", "epoch", "version").Result()
		fmt.Fprintf(&b, "\n      %s: %s position %q, channel meta %v", ch, e.svc, pos, meta)
	}
	return b.String()
}

func (s *soak) report(chk *checker, consistentAfter time.Duration, uncertain int) {
	t, r := s.t, s.rec
	r.mu.Lock()
	writes, failedWrites := len(r.writes), 0
	for _, w := range r.writes {
		if w.failed {
			failedWrites++
		}
	}
	kinds := map[string]int{}
	for _, w := range r.windows {
		kinds[w.kind]++
	}
	r.mu.Unlock()
	t.Logf("%s: %d writes (%d failed), %d invalidations acknowledged, %d flushed from the bus before any router read them, %d never acknowledged",
		s.sc.name, writes, failedWrites, chk.counts.acked, chk.counts.lost, chk.counts.unacked)
	t.Logf("%s: faults injected: %v", s.sc.name, kinds)
	t.Logf("%s: caches consistent %v after the quiet began", s.sc.name, consistentAfter.Round(time.Millisecond))
	if uncertain > 0 {
		t.Logf("%s: %d cached values from writes whose call failed were not judged", s.sc.name, uncertain)
	}
	d := r.delays(faultGrace)
	t.Logf("%s: publish-to-applied delay outside fault windows: worst %v (%s), p50 %v, p99 %v over %d invalidations; %d inside fault windows (worst %v: %s); %d not observed",
		s.sc.name, d.worstOut.Round(time.Millisecond), d.worstOutWhat, d.quantile(0.5).Round(time.Millisecond), d.quantile(0.99).Round(time.Millisecond),
		len(d.outside), d.inside, d.worstIn.Round(time.Millisecond), d.worstInWhat, d.unobserved)
}
