// Package subscriber receives a service's invalidation messages and applies
// them: to the service's cache Redis through tagstore (keys deleted, tag set
// updated and position recorded in one script), and/or to an in-process cache
// through a Handler.
//
// Pub/Sub is at-most-once, so the stream of messages is never trusted alone.
// Each channel has a position (epoch:version). A message at or behind it is a
// duplicate; one that skips a version or carries a new epoch is a gap. Gaps
// are recovered by replaying the channel's history, or, when history no
// longer reaches back, by invalidating the whole tag. Positions are checked
// against the channels' current versions after every (re)subscription and
// periodically, which also catches up a subscriber that was stopped.
package subscriber

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/matrix"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/routerd/routerd/internal/breaker"
	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/internal/storm"
	"github.com/routerd/routerd/internal/telemetry"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// Invalidation is what a Handler is given: the listed keys of a tag, the
// values cached under the listed entity references, both, or the whole tag
// when Keys and Refs are empty. (Messages merged under the local limit
// unite their keys and their refs, split into invalidations of at most
// MaxKeys keys and refs: the whole tag when one of them is, or when the
// limit cannot carry them key-level.)
type Invalidation struct {
	Tenant string
	Tag    string
	Keys   []string
	// Refs and Plain mean what wire.Message's do. An invalidation with
	// neither Keys nor Refs is of the whole tag.
	Refs    []string
	Plain   bool
	Epoch   string
	Version int64
	// Recovered is true for a whole-tag invalidation made to close a gap.
	Recovered bool
	// Message is the message applied; nil for a recovery.
	Message *wire.Message

	repair bool   // reset the position whatever it was (a position ahead)
	chain  string // the channel's chain at Version, stored with the position ("" unknown)
	// noPosition applies it without moving the position: one of several
	// invalidations of merged work, before the last.
	noPosition bool
	whole      string // why a merged invalidation is of the whole tag
}

// wholeReason is why a whole-tag invalidation is whole.
func (inv *Invalidation) wholeReason() string {
	switch {
	case inv.Recovered || inv.repair:
		return wholeRecovery
	case inv.whole != "":
		return inv.whole
	}
	return wholeNoKeys
}

// errCacheMoved is the answer of an apply that does not follow the position
// the cache holds.
var errCacheMoved = errors.New("subscriber: the cache's position is not the previous version (it went back or was moved); checking from there")

// Handler applies invalidations to an in-process cache. An error is retried
// by the next position check.
type Handler func(ctx context.Context, inv Invalidation) error

// Options configure a Subscriber.
type Options struct {
	// Service is the name of the service in the matrix (required).
	Service string
	// Matrix tells the prefix, the tags the service owns and the tenants it
	// serves (required).
	Matrix *matrix.Matrix
	// Cache is the service's cache Redis. Invalidations are applied to it
	// and positions are stored in it, so a restarted subscriber catches up.
	// New adds a hook to it (a circuit breaker, docs/operations.md#readiness)
	// that acts on the subscriber's own calls only.
	Cache redis.UniversalClient
	// Store configures the cache side (key template, cardinality guard).
	Store tagstore.Options
	// Handler, when set, is called for every invalidation after the cache
	// (if any) has applied it. Without Cache, positions live in memory.
	// A Handler is taken for a cache of its own (in process, or another
	// process's), which may hold values of a tenant the subscriber has not
	// heard of: recovery is more careful with it (docs/protocol.md §5.2).
	Handler Handler
	// Delivers marks the subscriber of routerd agent --deliver with a
	// Cache: its Handler hands invalidations to the process that the
	// cache's clean mark (names.DeliveryKey) is about. Every other
	// subscriber with a Cache moves the cache's positions past what that
	// process was given, so it takes the mark away when it starts and
	// records its presence (names.DeliveryPlainKey) while it runs: the
	// agent then delivers a reset at its next start (presence.go).
	Delivers bool
	// Observe, when set, is told of every invalidation applied, after the
	// cache Redis and the Handler: for counting and logging. It holds no
	// cache and cannot fail one.
	Observe func(Invalidation)
	// CheckInterval is how often positions are checked against the
	// channels' versions (30s).
	CheckInterval time.Duration
	// ApplyRate limits the invalidations per second run against the cache
	// Redis (0: no limit), with ApplyBurst at once (default: ApplyRate, at
	// least 1). Messages beyond the limit merge per channel — keys united,
	// refs united, split into invalidations of at most MaxKeys of either —
	// and are applied once Coalesce has passed, as many as the limit has
	// tokens for; the whole tag only when it cannot carry them key-level
	// (docs/limits.md). Nothing is dropped.
	ApplyRate  float64
	ApplyBurst int
	Coalesce   time.Duration
	// MaxKeys bounds the keys, and the refs, of a merged invalidation (the
	// matrix's default max_keys).
	MaxKeys int
	// TenantShard makes this instance one of k that split the service's
	// tenants (I of K, by wire.Partition of the tenant): each tenant's
	// channels are subscribed, checked and applied by exactly one of the
	// instances 0/K … K-1/K, which must all run. The zero value takes
	// every tenant (docs/capacity.md).
	TenantShard wire.TenantShard
	// ChannelsPerConn bounds the channels of one pub/sub connection
	// (DefaultChannelsPerConn): more make more connections (on a cluster,
	// per master). go-redis resubscribes a connection's channels in one
	// command when it reconnects, whose replies the bus buffers whole: keep
	// ChannelsPerConn × (40 + channel name) bytes well under the bus's
	// client-output-buffer-limit pubsub.
	ChannelsPerConn int
	// Buffer is how many received messages wait for the applier (4096).
	// When it is full the receiver waits; nothing is dropped here.
	Buffer int
	// AcceptEvictionRisk lets the subscriber report ready although the
	// cache Redis's maxmemory-policy can evict tag sets (allkeys-*), or
	// reference sets while entity references are in use (volatile-*):
	// values may then stay cached past their invalidation. Without it such
	// a policy is a readiness problem (ReasonEvictionPolicy).
	AcceptEvictionRisk bool
	// Logger receives what the subscriber does beyond applying messages
	// (recoveries, whole-tag repairs, retries); slog.Default() when nil, so
	// a service that sets no Logger still sees why a tag went whole.
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// TracerProvider, when set, traces each invalidation as a child of the
	// router's channel publish span carried in the message.
	TracerProvider trace.TracerProvider
}

// Subscriber applies a service's invalidations. Create it with New, run it with Run.
type Subscriber struct {
	bus     redis.UniversalClient
	store   *tagstore.Store
	opt     Options
	log     *slog.Logger
	m       *metrics
	tracer  trace.Tracer
	tracing bool

	prefix string

	// identityKeys are the identity counters' keys on the cache's
	// cluster masters, by address; identityRefused: a NOPERM on one was
	// warned of (identity.go).
	identityMu      sync.Mutex
	identityKeys    map[string]string
	identityRefused atomic.Bool

	// presence is this run's record in the cache Redis beside an agent
	// with --deliver (presence.go), nil when there is none to make; set
	// by Run before it starts anything.
	presence *presence
	// clock is this host's (time.Now); a test skews it.
	clock func() time.Time

	// Owned by the applier goroutine.
	cur     *interest
	pos     map[string]*position
	limiter *rate.Limiter        // nil without ApplyRate
	queued  map[string]*position // channels with coalesced work waiting
	// historiesLost counts the reads of the histories to replay in a row
	// whose connection was lost (recoverAll).
	historiesLost int
	// unleft holds the channels a matrix took from the service whose
	// leaving (leave) failed, with their invalidations: each check tries
	// them again. unrecorded is the interest record to write once none
	// is left ("" when it is written).
	unleft      map[string]Invalidation
	unrecorded  string
	leavingSaid string // the last failure to keep unleft in the cache, said once

	in       chan *redis.Message
	checkReq chan struct{}
	// fresh holds channels newly subscribed (a tenant announced) whose
	// subscription is confirmed, for a check of them together.
	fresh *freshChannels
	ready atomic.Bool
	// rounds counts the times the bus confirmed every subscription (each
	// asks for a check: confirmed); covered is the last round a check
	// that succeeded started after, which readiness waits for. roundMu
	// makes a round and its check request one step, so a check that saw
	// the round also took its request.
	rounds, covered atomic.Int64
	roundMu         sync.Mutex
	// unmarked: the first checks found no bus generation (check); they
	// look for it every second until a router marks the bus.
	unmarked bool
	ln       *listener // the applier's; set by Run

	next    atomic.Pointer[interest] // a new matrix's interest, for the applier
	reconf  chan struct{}
	regroup chan struct{} // sharded: the slots moved, or a tenant appeared
	moved   chan struct{} // sharded: a receiver saw a slot answer MOVED
	relink  chan struct{} // a receiver's connection stays silent: connect again
	// regroupTimer is the applier's delayed regroup, made by Run.
	regroupTimer *time.Timer
	// regroupLogged is when regroupFailed last logged (the applier only).
	regroupLogged time.Time
	running       atomic.Bool
	// joined are the tenants whose channels are subscribed (a service of
	// every tenant): those of the last regroup, sorted (a list, not a set:
	// it holds every tenant at scale), and those announced since; owned by
	// the applier.
	joined    []string
	joinedNew map[string]bool
	// begun: the start's reads of the cache Redis are done (begin);
	// beginning: begin is running. Until begun, nothing is applied and
	// no check succeeds. Owned by the applier, reset by Run.
	begun, beginning bool
	beginErr         error // begin's last failure, which the checks report

	// flushing is closed once the last flush of a stopped run ends, when
	// the stop did not wait for it (finalFlush); the next Run waits.
	flushing chan struct{}
	// indexed are the tenants known to be in the cache's position index,
	// as of the cache's identity indexedAt (health.cacheChanges): a cache
	// that changed may have lost them. Owned by the applier.
	indexed   map[string]bool
	indexedAt int64
	// heard are the channels of tenants heard announced live and not
	// checked since (recovery.Channel.Announced); owned by the applier.
	heard map[string]bool
	// seenGeneration is the bus generation the last complete check saw
	// (kept with the cache too, when there is one); owned by the applier.
	seenGeneration string

	health health
	// evictionWarned: the accepted eviction risk was logged; the applier's.
	evictionWarned bool

	// While the applier handles a burst of received messages, the messages
	// that follow their channel's position collect here (stage) and are
	// applied in one pipeline (strictly in order per channel) at the end of
	// the burst, or before any other invalidation; owned by the applier.
	batch []batched
	// deferred are the burst's messages that a check must confirm before
	// they count (a channel's first message, a new epoch, a gap), one per
	// channel, with the channel's messages received after it; they are
	// checked together at the end of the burst (verifyAll), not one
	// channel at a time. deferredAt indexes them by channel. Owned by the
	// applier.
	deferred   []deferredCheck
	deferredAt map[string]int
}

// deferredCheck is a channel's message waiting for the burst's check, and
// what the channel received after it, handled once the check is done.
type deferredCheck struct {
	t     target
	msg   *wire.Message
	after []*redis.Message
}

// batched is a message applied provisionally: its channel's position is
// already advanced, and goes back to prev if the apply fails.
type batched struct {
	channel string
	p       *position
	prev    recovery.Position
	at      recovery.Position // where it brings the channel
	msg     *wire.Message
}

// maxBatch bounds the messages applied in one pipeline.
const maxBatch = 256

// interest is what the service listens to, from the matrix.
type interest struct {
	tags       map[string]bool
	tagList    []string
	allTenants bool
	tenants    []string
	tenantSet  map[string]bool
	listed     []string         // the matrix's tenants of the service, every shard's
	shard      wire.TenantShard // the tenants of this instance (Options.TenantShard)
	// refs: a domain with entity references maps to one of the tags, in
	// the matrix this interest comes from (the eviction rule differs).
	refs bool
}

func newInterest(m *matrix.Matrix, sub matrix.Subscription, shard wire.TenantShard) *interest {
	in := &interest{tags: map[string]bool{}, tagList: sub.Tags, allTenants: sub.AllTenants, tenantSet: map[string]bool{}, listed: sub.Tenants, shard: shard,
		refs: refsInUse(m, sub.Tags)}
	for _, t := range sub.Tags {
		in.tags[t] = true
	}
	for _, t := range sub.Tenants {
		if shard.Owns(t) {
			in.tenants = append(in.tenants, t)
			in.tenantSet[t] = true
		}
	}
	return in
}

// channels returns the exact channels of the service: of its tenants, or
// for a service of every tenant, of the tenants given and the announcement
// channel. There are no patterns: Redis matches every pattern subscription
// against every PUBLISH on the bus, whatever its channel.
func (in *interest) channels(prefix string, tenants []string) []string {
	if !in.allTenants {
		tenants = in.tenants
	}
	channels := make([]string, 0, len(tenants)*len(in.tagList)+1)
	for _, tag := range in.tagList {
		for _, tenant := range tenants {
			channels = append(channels, names.Channel(prefix, tenant, tag))
		}
	}
	return channels
}

// hasJoined reports whether the tenant's channels are subscribed.
func (s *Subscriber) hasJoined(tenant string) bool {
	_, ok := slices.BinarySearch(s.joined, tenant)
	return ok || s.joinedNew[tenant]
}

// covers reports whether a tenant's tag is of interest.
func (in *interest) covers(tenant, tag string) bool {
	return in.tags[tag] && (in.allTenants && in.shard.Owns(tenant) || in.tenantSet[tenant])
}

// position of one channel: how far it is applied (zero when nothing was
// ever recorded), and work queued beyond that.
type position struct {
	tenant, tag string
	at          recovery.Position
	// queue holds messages merged under the local limit, not yet applied.
	queue *queued
	// last is the last message taken live, to tell a second message of
	// the same version (one of the two was forged) from a redelivery
	// (recovery.Contested).
	last recovery.Live
	// watched is the bus generation under which a check found the channel
	// with neither a meta nor a position (recovery.Channel.Watched).
	watched string
}

// recovered is the invalidation of a recovery that drops the channel's
// whole tag (a whole tag, a repair, a contested version) and stands it at
// to: the one builder of execute, wholeTags and contested.
func (p *position) recovered(to recovery.Position) Invalidation {
	return Invalidation{Tenant: p.tenant, Tag: p.tag, Epoch: to.Epoch, Version: to.Version, Recovered: true, chain: to.Chain}
}

// queued is a channel's coalesced work: the union of the keys and refs of
// the messages after the position, up to last, split into invalidations of
// at most MaxKeys keys and refs (storm.Chunks).
type queued struct {
	keys *storm.Chunks
	last recovery.Position
	msg  *wire.Message // the last message merged
	due  time.Time
	// whole is why the work became the whole tag (a whole… reason), "" while
	// it is not.
	whole string
	// refused is how many of its invalidations the limit refused a token
	// at the last try (1 when the work opened).
	refused int
}

// Reasons of whole-tag invalidations, the label values of
// subscriber_whole_tag_invalidations_total.
const (
	wholeNoKeys     = "no_keys"     // a message named neither keys nor refs
	wholeOverBudget = "over_budget" // the local limit could not carry the merged keys key-level
	wholeRecovery   = "recovery"    // a gap the history could not close, or a repair
)

// head is where the channel stands counting queued work.
func (p *position) head() recovery.Position {
	if p.queue != nil {
		return p.queue.last
	}
	return p.at
}

func msgPosition(m *wire.Message) recovery.Position {
	return recovery.Position{Epoch: m.Epoch, Version: m.Version}
}

// New checks the options.
func New(bus redis.UniversalClient, opt Options) (*Subscriber, error) {
	if bus == nil {
		return nil, errors.New("subscriber: nil bus Redis client")
	}
	if opt.Matrix == nil {
		return nil, errors.New("subscriber: a matrix is required")
	}
	if err := names.Service(opt.Service); err != nil {
		return nil, fmt.Errorf("subscriber: %w", err)
	}
	sub, ok := opt.Matrix.SubscriptionFor(opt.Service)
	if !ok {
		return nil, fmt.Errorf("subscriber: service %q is not in the matrix %s", opt.Service, opt.Matrix.File)
	}
	if opt.Cache == nil && opt.Handler == nil {
		return nil, errors.New("subscriber: set Cache, Handler or both: invalidations need somewhere to go")
	}
	if opt.CheckInterval == 0 {
		opt.CheckInterval = 30 * time.Second
	}
	if opt.CheckInterval < 0 {
		return nil, fmt.Errorf("subscriber: negative check interval %v", opt.CheckInterval)
	}
	if opt.Buffer == 0 {
		opt.Buffer = 4096
	}
	if err := opt.TenantShard.Check(); err != nil {
		return nil, fmt.Errorf("subscriber: TenantShard %d/%d: %w", opt.TenantShard.I, opt.TenantShard.K, err)
	}
	if opt.ChannelsPerConn < 0 {
		return nil, fmt.Errorf("subscriber: negative ChannelsPerConn %d", opt.ChannelsPerConn)
	}
	if opt.ChannelsPerConn == 0 {
		opt.ChannelsPerConn = DefaultChannelsPerConn
	}
	if opt.ApplyRate < 0 || opt.ApplyBurst < 0 || opt.Coalesce < 0 || opt.MaxKeys < 0 {
		return nil, errors.New("subscriber: ApplyRate, ApplyBurst, Coalesce and MaxKeys must not be negative")
	}
	if opt.ApplyBurst == 0 {
		opt.ApplyBurst = max(1, int(opt.ApplyRate))
	}
	if opt.MaxKeys == 0 {
		opt.MaxKeys = matrix.DefaultLimits().MaxKeys
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	s := &Subscriber{
		bus: bus, opt: opt, log: opt.Logger.With("service", opt.Service), m: newMetrics(opt.Registerer), clock: time.Now,
		prefix: opt.Matrix.Prefix, cur: newInterest(opt.Matrix, sub, opt.TenantShard), pos: map[string]*position{},
		in: make(chan *redis.Message, opt.Buffer), checkReq: make(chan struct{}, 1), fresh: newFreshChannels(),
		queued: map[string]*position{}, reconf: make(chan struct{}, 1), regroup: make(chan struct{}, 1), moved: make(chan struct{}, 1), relink: make(chan struct{}, 1), joinedNew: map[string]bool{}, begun: true, indexed: map[string]bool{}, identityKeys: map[string]string{}, heard: map[string]bool{},
		tracer: telemetry.Tracer(opt.TracerProvider, "routerd/subscriber"), tracing: telemetry.Enabled(opt.TracerProvider),
	}
	s.m.known(sub.Tags)
	if opt.ApplyRate > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(opt.ApplyRate), opt.ApplyBurst)
	}
	if opt.Cache != nil {
		so := opt.Store
		so.Observe = s.m.observe
		store, err := tagstore.New(opt.Cache, so)
		if err != nil {
			return nil, fmt.Errorf("subscriber: %w", err)
		}
		s.store = store
		s.health.cache = breaker.New(breaker.Options{
			Dependency: "cache", Metric: "subscriber_breaker_state", IsFailure: breaker.RedisFailure,
			Logger: s.log, Registerer: opt.Registerer,
			OnChange: func(open bool) {
				if !open { // back: replay what failed meanwhile now, not at the next retry
					s.requestCheck()
				}
			},
		})
		opt.Cache.AddHook(s.health.cache.Hook())
		s.health.probe = breaker.NewProbe()
	}
	s.newHealthMetrics(opt.Registerer)
	return s, nil
}

// SetMatrix makes a running subscriber take up a changed matrix: it
// subscribes to the channels of new tags and tenants of its service (and
// checks their positions) and leaves those no longer its own. The prefix
// cannot change (restart for that).
func (s *Subscriber) SetMatrix(m *matrix.Matrix) error {
	if m.Prefix != s.prefix {
		return fmt.Errorf("subscriber: the prefix cannot change while running (%q to %q); restart", s.prefix, m.Prefix)
	}
	sub, ok := m.SubscriptionFor(s.opt.Service)
	if !ok {
		return fmt.Errorf("subscriber: service %q is not in the new matrix %s", s.opt.Service, m.File)
	}
	s.m.known(sub.Tags)
	s.next.Store(newInterest(m, sub, s.opt.TenantShard))
	select {
	case s.reconf <- struct{}{}:
	default:
	}
	return nil
}

func (s *Subscriber) requestCheck() {
	select {
	case s.checkReq <- struct{}{}:
	default:
	}
}

// callHandler gives one invalidation to the Handler, and records for readiness
// how long it has waited and whether it failed.
func (s *Subscriber) callHandler(ctx context.Context, inv Invalidation) error {
	s.health.handling.Store(time.Now().UnixNano())
	err := s.opt.Handler(ctx, inv)
	s.health.handling.Store(0)
	if err != nil && ctx.Err() == nil {
		msg := err.Error()
		s.health.handlerErr.Store(&msg)
		return fmt.Errorf("handler: %w", err)
	}
	if err != nil {
		return fmt.Errorf("handler: %w", err)
	}
	s.health.handlerErr.Store(nil)
	return nil
}

// apply is the single goroutine that owns the positions.
func (s *Subscriber) apply(ctx context.Context, ln *listener) {
	tick := time.NewTicker(s.opt.CheckInterval)
	defer tick.Stop()
	ck := newChecker()
	defer ck.retry.Stop()
	retry := ck.retry
	check := func() { s.runCheck(ctx, ck) }
	flush := time.NewTimer(time.Hour)
	defer flush.Stop()
	begin := time.NewTimer(0) // the start's work, at once
	defer begin.Stop()
	defer s.finalFlush(ctx)
	for {
		flush.Reset(s.nextDue())
		// Until the start's work is done, received messages wait in their
		// buffer (applied live once it is), as do new channels' checks
		// and a new matrix.
		in, fresh, reconf := s.in, s.fresh.ready, s.reconf
		if !s.begun {
			in, fresh, reconf = nil, nil, nil
		}
		select {
		case <-ctx.Done():
			return
		case <-begin.C:
			if !s.begin(ctx) {
				begin.Reset(time.Second)
			}
		case <-flush.C:
			if err := s.flushQueued(ctx, false); err != nil && ctx.Err() == nil {
				s.m.applyErrors.Inc()
				if !errors.Is(err, breaker.ErrOpen) && !errors.Is(err, errUnrecorded) { // the breaker (the presence) said it once
					s.log.Warn("applying coalesced work failed; retrying", "err", err)
				}
			}
		case m := <-in:
			if err := s.handleBurst(ctx, m); err != nil && ctx.Err() == nil {
				s.m.applyErrors.Inc()
				if !errors.Is(err, breaker.ErrOpen) && !errors.Is(err, errUnrecorded) { // the breaker (the presence) said it once, and asks for a check when closed (recorded)
					s.log.Warn("applying messages failed; the next check recovers them", "err", err)
				}
				retry.Reset(time.Second)
			}
		case <-reconf:
			s.reconfigure(ctx, ln)
		case <-s.regroup:
			ln.regroup(ctx)
		case <-s.regroupTimer.C:
			ln.regroup(ctx)
		case <-s.moved:
			s.reloadSlots(ctx)
		case <-s.relink:
			ln.relink(ctx)
		case <-s.checkReq:
			check()
		case <-fresh:
			if chans := s.fresh.take(checkChunk); len(chans) > 0 {
				if err := s.checkChannels(ctx, chans); err != nil && ctx.Err() == nil {
					s.log.Warn("checking new channels failed; checking every position", "channels", len(chans), "first", chans[0], "err", err)
					retry.Reset(time.Second)
				}
			}
		case <-tick.C:
			ln.retryRefused(ctx)
			check()
		case <-retry.C:
			check()
		}
	}
}

// finalFlushWait bounds how long a stop waits for the last flush of the
// queued work.
const finalFlushWait = 2 * time.Second

// finalFlush applies what is merged before stopping, waiting finalFlushWait
// at most: go-redis waits for a reply until the client's ReadTimeout
// whatever the context says, and a cache that does not answer must not
// hold the stop. What it does not apply is not lost: a channel's position
// moves only once its queued work is applied (applyQueuedN), so the next
// start's check replays the rest from the channel's history (or drops the
// whole tag). A flush left behind is cancelled: it tries no other channel
// and its call is not retried, but the call in flight ends only within the
// client's timeouts (or when it is closed), and one the cache received may
// still land; the next Run waits for it before it starts (flushing).
func (s *Subscriber) finalFlush(ctx context.Context) {
	if len(s.queued) == 0 {
		return
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlushWait)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.flushQueued(fctx, true)
	}()
	select {
	case <-done:
		cancel()
	case <-fctx.Done():
		cancel()
		select {
		case <-done:
		default:
			s.flushing = done
			s.log.Warn("stopping without the last flush of queued work: the cache Redis did not answer it in time; the next start replays what it misses", "wait", finalFlushWait)
		}
	}
}

// errStarting: the start's reads of the cache Redis are not done yet.
var errStarting = errors.New("not applying to the cache Redis until the start's reads of it (the channels left to leave, the interest the service last ran with) are done; retried every second")

// startErr returns errStarting until the start's work is done (but to
// that work itself), or why it failed.
func (s *Subscriber) startErr() error {
	if s.begun || s.beginning {
		return nil
	}
	if s.beginErr != nil {
		return fmt.Errorf("not applying until the start's reads of the cache Redis are done (retried every second): %w", s.beginErr)
	}
	return errStarting
}

// begin does the start's work on the cache Redis, for the applier: it
// takes up the channels whose leaving failed before (loadLeaving) and
// leaves those the matrix took from the service while it was stopped
// (leaveFormerInterest). Done beside the subscription, not before it: a
// cache that does not answer held the bus subscription back for the
// client's timeouts, and what was published meanwhile was recovered from
// history (or whole). Each of its reads returns as soon as ctx ends; it
// reports whether it is done, and is tried again every second until it is;
// meanwhile the checks fail with its error. Once done, it asks for a check,
// and the messages received meanwhile are applied.
func (s *Subscriber) begin(ctx context.Context) bool {
	s.beginning = true
	err := s.loadLeaving(ctx)
	if err == nil {
		err = s.leaveFormerInterest(ctx)
	}
	s.beginning = false
	if err != nil {
		if ctx.Err() == nil {
			if s.beginErr == nil {
				s.requestCheck() // which reports it (readiness, the log)
			}
			s.beginErr = err
		}
		return false
	}
	s.beginErr = nil
	s.begun = true
	s.requestCheck()
	s.fresh.wake() // what was confirmed meanwhile
	return true
}

// checker paces the applier's position checks.
type checker struct {
	retry *time.Timer // the next try of a check that failed
	// Retried within 2s at most: readiness waits for a check that
	// succeeds, and must come back soon after the bus or the cache does.
	failing pacer
}

func newChecker() *checker {
	ck := &checker{retry: time.NewTimer(time.Hour), failing: pacer{first: time.Second, limit: 2 * time.Second}}
	ck.retry.Stop()
	return ck
}

// runCheck runs a position check for the applier, records its outcome for
// readiness, and schedules its retry when it failed.
func (s *Subscriber) runCheck(ctx context.Context, ck *checker) {
	// What was asked for until now this check covers, a round of
	// subscriptions confirmed before it too (Problems).
	s.roundMu.Lock()
	select {
	case <-s.checkReq:
	default:
	}
	round := s.rounds.Load()
	s.roundMu.Unlock()
	changes := s.health.cacheChanges.Load() // a change seen before the check is covered by it
	err := s.check(ctx)
	if ctx.Err() != nil {
		return
	}
	if errors.Is(err, errNotMarked) {
		// Looked for every second, without the failing pace: a
		// router starting is not a failure.
		detail := err.Error()
		if s.health.unmarked.Swap(&detail) == nil {
			s.log.Warn("not ready until a router marks the bus", "err", err)
		}
		ck.retry.Reset(time.Second)
		return
	}
	if errors.Is(err, errStarting) {
		return // not failed yet: begin asks for a check once done, or failed
	}
	if s.health.unmarked.Swap(nil) != nil && err == nil {
		s.log.Info("a router marked the bus; checked")
	}
	s.checked(err)
	if err != nil {
		wait, warn := ck.failing.failed()
		if warn {
			s.log.Warn("position check failed; retrying", append(ck.failing.attrs(), "retry_in", wait, "err", err)...)
		}
		ck.retry.Reset(wait)
		return
	}
	if ck.failing.failures > 0 {
		s.log.Info("position check succeeded again", ck.failing.attrs()...)
		ck.failing.failures = 0
	}
	// A retry asked for before it (a check or a burst that failed) is
	// covered by it.
	ck.retry.Stop()
	s.covered.Store(round)
	s.health.cacheChecked.Store(changes)
	s.ready.Store(true)
}

// handle applies one live message, or recovers the gap it reveals.
func (s *Subscriber) handle(ctx context.Context, raw *redis.Message) error {
	if raw.Channel == names.TenantsChannel(s.prefix) {
		if s.cur.allTenants && names.ValidTenant(raw.Payload) && s.cur.shard.Owns(raw.Payload) && !s.hasJoined(raw.Payload) {
			// Heard live: its channels published nothing before
			// (recovery.Channel.Announced), until their first check.
			for _, ch := range s.cur.channels(s.prefix, []string{raw.Payload}) {
				s.heard[ch] = true
			}
		}
		s.announced(ctx, raw.Payload)
		return nil
	}
	tenant, tag, err := names.ParseChannel(s.prefix, raw.Channel)
	if err != nil || !s.cur.covers(tenant, tag) {
		return nil // not a channel of ours (a pattern can match more; a matrix change can leave one behind)
	}
	if i, ok := s.deferredAt[raw.Channel]; ok {
		// Its channel waits for the burst's check: after it, in order.
		s.deferred[i].after = append(s.deferred[i].after, raw)
		return nil
	}
	msg, err := wire.ParseMessageString(raw.Payload)
	if err == nil && (msg.Tenant != tenant || msg.Tag != tag) {
		err = fmt.Errorf("message for %s:%s on channel %s", msg.Tenant, msg.Tag, raw.Channel)
	}
	if err != nil {
		s.m.invalid.Inc()
		s.log.Warn("invalid message ignored; checking positions", "channel", raw.Channel, "err", err)
		s.requestCheck()
		return nil
	}
	p, err := s.position(ctx, raw.Channel, tenant, tag)
	if err != nil {
		return err
	}
	d := recovery.OnMessage(p.head(), msgPosition(msg))
	switch d.Action {
	case recovery.Ignore:
		if recovery.Contested(p.last, msgPosition(msg), msg.Event) {
			return s.contested(ctx, target{raw.Channel, tenant, tag}, p, msg)
		}
		s.m.duplicates.Inc()
		return nil
	case recovery.Apply:
		return s.deliver(ctx, raw.Channel, p, msg, []byte(raw.Payload))
	default: // Verify: believe nothing the channel's meta does not confirm
		// The first message of a channel is checked before it is believed
		// (its epoch may have started after a bus loss), not a gap.
		if d.Reason != recovery.NewChannel || msg.Version != 1 {
			// Counted by the check, when it finds one (a forged message is not).
			s.log.Info("gap on channel; checking it", "channel", raw.Channel, "reason", d.Reason.String(), "at", p.head().String(), "got", msgPosition(msg).String())
		}
		if s.deferredAt == nil {
			s.deferredAt = map[string]int{}
		}
		s.deferredAt[raw.Channel] = len(s.deferred)
		s.deferred = append(s.deferred, deferredCheck{t: target{raw.Channel, tenant, tag}, msg: msg})
		return nil
	}
}

// verifyAll checks the channels of the burst's messages that need it
// (handle) together, then handles what those channels received after
// them, which can ask for another round. Checked one at a time, a burst
// of channels' first messages (tenants onboarded at once, every channel
// after the bus lost its data) cost a check's round trips each, while
// every other channel's invalidations waited behind them.
func (s *Subscriber) verifyAll(ctx context.Context) error {
	var errs error
	for len(s.deferred) > 0 {
		round := s.deferred
		s.deferred, s.deferredAt = nil, nil
		targets := make([]target, len(round))
		msgs := make(map[string]*wire.Message, len(round))
		for i, v := range round {
			targets[i] = v.t
			msgs[v.t.channel] = v.msg
		}
		// The burst's messages applied so far go first (the check's own
		// flush would), their failure theirs alone: a channel refused
		// goes back to where it stood, which its check, if it has one,
		// starts from.
		errs = errors.Join(errs, s.flushBatch(ctx))
		err := s.checkMany(ctx, targets, msgs)
		// What the channels received after is handled even when the
		// check failed, which may be for one channel of the round alone:
		// the others stand where their checks brought them — a first
		// message alone (recovery.First) — and their next versions follow.
		for _, v := range round {
			for _, raw := range v.after {
				errs = errors.Join(errs, s.handle(ctx, raw))
			}
		}
		if err != nil {
			// What needs a check again is left to the check this asks
			// for (apply), not checked again one round later.
			s.deferred, s.deferredAt = nil, nil
			return errors.Join(errs, err)
		}
	}
	return errs
}

// deliver applies a message that follows the channel's head, now or, over
// the local limit, merged into the channel's queued work. payload is the
// message as published, which the channel's chain goes over.
func (s *Subscriber) deliver(ctx context.Context, channel string, p *position, msg *wire.Message, payload []byte) error {
	return s.take(ctx, channel, p, msg, recovery.Next(p.head(), msgPosition(msg), payload))
}

// take applies a message that follows the channel's head, at is where it
// brings the channel: staged in the burst's pipeline, or, over the local
// limit, merged into the channel's queued work.
func (s *Subscriber) take(ctx context.Context, channel string, p *position, msg *wire.Message, at recovery.Position) error {
	head := p.head()
	p.last = recovery.Live{At: msgPosition(msg), Event: msg.Event, Prev: head.Chain}
	if s.limiter == nil {
		s.stage(channel, p, msg, at)
		return nil
	}
	now := time.Now()
	if p.queue == nil {
		if storm.Reserve(now, s.limiter) == 0 {
			s.stage(channel, p, msg, at)
			return nil
		}
		p.queue = &queued{keys: storm.NewChunks(s.opt.MaxKeys, min(s.opt.MaxKeys, wire.MaxRefs)), refused: 1, due: now.Add(s.opt.Coalesce)}
		s.queued[channel] = p
		s.m.delayed.Inc()
		s.m.queuedTags.Set(float64(len(s.queued)))
	} else {
		s.m.coalesced.Inc()
	}
	q := p.queue
	q.keys.Add(msg.Keys, msg.Refs, msg.DropsPlain())
	if msg.WholeTag() && q.whole == "" {
		q.whole = wholeNoKeys
	}
	q.last = at
	q.msg = msg
	s.bound(q)
	return nil
}

// bound makes a channel's queued work one whole-tag invalidation when the
// local limit cannot carry it key-level (storm.Carries): more of its
// invalidations refused a token than the limit refills during the
// coalescing window, or more queued than a full burst and that could carry.
func (s *Subscriber) bound(q *queued) {
	refused, pending := storm.Carries(s.opt.ApplyRate, s.opt.ApplyBurst, s.opt.Coalesce)
	if q.keys.Len() > 1 && (q.refused > refused || q.keys.Len() > pending) {
		q.keys.Collapse()
		if q.whole == "" {
			q.whole = wholeOverBudget
		}
	}
}

// nextDue is how long until the earliest queued work is due.
func (s *Subscriber) nextDue() time.Duration {
	wait := time.Hour
	for _, p := range s.queued {
		wait = min(wait, time.Until(p.queue.due))
	}
	return max(wait, 0)
}

// flushQueued applies the queued work that is due, as many of its
// invalidations as the limit has tokens for, or all of it when all is set
// (before a recovery or when stopping).
func (s *Subscriber) flushQueued(ctx context.Context, all bool) error {
	var errs error
	now := time.Now()
	for channel, p := range s.queued {
		if ctx.Err() != nil {
			return errors.Join(errs, ctx.Err())
		}
		n := p.queue.keys.Len()
		if !all {
			if p.queue.due.After(now) {
				continue
			}
			for n = 0; n < p.queue.keys.Len(); n++ {
				if wait := storm.Reserve(now, s.limiter); wait > 0 {
					p.queue.due = now.Add(wait)
					break
				}
			}
		}
		q, left := p.queue, p.queue.keys.Len()-n
		errs = errors.Join(errs, s.applyQueuedN(ctx, channel, p, n))
		if left > 0 {
			// The rest waits for the next token: refused.
			q.refused = left
			s.bound(q)
		}
	}
	return errs
}

// applyQueued applies a channel's merged work.
func (s *Subscriber) applyQueued(ctx context.Context, channel string, p *position) error {
	if p.queue == nil {
		return nil
	}
	return s.applyQueuedN(ctx, channel, p, p.queue.keys.Len())
}

// applyQueuedN applies the first n invalidations of a channel's merged
// work, in one pipeline. Only the last of all moves the position (to the
// last message merged): a subscriber stopped before it replays the work
// from the position, which invalidates some keys twice and loses none.
// Each carries a version of its own, increasing, the last one's that of
// the last message merged: the k invalidations left are labelled with the
// versions of the last k messages merged (each message adds at most one,
// storm.Chunks), so a receiver that ignores a version it has seen ignores
// none of them.
func (s *Subscriber) applyQueuedN(ctx context.Context, channel string, p *position, n int) error {
	q := p.queue
	if n == 0 {
		return nil
	}
	chunks := q.keys.List()
	invs := make([]Invalidation, n)
	for i, u := range chunks[:n] {
		invs[i] = Invalidation{Tenant: p.tenant, Tag: p.tag, Keys: u.Keys(), Refs: u.Refs(), Plain: u.Plain(), Epoch: q.last.Epoch,
			Version: q.last.Version - int64(len(chunks)-1-i), Message: q.msg, chain: q.last.Chain, whole: q.whole, noPosition: i < len(chunks)-1}
	}
	if err := s.flushBatch(ctx); err != nil {
		return err
	}
	// The one that moves the position goes only after the others are
	// applied: a failure among them must not leave the position past keys
	// still cached.
	runs := [][]Invalidation{invs}
	if n == len(chunks) && n > 1 {
		runs = [][]Invalidation{invs[:n-1], invs[n-1:]}
	}
	for _, run := range runs {
		for _, err := range s.invalidateMany(ctx, run, false) {
			if err != nil {
				q.due = time.Now().Add(time.Second)
				return err
			}
		}
	}
	if n < len(chunks) {
		q.keys.Drop(n)
		return nil
	}
	p.at, p.queue = q.last, nil
	delete(s.queued, channel)
	s.m.queuedTags.Set(float64(len(s.queued)))
	return nil
}

// position returns the channel's position, reading it from the cache Redis
// the first time.
func (s *Subscriber) position(ctx context.Context, channel, tenant, tag string) (*position, error) {
	if p, ok := s.pos[channel]; ok {
		return p, nil
	}
	t := target{channel, tenant, tag}
	stored, errs, _, err := s.cacheState(ctx, []target{t})
	if err != nil {
		return nil, err // errs is nil then
	}
	if errs[0] != nil {
		return nil, errs[0]
	}
	p := &position{tenant: tenant, tag: tag, at: stored[0]}
	s.pos[channel] = p
	return p, nil
}

// handleBurst handles a received message and whatever else is already
// waiting (up to maxBatch), applying the in-order ones in one pipeline.
func (s *Subscriber) handleBurst(ctx context.Context, first *redis.Message) error {
	var errs error
	msg := first
	for n := 0; ; n++ {
		errs = errors.Join(errs, s.handle(ctx, msg))
		if n+1 >= maxBatch {
			break
		}
		select {
		case msg = <-s.in:
			continue
		default:
		}
		break
	}
	return errors.Join(errs, s.verifyAll(ctx), s.flushBatch(ctx))
}

// stage adds a message of the burst being handled that follows the
// channel's position directly to the burst's pipeline (flushBatch), and
// stands the channel at at (the message's position with the chain it
// reaches); a failed apply sets it back.
func (s *Subscriber) stage(channel string, p *position, msg *wire.Message, at recovery.Position) {
	s.batch = append(s.batch, batched{channel: channel, p: p, prev: p.at, at: at, msg: msg})
	p.at = at
}

// messageInvalidation is what a message asks (plain values too when it
// drops them, said or not: wire.Message.DropsPlain), with the chain its
// position takes.
func messageInvalidation(msg *wire.Message, chain string) Invalidation {
	return Invalidation{Tenant: msg.Tenant, Tag: msg.Tag, Keys: msg.Keys, Refs: msg.Refs, Plain: msg.DropsPlain(), Epoch: msg.Epoch, Version: msg.Version, Message: msg, chain: chain}
}

func (s *Subscriber) observeLag(msg *wire.Message) {
	if msg.TS > 0 {
		s.m.lag.Observe(time.Since(time.UnixMilli(msg.TS)).Seconds())
	}
}

// flushBatch applies the collected messages in one pipeline, strictly in
// order per channel. A channel whose apply fails goes back to the position
// before it, so the next check replays from there.
func (s *Subscriber) flushBatch(ctx context.Context) error {
	if len(s.batch) == 0 {
		return nil
	}
	batch := s.batch
	s.batch = nil
	defer func() { // the next burst reuses the array
		clear(batch)
		if len(s.batch) == 0 {
			s.batch = batch[:0]
		}
	}()
	invs := make([]Invalidation, len(batch))
	for i, b := range batch {
		invs[i] = messageInvalidation(b.msg, b.at.Chain)
	}
	errs := s.invalidateMany(ctx, invs, true)
	var failed map[string]bool
	var all error
	for i, b := range batch {
		if failed[b.channel] {
			continue
		}
		if errs[i] != nil {
			if failed == nil {
				failed = map[string]bool{}
			}
			failed[b.channel] = true
			b.p.at = b.prev
			all = errors.Join(all, fmt.Errorf("%s version %d: %w", b.channel, b.msg.Version, errs[i]))
			continue
		}
		s.observeLag(b.msg)
	}
	return all
}

// invalidate applies one invalidation (after any batched ones, to keep the
// order): to the cache Redis with the position, then to the Handler.
func (s *Subscriber) invalidate(ctx context.Context, inv Invalidation) error {
	if err := s.flushBatch(ctx); err != nil {
		return err
	}
	return s.invalidateMany(ctx, []Invalidation{inv}, false)[0]
}

// Invalidation modes beyond key-level and whole-tag: a repair resets a
// position that is ahead of its channel.
func (s *Subscriber) repair(ctx context.Context, inv Invalidation) error {
	if err := s.flushBatch(ctx); err != nil {
		return err
	}
	inv.repair = true
	return s.invalidateMany(ctx, []Invalidation{inv}, false)[0]
}

// invalidateMany applies invalidations in one pipeline on the cache Redis
// (strict: each version must follow the stored position) and then to the
// Handler, each in its own span. It returns an error for each.
func (s *Subscriber) invalidateMany(ctx context.Context, invs []Invalidation, strict bool) []error {
	// Spans only when tracing is on; the Handler gets the message's trace
	// context either way, so an in-process cache can continue the trace.
	spans := make([]trace.Span, len(invs))
	ctxs := make([]context.Context, len(invs))
	for i, inv := range invs {
		sctx := ctx
		if inv.Message != nil && (s.tracing || s.opt.Handler != nil) {
			sctx = telemetry.Extract(ctx, inv.Message.Traceparent)
		}
		if !s.tracing {
			ctxs[i], spans[i] = sctx, trace.SpanFromContext(sctx)
			continue
		}
		ctxs[i], spans[i] = s.tracer.Start(sctx, "invalidate", trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
			attribute.String("cache.operation", "bulk_invalidate"), attribute.String("cache.tag", inv.Tag),
			attribute.String("routerd.tenant", inv.Tenant), attribute.String("routerd.service", s.opt.Service),
			attribute.Int("cache.keys", len(inv.Keys)), attribute.Int64("routerd.version", inv.Version),
			attribute.Bool("routerd.recovered", inv.Recovered)))
	}
	errs := make([]error, len(invs))
	if s.store != nil {
		err := s.presenceErr() // nothing moves a position before the presence is recorded
		if err == nil {
			err = s.startErr() // nor before the start's work is done
		}
		if err == nil {
			err = s.index(ctx, invs)
		}
		if err != nil {
			for i := range errs {
				errs[i] = err
			}
		} else {
			tinvs := make([]tagstore.Invalidation, len(invs))
			for i, inv := range invs {
				tinvs[i] = tagstore.Invalidation{Tenant: inv.Tenant, Tag: inv.Tag, Keys: inv.Keys, Refs: inv.Refs, Plain: inv.Plain, Service: s.opt.Service,
					Position: tagstore.Position{Epoch: inv.Epoch, Version: inv.Version, Chain: inv.chain}, Strict: strict, Repair: inv.repair}
				if inv.noPosition {
					tinvs[i].Service = ""
				}
			}
			results, serrs := s.store.ApplyMany(ctx, tinvs)
			for i := range invs {
				errs[i] = serrs[i]
				if errs[i] == nil && results[i].Status == tagstore.Gap {
					// The cache does not stand where this subscriber thought
					// (restored from a snapshot, or failed over): the next
					// check starts from the position it holds.
					errs[i] = errCacheMoved
					clear(s.indexed) // the index may have gone back with it
					s.requestCheck()
				}
			}
		}
	}
	type channel struct{ tenant, tag string }
	var failedTag map[channel]bool // after a failure, later ones of the channel wait too
	for i, inv := range invs {
		key := channel{inv.Tenant, inv.Tag}
		if failedTag[key] && errs[i] == nil {
			errs[i] = errors.New("an earlier version of the channel failed")
		}
		if errs[i] == nil && s.opt.Handler != nil {
			errs[i] = s.callHandler(ctxs[i], inv)
		}
		if errs[i] != nil {
			if failedTag == nil {
				failedTag = map[channel]bool{}
			}
			failedTag[key] = true
			spans[i].RecordError(errs[i])
			spans[i].SetStatus(codes.Error, errs[i].Error())
		} else {
			if s.opt.Observe != nil {
				s.opt.Observe(inv)
			}
			s.m.applied.WithLabelValues(inv.Tag).Inc()
			if len(inv.Keys) == 0 && len(inv.Refs) == 0 {
				s.m.wholeTag.WithLabelValues(inv.Tag, inv.wholeReason()).Inc()
			}
		}
		spans[i].End()
	}
	return errs
}

// index records in the cache Redis the tenants of invalidations about to
// write their first position there, before they do: a subscriber of every
// tenant finds its positions from the index even when the bus lost its
// tenant registry.
//
// The index is what leaveFormer and everyTenant find the service's
// positions from; a cache Redis that changed since the tenants were
// indexed (flushed, restarted, failed over, went back: watchCache) may
// have lost it with the positions, so each tenant is indexed again with
// its next position, which the check after the change rewrites.
func (s *Subscriber) index(ctx context.Context, invs []Invalidation) error {
	if c := s.health.cacheChanges.Load(); c != s.indexedAt {
		clear(s.indexed)
		s.indexedAt = c
	}
	var fresh []string
	for _, inv := range invs {
		if !s.indexed[inv.Tenant] && !slices.Contains(fresh, inv.Tenant) {
			fresh = append(fresh, inv.Tenant)
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	if err := s.store.IndexTenants(ctx, s.opt.Service, fresh...); err != nil {
		return err
	}
	for _, t := range fresh {
		s.indexed[t] = true
	}
	return nil
}

// execute is the executor: it carries out a settled decision (settle)
// for a channel whose position p stands where the check starts, and
// decides nothing. A replay stages msgs, standing the channel at at[i]
// after each: they join the pipeline being built (strict: each version
// must follow the cache's position), applied by the check's flush or the
// burst the check was made in. first: the decision only replays the
// message that made the check (a channel's first), taken as it would have
// been live, not as a recovery.
func (s *Subscriber) execute(ctx context.Context, channel string, p *position, d recovery.Decision, msgs []*wire.Message, at []recovery.Position, first bool) error {
	d = recovery.Stamp(d, time.Now().UnixMilli())
	switch d.Action {
	case recovery.Replay:
		if first {
			// Taken as it would have been live: under the local limit.
			return s.take(ctx, channel, p, msgs[0], at[0])
		}
		s.m.recoveries.WithLabelValues("replay").Inc()
		for i, m := range msgs {
			s.stage(channel, p, m, at[i])
		}
		return nil
	case recovery.WholeTag:
		s.m.recoveries.WithLabelValues("whole_tag").Inc()
		s.log.Info("invalidating the whole tag to close a gap", "channel", channel, "reason", d.Reason.String(), "from", p.at.String(), "to", d.To.String())
		if err := s.invalidate(ctx, p.recovered(d.To)); err != nil {
			return err
		}
		p.at = d.To
	case recovery.Repair:
		s.m.recoveries.WithLabelValues("repair").Inc()
		s.log.Warn("the position is ahead of the channel, or the cache lost it: invalidating the whole tag and resetting the position",
			"channel", channel, "reason", d.Reason.String(), "position", p.at.String(), "channel_at", d.To.String())
		if err := s.repair(ctx, p.recovered(d.To)); err != nil {
			return err
		}
		p.at = d.To
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
