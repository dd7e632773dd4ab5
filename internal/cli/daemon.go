package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/routerd/routerd/internal/deliver"
	"github.com/routerd/routerd/internal/doctor"
	"github.com/routerd/routerd/internal/reload"
	"github.com/routerd/routerd/internal/tagsize"
	"github.com/routerd/routerd/internal/telemetry"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// serveGCPercent is routerd serve's GOGC when the environment sets none.
const serveGCPercent = 400

func serve(ctx context.Context, env *Env, args []string) error {
	f := newFlags(env, "serve", "--matrix F --redis URL [--listen ADDR]")
	path := f.stringEnv("matrix", "ROUTERD_MATRIX", "", "routing matrix file")
	rf := f.redis("redis", "ROUTERD_REDIS_URL", "bus Redis")
	wf := f.web("serve", "ROUTERD_", ":9464", "/metrics, /healthz, /readyz, /-/reload", true)
	group := f.String("group", "routerd", "consumer group on the ingress streams")
	consumer := f.String("consumer", "", "this instance's consumer name (hostname-pid when empty); unique per instance")
	claimIdle := f.Duration("claim-idle", 30*time.Second, "claim entries left pending this long by another instance")
	deadAfter := f.Duration("dead-after", 5*time.Second, "claim at once the entries of an instance silent on a stream this long (at least 1s, at most --claim-idle)")
	maxEvent := f.Int("max-event-bytes", wire.DefaultMaxEventBytes, "refuse (dead-letter) an event whose JSON is larger")
	deadLetterAfter := f.Int("dead-letter-after", 20, "dead-letter an entry (reason poison) after this many tries that failed with an error that will not pass")
	poll := f.Duration("matrix-poll", 5*time.Second, pollHelp)
	level := f.String("log-level", "info", "debug, info, warn or error")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := f.required("matrix", "redis"); err != nil {
		return err
	}
	if err := wf.check(); err != nil {
		return err
	}
	log, m, err := daemonSetup(env, *level, *path)
	if err != nil {
		return err
	}
	if env.Getenv("GOGC") == "" {
		// The router's live heap is small (the batches in flight) while it
		// allocates a few KiB per event: at Go's default it collects every
		// few MiB routed. See docs/operations.md (GOGC).
		debug.SetGCPercent(serveGCPercent)
	}
	c, err := rf.open(log)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := requireVersion(ctx, log, c, "bus"); err != nil {
		return err
	}
	reg := newRegistry()
	tp, stopTracing, err := telemetry.Setup(ctx, env.Getenv, env.Stdout, "routerd")
	if err != nil {
		return err
	}
	defer flushTraces(log, stopTracing)
	r, err := router.New(c, m, router.Options{
		Group: *group, Consumer: *consumer, ClaimIdle: *claimIdle, DeadAfter: *deadAfter, MaxEventBytes: *maxEvent, DeadLetterAfter: *deadLetterAfter,
		Logger: log, Registerer: reg, TracerProvider: tp,
	})
	if err != nil {
		return err
	}
	rc := reload.New(*path, m, reload.Options{Namespace: "routerd", Logger: log, Registerer: reg})
	rc.Subscribe(r.SetMatrix)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.Run(gctx) })
	g.Go(wf.server(gctx, log, reg, func() []string { return problemLines(r.Problems()) }, map[string]http.HandlerFunc{"POST /-/reload": wf.gate(reloadHandler(rc))}))
	g.Go(func() error { rc.Run(gctx, env.Reload, *poll); return nil })
	log.Info("routerd serving", "matrix", *path, "sha256", m.Hash[:12])
	err = g.Wait()
	log.Info("routerd stopped")
	return err
}

// versionTimeout bounds the start's read of the Redis version: a Redis
// down at start does not hold the daemon, which retries by itself.
const versionTimeout = 3 * time.Second

// requireVersion refuses a Redis (role: bus, cache) older than routerd
// needs, on every master of a cluster, before the daemon starts: it would
// start and fail later on unknown commands. A version it cannot read (a
// Redis down at start, INFO refused by an ACL) is a warning, once.
func requireVersion(ctx context.Context, log *slog.Logger, c redis.UniversalClient, role string) error {
	vctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	unread, err := doctor.CheckVersions(vctx, c, role)
	if unread != nil {
		log.Warn("cannot read the Redis version at start: routerd needs Redis 7.0 or newer (`routerd doctor` checks it)", "redis", role, "err", unread)
	}
	return err
}

// pollHelp is the help of --matrix-poll.
const pollHelp = "the matrix file is watched (fsnotify) and reloaded when it changes; where it cannot be watched, it is read this often. 0 turns reloading on change off (SIGHUP still reloads)"

// reloadHandler answers POST /-/reload: 200, or 500 with the errors.
func reloadHandler(rc *reload.Coordinator) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		if err := rc.Reload(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "reloaded\n")
	}
}

// agentUsage is the agent's synopsis.
const agentUsage = "--redis URL --service S --matrix F (--cache-redis URL | --deliver URL|- | both) [--listen ADDR]"

func agent(ctx context.Context, env *Env, args []string) error {
	f := newFlags(env, "agent", agentUsage)
	bus := f.redis("redis", "ROUTERD_REDIS_URL", "bus Redis")
	cache := f.redis("cache-redis", "ROUTERD_CACHE_REDIS_URL", "the service's cache Redis")
	target := f.secretEnv("deliver", "ROUTERD_DELIVER", "hand each invalidation to the service's process: POST it as JSON to this URL, or - for JSON lines on stdout (see docs/protocol.md)")
	summaryEvery := f.Duration("summary-interval", time.Minute, "log one line of what was applied per interval (0: never)")
	service := f.stringEnv("service", "ROUTERD_SERVICE", "", "service name in the matrix")
	path := f.stringEnv("matrix", "ROUTERD_MATRIX", "", "routing matrix file")
	wf := f.web("agent", "ROUTERD_AGENT_", ":9465", "/metrics, /healthz, /readyz", false)
	sf := f.store()
	check := f.Duration("check-interval", 30*time.Second, "how often positions are checked against the channels")
	poll := f.Duration("matrix-poll", 5*time.Second, pollHelp)
	applyRate := f.Float64("apply-rate", 0, "invalidations per second against the cache Redis; 0 for no limit")
	applyBurst := f.Int("apply-burst", 0, "invalidations at once under --apply-rate (default: the rate, at least 1)")
	coalesce := f.Duration("apply-coalesce", 20*time.Millisecond, "how long work over --apply-rate is merged before it is applied")
	maxKeys := f.Int("max-keys", matrix.DefaultLimits().MaxKeys, "keys of one merged invalidation: more split into several")
	sampleEvery := f.Duration("tag-sample-interval", time.Minute, "how often the sizes of the service's largest tag sets are sampled for /metrics (with --cache-redis; 0: never)")
	acceptEviction := f.Bool("accept-eviction-risk", false, "report ready although the cache Redis's maxmemory-policy can evict tag sets (allkeys-*), or reference sets while entity references are in use (volatile-*): values may then stay cached past their invalidation")
	shardArg := f.String("tenant-shard", "", "i/k: be instance i (from 0) of k that split the service's tenants, each tenant to exactly one (docs/capacity.md); every instance 0/k … k-1/k must run")
	level := f.String("log-level", "info", "debug, info, warn or error")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := f.required("redis", "service", "matrix"); err != nil {
		return err
	}
	var shard wire.TenantShard
	if *shardArg != "" {
		var err error
		if shard, err = wire.ParseTenantShard(*shardArg); err != nil {
			return usagef("--tenant-shard: %v", err)
		}
	}
	if *cache.url == "" && *target == "" {
		return f.fail("--cache-redis, --deliver or both are required: invalidations need somewhere to go")
	}
	if err := wf.check(); err != nil {
		return err
	}
	cache.inherit = bus
	log, m, err := daemonSetup(env, *level, *path)
	if err != nil {
		return err
	}
	busC, err := bus.open(log)
	if err != nil {
		return err
	}
	defer busC.Close()
	if err := requireVersion(ctx, log, busC, "bus"); err != nil {
		return err
	}
	var cacheC redis.UniversalClient
	if *cache.url != "" {
		if cacheC, err = cache.open(log); err != nil {
			return err
		}
		defer cacheC.Close()
		if err := requireVersion(ctx, log, cacheC, "cache"); err != nil {
			return err
		}
	}
	reg := newRegistry()
	traceOut := env.Stdout
	if *target == deliver.Stdout {
		traceOut = env.Stderr // stdout carries the deliveries alone
	}
	tp, stopTracing, err := telemetry.Setup(ctx, env.Getenv, traceOut, "routerd-agent")
	if err != nil {
		return err
	}
	defer flushTraces(log, stopTracing)
	out, err := newAgentOut(*target, env, cacheC, *service, log, reg)
	if err != nil {
		return err
	}
	s, err := subscriber.New(busC, subscriber.Options{
		TracerProvider: tp, Handler: out.handler(), Observe: out.count, Delivers: *target != "",
		Service: *service, Matrix: m, Cache: cacheC, CheckInterval: *check,
		ApplyRate: *applyRate, ApplyBurst: *applyBurst, Coalesce: *coalesce, MaxKeys: *maxKeys,
		Store: sf.options(), AcceptEvictionRisk: *acceptEviction, TenantShard: shard,
		Logger: log, Registerer: reg,
	})
	if err != nil {
		return err
	}
	// The agent watches its matrix file rather than taking the matrix from
	// the bus: the file is what the operator deploys and reviews (a config
	// map, a volume), and the agent then needs nothing from the router to
	// know what it owns.
	rc := reload.New(*path, m, reload.Options{Namespace: "subscriber", Logger: log, Registerer: reg})
	rc.Subscribe(s.SetMatrix)
	g, gctx := errgroup.WithContext(ctx)
	if cacheC != nil && *sampleEvery > 0 {
		sub, _ := m.SubscriptionFor(*service) // subscriber.New checked the service
		sampler := tagsize.NewSampler(cacheC, sub.Tags, tagsize.Options{Guard: *sf.guard, Logger: log, Registerer: reg})
		rc.Subscribe(func(m *matrix.Matrix) error {
			if sub, ok := m.SubscriptionFor(*service); ok {
				sampler.SetTags(sub.Tags)
			}
			return nil
		})
		g.Go(func() error { sampler.Run(gctx, *sampleEvery); return nil })
	}
	g.Go(func() error {
		if err := out.start(gctx); err != nil {
			return err
		}
		return s.Run(gctx)
	})
	g.Go(wf.server(gctx, log, reg, func() []string { return append(problemLines(s.Problems()), out.problems()...) }, nil))
	g.Go(func() error { rc.Run(gctx, env.Reload, *poll); return nil })
	g.Go(func() error { out.summarize(gctx, *summaryEvery); return nil })
	g.Go(func() error { out.holdMark(gctx); return nil })
	g.Go(func() error { returnStartMemory(gctx, s.Ready); return nil })
	started := time.Now()
	log.Info("routerd agent running", "service", *service, "pid", os.Getpid(), "cache", cacheC != nil, "deliver", deliver.Redacted(*target), "tenant_shard", shard.String())
	err = g.Wait()
	out.stopped()
	log.Info("routerd agent stopped", out.summary(started)...)
	return err
}

// returnStartMemory gives the memory the agent's start made garbage back to
// the system once it is first ready: subscribing and the first check of a
// million channels pass through several times the heap the agent keeps
// (lists of every tenant and channel), which the Go runtime would otherwise
// hand back only slowly; measured at 500,000 channels, 237 MB of RSS before,
// 93 MB after (docs/capacity.md).
func returnStartMemory(ctx context.Context, ready func() bool) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for !ready() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	debug.FreeOSMemory()
}

// problemLines renders a daemon's readiness problems for /readyz.
func problemLines[P fmt.Stringer](ps []P) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// daemonSetup makes the logger and loads the matrix for serve and agent.
func daemonSetup(env *Env, level, path string) (*slog.Logger, *matrix.Matrix, error) {
	log, err := newLogger(env.Stderr, level)
	if err != nil {
		return nil, nil, err
	}
	m, err := reload.Load(path)
	return log, m, matrixErr(env, err)
}

func flushTraces(log *slog.Logger, stop func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := stop(ctx); err != nil {
		log.Warn("flushing traces", "err", err)
	}
}
