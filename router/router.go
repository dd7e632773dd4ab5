package router

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/routerd/routerd/internal/breaker"
	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/internal/shard"
	"github.com/routerd/routerd/internal/telemetry"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
)

// Options configure a Router. The zero value is usable.
type Options struct {
	// Group is the consumer group on every ingress partition; "routerd" by default.
	Group string
	// Consumer names this instance in the group; hostname-pid by default.
	// Give each instance its own.
	Consumer string
	// BatchSize is how many entries one read takes from a partition (256);
	// while reads come back full, up to 16 times as many.
	BatchSize int
	// ReadBytes bounds the field names and values one read or claim holds (8 MiB),
	// whatever the count: it takes fewer entries when they are large, and
	// always at least one. A value above MaxEventBytes is read cut (the
	// entry goes to the dead letters as too_large), so one entry holds at
	// most MaxEventBytes; only a read that waits for the next entry gets it
	// whole (read.go).
	ReadBytes int
	// Block is how long a read waits for new entries (1s). It bounds how
	// long shutdown waits for an idle read.
	Block time.Duration
	// ClaimIdle is how long an entry stays pending before another instance
	// claims it (30s). Keep it well above the time to route one batch. A
	// live router retries its own failed entries at once, with backoff
	// (100ms doubling to 2s), and keeps them from being claimed: the claim
	// is for the entries of routers that died.
	ClaimIdle time.Duration
	// DeadAfter is how long a router may stay silent on a stream (no
	// read, no claim: the idle time of its consumer, XINFO CONSUMERS)
	// while entries are pending for it before the others take it for dead
	// and claim those entries, however long ClaimIdle is (5s; at least 1s,
	// at most ClaimIdle unless that is under 1s). A live router keeps its
	// consumers fresh: it touches each of them every 200ms whatever its own
	// DeadAfter (touch), until its last batch is done, so routers on
	// different DeadAfter do not take one another for dead. So a router
	// killed mid-batch, or one that lost the bus, has its entries routed by
	// another within DeadAfter and a second or two (silence), and a slow
	// batch of a live one is not claimed before ClaimIdle. An entry pending
	// under this router's own name for DeadAfter that it does not have in
	// hand (read under its name by another process, or back from a
	// restored snapshot) it routes itself.
	DeadAfter time.Duration
	// DeadLetterAfter is how many tries of an entry may fail with an error
	// that will not pass (WRONGTYPE on a key of one of its channels, a
	// script error: Redis refused the entry's own commands) before it goes
	// to the dead letters with reason "poison" and is acknowledged (20).
	// Errors that pass — connections, timeouts, CLUSTERDOWN, MOVED, ASK,
	// TRYAGAIN, LOADING, READONLY, OOM and the like — are retried for as
	// long as they last.
	DeadLetterAfter int
	// ClaimInterval is how often pending entries are claimed and the
	// housekeeping runs (5s).
	ClaimInterval time.Duration
	// DiscoverInterval is how often the router looks for ingress partition
	// streams it does not read yet (1m): those left from a larger partition
	// count, or written by a publisher that uses another count. It SCANs
	// the keyspace (every master of a cluster) for them.
	DiscoverInterval time.Duration
	// DeadLetterMaxLen caps the dead-letter stream, approximately (100000).
	DeadLetterMaxLen int64
	// DeadLetterEntryBytes bounds the copy of a refused entry kept in its
	// dead letter (16 KiB) when it can never be replayed (malformed,
	// too_large, a value cut when read): a longer one is cut there, with a
	// note. An entry that can be replayed after a fix (unknown_domain,
	// not_granted, poison) is kept whole: its event or events are at most
	// MaxEventBytes.
	DeadLetterEntryBytes int
	// MaxEventBytes is the largest event JSON routed (wire.DefaultMaxEventBytes,
	// 1 MiB); a larger one goes to the dead letters, reason too_large.
	MaxEventBytes int
	// SourceVersionTTL is how long the newest source_version of an entity is
	// remembered for suppressing older events (24h).
	SourceVersionTTL time.Duration
	// ForgetConsumers removes from the consumer group the consumers (other
	// than this one) that have nothing pending and have been idle this long
	// (1h), so instances that came and went do not pile up.
	ForgetConsumers time.Duration
	// ReplicaTimeout bounds the WAIT for a replica after publishing, on a
	// master that has one (1s). A message not acknowledged by a replica in
	// time is published again later (idempotently).
	ReplicaTimeout time.Duration
	// ShutdownTimeout bounds how long an in-flight batch may take to finish
	// after Run's context is cancelled (10s); what is not finished stays
	// pending and is claimed later, never lost.
	ShutdownTimeout time.Duration
	Logger          *slog.Logger
	Registerer      prometheus.Registerer
	// TracerProvider, when set, traces routing ("route" per event, "channel
	// publish" per message); messages carry the channel publish span's
	// context to the subscribers.
	TracerProvider trace.TracerProvider
}

func (o *Options) setDefaults() error {
	if o.Group == "" {
		o.Group = "routerd"
	}
	if o.Consumer == "" {
		host, _ := os.Hostname()
		o.Consumer = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{{"Block", &o.Block, time.Second}, {"ClaimIdle", &o.ClaimIdle, 30 * time.Second}, {"ClaimInterval", &o.ClaimInterval, 5 * time.Second},
		{"DiscoverInterval", &o.DiscoverInterval, time.Minute}, {"SourceVersionTTL", &o.SourceVersionTTL, 24 * time.Hour},
		{"ShutdownTimeout", &o.ShutdownTimeout, 10 * time.Second}, {"ReplicaTimeout", &o.ReplicaTimeout, time.Second},
		{"ForgetConsumers", &o.ForgetConsumers, time.Hour}, {"DeadAfter", &o.DeadAfter, 5 * time.Second}} {
		if *d.v == 0 {
			*d.v = d.def
		}
		if *d.v < 0 {
			return fmt.Errorf("router: negative duration %v for %s", *d.v, d.name)
		}
	}
	if o.DeadAfter < minDeadAfter {
		return fmt.Errorf("router: DeadAfter must be at least %v (a live router touches its consumers every %v), not %v", minDeadAfter, touchEvery, o.DeadAfter)
	}
	// At most ClaimIdle, which claims every entry anyway; but never below
	// what the touches allow, or live routers would look dead.
	o.DeadAfter = max(min(o.DeadAfter, o.ClaimIdle), minDeadAfter)
	if o.BatchSize == 0 {
		o.BatchSize = 256
	}
	if o.BatchSize < 1 {
		return fmt.Errorf("router: batch size must be positive, not %d", o.BatchSize)
	}
	if o.ReadBytes == 0 {
		o.ReadBytes = 8 << 20
	}
	if o.ReadBytes < 1 {
		return fmt.Errorf("router: ReadBytes must be positive, not %d", o.ReadBytes)
	}
	if o.DeadLetterAfter == 0 {
		o.DeadLetterAfter = 20
	}
	if o.DeadLetterAfter < 1 {
		return fmt.Errorf("router: DeadLetterAfter must be positive, not %d", o.DeadLetterAfter)
	}
	if o.DeadLetterMaxLen == 0 {
		o.DeadLetterMaxLen = 100_000
	}
	if err := o.sizeDefaults(); err != nil {
		return err
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Router routes ingress events to channels. Create it with New and run it with Run.
type Router struct {
	c       redis.UniversalClient
	opt     Options
	log     *slog.Logger
	m       *metrics
	matrix  atomic.Pointer[matrix.Matrix]
	prefix  string
	ready   atomic.Bool
	health  health
	co      *coalescer
	tracer  trace.Tracer
	tracing bool // spans are recorded; when off, events' traceparents pass through as they are
	// cluster is set for a Redis Cluster bus: messages go out with SPUBLISH
	// (sharded pub/sub, where the subscribers listen), one channel per
	// script call, and new tenants are announced.
	cluster bool
	// claimC runs the claims (claim.lua) without go-redis's retries: a run
	// whose reply was lost (a bus closing a reply above its output buffer
	// limit) claimed its entries, and a retried run would find them no
	// longer idle and answer none, hiding the loss (onceOnly). Set by Run.
	claimC redis.UniversalClient
	// Before an ingress entry is acknowledged its messages are made durable
	// on their master (WAIT 1 where it has a replica), and every publish
	// carries the master's replication id, so a promoted replica (which may
	// lack the last versions) starts a new epoch instead of repeating them.
	shards shard.Set

	streamsMu sync.Mutex
	streams   []string            // ingress partitions read, set up by Run
	spawn     func(stream string) // starts reading a stream, set by Run
	unread    map[string]bool     // streams under the ingress prefix that are no partition, logged once
	// rediscover asks the claim loop to look for partitions at once (the
	// partition count changed).
	rediscover chan struct{}
	// silent asks the claim loop to claim at once: a touch found a router
	// gone silent on a stream (touch).
	silent chan struct{}
	// silence tells the routers gone silent from the listings of touch
	// and claim.
	silence silence
	// countLost is set when housekeeping found the partition count gone
	// (the bus lost its data): publishers meanwhile took the default count,
	// so their events may be on partitions no router reads yet.
	countLost atomic.Bool
	// countWrong is set when housekeeping replaced a partition count other
	// than its matrix's (an operator's SET, another matrix on the same bus,
	// a restored snapshot): publishers that read it append to partitions no
	// router may read yet.
	countWrong atomic.Bool

	// sizes is what one read or claim of each stream takes (readSize).
	sizes sync.Map

	// delivered is, per stream, the group's last delivered id at the last
	// tidy: what entries deleted unread were added after (housekeeping's).
	delivered map[string]string

	// redrive is the re-drive stream, read as a partition (redrive.go).
	redrive string
	// deadCursor is the last dead letter the claim loop looked at for
	// re-driving; rescanDead asks it to look at all of them again (a
	// reload added domains).
	deadCursor string
	rescanDead atomic.Bool
	// refusedOnce is set once the Redis user was found unable to run the
	// read scripts (read.go).
	refusedOnce atomic.Bool
	// deadLetterOnce is set once the Redis user was found unable to write
	// the malformed and too_large dead letters' stream (deadLetterRefused).
	deadLetterOnce atomic.Bool
	// deadLetterRecordOnce is set once the Redis user was found unable to
	// record the dead letters written (deadLetterUnrecorded).
	deadLetterRecordOnce atomic.Bool
	// forgetRefusedOnce is set once the Redis user was found unable to run
	// lua/forget.lua (forgetConsumersApart).
	forgetRefusedOnce atomic.Bool

	// digest is the digest of the matrix in force (a string); peers the
	// live routers and their digests as last read (handover.go).
	digest       atomic.Value
	peers        peers
	peersRefused atomic.Bool
	// registerMu serialises the registrations; registered is when the
	// last one written expires.
	registerMu sync.Mutex
	registered time.Time

	retryMu sync.Mutex
	retries map[string]*retryQueue // failed entries by stream

	// hand is what the read loops and routing stages have in hand
	// (claimForgotten).
	hand hand
}

// New checks the options. The matrix's prefix and partition count are fixed
// for the life of the Router.
func New(c redis.UniversalClient, m *matrix.Matrix, opt Options) (*Router, error) {
	if c == nil || m == nil {
		return nil, errors.New("router: nil Redis client or matrix")
	}
	if err := opt.setDefaults(); err != nil {
		return nil, err
	}
	r := &Router{c: c, opt: opt, log: opt.Logger, m: newMetrics(opt.Registerer), prefix: m.Prefix, retries: map[string]*retryQueue{},
		unread: map[string]bool{}, rediscover: make(chan struct{}, 1), silent: make(chan struct{}, 1), redrive: names.RedriveStream(m.Prefix)}
	r.matrix.Store(m)
	r.digest.Store(m.Digest())
	r.m.known(m)
	r.co = newCoalescer(r, r.m)
	r.health.probe = breaker.NewProbe()
	r.newHealthMetrics(opt.Registerer)
	r.shards.C = c
	r.cluster = redisconn.IsCluster(c)
	r.tracer = telemetry.Tracer(opt.TracerProvider, "routerd/router")
	r.tracing = telemetry.Enabled(opt.TracerProvider)
	return r, nil
}

// Matrix returns the matrix in force.
func (r *Router) Matrix() *matrix.Matrix { return r.matrix.Load() }

// SetMatrix puts a new matrix in force for the next batch. A matrix with
// another prefix is refused: that needs a restart. Another partition count
// is taken up at once: the router reads the new partitions, records the
// count for publishers, and keeps reading the old ones that exist; so are
// new publishers: their streams are read at once.
func (r *Router) SetMatrix(m *matrix.Matrix) error {
	old := r.matrix.Load()
	if m.Prefix != old.Prefix {
		return fmt.Errorf("router: the prefix cannot change while running (%q to %q); restart routerd", old.Prefix, m.Prefix)
	}
	r.matrix.Store(m)
	r.digest.Store(m.Digest())
	r.m.known(m)
	if r.ready.Load() {
		// The other routers learn of the new matrix now, not at the next
		// housekeeping round: from then on they hand entries over.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := r.register(ctx); err != nil {
			r.log.Warn("registering the new matrix with the live routers; tried again at the next housekeeping round", "err", err)
		}
		cancel()
	}
	if slices.ContainsFunc(m.DomainNames(), func(d string) bool { _, ok := old.Domains[d]; return !ok }) {
		// Events of the new domains may be in the dead letters, refused
		// by this router or another on an older matrix: re-drive them.
		r.rescanDead.Store(true)
	}
	newPublisher := slices.ContainsFunc(m.PublisherNames(), func(p string) bool { _, ok := old.Publishers[p]; return !ok })
	if m.Partitions != old.Partitions || newPublisher {
		select {
		case r.rediscover <- struct{}{}:
		default:
		}
	}
	return nil
}

// Run routes until ctx is cancelled, then lets in-flight batches finish
// (within ShutdownTimeout) and returns nil. Redis errors are logged and
// retried — an unreachable, loading or failing-over Redis at start as much
// as while routing — except one that no retry can change while setting up
// the ingress (a key of the wrong type, a missing permission, a wrong
// password: see fatalAtSetup), which Run returns.
func (r *Router) Run(ctx context.Context) error {
	for {
		err := r.setup(ctx)
		if err == nil {
			break
		}
		if fatalAtSetup(err) {
			return fmt.Errorf("router: setting up the ingress: %w", err)
		}
		if ctx.Err() != nil {
			return nil // stopped while setting up (the daemon's listener failed, say): not an error of the ingress
		}
		r.log.Error("setting up ingress", "err", err)
		if !sleep(ctx, time.Second) {
			return nil
		}
	}
	r.claimC = onceOnly(r.c)
	defer r.claimC.Close()
	r.ready.Store(true)
	defer r.ready.Store(false)
	defer r.deregister()
	r.log.Info("routing", "partitions", len(r.streams), "group", r.opt.Group, "consumer", r.opt.Consumer)

	// The touches outlive the read loops and the coalescer: a batch in hand
	// may take ShutdownTimeout to finish, longer than DeadAfter, and the
	// others must not take this router for dead meanwhile.
	touchCtx, stopTouch := context.WithCancel(context.WithoutCancel(ctx))
	touched := make(chan struct{})
	go func() { defer close(touched); r.touchLoop(touchCtx) }()
	defer func() { stopTouch(); <-touched }()

	// The coalescer outlives the read loops: when they have finished their
	// last batches it publishes whatever is still pending, then stops.
	flushCtx, stopFlush := context.WithCancel(context.WithoutCancel(ctx))
	flushed := make(chan struct{})
	go func() { defer close(flushed); r.co.run(flushCtx) }()
	defer func() { stopFlush(); <-flushed }()

	g, gctx := errgroup.WithContext(ctx)
	r.streamsMu.Lock()
	r.spawn = func(stream string) { g.Go(func() error { r.readLoop(gctx, stream); return nil }) }
	r.streamsMu.Unlock()
	for _, stream := range r.streamList() {
		r.spawn(stream)
	}
	g.Go(func() error { r.claimLoop(gctx); return nil })
	g.Go(func() error { r.probe(gctx); return nil })
	return g.Wait()
}

func (r *Router) streamList() []string {
	r.streamsMu.Lock()
	defer r.streamsMu.Unlock()
	return r.streams
}

// setup records the partition count for publishers, finds the partitions to
// read (the configured ones and any other partition stream that exists),
// creates the consumer groups and loads the scripts.
func (r *Router) setup(ctx context.Context) error {
	// As housekeeping does: a count written while no router ran (another
	// matrix, an operator's SET) has publishers append where this router
	// may not read yet, so the claim loop's first round starts the rescan.
	if err := r.recordCount(ctx); err != nil {
		return err
	}
	if err := r.markGeneration(ctx); err != nil {
		return err
	}
	// Registered before the first read: a router on another matrix that
	// reads an entry after this hands it over to this one too.
	if err := r.heartbeat(ctx); err != nil {
		return err
	}
	streams, err := r.partitionStreams(ctx)
	if err != nil {
		return err
	}
	for _, s := range streams {
		if err := r.ensureGroup(ctx, s); err != nil {
			return err
		}
	}
	if err := loadScripts(ctx, r.c); err != nil {
		return err
	}
	r.streamsMu.Lock()
	r.streams = streams
	r.streamsMu.Unlock()
	return nil
}

// partitionStreams returns the ingress streams to read: the matrix's
// partitions, and every other partition stream under the prefix — left from
// a larger partition count, or written by a publisher that uses another
// count — so that no event in one is left unread. A stream under the
// ingress prefix that is not named as a partition is no router's: it is
// logged (once) and reported by routerd doctor.
func (r *Router) partitionStreams(ctx context.Context) ([]string, error) {
	mtx := r.matrix.Load()
	n := mtx.Partitions
	publishers := mtx.PublisherNames()
	streams := make([]string, 0, n*(1+len(publishers)))
	listed := map[string]bool{}
	// The shared ingress, then each granted publisher's own streams, and
	// the dead letters sent back to the routers.
	for p := 0; p < n; p++ {
		streams = append(streams, names.IngressStream(r.prefix, p))
		for _, pub := range publishers {
			streams = append(streams, names.PublisherStream(r.prefix, pub, p))
		}
	}
	streams = append(streams, r.redrive)
	for _, s := range streams {
		listed[s] = true
	}
	found, err := redisconn.ScanStreams(ctx, r.c, names.IngressPattern(r.prefix))
	if err != nil {
		return nil, fmt.Errorf("looking for ingress partitions: %w", err)
	}
	for _, s := range found {
		if listed[s] {
			continue
		}
		if pub := names.StreamPublisher(r.prefix, s); pub != "" {
			if _, granted := mtx.Publishers[pub]; granted {
				streams = append(streams, s) // a granted publisher's partition beyond the count
				listed[s] = true
				continue
			}
		}
		if _, err := names.ParseIngressStream(r.prefix, s); err != nil {
			r.streamsMu.Lock()
			if !r.unread[s] {
				r.unread[s] = true
				r.log.Warn("a stream under the ingress prefix is not a partition: no router reads it (routerd doctor says how to fix it)", "stream", s, "err", err)
			}
			r.streamsMu.Unlock()
			continue
		}
		streams = append(streams, s)
		listed[s] = true
	}
	return streams, nil
}

// discover starts reading the partition streams that appeared since setup.
func (r *Router) discover(ctx context.Context) error {
	streams, err := r.partitionStreams(ctx)
	if err != nil {
		return err
	}
	reading := map[string]bool{}
	for _, s := range r.streamList() {
		reading[s] = true
	}
	for _, s := range streams {
		if reading[s] {
			continue
		}
		if err := r.ensureGroup(ctx, s); err != nil {
			return err
		}
		r.streamsMu.Lock()
		r.streams = append(r.streams[:len(r.streams):len(r.streams)], s)
		spawn := r.spawn
		r.streamsMu.Unlock()
		r.log.Info("reading another ingress partition", "stream", s)
		spawn(s)
	}
	return nil
}

// ensureGroup creates the consumer group, reading from the start of the
// stream: an event published before routerd first ran is still routed.
func (r *Router) ensureGroup(ctx context.Context, stream string) error {
	err := r.c.XGroupCreateMkStream(ctx, stream, r.opt.Group, "0").Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return fmt.Errorf("create group on %s: %w", stream, err)
	}
	if err == nil {
		r.m.groupsCreated.Inc()
		r.log.Info("created consumer group", "stream", stream, "group", r.opt.Group)
	}
	return nil
}

// readLoop reads a stream and hands the batches to its routing stages
// (routeStages), so that the next batch is read while this one is routed
// and published.
func (r *Router) readLoop(ctx context.Context, stream string) {
	q := r.retryQueue(stream)
	// Unbuffered: a read is handed over when the routing stages take it
	// (at once while the batch before waits to be published: it joins it).
	batches := make(chan read)
	routed := make(chan struct{})
	go func() {
		defer close(routed)
		r.routeStages(ctx, stream, q, batches)
	}()
	defer func() { close(batches); <-routed }()
	reader := &streamReader{r: r, stream: stream, size: r.readSize(stream)}
	defer reader.close()
	// First the entries this consumer name left pending (a restart), then
	// new ones; again those pending after last whenever a read of new ones
	// left some (bounded.go).
	id, last := "0", ""
	count := r.opt.BatchSize
	// pass is in hand while the loop reads its own pending entries: of
	// any age, they are not forgotten.
	var pass uint64
	defer func() { r.hand.drop(stream, pass) }()
	for ctx.Err() == nil {
		if id != ">" && pass == 0 {
			pass = r.hand.take(stream, time.Time{})
		}
		block := r.opt.Block
		if at, ok := q.next(); ok {
			block = min(block, max(time.Until(at), time.Millisecond))
			if q.size() >= 4*r.opt.BatchSize {
				// Enough in hand that fails: take no more until they pass.
				sleep(ctx, block)
				batches <- read{} // the retries that are due
				continue
			}
		}
		var msgs []redis.XMessage
		var err error
		asked := count // what this read takes: count, bounded (bound)
		readAt := time.Now()
		reading := r.health.begin(&call{reason: ReasonReadsFailing, stream: stream}, block)
		if id == ">" {
			var pending bool
			// count is what the loop wants, asked what the stream's
			// reads take now: bounding count itself would shrink every
			// read of a backlog again, down to one entry.
			asked = reader.bound(count)
			reader.backlog = count > r.opt.BatchSize // the read before came back full
			msgs, pending, err = r.readNew(ctx, reader, asked, block)
			if pending {
				// A cut reply or a failed connection: what it delivered is
				// read from the pending list, and reads start small again.
				r.health.done(reading)
				id, count = pendingAfter(last), r.opt.BatchSize
				continue
			}
		} else {
			start := "-"
			if id != "0" {
				start = "(" + id
			}
			msgs, _, err = r.claimPending(ctx, stream, 0, start, r.opt.Consumer, reader.size.scale(r.opt.ReadBytes))
		}
		r.health.done(reading)
		if err == nil && len(msgs) == 0 && id == ">" {
			err = redis.Nil
		}
		r.readDone(stream, redisFailure(err))
		switch {
		case err == nil:
			if len(msgs) > 0 {
				reader.size.worked()
			}
			// Entries in hand are routed even when ctx was cancelled
			// during the read: they are ours now, and waiting for a
			// claim would only delay them.
		case errors.Is(err, redis.Nil):
			count = r.opt.BatchSize // none new: a short read
			batches <- read{}       // the retries that are due
			continue
		case ctx.Err() != nil:
			return
		case redis.HasErrorPrefix(err, "NOGROUP"):
			r.log.Warn("consumer group vanished; creating it again", "stream", stream)
			if err := r.ensureGroup(ctx, stream); err != nil {
				r.log.Error("recreating consumer group", "stream", stream, "err", err)
				sleep(ctx, time.Second)
			}
			continue
		case err != nil:
			r.log.Error("reading ingress", "stream", stream, "err", err)
			if id != ">" && lostAfterSent(err) {
				r.readLost(stream, err) // a claim of our pending entries lost its connection
			}
			sleep(ctx, 500*time.Millisecond)
			count = r.opt.BatchSize // a read of 4,096 kept failing while connections kept dying
			if id == ">" {
				// A read of new entries that failed may have delivered
				// some (a connection lost with the reply; a read that
				// CLIENT UNBLOCK answered, then ran).
				id = pendingAfter(last)
			}
			continue
		}
		if id != ">" {
			if len(msgs) == 0 {
				id = ">"
				r.hand.drop(stream, pass)
				pass = 0
				continue
			}
			// Our own pending entries (a restart): the next read goes on
			// after the last one, whether or not they succeed.
			id = msgs[len(msgs)-1].ID
		}
		last = msgs[len(msgs)-1].ID
		var full bool
		if id != ">" {
			// A read of pending entries asks for BatchSize of them.
			full = len(msgs) >= r.opt.BatchSize
		} else {
			full = len(msgs) >= asked
			count = nextCount(count, full, r.opt.BatchSize)
		}
		inHand := r.hand.take(stream, readAt)
		if full {
			batches <- read{msgs: msgs, hand: inHand}
			continue
		}
		// A short read (the router keeps up, or the read was bounded in
		// bytes): the next read waits until this batch is published, so
		// that what arrives meanwhile makes one batch, with fewer and
		// larger messages per channel, rather than many small ones that
		// cost the bus a publish call each — and reads of large entries
		// do not pile up.
		published := make(chan struct{})
		batches <- read{msgs: msgs, published: published, hand: inHand}
		<-published
	}
}

// pendingAfter is where a read loop reads this consumer's pending entries
// from: after last, the last entry it handed on ("0": from the first).
func pendingAfter(last string) string {
	if last == "" {
		return "0"
	}
	return last
}

// read is what a stream's read loop hands its routing stages: the entries
// read (none: only the retries that are due), and, for a short read, a
// channel closed once they are published (or found to need no publish).
type read struct {
	msgs      []redis.XMessage
	published chan struct{}
	hand      uint64 // the read's token in Router.hand (0: none)
}

// maxReadBatches bounds how many BatchSize a read takes when a backlog
// builds up (nextCount), and how many entries the reads that join while a
// batch is published make into one batch (joins): 4,096 at the default
// BatchSize.
const maxReadBatches = 16

// nextCount is how many entries the read after one of count wants: a read
// that came back full doubles the next one, up to maxReadBatches ×
// batchSize; a short one goes back to batchSize.
func nextCount(count int, full bool, batchSize int) int {
	if full {
		return min(2*count, maxReadBatches*batchSize)
	}
	return batchSize
}

// joins reports whether batch b, read while waiting waits for the batch
// before to be published, may join it: not when waiting failed, nor when
// the two would hold more than max entries.
func joins(waiting, b *batch, max int) bool {
	return waiting.failed == nil && len(waiting.entries)+len(b.entries) <= max
}

// routeStages routes a stream's batches in three stages, one goroutine
// each, connected without buffers: while batch N is published (one
// pipeline of publish calls, one after the other: a channel's messages
// keep the stream's order, and the coalescer sees what N held back before
// N+1 is admitted), batch N+1 is parsed, routed and merged — and the
// batches read meanwhile join it, so that under load a channel gets fewer,
// larger messages — and batch N-1's entries are acknowledged. An entry is
// acknowledged only once its messages were published; one that failed is
// tried again.
func (r *Router) routeStages(ctx context.Context, stream string, q *retryQueue, batches <-chan read) {
	prepared := make(chan *batch)
	published := make(chan *batch)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(published)
		for b := range prepared {
			if b != nil {
				r.publishBatch(b)
				for _, c := range b.published {
					close(c)
				}
				published <- b
			}
			// Failed entries are tried again when due, between batches,
			// so new entries keep flowing past one that fails.
			r.retryDue(ctx, stream, q)
		}
	}()
	go func() {
		defer wg.Done()
		for b := range published {
			if err := r.settleBatch(b); err != nil {
				r.log.Warn("routing batch; its failed entries are retried", "stream", stream, "entries", len(b.entries), "err", err)
			}
		}
	}()
	// While the batch before is published, the batches read meanwhile join
	// the one waiting (batch.join), as long as it holds at most maxJoined
	// entries.
	maxJoined := maxReadBatches * r.opt.BatchSize
	var waiting *batch
	for open := true; open; {
		var next read
		if waiting == nil {
			next, open = <-batches
		} else {
			select {
			case prepared <- waiting:
				waiting = nil
				continue
			case next, open = <-batches:
			}
		}
		b := r.prepare(ctx, stream, next.msgs)
		if b != nil && next.published != nil {
			b.published = append(b.published, next.published)
		}
		if b != nil {
			b.hand = append(b.hand, next.hand)
		} else {
			r.hand.drop(stream, next.hand)
		}
		switch {
		case b == nil:
			if next.published != nil {
				close(next.published) // nothing to publish
			}
			if waiting == nil && open {
				prepared <- nil // the retries that are due
			}
		case waiting == nil:
			waiting = b
		case !joins(waiting, b, maxJoined) || !waiting.join(b):
			prepared <- waiting
			waiting = b
		}
		if waiting != nil && len(waiting.entries) >= maxJoined {
			prepared <- waiting
			waiting = nil
		}
	}
	if waiting != nil {
		prepared <- waiting
	}
	close(prepared)
	wg.Wait()
}

// claimLoop takes over entries left pending by dead instances (or by a
// failed batch of this one) and keeps the ingress tidy.
func (r *Router) claimLoop(ctx context.Context) {
	t := time.NewTicker(r.opt.ClaimInterval)
	defer t.Stop()
	discovered := time.Now()
	// Until then every round looks for partitions whatever the interval:
	// publishers keep a count they read for publisher.DefaultRefresh.
	var rescanUntil time.Time
	// setup recorded the count: what it found there counts as this round's.
	r.countChecked(&rescanUntil, true)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.rediscover:
			discovered = time.Time{}
		case <-r.silent:
			// A router went silent: its entries now, the rest of the
			// round at its time.
			for _, stream := range r.streamList() {
				r.deletedPending(stream, r.claimSilent(ctx, stream))
			}
			continue
		}
		if time.Now().Before(rescanUntil) || time.Since(discovered) >= r.opt.DiscoverInterval {
			// Before housekeeping records a new partition count, so the
			// new partitions are read when publishers learn of them.
			if err := r.discover(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("looking for ingress partitions", "err", err)
			} else {
				discovered = time.Now()
			}
		}
		r.hold(ctx)
		for _, stream := range r.streamList() {
			if err := r.claim(ctx, stream); err != nil && ctx.Err() == nil {
				r.log.Error("claiming pending entries", "stream", stream, "err", err)
			}
		}
		if err := r.takeHandedOver(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("routing re-driven entries handed over by other routers", "err", err)
		}
		if err := r.redriveKnown(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("re-driving dead letters of known domains", "err", err)
		}
		if err := r.housekeeping(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("ingress housekeeping", "err", err)
		}
		r.countChecked(&rescanUntil, false)
	}
}

// countChecked starts the rescan window when recordCount found the count
// gone or wrong. Publishers that read the count while it was gone took the
// default, and those that read a wrong one took it and keep it up to their
// refresh: the claim loop looks for their partitions now, and every round
// until a count read then has expired. At start a missing count is usual
// (no router ran on this bus yet) and logged as information only.
func (r *Router) countChecked(rescanUntil *time.Time, start bool) {
	lost, wrong := r.countLost.Swap(false), r.countWrong.Swap(false)
	if !lost && !wrong {
		return
	}
	switch {
	case lost && start:
		r.log.Info("no partition count on the bus (no router ran on it yet, or it lost its data): looking for ingress partitions every round for a while", "key", names.PartitionsKey(r.prefix))
	case lost:
		r.log.Warn("the partition count was gone (the bus lost its data): looking for ingress partitions at once", "key", names.PartitionsKey(r.prefix))
	default:
		r.log.Warn("the partition count differed from the matrix's (rewritten): looking for ingress partitions at once", "key", names.PartitionsKey(r.prefix), "partitions", r.matrix.Load().Partitions)
	}
	*rescanUntil = time.Now().Add(countKeptFor)
	select {
	case r.rediscover <- struct{}{}:
	default:
	}
}

// countKeptFor is how long a publisher may use a partition count it read:
// its refresh (publisher.DefaultRefresh, 30 s) with a margin. After a count
// was found gone or wrong, the router looks for new partitions every round
// for this long.
const countKeptFor = 35 * time.Second

// claim routes the entries of stream that routers left: those of a router
// gone silent for DeadAfter (claimSilent), those pending under this
// router's name that it does not have in hand (claimForgotten), then any
// pending for ClaimIdle. Pending entries the round found deleted from the
// stream are logged once for the round (deletedPending).
func (r *Router) claim(ctx context.Context, stream string) error {
	deleted := r.claimSilent(ctx, stream)
	defer func() { r.deletedPending(stream, deleted) }()
	gone, err := r.claimForgotten(ctx, stream)
	if deleted += gone; err != nil {
		return err
	}
	gone, err = r.claimOf(ctx, stream, r.opt.ClaimIdle, "", nil)
	deleted += gone
	return err
}

// claimSilent routes the entries of the routers gone silent on stream
// (silentRouters), and returns how many of their pending entries it found
// deleted from the stream (claimOf). A failure is logged: the claim after
// ClaimIdle takes those entries too, in time.
func (r *Router) claimSilent(ctx context.Context, stream string) (deleted int64) {
	silent, err := r.silentRouters(ctx, stream)
	if err != nil && ctx.Err() == nil && !redis.HasErrorPrefix(err, "NOGROUP") {
		// The claim after ClaimIdle does not need the list: it goes on.
		r.log.Warn("listing the routers of a stream to find those gone silent", "stream", stream, "err", err)
	}
	for _, c := range silent {
		r.log.Info("claiming the entries of a router gone silent", "stream", stream, "consumer", c.Name, "pending", c.Pending, "silent", c.Idle)
		gone, err := r.claimOf(ctx, stream, r.opt.DeadAfter, c.Name, nil)
		deleted += gone
		if err != nil && ctx.Err() == nil {
			r.log.Error("claiming the entries of a router gone silent", "stream", stream, "consumer", c.Name, "err", err)
		}
	}
	return deleted
}

// claimForgotten routes the entries pending under this router's own name
// for DeadAfter that it does not have in hand: read under its name by
// another process — a second router given the same --consumer, a client
// reading with the router's user — so that no router would route them
// before ClaimIdle (this one keeps the name fresh, and another claims
// from a silent router only). What hold() kept fresh this round is
// younger; a read in hand, or its own pending entries being read again,
// for DeadAfter/2 or longer makes it wait for the next round, and entries
// claimed meanwhile are left for it too (claiming them to this router
// changes no owner). Only an entry in hand that the claim outran and that
// was settled meanwhile may be routed twice, which the channels' event
// ids make harmless.
func (r *Router) claimForgotten(ctx context.Context, stream string) (int64, error) {
	busy := func() bool { return r.hand.heldFor(stream, r.opt.DeadAfter/2) }
	if busy() {
		return 0, nil
	}
	return r.claimOf(ctx, stream, r.opt.DeadAfter, r.opt.Consumer, func(msgs []redis.XMessage) []redis.XMessage {
		if busy() {
			return nil
		}
		held := r.heldOn(stream)
		return slices.DeleteFunc(msgs, func(m redis.XMessage) bool { return held[m.ID] })
	})
}

// silentRouters returns the consumers of stream's group other than this
// router that hold pending entries and have been silent for DeadAfter
// (silence): a live router touches its consumers more often (touchLoop).
// A consumer with an empty name (Redis takes one) is no router's, and to
// the claim an empty name means any consumer: its entries wait for
// ClaimIdle.
func (r *Router) silentRouters(ctx context.Context, stream string) ([]redis.XInfoConsumer, error) {
	return r.silentAmong(stream, r.c.XInfoConsumers(ctx, stream, r.opt.Group))
}

// silentAmong returns the consumers of a reply of XINFO CONSUMERS on
// stream that silentRouters returns.
func (r *Router) silentAmong(stream string, list *redis.XInfoConsumersCmd) ([]redis.XInfoConsumer, error) {
	consumers, err := list.Result()
	if err != nil {
		return nil, err
	}
	return r.silence.silent(stream, consumers, r.opt.Consumer, r.opt.DeadAfter, time.Now()), nil
}

// touchEvery is how often a router touches its consumers (touchLoop): the
// same for every router, so that none takes another for dead at its own
// DeadAfter (at least minDeadAfter, five touches) while the other touches
// at the pace of a longer one.
const (
	touchEvery   = 200 * time.Millisecond
	minDeadAfter = 5 * touchEvery
)

// touchLoop keeps this router's consumers known alive: every touchEvery
// it touches its consumer on each stream it reads, since a read loop does
// not read while its batches are slow or held up, and on Redis 7.0 a read
// that returns nothing leaves the consumer's idle time running (checked on
// 7.0.15: XREADGROUP … > on a drained stream, idle 1,020ms a second later).
func (r *Router) touchLoop(ctx context.Context) {
	t := time.NewTicker(touchEvery)
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.touch(ctx, n%listEvery == 0)
	}
}

// listEvery is how many touches apart a touch lists the consumers too
// (every second).
const listEvery = 5

// touchID is the id after which touch reads a consumer's own pending
// entries: the largest one but one. Not the largest itself: XREADGROUP
// takes that for ">" (it stands for ">" inside Redis) and delivers new
// entries.
const touchID = "18446744073709551615-18446744073709551614"

// touch reads this consumer's own pending entries after touchID on every
// stream: nothing is returned and no entry changes (its idle time and
// delivery count stay), but the consumer's idle time starts again. A
// failure is left for the next round: a router that cannot reach the bus
// for DeadAfter is rightly taken for dead. With list, in the same round
// trip it lists each stream's consumers, and wakes the claim loop when one
// went silent (silence), so a dead router's entries wait DeadAfter and a
// second or two more, not for the claim round.
func (r *Router) touch(ctx context.Context, list bool) {
	ctx, cancel := context.WithTimeout(ctx, minDeadAfter)
	defer cancel()
	var lists []*redis.XInfoConsumersCmd
	streams := r.streamList()
	_, err := r.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, stream := range streams {
			pipe.XReadGroup(ctx, &redis.XReadGroupArgs{
				Group: r.opt.Group, Consumer: r.opt.Consumer, Streams: []string{stream, touchID}, Count: 1, Block: -1,
			})
			if list {
				lists = append(lists, pipe.XInfoConsumers(ctx, stream, r.opt.Group))
			}
		}
		return nil
	})
	if err != nil && ctx.Err() == nil && !errors.Is(err, redis.Nil) {
		r.log.Debug("touching this router's consumers", "err", err)
	}
	for i, list := range lists {
		if silent, _ := r.silentAmong(streams[i], list); len(silent) > 0 {
			select {
			case r.silent <- struct{}{}:
			default:
			}
		}
	}
}

// claimOf claims and routes the entries of stream pending for idle, those
// of the consumer of ("" for any), in rounds until none is left; with
// keep, only those of each round it keeps. It returns how many pending
// entries it found deleted from the stream, acknowledged and counted
// (claimPendingOn), for the caller to log once for its round.
func (r *Router) claimOf(ctx context.Context, stream string, idle time.Duration, of string, keep func([]redis.XMessage) []redis.XMessage) (deleted int64, err error) {
	start := "-"
	size := r.readSize(stream)
	for ctx.Err() == nil {
		msgs, next, gone, err := r.claimPendingOn(ctx, r.claims(), stream, idle, start, of, size.scale(r.opt.ReadBytes))
		deleted += gone
		if redis.HasErrorPrefix(err, "NOGROUP") {
			return deleted, r.ensureGroup(ctx, stream)
		}
		if ctx.Err() == nil && lostAfterSent(err) {
			r.readLost(stream, err)
		}
		if err != nil {
			return deleted, err
		}
		if len(msgs) > 0 {
			size.worked()
		}
		if keep != nil {
			msgs = keep(msgs)
		}
		if len(msgs) > 0 {
			r.m.claimed.Add(float64(len(msgs)))
			r.log.Info("claimed pending entries", "stream", stream, "entries", len(msgs))
			if err := r.process(ctx, stream, msgs); err != nil {
				r.log.Warn("routing claimed entries; the failed ones are retried", "stream", stream, "err", err)
			}
		}
		if next == "0-0" || next == "" {
			return deleted, nil
		}
		start = next
	}
	return deleted, nil
}

// hold resets the idle time of the entries waiting in coalesced messages or
// for another try (XCLAIM to this consumer with JUSTID), so that no other
// instance claims them while this one is alive and holding them.
func (r *Router) hold(ctx context.Context) {
	held := r.co.held()
	r.retryMu.Lock()
	for stream, q := range r.retries {
		held[stream] = append(held[stream], q.held()...)
	}
	r.retryMu.Unlock()
	for stream, ids := range held {
		for len(ids) > 0 {
			batch := ids[:min(len(ids), 1000)]
			ids = ids[len(batch):]
			err := r.c.XClaimJustID(ctx, &redis.XClaimArgs{
				Stream: stream, Group: r.opt.Group, Consumer: r.opt.Consumer, MinIdle: 0, Messages: batch,
			}).Err()
			if err != nil && ctx.Err() == nil {
				r.log.Warn("refreshing held entries", "stream", stream, "err", err)
			}
		}
	}
}

// heldOn returns the ids of the entries of stream that hold() keeps
// fresh: those waiting in coalesced messages or for another try.
func (r *Router) heldOn(stream string) map[string]bool {
	held := map[string]bool{}
	for _, id := range r.co.held()[stream] {
		held[id] = true
	}
	for _, id := range r.retryQueue(stream).held() {
		held[id] = true
	}
	return held
}

// recordCount writes the matrix's partition count for publishers with
// SET … GET: finding it gone sets countLost, finding another count there —
// or a key of another type, which SET … GET refuses and a plain SET
// replaces — sets countWrong.
func (r *Router) recordCount(ctx context.Context) error {
	key := names.PartitionsKey(r.prefix)
	own := r.matrix.Load().Partitions
	old, err := r.c.SetArgs(ctx, key, own, redis.SetArgs{Get: true}).Result()
	switch {
	case errors.Is(err, redis.Nil):
		r.countLost.Store(true)
	case redis.HasErrorPrefix(err, "WRONGTYPE"):
		r.log.Warn("the partition count key is of another type: replacing it", "key", key)
		if err := r.c.Set(ctx, key, own, 0).Err(); err != nil {
			return err
		}
		r.m.replaced.WithLabelValues(KeyPartitionCount).Inc()
		r.countWrong.Store(true)
	case err != nil:
		return err
	case old != strconv.Itoa(own):
		r.countWrong.Store(true)
	}
	return nil
}

// housekeeping rewrites the partition count (a Redis that lost its data must
// tell publishers again: recordCount), exports pending and lag, and trims
// ingress entries every consumer group has acknowledged. A step that fails
// does not skip the others (nor one stream's failure the other streams'):
// their errors are returned together.
func (r *Router) housekeeping(ctx context.Context) error {
	var errs []error
	if err := r.recordCount(ctx); err != nil {
		errs = append(errs, fmt.Errorf("recording the partition count: %w", err))
	}
	if err := r.markGeneration(ctx); err != nil {
		errs = append(errs, fmt.Errorf("marking the bus's generation: %w", err))
	}
	if err := r.heartbeat(ctx); err != nil {
		errs = append(errs, fmt.Errorf("heartbeat: %w", err))
	}

	var pending, lag int64
	for _, stream := range r.streamList() {
		p, l, err := r.tidy(ctx, stream)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", stream, err))
		}
		pending += p
		lag += l
	}
	r.m.pending.Set(float64(pending))
	r.m.lag.Set(float64(lag))
	return errors.Join(errs...)
}

// tidy forgets a stream's idle consumers of other instances, trims the
// entries every consumer group has acknowledged, then counts the entries
// deleted unread (deletedUnread: after the trim, so that what it counts of
// the entries the group read is what routers still hold) and returns the
// group's pending entries and lag.
func (r *Router) tidy(ctx context.Context, stream string) (pending, lag int64, err error) {
	if err := r.forgetConsumers(ctx, stream); err != nil {
		return 0, 0, err
	}
	groups, err := r.c.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return 0, 0, err
	}
	minID := ""
	var own *redis.XInfoGroup
	for i, g := range groups {
		if g.Name == r.opt.Group {
			own = &groups[i]
		}
		low := g.LastDeliveredID
		if g.Pending > 0 {
			sum, err := r.c.XPending(ctx, stream, g.Name).Result()
			if err != nil {
				return 0, 0, err
			}
			low = sum.Lower
		}
		if minID == "" || lessID(low, minID) {
			minID = low
		}
	}
	if minID != "" && minID != "0-0" {
		if err := r.c.XTrimMinIDApprox(ctx, stream, minID, 0).Err(); err != nil {
			return 0, 0, err
		}
	}
	if own == nil {
		return 0, 0, nil
	}
	pending = own.Pending
	lag = max(own.Lag, 0) // -1: Redis cannot tell
	if lag > 0 {
		lost, err := r.deletedUnread(ctx, stream)
		if err != nil {
			return pending, lag, err
		}
		lag = max(lag-lost, 0)
	}
	if r.delivered == nil {
		r.delivered = map[string]string{}
	}
	r.delivered[stream] = own.LastDeliveredID
	return pending, lag, nil
}

// deletedUnread finds the entries of stream deleted before any router read
// them (a client's XTRIM or XDEL, a publisher's MAXLEN: they are gone,
// never routed), which Redis goes on counting in the group's lag: it
// warns, naming the range they were in, counts them, takes them out of the
// lag and returns how many. With entries left to read it counts them on
// the server (lua/unread.lua) when they are at most unreadCounted
// batches, else it runs the head check alone (which the reads of a
// backlog run before each read: readChecked).
func (r *Router) deletedUnread(ctx context.Context, stream string) (int64, error) {
	got, err := lua.Run(ctx, r.c, &lua.UnreadRequest{Stream: stream, Group: r.opt.Group, Most: unreadCounted * r.opt.BatchSize})
	if err != nil || got.Lost == 0 {
		return 0, err
	}
	r.lostUnread(stream, got.Lost, r.delivered[stream], got.Last)
	return got.Lost, nil
}

// unreadCounted is how many BatchSize of entries left to read housekeeping
// counts, at most, to tell them from entries deleted unread (1,024 at the
// default: a few milliseconds of the bus's time, converted into Lua).
const unreadCounted = 4

// lostUnread counts n entries of stream deleted before any router read
// them, and warns, naming the ids they came after (the group's last
// delivered id at the housekeeping before; "" when not known) and before.
func (r *Router) lostUnread(stream string, n int64, after, before string) {
	if n <= 0 {
		return
	}
	r.m.lost.Add(float64(n))
	if after == "" {
		after = "its start, or the last housekeeping"
	}
	r.log.Warn("ingress entries deleted before any router read them (XTRIM or XDEL by a client, XADD … MAXLEN by a publisher): they are lost, not routed",
		"stream", stream, "entries", n, "after", after, "before", before)
}

// forgetConsumers deletes the group's consumers that are idle, hold nothing
// and are not this instance: a deleted consumer with pending entries would
// lose them (XGROUP DELCONSUMER takes them out of the group), so those are
// left for the claim to empty first. lua/forget.lua checks and deletes in
// one step: a consumer found idle that reads before a delete sent apart
// (a router paused past ForgetConsumers, resuming) would lose what it read.
func (r *Router) forgetConsumers(ctx context.Context, stream string) error {
	req := lua.ForgetRequest{Stream: stream, Group: r.opt.Group, Keep: r.opt.Consumer, Idle: r.opt.ForgetConsumers}
	cmds, err := runScripts(ctx, r.c, func(pipe redis.Pipeliner) []*redis.Cmd {
		return []*redis.Cmd{lua.Queue(ctx, pipe, &req)}
	})
	if len(cmds) == 1 {
		var removed []lua.Forgotten
		removed, err = req.Reply(cmds[0])
		for _, c := range removed {
			r.log.Info("removed an idle consumer from the group", "stream", stream, "consumer", c.Name, "idle", c.Idle)
		}
	}
	if err != nil && scriptRefused(err) {
		return r.forgetConsumersApart(ctx, stream, err)
	}
	return err
}

// forgetConsumersApart is forgetConsumers for a Redis user that may not run
// lua/forget.lua (not one of routerd acl's): the check and each delete are
// two commands, and the entries a consumer read in between, which the
// delete takes out of the group, are counted lost and said.
func (r *Router) forgetConsumersApart(ctx context.Context, stream string, refused error) error {
	if r.forgetRefusedOnce.CompareAndSwap(false, true) {
		r.log.Warn("the router's Redis user may not run lua/forget.lua: idle consumers are removed with a check and a delete apart, and a consumer that reads in between loses what it read (counted in routerd_ingress_entries_lost_total); apply the line of routerd acl --role router again", "err", refused)
	}
	consumers, err := r.c.XInfoConsumers(ctx, stream, r.opt.Group).Result()
	if err != nil {
		return err
	}
	for _, c := range consumers {
		if c.Name == r.opt.Consumer || c.Pending > 0 || c.Idle < r.opt.ForgetConsumers {
			continue
		}
		lost, err := r.c.XGroupDelConsumer(ctx, stream, r.opt.Group, c.Name).Result()
		if err != nil {
			return err
		}
		r.log.Info("removed an idle consumer from the group", "stream", stream, "consumer", c.Name, "idle", c.Idle)
		if lost > 0 {
			r.m.lost.Add(float64(lost))
			r.log.Warn("a consumer removed as idle had read entries since it was found idle: they are lost, not routed",
				"stream", stream, "consumer", c.Name, "entries", lost)
		}
	}
	return nil
}

// lessID compares stream ids "ms-seq".
func lessID(a, b string) bool {
	am, as := splitID(a)
	bm, bs := splitID(b)
	return am < bm || am == bm && as < bs
}

func splitID(id string) (uint64, uint64) {
	for i := 0; i < len(id); i++ {
		if id[i] == '-' {
			ms, _ := strconv.ParseUint(id[:i], 10, 64)
			seq, _ := strconv.ParseUint(id[i+1:], 10, 64)
			return ms, seq
		}
	}
	ms, _ := strconv.ParseUint(id, 10, 64)
	return ms, 0
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// markGeneration sets the bus's generation when it is missing (the bus is new,
// or lost its data): subscribers compare it with the one they last saw.
func (r *Router) markGeneration(ctx context.Context) error {
	if err := r.c.SetNX(ctx, names.GenerationKey(r.prefix), newEpoch(), 0).Err(); err != nil {
		return fmt.Errorf("generation: %w", err)
	}
	return nil
}

func newEpoch() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func entryJSON(values map[string]any) string {
	b, _ := json.Marshal(values)
	return string(b)
}
