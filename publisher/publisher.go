// Package publisher emits domain-change events to routerd's ingress streams.
//
// Publish validates an event and appends it to the tenant's ingress partition
// with one XADD; PublishBatch packs many events of a partition into one
// entry (the field events, a JSON array) and pipelines the entries. With
// Options.Publisher set, it appends to that publisher's own streams instead
// (the matrix's publishers). Nothing is sent for an invalid event: the error
// names the field and the rule. Any language can publish the same way with a
// single `XADD <prefix>:ingress:{<p>} * event '<json>'` (or
// `events '[<json>,…]'`).
//
// The publisher uses the Redis client it is given as it is, options and
// hooks, and opens none of its own. With Durable on a cluster, each write
// (its XADDs and WAIT) and the INFO that counts a master's replicas run on
// that master's node client, sent through the cluster client so that its
// hooks see them: the publisher adds to the cluster client, at its first
// durable write, a hook that hands those calls to the node client. A hook
// added to the cluster client after that does not see them (go-redis runs
// each hook around those added after it): add yours before New. go-redis
// gives a cluster client's hooks to none of its node clients; hooks given
// through ClusterOptions.NewClient or ClusterClient.OnNewNode (redisotel's
// per-node ones) see these calls too. Publish and PublishBatch return once
// their context is done, with the context's error and the ids they may have
// written, whatever the client's timeouts: go-redis alone waits for a reply
// until ReadTimeout (it bounds the read by a deadline only with
// ContextTimeoutEnabled, and never watches a cancel). The write left behind
// ends within the client's timeouts (at the deadline with
// ContextTimeoutEnabled) and holds one of its connections until then.
package publisher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/singleflight"

	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/internal/shard"
	"github.com/routerd/routerd/internal/telemetry"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// Event is a domain-change event.
type Event = wire.Event

// ErrMalformed is wrapped by every refusal of an event itself (a field that
// breaks its rule, the size): nothing was sent, and no retry can help. It is
// wire.ErrMalformed.
var ErrMalformed = wire.ErrMalformed

// DefaultRefresh is how often the partition count is read again.
const DefaultRefresh = 30 * time.Second

// DefaultMaxPacked is how many events PublishBatch packs into one entry at most.
const DefaultMaxPacked = 100

// Options configure a Publisher. The zero value is usable.
type Options struct {
	// Prefix of the ingress streams; "invalidate" by default.
	Prefix string
	// Partitions fixes the number of ingress partitions: the matrix's, or
	// the events of a tenant whose partition the router does not read wait
	// for its next look for partition streams (a minute). When 0 the
	// publisher reads it from <prefix>:ingress:partitions (written by the
	// router), every Refresh. While the key is missing (no router ran yet,
	// or the bus lost its data and the router has not written it again,
	// which it does within seconds) the publisher keeps the count it last
	// read, or uses 8 when it never read one, and reads the key again
	// after a second rather than after Refresh, with a warning (once a
	// streak: a key that stays missing means no router uses this Prefix).
	// A key that holds no count (garbage, a count out of range, another
	// type) is treated the same, with a warning: the router repairs it.
	Partitions int
	// Refresh is how long a partition count read from Redis is used.
	Refresh time.Duration
	// Publisher, when set, is this publisher's name in the matrix's
	// publishers section: events go to its own streams
	// <prefix>:ingress:<Publisher>:{<p>}, which a Redis ACL can bind it to,
	// and the router routes only those its grant allows. Empty: the shared
	// ingress streams.
	Publisher string
	// Origin is stamped on events that carry none (usually the service
	// name): at most 256 bytes of printable ASCII, as an event's origin.
	Origin string
	// Now is the clock for event timestamps; time.Now by default.
	Now func() time.Time
	// TracerProvider, when set, traces each publish; the span's context
	// travels in the event's traceparent.
	TracerProvider trace.TracerProvider
	// Durable makes a publish succeed only once a replica of the partition's
	// master has the event (WAIT 1), where the master has a replica, so a
	// failover cannot lose it; where it has none, the publisher warns
	// (Logger) and waits for nothing. Off by default: one more wait per
	// publish. On a cluster, a redirect (a slot being migrated: ASK,
	// MOVED, TRYAGAIN) says the XADD was not run: the publisher sends it
	// where the redirect says, with its WAIT, up to the client's
	// MaxRedirects times (its user needs ASKING: `routerd acl --cluster`).
	Durable bool
	// WaitTimeout bounds that wait (1s).
	WaitTimeout time.Duration
	// MaxEventBytes refuses an event whose JSON is larger
	// (wire.DefaultMaxEventBytes, 1 MiB): the router would dead-letter it.
	// Set it to the router's limit when that differs. It bounds a packed
	// entry's events field too.
	MaxEventBytes int
	// Logger receives warnings (a partition count key missing or holding
	// no count, a durable publish to a master without replica);
	// slog.Default() when nil.
	Logger *slog.Logger
	// MaxPacked is the most events PublishBatch packs into one ingress
	// entry (100): the router reads, routes and acknowledges them together,
	// each still its own event. 1 sends an entry per event.
	MaxPacked int
}

// Publisher appends events to the ingress streams. It is safe for concurrent use.
type Publisher struct {
	c      redis.UniversalClient
	shards shard.Set
	opt    Options
	tracer trace.Tracer

	// partitions is the count read from Redis and when; refresh lets one
	// caller read it again while the others wait for that read (or their
	// context), never behind a lock.
	partitions atomic.Pointer[partitionCount]
	refresh    singleflight.Group
	streams    atomic.Pointer[[]string] // ingress stream names for the last partition count

	unreplicated sync.Map // master address → true: warned that it has no replica (Durable)
}

// stream returns the ingress stream of a tenant's partition among n.
func (p *Publisher) stream(tenant string, n int) string {
	streams := p.streams.Load()
	if streams == nil || len(*streams) != n {
		all := make([]string, n)
		for i := range all {
			if p.opt.Publisher != "" {
				all[i] = names.PublisherStream(p.opt.Prefix, p.opt.Publisher, i)
			} else {
				all[i] = names.IngressStream(p.opt.Prefix, i)
			}
		}
		streams = &all
		p.streams.Store(streams)
	}
	return (*streams)[wire.Partition(tenant, n)]
}

// New checks the options and fills the defaults.
func New(c redis.UniversalClient, opt Options) (*Publisher, error) {
	if c == nil {
		return nil, errors.New("publisher: nil Redis client")
	}
	if opt.Prefix == "" {
		opt.Prefix = names.DefaultPrefix
	}
	if err := names.Prefix(opt.Prefix); err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	if opt.Publisher != "" && !names.ValidTag(opt.Publisher) {
		return nil, fmt.Errorf("publisher: publisher name %q is invalid: must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", opt.Publisher)
	}
	if opt.Partitions < 0 || opt.Partitions > matrix.MaxPartitions {
		return nil, fmt.Errorf("publisher: partitions must be 0 (read from Redis) to %d, not %d", matrix.MaxPartitions, opt.Partitions)
	}
	if opt.Refresh == 0 {
		opt.Refresh = DefaultRefresh
	}
	if opt.Refresh < 0 {
		return nil, fmt.Errorf("publisher: negative refresh %v", opt.Refresh)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if _, one := c.(*redis.Client); opt.Durable && !one && redisconn.Cluster(c) == nil {
		return nil, fmt.Errorf("publisher: Durable needs a *redis.Client or *redis.ClusterClient, whose masters it can ask for replicas, not a %T", c)
	}
	if opt.WaitTimeout < 0 {
		return nil, errors.New("publisher: negative WaitTimeout")
	}
	if opt.WaitTimeout == 0 {
		opt.WaitTimeout = time.Second
	}
	if opt.MaxEventBytes < 0 {
		return nil, errors.New("publisher: negative MaxEventBytes")
	}
	if opt.MaxEventBytes == 0 {
		opt.MaxEventBytes = wire.DefaultMaxEventBytes
	}
	if opt.MaxPacked < 0 || opt.MaxPacked > wire.MaxPacked {
		return nil, fmt.Errorf("publisher: MaxPacked must be 0 (the default, %d) to %d, not %d", DefaultMaxPacked, wire.MaxPacked, opt.MaxPacked)
	}
	if opt.MaxPacked == 0 {
		opt.MaxPacked = DefaultMaxPacked
	}
	if err := wire.Printable("origin", opt.Origin); err != nil {
		return nil, fmt.Errorf("publisher: Options.Origin: %w", err) // stamped on events, it would fail every Publish
	}
	return &Publisher{c: c, shards: shard.Set{C: c}, opt: opt, tracer: telemetry.Tracer(opt.TracerProvider, "routerd/publisher")}, nil
}

// Publish validates the event, fills id, ts, origin and the trace context of
// ctx where they are empty, and appends it to the tenant's ingress partition.
// It returns the event id, with an error too once the event is valid: the
// XADD may have been appended although its reply was lost (a connection
// cut, a timeout, ctx ended), so retry with Event.ID set to that id, which
// makes the retry harmless: the router publishes each event id once per
// channel. A retry without it is a new event, a second invalidation. An
// error that wraps ErrMalformed refuses the event itself.
//
// The event names its Keys, or sets WholeTag to invalidate every tag of its
// domain whole, or names its Entity alone: an entity-level event, which
// invalidates what was cached under the entity's reference (and the tags'
// values cached without references) where the matrix turns entity_refs on
// for the domain (and the whole tags elsewhere). With both Entity and Keys,
// such a domain's event drops the keys and what was cached under the
// entity's reference. One with none of these is refused: a key list that
// came out empty must not flush whole tags.
func (p *Publisher) Publish(ctx context.Context, e Event) (id string, err error) {
	ctx, span := p.tracer.Start(ctx, "publish", trace.WithSpanKind(trace.SpanKindProducer))
	defer func() { endSpan(span, err) }()
	data, err := p.prepare(ctx, &e)
	if err != nil {
		return "", err
	}
	// Valid, so bounded: a refused tenant may be anything a caller passed.
	span.SetAttributes(attribute.String("routerd.tenant", e.Tenant), attribute.String("routerd.domain", e.Domain))
	n, err := p.partitionCount(ctx)
	if err != nil {
		return e.ID, err
	}
	return e.ID, untilDone(ctx, func() error {
		return p.write(ctx, []entry{{stream: p.stream(e.Tenant, n), data: data, events: 1}})
	})
}

// PublishBatch publishes many events in one pipeline: the events of one
// partition, in order, packed up to MaxPacked (and MaxEventBytes) into an
// entry. Every event is validated first; if one is invalid nothing is sent
// and the error names its index. It returns the event ids in order, with an
// error too once every event is valid (some entries may have been appended):
// set each event's ID from them before publishing again, so the retry is
// harmless.
func (p *Publisher) PublishBatch(ctx context.Context, events []Event) (_ []string, err error) {
	ctx, span := p.tracer.Start(ctx, "publish batch", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.Int("routerd.events", len(events))))
	defer func() { endSpan(span, err) }()
	datas := make([][]byte, len(events))
	ids := make([]string, len(events))
	for i := range events {
		e := events[i]
		data, err := p.prepare(ctx, &e)
		if err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
		datas[i], ids[i] = data, e.ID
	}
	if len(datas) == 0 {
		return nil, nil
	}
	n, err := p.partitionCount(ctx)
	if err != nil {
		return ids, err
	}
	all := p.pack(events, datas, n)
	return ids, untilDone(ctx, func() error { return p.write(ctx, all) })
}

// untilDone returns write's error, or ctx's once ctx is done first
// (redisconn.UntilDone): a caller with a 50 ms deadline must not wait
// seconds on a bus that does not answer. The write left behind goes on
// within the client's own timeouts and may append its entries all the
// same, hence the advice to publish again with the same ids.
func untilDone(ctx context.Context, write func() error) error {
	left, err := redisconn.UntilDone(ctx, func(context.Context) error { return write() })
	if left {
		return fmt.Errorf("publisher: %w before the bus answered; the entries may be appended all the same (publishing again with the same ids is safe)", err)
	}
	return err
}

// pack groups the events' JSON into entries: per partition, in order, up to
// MaxPacked events and MaxEventBytes bytes an entry.
func (p *Publisher) pack(events []Event, datas [][]byte, n int) []entry {
	var out []entry
	open := map[string]int{} // stream → index in out of its entry being filled
	for i, data := range datas {
		stream := p.stream(events[i].Tenant, n)
		j, ok := open[stream]
		if ok && (out[j].events >= p.opt.MaxPacked || len(out[j].data)+len(data)+3 > p.opt.MaxEventBytes) {
			ok = false
		}
		if !ok {
			open[stream] = len(out)
			out = append(out, entry{stream: stream, data: data, events: 1})
			continue
		}
		e := &out[j]
		if e.events == 1 {
			e.data = append(append([]byte{'['}, e.data...), ']')
		}
		e.data = append(append(append(e.data[:len(e.data)-1], ','), data...), ']')
		e.events++
	}
	return out
}

// entry is one ingress entry to append.
type entry struct {
	stream string
	data   []byte // the event's JSON, or a JSON array of events
	events int    // how many: the field is event for one, events for more
}

// xadd queues the entry's XADD.
func (e entry) xadd(ctx context.Context, pipe redis.Pipeliner) redis.Cmder {
	field := wire.EventField
	if e.events > 1 {
		field = wire.EventsField
	}
	cmd := redis.NewStringCmd(ctx, "xadd", e.stream, "*", field, e.data)
	_ = pipe.Process(ctx, cmd)
	return cmd
}

// write appends the entries in one pipeline; when Durable, in one pipeline
// per master ending with WAIT 1 where the master has a replica, and fails
// unless the replica acknowledged. A failed write may have appended some
// entries: publishing again with the same ids is safe.
func (p *Publisher) write(ctx context.Context, all []entry) error {
	if !p.opt.Durable {
		cmds, err := p.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, args := range all {
				args.xadd(ctx, pipe)
			}
			return nil
		})
		if err != nil {
			// A dead master: the cluster client would keep its address
			// until it reads the slot map by itself (every minute).
			p.shards.Moved(ctx)
		}
		return xaddError(cmds, err)
	}
	groups := map[*shard.Shard][]entry{}
	for _, args := range all {
		sh, err := p.shards.Of(ctx, args.stream)
		if err != nil {
			return fmt.Errorf("publisher: %w", err)
		}
		groups[sh] = append(groups[sh], args)
	}
	hops := make([]hop, 0, len(groups))
	for sh, group := range groups {
		hops = append(hops, hop{sh: sh, entries: group})
	}
	// A cluster redirect (MOVED, ASK, TRYAGAIN) says the XADD was not run:
	// the entries go again where it says, up to the client's MaxRedirects
	// times. The WAIT must follow each on its connection (it waits for the
	// writes of its own connection), so the cluster client's pipeline,
	// which follows redirects by itself, cannot carry it.
	for redirects := 0; len(hops) > 0; redirects++ {
		var next []hop
		for _, h := range hops {
			if limit := p.shards.MaxRedirects(); redirects > limit {
				return fmt.Errorf("publisher: XADD %s: %w, redirected more than the client's MaxRedirects (%d) times (publishing again with the same ids is safe)", h.entries[0].stream, h.cause, limit)
			}
			if h.cause != nil && redis.IsTryAgainError(h.cause) {
				// The slot's keys are being moved: a moment.
				select {
				case <-time.After(tryAgainPause):
				case <-ctx.Done():
					return fmt.Errorf("publisher: XADD %s: %w after %w (publishing again with the same ids is safe)", h.entries[0].stream, ctx.Err(), h.cause)
				}
			}
			more, err := p.writeShard(ctx, h)
			if err != nil {
				return err
			}
			next = append(next, more...)
		}
		hops = next
	}
	return nil
}

// tryAgainPause is how long a durable write waits before it sends again an
// XADD a cluster answered with TRYAGAIN (its slot's keys being moved).
const tryAgainPause = 20 * time.Millisecond

// hop is a durable write's entries bound for one master: first where the
// slot map says, then where a redirect sends them.
type hop struct {
	sh      *shard.Shard
	entries []entry
	asking  bool  // an ASK redirect: each XADD after ASKING
	cause   error // the redirect that sent them here
}

// writeShard appends h's entries on its master in one pipeline ending with
// WAIT 1 where the master has a replica, and fails unless the replica
// acknowledged. It returns the entries the master redirected, by where to.
func (p *Publisher) writeShard(ctx context.Context, h hop) ([]hop, error) {
	sh := h.sh
	replicas, err := sh.Replicas(ctx)
	if err != nil {
		// A dead master, or one a failover made a replica: the slot
		// map is stale too (the cluster client reads it again only
		// every minute by itself).
		p.shards.Moved(ctx)
		// The entries of another master may be appended already.
		return nil, fmt.Errorf("publisher: %w (publishing again with the same ids is safe)", err)
	}
	p.noteReplicas(sh.C.Options().Addr, replicas)
	var wait *redis.IntCmd
	xadds := make([]redis.Cmder, len(h.entries))
	var asking []*redis.StatusCmd
	_, perr := sh.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, args := range h.entries {
			if h.asking {
				asking = append(asking, redis.NewStatusCmd(ctx, "asking"))
				_ = pipe.Process(ctx, asking[len(asking)-1])
			}
			xadds[i] = args.xadd(ctx, pipe)
		}
		if replicas > 0 {
			wait = shard.WaitCmd(ctx, 1, p.opt.WaitTimeout)
			return pipe.Process(ctx, wait)
		}
		return nil
	})
	var redirected []hop
	var failed []redis.Cmder
	appended := 0
	for i, cmd := range xadds {
		switch cerr := cmd.Err(); {
		case cerr == nil:
			appended++
		case isRedirect(cerr):
			if redirected, err = p.follow(ctx, redirected, h, h.entries[i], cerr); err != nil {
				return nil, err
			}
		default:
			failed = append(failed, cmd)
		}
	}
	for _, cmd := range asking {
		if err := cmd.Err(); err != nil && len(failed) == 0 && redirected != nil {
			// Redirected again for want of ASKING (an ACL without it):
			// say why rather than the redirect.
			return nil, fmt.Errorf("publisher: ASKING on %s, after %w: %w (publishing again with the same ids is safe)", sh.C.Options().Addr, h.cause, err)
		}
	}
	if len(failed) > 0 {
		sh.Forget()
		p.shards.Moved(ctx)
		return nil, xaddError(failed, perr)
	}
	if appended > 0 && wait != nil {
		if werr := wait.Err(); werr != nil {
			sh.Forget()
			return nil, fmt.Errorf("publisher: WAIT on %s: %w (publishing again with the same ids is safe)", sh.C.Options().Addr, werr)
		}
		if wait.Val() < 1 {
			// The count may be the old master's, a failover ago: a
			// master without replica now has nothing to wait for.
			n, err := sh.Recount(ctx)
			if err == nil && n == 0 {
				p.noteReplicas(sh.C.Options().Addr, 0)
			} else {
				return nil, fmt.Errorf("publisher: no replica of %s acknowledged within %v (publishing again with the same ids is safe)", sh.C.Options().Addr, p.opt.WaitTimeout)
			}
		}
	}
	if len(redirected) == 0 && perr != nil {
		return nil, fmt.Errorf("publisher: %w (publishing again with the same ids is safe)", perr)
	}
	return redirected, nil
}

// isRedirect reports whether err is a cluster's redirect: the command was
// not run, and may be sent where it says (MOVED, ASK) or again (TRYAGAIN).
func isRedirect(err error) bool {
	_, moved := redis.IsMovedError(err)
	_, ask := redis.IsAskError(err)
	return moved || ask || redis.IsTryAgainError(err)
}

// follow adds e, an entry of from that err redirected, to the hops of
// redirected bound where err says: another master (MOVED, ASK), or from's
// own again (TRYAGAIN).
func (p *Publisher) follow(ctx context.Context, redirected []hop, from hop, e entry, err error) ([]hop, error) {
	next := hop{sh: from.sh, asking: from.asking, cause: err}
	addr, ask := redis.IsAskError(err)
	if moved, ok := redis.IsMovedError(err); ok {
		addr = moved
		p.shards.Moved(ctx) // the slot has a new master: the map is stale
	}
	if addr != "" {
		sh, serr := p.shards.At(ctx, addr)
		if serr != nil {
			return nil, fmt.Errorf("publisher: XADD %s: %w: %w (publishing again with the same ids is safe)", e.stream, err, serr)
		}
		next = hop{sh: sh, asking: ask, cause: err}
	}
	for i := range redirected {
		h := &redirected[i]
		if h.sh == next.sh && h.asking == next.asking && redis.IsTryAgainError(h.cause) == redis.IsTryAgainError(err) {
			h.entries = append(h.entries, e)
			return redirected, nil
		}
	}
	next.entries = []entry{e}
	return append(redirected, next), nil
}

// noteReplicas warns once that a master has no replica, where Durable
// waits for none: the option does nothing there until one connects.
func (p *Publisher) noteReplicas(master string, replicas int64) {
	if replicas > 0 {
		p.unreplicated.Delete(master)
		return
	}
	if _, warned := p.unreplicated.LoadOrStore(master, true); !warned {
		p.opt.Logger.Warn("publisher: Durable, but the master has no replica: its publishes are not waited for, and a failover can lose them", "master", master)
	}
}

func xaddError(cmds []redis.Cmder, err error) error {
	for i, c := range cmds {
		if c.Err() != nil {
			return fmt.Errorf("publisher: entry %d: XADD %s: %w (publishing again with the same ids is safe)", i, c.Args()[1], c.Err())
		}
	}
	if err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	return nil
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

func (p *Publisher) prepare(ctx context.Context, e *Event) ([]byte, error) {
	if e.ID == "" {
		e.ID = newID(p.opt.Now())
	}
	if e.TS == 0 {
		e.TS = p.opt.Now().UnixMilli()
	}
	if e.Origin == "" {
		e.Origin = p.opt.Origin
	}
	if e.Traceparent == "" {
		e.Traceparent = telemetry.Inject(ctx)
	}
	data, err := e.Marshal()
	if err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	if why := wire.ReservedID(p.opt.Prefix, e.ID, p.opt.Publisher != ""); why != "" {
		// The router would dead-letter it: the id has a form the router
		// makes itself (docs/protocol.md 2.3).
		return nil, fmt.Errorf("publisher: %w", &wire.FieldError{Field: "id", Reason: why})
	}
	if len(data) > p.opt.MaxEventBytes {
		return nil, fmt.Errorf("publisher: %w", &wire.FieldError{Field: "event",
			Reason: fmt.Sprintf("%d bytes, above the limit of %d bytes (MaxEventBytes); split its keys or publish the whole tag", len(data), p.opt.MaxEventBytes)})
	}
	return data, nil
}

// partitionCount is a partition count read from Redis.
type partitionCount struct {
	n  int
	at time.Time
	// missing is set when the key was not there: n is a guess, kept for
	// missingRefresh only.
	missing bool
}

// missingRefresh is how long a guessed partition count is used before the
// key is read again.
const missingRefresh = time.Second

// refreshTimeout bounds the read of the partition count that callers share.
const refreshTimeout = 5 * time.Second

// partitionCount returns Options.Partitions, or the count in Redis, read at
// most every Refresh. When it is due, one caller reads it and the others wait
// for that read; each stops waiting when its own context ends.
func (p *Publisher) partitionCount(ctx context.Context) (int, error) {
	if p.opt.Partitions > 0 {
		return p.opt.Partitions, nil
	}
	known := p.partitions.Load()
	if known != nil && p.opt.Now().Sub(known.at) < known.ttl(p.opt.Refresh) {
		return known.n, nil
	}
	// The read runs apart from the context of whoever starts it, so that
	// caller leaving does not fail the others.
	ch := p.refresh.DoChan("", func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), refreshTimeout)
		defer cancel()
		return p.readPartitions(rctx, known)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return 0, res.Err
		}
		return res.Val.(int), nil
	case <-ctx.Done():
		return 0, fmt.Errorf("publisher: read partition count: %w", ctx.Err())
	}
}

// ttl is how long the count is used before it is read again.
func (c *partitionCount) ttl(refresh time.Duration) time.Duration {
	if c.missing {
		return min(missingRefresh, refresh)
	}
	return refresh
}

// readPartitions reads the partition count from Redis and keeps it; on a
// Redis error it keeps known, the last count read, when there is one. A key
// that is missing or holds no count (garbage, out of range, another type)
// makes it keep known, or guess the default, for missingRefresh: the router
// writes the key again within seconds.
func (p *Publisher) readPartitions(ctx context.Context, known *partitionCount) (int, error) {
	key := names.PartitionsKey(p.opt.Prefix)
	s, err := p.c.Get(ctx, key).Result()
	switch {
	case errors.Is(err, redis.Nil):
		// Gone with the bus's data, or no router ran yet: the count read
		// before is still the matrix's (the router writes it again within
		// seconds), a better guess than the default. Said once a streak:
		// it is also the one sign of a prefix no router uses.
		if known == nil || !known.missing {
			p.opt.Logger.Warn("publisher: no partition count on the bus (no router ran on it with this prefix yet, or the bus lost its data); "+
				"using the count known before (or the default) until a router writes it. If this lasts, check that Options.Prefix is the matrix's prefix",
				"key", key)
		}
		return p.guessPartitions(known), nil
	case isWrongType(err):
		p.opt.Logger.Warn("publisher: the partition count key is of another type; using the count known before (or the default) until the router repairs it",
			"key", key, "err", err)
		return p.guessPartitions(known), nil
	case err != nil:
		if known != nil {
			return known.n, nil // keep the last known count; the XADD will tell
		}
		return 0, fmt.Errorf("publisher: read partition count: %w", err)
	}
	n, err := parsePartitions(s)
	if err != nil {
		p.opt.Logger.Warn("publisher: the partition count key holds no count; using the count known before (or the default) until the router repairs it",
			"key", key, "err", err)
		return p.guessPartitions(known), nil
	}
	p.partitions.Store(&partitionCount{n: n, at: p.opt.Now()})
	return n, nil
}

// guessPartitions keeps known's count, or the default, for missingRefresh.
func (p *Publisher) guessPartitions(known *partitionCount) int {
	n := wire.DefaultPartitions
	if known != nil {
		n = known.n
	}
	p.partitions.Store(&partitionCount{n: n, at: p.opt.Now(), missing: true})
	return n
}

// parsePartitions parses the value of the partition count key.
func parsePartitions(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > matrix.MaxPartitions {
		return 0, fmt.Errorf("%q is not a partition count (1 to %d)", s, matrix.MaxPartitions)
	}
	return n, nil
}

// isWrongType reports whether err is Redis's answer to a command on a key
// of another type.
func isWrongType(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "WRONGTYPE")
}

// newID returns a time-ordered unique id: 12 hex digits of milliseconds and
// 16 of randomness.
func newID(now time.Time) string {
	var b [14]byte
	ms := uint64(now.UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	_, _ = rand.Read(b[6:])
	return hex.EncodeToString(b[:])
}
