package router

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// The hand-over between routers on different matrices.
//
// During a rolling deploy routers with different matrices share the
// consumer group: whichever reads an event decides where it goes, and a
// router on one matrix would send it nowhere, or to fewer channels, than
// one on another (a domain, a tag, a tenant or a grant added). So every
// router registers the digest of its matrix (matrix.Digest) in the hash
// names.RoutersKey — at start, after each reload and on each housekeeping
// round, with an expiry — and reads the hash in the same pipeline as every
// read and claim, after the entries: the view of the live routers a batch
// is settled with is never older than the batch. Before acknowledging a
// batch, a router that sees live routers of other digests appends each of
// its entries to the re-drive stream once for one router of each other
// digest, naming it ("for"), so that router routes it under its matrix
// (redrive.go hands it to that router whoever reads it). An entry that
// came by hand-over is not handed over again (unless the router it was for
// is gone: then it is handed to the live ones), and a router that hands an
// entry over writes no dead letter for its events: the other router writes
// those it cannot route either. Channels both matrices route get nothing
// twice: the handed-over entry names the stream and entry id the event
// first had, so it gets the same event id, and a channel drops an id it has
// seen.

// registration is a router's entry in names.RoutersKey: the digest of its
// matrix and when the entry expires, "<digest> <unix ms>".
type registration struct {
	digest  string
	expires time.Time
}

func (g registration) value() string {
	return g.digest + " " + strconv.FormatInt(g.expires.UnixMilli(), 10)
}

// stopped is the digest of a router that stopped: its registration is
// replaced by one of this digest, which expires just after the last one it
// wrote, so it outlasts that one in every router's view (peers.merge), and
// the first registration of a router started again under the same name
// outlasts it.
const stopped = "-"

// parseRegistration reads a value of names.RoutersKey; ok is false for one
// no router wrote.
func parseRegistration(s string) (g registration, ok bool) {
	digest, ms, found := strings.Cut(s, " ")
	n, err := strconv.ParseInt(ms, 10, 64)
	if !found || digest == "" || err != nil {
		return g, false
	}
	return registration{digest: digest, expires: time.UnixMilli(n)}, true
}

// peers is what this router knows of the live routers: the entries of
// names.RoutersKey it read, merged so that a reply read earlier but taken
// later does not hide a router a later one showed.
type peers struct {
	mu sync.Mutex
	m  map[string]registration
}

// merge takes in a reply of HGETALL names.RoutersKey: for each router, the
// registration that expires last.
func (p *peers) merge(reply map[string]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]registration{}
	}
	for name, v := range reply {
		g, ok := parseRegistration(v)
		if ok && g.expires.After(p.m[name].expires) {
			p.m[name] = g
		}
	}
}

// others returns one live router (not self) of each digest other than
// digest: the one whose registration expires last. It forgets the
// registrations that expired.
func (p *peers) others(self, digest string, now time.Time) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	best := map[string]string{} // digest -> router
	for name, g := range p.m {
		switch {
		case !g.expires.After(now):
			delete(p.m, name)
		case name == self || g.digest == digest || g.digest == stopped:
		case best[g.digest] == "" || g.expires.After(p.m[best[g.digest]].expires) ||
			g.expires.Equal(p.m[best[g.digest]].expires) && name < best[g.digest]:
			best[g.digest] = name
		}
	}
	out := make([]string, 0, len(best))
	for _, name := range best {
		out = append(out, name)
	}
	return out
}

// digestOf returns the digest of a live router, or "" when it has none.
func (p *peers) digestOf(name string, now time.Time) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if g, ok := p.m[name]; ok && g.expires.After(now) && g.digest != stopped {
		return g.digest
	}
	return ""
}

// digests counts the distinct digests of the live routers, this one's included.
func (p *peers) digests(own string, now time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := map[string]bool{own: true}
	for _, g := range p.m {
		if g.expires.After(now) && g.digest != stopped {
			seen[g.digest] = true
		}
	}
	return len(seen)
}

// registrationTTL is how long a registration lasts without a heartbeat:
// ClaimIdle, after which the other routers take a silent router for dead
// anyway (its entries are claimed). Clocks of routers may differ by less.
func (r *Router) registrationTTL() time.Duration { return r.opt.ClaimIdle }

// register writes this router's registration and reads the others', and
// removes those that expired more than a TTL ago (a router started again
// under the name of one long dead has re-registered since, at the latest at
// its next heartbeat; one that wrote in between this read and the removal is
// that rare case, and registers again on its next round). It runs at start,
// after a reload and on each housekeeping round.
func (r *Router) register(ctx context.Context) error {
	// One at a time, the digest read inside: a heartbeat that read the
	// digest before a reload cannot write it after the reload's.
	r.registerMu.Lock()
	defer r.registerMu.Unlock()
	key := names.RoutersKey(r.prefix)
	now := time.Now()
	own := registration{digest: r.digest.Load().(string), expires: now.Add(r.registrationTTL())}
	r.registered = own.expires
	var all *redis.MapStringStringCmd
	write := func() error {
		_, err := r.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.HSet(ctx, key, r.opt.Consumer, own.value())
			all = pipe.HGetAll(ctx, key)
			return nil
		})
		return err
	}
	err := write()
	if err != nil && redis.HasErrorPrefix(err, "WRONGTYPE") {
		// The key is the routers' own (names reserves it): another type
		// there is an operator's mistake or a client's attack. Replace
		// it; every live router registers again within its next round.
		r.log.Warn("the live routers' key is of another type: replacing it", "key", key, "err", err)
		if err := r.c.Del(ctx, key).Err(); err != nil {
			return fmt.Errorf("live routers: replacing %s: %w", key, err)
		}
		r.m.replaced.WithLabelValues(KeyLiveRouters).Inc()
		err = write()
	}
	if err != nil {
		return err
	}
	r.peers.merge(all.Val())
	var gone []string
	for name, v := range all.Val() {
		if g, ok := parseRegistration(v); !ok || !g.expires.Add(r.registrationTTL()).After(now) {
			gone = append(gone, name)
		}
	}
	if len(gone) > 0 {
		if err := r.c.HDel(ctx, key, gone...).Err(); err != nil {
			return err
		}
	}
	r.m.digests.Set(float64(r.peers.digests(own.digest, now)))
	return nil
}

// heartbeat registers; a Redis user that may not (one made by an older
// routerd acl) is said once in the log, and the router routes on without
// hand-over.
func (r *Router) heartbeat(ctx context.Context) error {
	err := r.register(ctx)
	if err != nil && redis.HasErrorPrefix(err, "NOPERM") {
		if r.peersRefused.CompareAndSwap(false, true) {
			r.log.Warn("the router's Redis user may not register in the live routers: entries are not handed over between routers on different matrices; apply the line of routerd acl --role router again", "err", err)
		}
		return nil
	}
	return err
}

// deregister marks this router stopped when it stops, so the others stop
// handing entries over to it at once (a router that dies is forgotten when
// its registration expires). The mark outlasts the last registration: a
// view read before it, taken in later, does not bring the router back.
func (r *Router) deregister() {
	r.registerMu.Lock()
	defer r.registerMu.Unlock()
	if r.registered.IsZero() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	mark := registration{digest: stopped, expires: r.registered.Add(time.Millisecond)}
	if err := r.c.HSet(ctx, names.RoutersKey(r.prefix), r.opt.Consumer, mark.value()).Err(); err != nil {
		r.log.Warn("marking this router stopped in the live routers", "err", err)
	}
}

// readWithPeers runs a read or claim script and, in the same pipeline after
// it, reads the live routers: the view a batch is settled with is never
// older than the batch, at no extra round trip. On a cluster the two keys
// are on different masters, whose parts of a pipeline run side by side:
// the live routers are read once the read has answered.
func readWithPeers[P any](ctx context.Context, r *Router, req lua.Request[P]) (P, error) {
	return readWithPeersOn(ctx, r, r.c, req)
}

// readWithPeersOn is readWithPeers through the client c.
func readWithPeersOn[P any](ctx context.Context, r *Router, c redis.UniversalClient, req lua.Request[P]) (P, error) {
	if r.cluster {
		reply, err := lua.Run(ctx, c, req)
		if err == nil {
			r.notePeers(r.c.HGetAll(ctx, names.RoutersKey(r.prefix)))
		}
		return reply, err
	}
	var read *redis.Cmd
	var view *redis.MapStringStringCmd
	_, err := runScripts(ctx, c, func(pipe redis.Pipeliner) []*redis.Cmd {
		read = lua.Queue(ctx, pipe, req)
		view = pipe.HGetAll(ctx, names.RoutersKey(r.prefix))
		return []*redis.Cmd{read}
	})
	if read == nil { // nothing was queued: the pipeline could not run
		var zero P
		return zero, err
	}
	r.notePeers(view)
	return req.Reply(read)
}

// notePeers takes in the live routers read with entries; a failed read
// (an older ACL without HGETALL on the key) keeps the view as it was.
func (r *Router) notePeers(view *redis.MapStringStringCmd) {
	if view == nil {
		return
	}
	if err := view.Err(); err != nil {
		if redis.HasErrorPrefix(err, "NOPERM") && r.peersRefused.CompareAndSwap(false, true) {
			r.log.Warn("the router's Redis user may not read the live routers: entries are not handed over to routers on another matrix; apply the line of routerd acl --role router again", "err", err)
		}
		return // the read failed too, or the view stays as it was
	}
	r.peers.merge(view.Val())
}

// handOverToOthers appends every entry of a batch to the re-drive stream
// once for one live router of each other matrix digest, before any of its
// messages is published (the coalescer may acknowledge an entry before
// the batch is done). An entry that came by hand-over, or is refused as a
// whole (malformed, too large: every matrix refuses it), is not handed
// over. A handed-over entry writes no dead letters for its events. On an
// error the batch is tried again (handing over twice is harmless).
func (r *Router) handOverToOthers(ctx context.Context, entries []*entry) error {
	to := r.peers.others(r.opt.Consumer, r.digest.Load().(string), time.Now())
	if len(to) == 0 {
		return nil
	}
	var give []*entry
	for _, e := range entries {
		if e.reason == "" && e.handTo == "" {
			give = append(give, e)
		}
	}
	if len(give) == 0 {
		return nil
	}
	_, err := r.c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, e := range give {
			for _, router := range to {
				pipe.XAdd(ctx, &redis.XAddArgs{Stream: r.redrive, Values: handOverValues(e, router)})
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("handing entries over to routers on another matrix (%s): %w", strings.Join(to, ", "), err)
	}
	n := 0
	for _, e := range give {
		e.handed = true
		n += len(e.events)
	}
	r.m.handedOverEvents.Add(float64(n * len(to)))
	return nil
}

// handOverValues are the fields of the re-drive entry that hands e over to
// router: where it first came from, and its event or events.
func handOverValues(e *entry, router string) []any {
	values := []any{redriveStream, e.from, redriveEntry, e.fromID, redriveFor, router}
	if e.fromIndex >= 0 {
		values = append(values, redriveIndex, strconv.Itoa(e.fromIndex))
	}
	if from, ok := e.raw[redriveFrom]; ok {
		values = append(values, redriveFrom, from)
	}
	for _, f := range []string{wire.EventField, wire.EventsField} {
		if v, ok := e.raw[f]; ok {
			values = append(values, f, v)
		}
	}
	return values
}

// takenElsewhere reports whether an entry re-driven for another router
// should go to it rather than be routed here: the domain of one of its
// events is unknown here, or that router's matrix differs from this one's.
func (r *Router) takenElsewhere(e *entry) bool {
	if e.unknownDomain() {
		return true
	}
	d := r.peers.digestOf(e.handTo, time.Now())
	return d != "" && d != r.digest.Load().(string)
}
