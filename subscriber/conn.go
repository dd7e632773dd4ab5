package subscriber

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/names"
)

// listener owns the subscriber's pub/sub connections: on a standalone bus
// connections of at most Options.ChannelsPerConn channels each; on a
// cluster sharded connections to each master, each with at most as many of
// the channels whose slots that master owns, because go-redis subscribes
// all the channels of one SSUBSCRIBE on the node of the first one. A
// connection's channels are bounded because go-redis resubscribes them all
// in one command when it reconnects, and the bus buffers the replies of one
// command whole (client-output-buffer-limit pubsub). It is used by the
// applier goroutine only.
type listener struct {
	s     *Subscriber
	conns []*conn
	// cluster: the hash slot of each channel subscribed, as the server
	// computes it (CLUSTER KEYSLOT), kept across regroups; every channel
	// subscribed is in it.
	slots map[string]int64
	// relinks counts the silent connections replaced; relinkLogged paces
	// the warning.
	relinks      int
	relinkLogged time.Time
	// refused are the channels the bus refuses to this service's user
	// (NOPERM, an ACL of named tenants): left out of the connections, and
	// tried again every CheckInterval (retryRefused).
	refused map[string]bool
}

// conn is one pub/sub connection and its receiver.
type conn struct {
	ps       *redis.PubSub
	addr     string       // cluster: the master it is connected to
	heard    atomic.Int64 // unix nanos of the last thing received (a pong at least every PingEvery)
	waiting  atomic.Bool  // the receiver waits for the applier to take a message
	expected atomic.Int64 // subscriptions that make its set complete
	held     atomic.Int64 // subscriptions the bus confirmed (the count of its last reply; 0 while down)
	cancel   context.CancelFunc
	done     chan struct{}

	// chans are the channels given to the connection (standalone), and
	// size how many (both); the applier's.
	chans []string
	size  int

	// Subscribing is paced by the replies read (see pump): ops wait their
	// turn, unread counts the replies to the commands sent not read yet.
	sendMu sync.Mutex
	ops    []subOp
	unread atomic.Int64
	// refused: the bus refused a subscription of the connection (NOPERM).
	refused atomic.Bool
	// broken: the bus answered a command of the connection with another
	// error (BUSY): the applier replaces it (relink).
	broken atomic.Bool

	mu sync.Mutex
	// added are channels subscribed on the running connection (a tenant
	// announced), each with the count of its tenant's channels on the
	// connection not confirmed yet: checked together once all are
	// (freshChannels).
	added map[string]*int
}

// subOp is an (un)subscribe of channels waiting to be sent; kind is
// subscribe, unsubscribe or ssubscribe (the channels of one slot).
type subOp struct {
	kind     string
	channels []string
}

// subscribeBudget bounds the replies to (un)subscribe commands a
// connection has sent and not read yet: the bus buffers them until they
// are read, and closes a pub/sub connection whose buffer passes
// client-output-buffer-limit pubsub (32 MB at once, 8 MB for 60 s by
// default); a reply takes about 40 bytes and the channel's name, so 1,000
// of them take a few tens of KB.
const subscribeBudget = 1000

// DefaultChannelsPerConn is Options.ChannelsPerConn's default: a reconnected
// connection's resubscription of them all, in one command, buffers about
// 5 MB of replies on the bus, under its default limits.
const DefaultChannelsPerConn = 50000

// queue adds (un)subscribes of channels to send; pump sends them.
func (c *conn) queue(kind string, channels []string) {
	if len(channels) == 0 {
		return
	}
	c.sendMu.Lock()
	c.ops = append(c.ops, subOp{kind, channels})
	c.sendMu.Unlock()
}

// pump sends what is queued, a chunk at a time, while the replies not read
// yet leave room in subscribeBudget: the receiver calls it again as it
// reads them. A failed write makes go-redis reconnect and resubscribe what
// was sent; what is queued goes after.
func (c *conn) pump(ctx context.Context, s *Subscriber) {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	for len(c.ops) > 0 {
		room := subscribeBudget - int(c.unread.Load())
		if room < subscribeBudget/2 {
			return
		}
		op := &c.ops[0]
		n := min(room, len(op.channels))
		part := op.channels[:n]
		c.unread.Add(int64(n))
		var err error
		switch op.kind {
		case "subscribe":
			err = c.ps.Subscribe(ctx, part...)
		case "unsubscribe":
			err = c.ps.Unsubscribe(ctx, part...)
		case "ssubscribe":
			err = c.ps.SSubscribe(ctx, part...)
		}
		if err != nil {
			// go-redis reconnected at once and subscribed again what it
			// had before this command, not this command's channels
			// (PubSub.Subscribe adds them to its set after the write):
			// they are sent again, on the next pump.
			c.unread.Add(int64(-n))
			if ctx.Err() == nil {
				s.log.Warn("changing subscriptions failed; sending them again", "err", err)
			}
			return
		}
		if op.channels = op.channels[n:]; len(op.channels) == 0 {
			c.ops[0] = subOp{}
			c.ops = c.ops[1:]
		}
	}
}

// replied counts a reply to an (un)subscribe read, and sends more.
func (c *conn) replied(ctx context.Context, s *Subscriber, count int) {
	c.held.Store(int64(count))
	if c.unread.Add(-1) < 0 {
		c.unread.Store(0) // a resubscription of go-redis's own
	}
	c.pump(ctx, s)
}

// forgetAdded treats every added channel as part of the connection's set,
// and wakes the applier for those fresh holds already (confirmed before):
// the rest are checked with every channel.
func (c *conn) forgetAdded(fresh *freshChannels) {
	c.mu.Lock()
	clear(c.added)
	c.mu.Unlock()
	fresh.wake()
}

// resubscribing is told that every channel of the connection is being
// subscribed again (the connection was lost, or go-redis connected again
// on its own): what was published meanwhile is lost to pub/sub, and the
// last confirmation asks for a check of every channel. The replies to what
// was sent before are lost with the connection.
func (c *conn) resubscribing(s *Subscriber) {
	c.forgetAdded(s.fresh)
	c.held.Store(0)
	c.unread.Store(0)
	s.requestCheck()
}

// markAdded marks a tenant's channels added to the running connection.
func (c *conn) markAdded(channels []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pending := new(int)
	for _, ch := range channels {
		if c.added[ch] == nil {
			c.added[ch] = pending
			*pending++
		}
	}
}

// confirmedAdded reports whether channel was added to the running
// connection, and if so forgets it and gives it to fresh — under c.mu, so
// that a channel confirmed before forgetAdded is held before it returns,
// and the wake that follows forgetAdded finds it. fresh is woken with the
// last of its tenant's channels on the connection: another tenant's, added
// before or after, confirmed or not (a flood of announcements keeps some
// waiting all the time), do not hold it back.
func (c *conn) confirmedAdded(channel string, fresh *freshChannels) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	pending := c.added[channel]
	if pending == nil {
		return false
	}
	delete(c.added, channel)
	*pending--
	fresh.confirmed(channel, *pending == 0)
	return true
}

// freshChannels holds the channels added to running connections (a tenant
// announced) whose subscription the bus confirmed, until the applier
// checks them together: once every channel of their tenant on their
// connection is confirmed (with the others confirmed meanwhile), or once a
// check's worth (checkChunk) is held. A check reads the bus's identity,
// the metas, the positions and the histories: checked one at a time, a new
// tenant of a service with many tags held every other channel's
// invalidations back for as many checks.
type freshChannels struct {
	mu       sync.Mutex
	channels []string
	ready    chan struct{} // capacity 1: the applier has channels to take
}

func newFreshChannels() *freshChannels {
	return &freshChannels{ready: make(chan struct{}, 1)}
}

// confirmed adds a confirmed channel, and tells the applier when all or
// when a check's worth is held.
func (f *freshChannels) confirmed(channel string, all bool) {
	f.mu.Lock()
	f.channels = append(f.channels, channel)
	full := len(f.channels) >= checkChunk
	f.mu.Unlock()
	if all || full {
		f.wake()
	}
}

// wake tells the applier to take what is held.
func (f *freshChannels) wake() {
	select {
	case f.ready <- struct{}{}:
	default:
	}
}

// take returns up to n of the channels held, the first confirmed first,
// and wakes the applier again for the rest.
func (f *freshChannels) take(n int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.channels) <= n {
		chans := f.channels
		f.channels = nil
		return chans
	}
	chans := f.channels[:n:n]
	f.channels = f.channels[n:]
	f.wake()
	return chans
}

// ErrRunning is returned by Run when the subscriber is already running.
var ErrRunning = errors.New("subscriber: already running")

// Run subscribes and applies invalidations until ctx is cancelled, then
// returns nil once every goroutine and timer it started has stopped, but
// for calls to a cache Redis that does not answer: Run does not wait for
// those, which end within the client's timeouts (or when it is closed),
// nor more than finalFlushWait for the last flush of queued work (the next
// Run waits for it). A Subscriber runs once at a time: a second concurrent
// Run returns ErrRunning.
func (s *Subscriber) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer s.running.Store(false)
	if s.flushing != nil {
		// The last flush of the run before, which its stop did not wait
		// for (finalFlush), owns the positions until it ends.
		<-s.flushing
		s.flushing = nil
	}
	defer s.ready.Store(false)
	if next := s.next.Swap(nil); next != nil {
		s.cur = next // SetMatrix before Run
	}
	// The applier's retry of a regroup: a timer of this run, not a
	// goroutine that could fire after it.
	s.regroupTimer = time.NewTimer(time.Hour)
	s.regroupTimer.Stop()
	defer s.regroupTimer.Stop()
	// Beside the start, and nothing is applied until it is recorded; not
	// through the breaker (its failures are warned of on their own). Taken
	// away last, after the applier stopped.
	defer s.runPresence(ctx)()
	var pctx context.Context
	var stop context.CancelFunc
	if s.health.cache != nil {
		// The applier's calls on the cache Redis go through its breaker;
		// the service's own calls on a shared client do not.
		ctx = s.health.cache.Guard(ctx)
		pctx, stop = context.WithCancel(ctx)
		probed := make(chan struct{})
		s.health.probe.Answered() // a fresh run
		go func() {
			defer close(probed)
			s.health.probe.Run(pctx, cacheProbeEvery, probeTimeout, s.health.cache, func(ctx context.Context) error { return s.opt.Cache.Ping(ctx).Err() })
		}()
		defer func() { stop(); <-probed }()
	}
	s.checked(nil) // a fresh run: nothing failed yet
	// The start's reads of the cache Redis (the channels left to leave, the
	// interest the service last ran with) are the applier's first work
	// (begin), retried until done, and nothing is applied before them: a
	// cache that does not answer holds the subscription back no more.
	s.begun = false
	ln := &listener{s: s}
	s.ln = ln
	defer ln.close()
	ln.regroup(ctx)
	if s.health.cache != nil {
		// Its identity before the first check, so that a restart or
		// failover from then on is seen (watchCache); waited for
		// probeTimeout at most.
		first, _ := s.readCacheIDs(ctx)
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			s.watchCache(pctx, first)
		}()
		defer func() { stop(); <-watched }()
	}
	s.apply(ctx, ln)
	return nil
}

// regroupAfter makes the applier regroup after d (the applier only).
func (s *Subscriber) regroupAfter(d time.Duration) { s.regroupTimer.Reset(d) }

// regroupFailed records why a regroup could not subscribe, for Problems,
// and tries again in a second. It logs the first failure, a change of
// error, and then once a minute: a cache that refuses the password would
// otherwise log every second for as long as it lasts.
func (s *Subscriber) regroupFailed(reason, what string, err error) {
	p := &Problem{Reason: reason, Detail: what + ": " + err.Error() + "; trying again every second"}
	prev := s.health.regroupErr.Swap(p)
	if prev == nil || prev.Detail != p.Detail || time.Since(s.regroupLogged) >= time.Minute {
		s.regroupLogged = time.Now()
		s.log.Warn(what+" failed; retrying every second", "err", err)
	}
	s.regroupAfter(time.Second)
}

// regroupDone clears what regroupFailed recorded, saying so if it had.
func (s *Subscriber) regroupDone() {
	if p := s.health.regroupErr.Swap(nil); p != nil {
		s.log.Info("subscribing again after a failure", "was", p.Detail)
	}
}

func (s *Subscriber) sharded() bool {
	return redisconn.IsCluster(s.bus)
}

func (s *Subscriber) requestRegroup() {
	select {
	case s.regroup <- struct{}{}:
	default:
	}
}

// slotsMoved is called by a receiver when the cluster answers that a
// channel's slot lives elsewhere: the applier reloads the slot map, then
// regroups once it has had a moment.
func (s *Subscriber) slotsMoved() {
	select {
	case s.moved <- struct{}{}:
	default:
	}
}

// reloadSlots is the applier's part of slotsMoved.
func (s *Subscriber) reloadSlots(ctx context.Context) {
	if cc := redisconn.Cluster(s.bus); cc != nil {
		cc.ReloadState(ctx)
	}
	s.regroupAfter(200 * time.Millisecond)
}

// regroup (re)builds the connections for the current interest and asks for
// a position check. On a standalone bus an existing connection is changed in
// place (subscribe what is new, leave what is gone).
func (ln *listener) regroup(ctx context.Context) {
	s := ln.s
	tenants, err := s.allTenantList(ctx)
	if err != nil {
		s.regroupFailed(ReasonCacheFailing, "reading the tenant registry from the cache Redis", err)
		return
	}
	channels := s.cur.channels(s.prefix, tenants)
	if s.cur.allTenants {
		channels = append(channels, names.TenantsChannel(s.prefix))
	}
	if channels, err = ln.leaveOutRefused(ctx, channels); err != nil {
		s.regroupFailed(ReasonSubscribing, "finding the channels the bus refuses to this user", err)
		return
	}
	s.joined = tenants // sorted (everyTenant)
	clear(s.joinedNew)
	s.health.noChannels.Store(len(channels) == 0)
	if !s.sharded() {
		if ln.spread(ctx, channels) == 0 {
			s.requestCheck() // no confirmation to come asks for it
		}
		s.regroupDone()
		s.log.Info("subscribing", "channels", len(channels), "connections", len(ln.conns), "tags", s.cur.tagList)
		return
	}

	cc := redisconn.Cluster(s.bus)
	ln.close()
	s.fresh.wake() // what the closed connections confirmed; the rest with every channel
	slots, err := ln.slotsOf(ctx, cc, channels, true)
	if err != nil {
		s.regroupFailed(ReasonSubscribing, "finding the slots of the channels on the bus", err)
		return
	}
	groups := map[string]map[int64][]string{} // master -> slot -> channels
	for _, ch := range channels {
		master, err := cc.MasterForKey(ctx, ch)
		if err != nil {
			s.regroupFailed(ReasonSubscribing, "finding the bus master of "+ch, err)
			return
		}
		addr := master.Options().Addr
		if groups[addr] == nil {
			groups[addr] = map[int64][]string{}
		}
		groups[addr][slots[ch]] = append(groups[addr][slots[ch]], ch)
	}
	addrs := make([]string, 0, len(groups))
	for a := range groups {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	per := s.opt.ChannelsPerConn
	for _, a := range addrs {
		// Connections to the master of at most per channels each, one
		// SSUBSCRIBE per slot (a command may name the channels of one slot
		// only). The first command makes the connection, on the master of
		// its slot: start sends it.
		var c *conn
		for _, chs := range groups[a] {
			for len(chs) > 0 {
				if c == nil || c.size == per {
					if c != nil {
						ln.start(ctx, c)
					}
					c = ln.newConn(cc.SSubscribe(ctx), a)
				}
				n := min(per-c.size, len(chs))
				c.queue("ssubscribe", chs[:n])
				c.size += n
				c.expected.Add(int64(n))
				chs = chs[n:]
			}
		}
		if c != nil {
			ln.start(ctx, c)
		}
	}
	if len(channels) == 0 {
		s.requestCheck()
	}
	s.regroupDone()
	s.log.Info("subscribing (sharded)", "channels", len(channels), "masters", len(groups), "connections", len(ln.conns), "tags", s.cur.tagList)
}

// spread gives a standalone bus's channels to the connections, at most
// ChannelsPerConn each: each keeps those it has that are still wanted and
// leaves the others, the new ones go where there is room, then to new
// connections. It returns how many channels it subscribes: the last
// confirmation asks for a check.
func (ln *listener) spread(ctx context.Context, channels []string) int {
	s := ln.s
	per := s.opt.ChannelsPerConn
	fresh := channels
	if len(ln.conns) > 0 {
		want := make(map[string]bool, len(channels))
		for _, ch := range channels {
			want[ch] = false
		}
		for _, c := range ln.conns {
			var keep, gone []string
			for _, ch := range c.chans {
				if _, ok := want[ch]; ok {
					keep = append(keep, ch)
					want[ch] = true
				} else {
					gone = append(gone, ch)
				}
			}
			c.chans, c.size = keep, len(keep)
			c.queue("unsubscribe", gone)
		}
		fresh = nil
		for _, ch := range channels {
			if !want[ch] {
				fresh = append(fresh, ch)
			}
		}
	}
	running := len(ln.conns)
	all := slices.Clone(ln.conns) // the running ones, then the new ones
	subscribing := len(fresh)
	for len(fresh) > 0 {
		var c *conn
		for _, cn := range all {
			if cn.size < per {
				c = cn
				break
			}
		}
		if c == nil {
			c = ln.newConn(s.bus.Subscribe(ctx), "")
			all = append(all, c)
		}
		n := min(per-c.size, len(fresh))
		c.chans = append(c.chans, fresh[:n]...)
		c.size += n
		c.queue("subscribe", fresh[:n])
		fresh = fresh[n:]
	}
	for i, c := range all {
		c.forgetAdded(s.fresh)
		c.expected.Store(int64(c.size))
		if i < running {
			c.pump(ctx, s)
		} else {
			ln.start(ctx, c)
		}
	}
	return subscribing
}

// slotsOf returns the hash slot of every channel, asking the cluster
// (pipelined) for those it does not know yet. With all set, channels is the
// whole subscribed set and the others are forgotten.
func (ln *listener) slotsOf(ctx context.Context, cc *redis.ClusterClient, channels []string, all bool) (map[string]int64, error) {
	if ln.slots == nil {
		ln.slots = map[string]int64{}
	}
	var unknown []string
	keep := ln.slots
	if all {
		keep = make(map[string]int64, len(channels))
	}
	for _, ch := range channels {
		if slot, ok := ln.slots[ch]; ok {
			keep[ch] = slot
		} else {
			unknown = append(unknown, ch)
		}
	}
	for i := 0; i < len(unknown); i += 1000 {
		part := unknown[i:min(i+1000, len(unknown))]
		cmds, err := cc.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for _, ch := range part {
				pipe.ClusterKeySlot(ctx, ch)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for j, c := range cmds {
			keep[part[j]] = c.(*redis.IntCmd).Val()
		}
	}
	ln.slots = keep
	return keep, nil
}

// allTenantList returns, for a service of every tenant on sharded pub/sub,
// the tenants whose channels it subscribes to (see everyTenant).
func (s *Subscriber) allTenantList(ctx context.Context) ([]string, error) {
	if !s.cur.allTenants {
		return nil, nil
	}
	return s.everyTenant(ctx)
}

// announced handles the router's announcement of a new tenant: its
// channels are subscribed on the running connections (a regroup when a
// master has none yet), and checked together once confirmed.
func (s *Subscriber) announced(ctx context.Context, tenant string) {
	if !s.cur.allTenants || !names.ValidTenant(tenant) || s.hasJoined(tenant) || !s.cur.shard.Owns(tenant) {
		return
	}
	s.joinedNew[tenant] = true
	s.log.Info("new tenant announced; subscribing to its channels", "tenant", tenant)
	channels := s.cur.channels(s.prefix, []string{tenant})
	if err := s.ln.add(ctx, channels); err != nil {
		s.log.Info("subscribing to a new tenant's channels by regrouping", "tenant", tenant, "reason", err)
		s.requestRegroup()
	}
}

// add subscribes channels on the running connections — the one connection
// of a standalone bus; on a cluster the sharded connections, one SSUBSCRIBE
// per slot — and marks them for a check once confirmed. On a
// cluster it fails, subscribing nothing, when a channel's master has no
// connection.
func (ln *listener) add(ctx context.Context, channels []string) error {
	if !ln.s.sharded() {
		if len(ln.conns) == 0 {
			return nil // the regroup to come subscribes them
		}
		var c *conn
		for _, cn := range ln.conns {
			if cn.size < ln.s.opt.ChannelsPerConn {
				c = cn
				break
			}
		}
		if c == nil {
			return errors.New("every connection is full")
		}
		c.markAdded(channels)
		c.chans = append(c.chans, channels...)
		c.size += len(channels)
		c.expected.Add(int64(len(channels)))
		c.queue("subscribe", channels)
		c.pump(ctx, ln.s)
		return nil
	}
	cc := redisconn.Cluster(ln.s.bus)
	var fresh []string // not subscribed yet (a regroup may have taken them)
	for _, ch := range channels {
		if _, ok := ln.slots[ch]; !ok {
			fresh = append(fresh, ch)
		}
	}
	channels = fresh
	slots, err := ln.slotsOf(ctx, cc, channels, false)
	if err != nil {
		return err
	}
	byConn := map[*conn]map[int64][]string{}
	for _, ch := range channels {
		master, err := cc.MasterForKey(ctx, ch)
		if err != nil {
			return err
		}
		var c *conn
		for _, cn := range ln.conns {
			if cn.addr == master.Options().Addr && cn.size < ln.s.opt.ChannelsPerConn {
				c = cn
			}
		}
		if c == nil {
			return errors.New("no connection with room to the master of " + ch + " yet")
		}
		if byConn[c] == nil {
			byConn[c] = map[int64][]string{}
		}
		byConn[c][slots[ch]] = append(byConn[c][slots[ch]], ch)
	}
	for c, bySlot := range byConn {
		var all []string
		for _, chs := range bySlot {
			all = append(all, chs...)
		}
		c.markAdded(all) // before the first is sent
		for _, chs := range bySlot {
			c.expected.Add(int64(len(chs)))
			c.size += len(chs)
			c.queue("ssubscribe", chs)
		}
		c.pump(ctx, ln.s)
	}
	return nil
}

// leaveOutRefused returns channels without those the bus refuses to this
// service's user. When a connection was refused a subscription (NOPERM),
// it finds them by subscribing to each channel on its own on a connection
// of its own (the NOPERM of a command of several channels does not say
// which), and closes the connections, whose go-redis would subscribe them
// again with the others; retryRefused tries them again.
func (ln *listener) leaveOutRefused(ctx context.Context, channels []string) ([]string, error) {
	refusedConn := false
	for _, c := range ln.conns {
		refusedConn = refusedConn || c.refused.Load()
	}
	if refusedConn {
		refused, err := ln.probeRefused(ctx, channels)
		if err != nil {
			return nil, err
		}
		ln.close()
		ln.setRefused(refused)
	}
	if len(ln.refused) == 0 {
		return channels, nil
	}
	return slices.DeleteFunc(channels, func(ch string) bool { return ln.refused[ch] }), nil
}

// retryRefused tries the channels the bus refused again (every
// CheckInterval), and subscribes to those it allows now.
func (ln *listener) retryRefused(ctx context.Context) {
	if len(ln.refused) == 0 {
		return
	}
	refused, err := ln.probeRefused(ctx, slices.Collect(maps.Keys(ln.refused)))
	if err != nil || len(refused) == len(ln.refused) {
		return
	}
	ln.setRefused(refused)
	ln.regroup(ctx)
}

// setRefused records the channels the bus refuses, for the regroups and
// Problems.
func (ln *listener) setRefused(refused map[string]bool) {
	s := ln.s
	ln.refused = refused
	if len(refused) == 0 {
		s.health.refused.Store(nil)
		return
	}
	first := slices.Min(slices.Collect(maps.Keys(refused)))
	s.log.Warn("the bus refuses this service's user some channels (NOPERM): their invalidations are missed; subscribing to the others, and trying them again every check interval",
		"refused", len(refused), "first", first)
	p := fmt.Sprintf("the bus refuses this service's user %d channels (NOPERM), first %s: their invalidations are missed; tried again every %v", len(refused), first, s.opt.CheckInterval)
	s.health.refused.Store(&p)
}

// probeRefused subscribes to each channel on its own, on connections of
// its own (one to each master of a cluster), and returns those the bus
// refuses (NOPERM). Replies come in the order of the commands, one each.
func (ln *listener) probeRefused(ctx context.Context, channels []string) (map[string]bool, error) {
	s := ln.s
	cc := redisconn.Cluster(s.bus)
	groups := map[string][]string{}
	for _, ch := range channels {
		addr := ""
		if cc != nil {
			master, err := cc.MasterForKey(ctx, ch)
			if err != nil {
				return nil, err
			}
			addr = master.Options().Addr
		}
		groups[addr] = append(groups[addr], ch)
	}
	refused := map[string]bool{}
	for _, chs := range groups {
		var ps *redis.PubSub
		if cc != nil {
			ps = cc.SSubscribe(ctx)
		} else {
			ps = s.bus.Subscribe(ctx)
		}
		err := probeOn(ctx, ps, cc != nil, chs, refused)
		_ = ps.Close()
		if err != nil {
			return nil, err
		}
	}
	return refused, nil
}

// probeOn is probeRefused on one connection, subscribeBudget commands at a
// time.
func probeOn(ctx context.Context, ps *redis.PubSub, sharded bool, channels []string, refused map[string]bool) error {
	for len(channels) > 0 {
		part := channels[:min(subscribeBudget, len(channels))]
		channels = channels[len(part):]
		for _, ch := range part {
			var err error
			if sharded {
				err = ps.SSubscribe(ctx, ch)
			} else {
				err = ps.Subscribe(ctx, ch)
			}
			if err != nil {
				return err
			}
		}
		for got := 0; got < len(part); {
			msg, err := ps.ReceiveTimeout(ctx, LinkDeadline)
			if redis.HasErrorPrefix(err, "NOPERM") {
				refused[part[got]] = true
				got++
				continue
			}
			if err != nil {
				return err
			}
			if m, ok := msg.(*redis.Subscription); ok && (m.Kind == "subscribe" || m.Kind == "ssubscribe") {
				got++
			}
		}
	}
	return nil
}

// relinkAfter is how long a pub/sub connection may stay silent before it
// is replaced by a new one: a connection that met a blackhole may stay
// silent long after the network heals (TCP's retransmissions back off to
// tens of seconds, and a peer that restarted meanwhile never answers it).
const relinkAfter = 2 * LinkDeadline

// relink replaces the connections when one has stayed silent past
// relinkAfter, or the bus answered one with an error (broken): the applier
// closes them all and subscribes again (a check follows the confirmation).
// The applier only.
func (ln *listener) relink(ctx context.Context) {
	silent, broken := false, false
	for _, c := range ln.conns {
		if time.Since(time.Unix(0, c.heard.Load())) > relinkAfter {
			silent = true
		}
		if c.broken.Load() {
			broken = true
		}
	}
	if !silent && !broken {
		return
	}
	ln.relinks++
	if silent && time.Since(ln.relinkLogged) >= 30*time.Second {
		ln.relinkLogged = time.Now()
		ln.s.log.Warn("a pub/sub connection has not answered for "+relinkAfter.String()+"; connecting again", "times", ln.relinks)
	}
	ln.close()
	ln.regroup(ctx)
}

func (ln *listener) newConn(ps *redis.PubSub, addr string) *conn {
	return &conn{ps: ps, addr: addr, done: make(chan struct{}), added: map[string]*int{}}
}

// start sends the connection's first chunk (on a cluster, the command that
// makes the connection on the master of its slot) and starts its receiver.
func (ln *listener) start(ctx context.Context, c *conn) {
	cctx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	c.heard.Store(time.Now().UnixNano())
	c.pump(cctx, ln.s)
	ln.conns = append(ln.conns, c)
	ln.s.health.addLink(c)
	go func() {
		defer close(c.done)
		ln.s.receive(cctx, c)
	}()
}

// close stops every connection and waits for its receiver.
func (ln *listener) close() {
	for _, c := range ln.conns {
		c.cancel()
		_ = c.ps.Close()
		<-c.done
		ln.s.health.removeLink(c)
	}
	ln.conns = nil
}

// reconfigure takes up the interest SetMatrix left: subscribe to what is
// new, forget and leave what is gone, check positions.
func (s *Subscriber) reconfigure(ctx context.Context, ln *listener) {
	next := s.next.Swap(nil)
	if next == nil {
		return
	}
	s.cur = next
	var left []string
	var leaving []Invalidation
	for channel, p := range s.pos {
		if !next.covers(p.tenant, p.tag) {
			if err := s.applyQueued(ctx, channel, p); err != nil {
				s.log.Warn("applying queued work of a channel no longer ours", "channel", channel, "err", err)
			}
			left, leaving = append(left, channel), append(leaving, s.leaving(p))
			delete(s.pos, channel)
			delete(s.queued, channel)
		}
	}
	_ = s.leave(ctx, left, leaving) // what failed is in unleft, tried again by every check
	// Records the new interest, and leaves what the positions in memory
	// missed (a reload before the first check read them all).
	if err := s.leaveFormerInterest(ctx, left...); err != nil && ctx.Err() == nil {
		s.log.Warn("comparing with the interest the service last ran with failed; not checked for this matrix", "err", err)
	}
	s.log.Info("took up a new matrix", "tags", next.tagList, "all_tenants", next.allTenants, "tenants", next.tenants)
	ln.regroup(ctx)
}

// leave drops the whole tag of the channels the new matrix takes from the
// service, and leaves their positions lost: nothing keeps what the cache
// holds under them fresh from now on (the router publishes on a channel
// only for the services the matrix gives it, none may be left), and the
// service's application may go on caching under them. If a later matrix
// gives a channel back (a deploy rolled back), the lost position makes its
// check drop the whole tag again, with what was cached meanwhile. invs are
// the channels' invalidations (leaving), applied pipelineChunk at a time.
func (s *Subscriber) leave(ctx context.Context, channels []string, invs []Invalidation) error {
	if len(invs) == 0 {
		return nil
	}
	s.log.Info("the matrix took channels from this service: invalidating their whole tags, whose values nothing keeps fresh now", "channels", len(channels), "first", channels[0])
	if err := s.flushBatch(ctx); err != nil {
		s.log.Warn("applying the burst before leaving channels failed", "err", err)
	}
	var failed, done []string
	var firstErr error
	for from := 0; from < len(invs); from += pipelineChunk {
		for i, err := range s.invalidateMany(ctx, invs[from:min(from+pipelineChunk, len(invs))], false) {
			ch := channels[from+i]
			if err != nil {
				if len(failed) == 0 {
					firstErr = err
				}
				failed = append(failed, ch)
				if s.unleft == nil {
					s.unleft = map[string]Invalidation{}
				}
				s.unleft[ch] = invs[from+i]
				continue
			}
			if _, ok := s.unleft[ch]; ok {
				done = append(done, ch)
				delete(s.unleft, ch)
			}
			s.m.recoveries.WithLabelValues("whole_tag").Inc()
		}
	}
	s.noteLeaving(ctx, failed, done)
	if len(failed) > 0 {
		s.log.Warn("invalidating the whole tags of channels no longer ours failed; every check tries them again",
			"failed", len(failed), "of", len(invs), "first", failed[0], "err", firstErr)
		return fmt.Errorf("leaving %d channels the matrix took from the service (their whole tags) failed, first %s: %w", len(failed), failed[0], firstErr)
	}
	return nil
}

// noteLeaving keeps the channels whose leaving failed in the cache's
// leaving set (names.LeavingKey) and takes out those left since, so that
// an instance restarted meanwhile — on whatever matrix, and whichever
// shard wrote the interest record — leaves them too (loadLeaving). A cache
// that refuses the write (down) keeps them in memory only.
func (s *Subscriber) noteLeaving(ctx context.Context, failed, done []string) {
	if s.store == nil || len(failed)+len(done) == 0 {
		return
	}
	key := names.LeavingKey(s.opt.Service)
	pipe := s.opt.Cache.Pipeline()
	if len(failed) > 0 {
		pipe.SAdd(ctx, key, failed)
	}
	if len(done) > 0 {
		pipe.SRem(ctx, key, done)
	}
	if _, err := pipe.Exec(ctx); err != nil && s.leavingSaid != err.Error() {
		s.leavingSaid = err.Error()
		s.log.Warn("keeping the channels whose leaving failed in the cache failed: a restart before they are left forgets them", "key", key, "err", err)
	}
}

// loadLeaving takes up, at start, the channels of the cache's leaving set
// whose tenant this instance owns: every check leaves them (retryLeave).
// It fails when the cache does not answer, returning as soon as ctx ends
// whatever the client's timeouts (untilDone).
func (s *Subscriber) loadLeaving(ctx context.Context) error {
	if s.store == nil {
		return nil
	}
	key := names.LeavingKey(s.opt.Service)
	var chans []string
	err := untilDone(ctx, func(ctx context.Context) (err error) {
		chans, err = s.opt.Cache.SMembers(ctx, key).Result()
		return err
	})
	if err != nil {
		return fmt.Errorf("reading the channels whose leaving failed before %s from the cache Redis: %w", key, err)
	}
	for _, ch := range chans {
		tenant, tag, err := names.ParseChannel(s.prefix, ch)
		if err != nil || !s.cur.shard.Owns(tenant) {
			continue
		}
		if s.unleft == nil {
			s.unleft = map[string]Invalidation{}
		}
		s.unleft[ch] = s.leaving(&position{tenant: tenant, tag: tag})
	}
	if len(s.unleft) > 0 {
		s.log.Info("channels whose leaving failed before are left at the first check", "channels", len(s.unleft))
	}
	return nil
}

// retryLeave leaves again the channels whose leaving failed (unleft) —
// whether or not the matrix gave them back since: what was cached under
// them meanwhile is not known to be fresh — and then records the interest
// that waited for them.
func (s *Subscriber) retryLeave(ctx context.Context) error {
	if len(s.unleft) > 0 {
		channels := make([]string, 0, len(s.unleft))
		invs := make([]Invalidation, 0, len(s.unleft))
		for ch, inv := range s.unleft {
			channels, invs = append(channels, ch), append(invs, inv)
		}
		if err := s.leave(ctx, channels, invs); err != nil {
			return err
		}
	}
	if s.unrecorded != "" {
		s.recordInterest(ctx, s.unrecorded)
	}
	return nil
}

// leaving is the invalidation that leaves a channel: its whole tag, and
// its position set to lost (a repair: whatever the cache holds).
func (s *Subscriber) leaving(p *position) Invalidation {
	inv := p.recovered(recovery.Stamp(recovery.Decision{To: recovery.Lost}, time.Now().UnixMilli()).To)
	inv.repair = true
	return inv
}

// receive reads one pub/sub connection. Every time its full set of
// subscriptions is confirmed — at start and after go-redis reconnects, which
// it does silently — it asks for a position check, since messages published
// while the connection was down are lost to pub/sub. A sharded channel the
// server unsubscribes (its slot moved) makes the subscriber regroup.
func (s *Subscriber) receive(ctx context.Context, c *conn) {
	down := pacer{first: 100 * time.Millisecond, limit: 5 * time.Second}
	for ctx.Err() == nil {
		// A quiet connection is pinged every PingEvery: a link that stops
		// answering (a blackhole sends no error) shows in Problems within
		// LinkDeadline.
		msg, err := c.ps.ReceiveTimeout(ctx, PingEvery)
		if err == nil {
			now := time.Now().UnixNano()
			if time.Duration(now-c.heard.Swap(now)) > LinkDeadline {
				// The link answers again after a silence (a blackhole
				// healed): what was published meanwhile may be lost.
				s.requestCheck()
			}
		}
		if err == nil && down.failures > 0 {
			s.log.Info("pub/sub connection back", down.attrs()...)
			down.failures = 0
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Quiet connection: make sure it is alive. A failed ping
				// makes go-redis reconnect and resubscribe; one that is
				// never answered (a blackhole) makes the applier connect
				// again after relinkAfter.
				if time.Since(time.Unix(0, c.heard.Load())) > relinkAfter {
					select {
					case s.relink <- struct{}{}:
					default:
					}
				}
				_ = c.ps.Ping(ctx)
				c.pump(ctx, s)
				continue
			}
			if redis.HasErrorPrefix(err, "CROSSSLOT") {
				// go-redis resubscribes a reconnected connection's shard
				// channels in one command, which a master refuses when
				// they span slots: subscribe again, one command a slot.
				s.log.Info("pub/sub connection re-established; subscribing again slot by slot")
				s.requestRegroup()
				sleepCtx(ctx, 100*time.Millisecond)
				continue
			}
			if redis.HasErrorPrefix(err, "NOPERM") {
				// The bus refused a subscription to this service's user (an
				// ACL of named tenants): go-redis would subscribe the
				// refused channels again with all the others whenever it
				// reconnects, and the bus refuse that command whole. The
				// applier finds them and subscribes again without them.
				c.refused.Store(true)
				s.requestRegroup()
				continue
			}
			if redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK") {
				// go-redis does not follow a redirect on a pub/sub
				// connection: subscribe again where the slot lives now.
				s.log.Info("a channel's slot lives on another master; regrouping", "err", err)
				s.slotsMoved()
				sleepCtx(ctx, 100*time.Millisecond)
				continue
			}
			if redis.HasErrorPrefix(err, "BUSY") {
				// The bus answered a command of the connection (its PING,
				// an (un)subscribe) BUSY: another client's long script.
				// go-redis keeps the connection, subscriptions and all:
				// nothing was lost, but a refused (un)subscribe leaves its
				// set other than go-redis's, and no confirmation comes. The
				// applier replaces the connection (a check follows its
				// confirmation), no more often than every PingEvery while
				// the bus keeps refusing. (An error of a connection being
				// made — WRONGPASS — is go-redis's to retry, below.)
				c.broken.Store(true)
				wait, warn := down.failed()
				if warn {
					s.log.Warn("the bus refused a command of a pub/sub connection; connecting again", append(down.attrs(), "err", err)...)
				}
				sleepCtx(ctx, max(wait, PingEvery))
				select {
				case s.relink <- struct{}{}:
				default:
				}
				continue
			}
			c.resubscribing(s) // go-redis reconnects and subscribes every channel again
			wait, warn := down.failed()
			if warn {
				s.log.Warn("pub/sub connection lost; reconnecting", append(down.attrs(), "retry_in", wait, "err", err)...)
			}
			sleepCtx(ctx, wait)
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			s.log.Debug("subscription", "kind", m.Kind, "channel", m.Channel, "count", m.Count)
			held := c.held.Load()
			if (m.Kind == "subscribe" || m.Kind == "ssubscribe") && int64(m.Count) < held {
				// Fewer subscriptions than held: go-redis connected again
				// without the receiver seeing an error (a write that
				// failed reconnects at once).
				c.resubscribing(s)
			}
			switch m.Kind {
			case "subscribe", "ssubscribe", "unsubscribe":
				c.replied(ctx, s, m.Count)
			}
			switch m.Kind {
			case "subscribe", "psubscribe", "ssubscribe":
				if c.confirmedAdded(m.Channel, s.fresh) {
					continue // a new tenant's channel
				}
				s.confirmed(c, m.Count)
			case "sunsubscribe":
				c.held.Store(int64(m.Count))
				s.log.Info("the server moved a channel's slot; regrouping", "channel", m.Channel)
				s.slotsMoved()
			}
		case *redis.Message:
			s.m.received.Inc()
			select {
			case s.in <- m:
			default:
				// The applier is behind: the link is not silent meanwhile,
				// the receiver is just not reading it.
				c.waiting.Store(true)
				select {
				case s.in <- m:
				case <-ctx.Done():
					return
				}
				c.waiting.Store(false)
				c.heard.Store(time.Now().UnixNano())
			}
		}
	}
}

// confirmed is told a subscription of c was confirmed, count being how many
// c holds now. When c's set is complete and so is every connection's, one
// check covers what was missed while subscribing (or reconnecting): a new
// round, not ready until a check started after it succeeds (Problems).
func (s *Subscriber) confirmed(c *conn, count int) {
	if int64(count) != c.expected.Load() {
		return
	}
	s.health.mu.Lock()
	expected, held := s.health.subscriptions()
	s.health.mu.Unlock()
	if held == expected {
		s.log.Info("subscribed", "channels", expected)
		s.roundMu.Lock()
		s.rounds.Add(1)
		s.requestCheck()
		s.roundMu.Unlock()
	}
}

// pacer paces the retries of something that keeps failing (a receiver's
// reconnects, the position check while the bus is down): the wait doubles
// from first up to limit, and a warning is due on the first failure, then at
// most every 30s.
type pacer struct {
	first, limit time.Duration
	failures     int
	since        time.Time
	logged       time.Time
}

// failed counts a failure and returns the wait before the next try and
// whether to log it. A success sets failures back to 0.
func (p *pacer) failed() (wait time.Duration, warn bool) {
	now := time.Now()
	p.failures++
	if p.failures == 1 {
		p.since = now
	}
	if warn = p.failures == 1 || now.Sub(p.logged) >= 30*time.Second; warn {
		p.logged = now
	}
	return min(p.first<<min(p.failures-1, 16), p.limit), warn
}

// attrs describe the failures so far, for a log line.
func (p *pacer) attrs() []any {
	return []any{"attempts", p.failures, "down_for", time.Since(p.since).Round(time.Millisecond)}
}
