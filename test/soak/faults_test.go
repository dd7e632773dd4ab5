package soak

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// Fault kinds, as -soak.faults names them.
const (
	faultKillRouter    = "kill-router"    // kill -9 one router (sometimes both), start it again, same or new consumer name
	faultKillAgent     = "kill-agent"     // kill -9 one agent (sometimes two), start it again
	faultClientKill    = "client-kill"    // CLIENT KILL TYPE pubsub on every bus node
	faultFlushAll      = "flushall"       // FLUSHALL on the bus (standalone), half the time while the agents of a service are down
	faultCacheSnapshot = "cache-snapshot" // a cache Redis restarted from a snapshot taken seconds before
	faultMasterKill    = "master-kill"    // kill -9 a bus master, failover, the old node back as a replica (cluster)
	faultForged        = "forged"         // forged channel messages: huge version, wrong tenant, garbage, made-up epoch
	faultRawDuplicate  = "raw-duplicate"  // the same event appended twice by raw XADD
	faultRawReorder    = "raw-reorder"    // raw XADD with explicit entry ids: one id on two partitions, later events with lower ids
)

var allFaults = []string{faultKillRouter, faultKillAgent, faultClientKill, faultFlushAll, faultCacheSnapshot,
	faultMasterKill, faultForged, faultRawDuplicate, faultRawReorder, faultNetwork}

func parseFaults(list string) ([]string, error) {
	switch strings.TrimSpace(list) {
	case "all":
		return slices.Clone(allFaults), nil
	case "none", "":
		return nil, nil
	}
	var out []string
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(allFaults, f) {
			return nil, fmt.Errorf("-soak.faults: unknown fault %q (known: %s, all, none)", f, strings.Join(allFaults, ", "))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

// faultApplies: FLUSHALL is a standalone bus's (a cluster has no atomic
// FLUSHALL, so which unrouted events it lost could not be known exactly);
// a master kill is a cluster's.
func faultApplies(kind string, cluster bool) bool {
	switch kind {
	case faultFlushAll:
		return !cluster
	case faultMasterKill:
		return cluster
	}
	return true
}

// schedule injects faults chosen at random, with quiet between them, for
// the duration; a fault under way when it ends is finished and undone.
func (s *soak) schedule(duration time.Duration, rng *rand.Rand) error {
	end := time.Now().Add(duration)
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	for {
		if sleep(ctx, time.Duration(500+rng.IntN(2500))*time.Millisecond) != nil || len(s.sc.faults) == 0 {
			if len(s.sc.faults) == 0 {
				<-ctx.Done()
			}
			return nil
		}
		kind := pick(rng, s.sc.faults)
		w := window{kind: kind, start: time.Now()}
		detail, err := s.inject(kind, rng)
		w.end, w.detail = time.Now(), detail
		s.rec.addWindow(w)
		s.t.Logf("%s: fault at %.3fs for %v: %s: %s", s.sc.name, w.start.Sub(s.rec.t0).Seconds(), w.end.Sub(w.start).Round(time.Millisecond), kind, detail)
		if err != nil {
			return fmt.Errorf("%s: %w", kind, err)
		}
	}
}

// down is how long a killed process or server stays down.
func down(rng *rand.Rand) time.Duration { return time.Duration(200+rng.IntN(1800)) * time.Millisecond }

func (s *soak) inject(kind string, rng *rand.Rand) (string, error) {
	// A fault is undone even when the scenario's time is up; its waits
	// have deadlines of their own.
	ctx := context.Background()
	switch kind {
	case faultKillRouter:
		return s.killProcs(ctx, rng, s.routers, true)
	case faultKillAgent:
		return s.killProcs(ctx, rng, s.agents, false)
	case faultClientKill:
		return s.clientKill(ctx)
	case faultFlushAll:
		if rng.IntN(2) == 0 {
			return s.flushAllAgentDown(ctx, rng)
		}
		return s.flushAll(ctx)
	case faultCacheSnapshot:
		return s.cacheSnapshot(ctx, rng)
	case faultMasterKill:
		return s.masterKill(ctx)
	case faultForged:
		return s.forge(ctx, rng)
	case faultRawDuplicate:
		return s.rawDuplicate(ctx, rng)
	case faultRawReorder:
		return s.rawReorder(ctx, rng)
	case faultNetwork:
		return s.network(ctx, rng)
	}
	return "", fmt.Errorf("unknown fault %q", kind)
}

// killProcs kills one process of the group (one time in four, two), keeps
// it down a while and starts it again. A router comes back under its old
// consumer name (and takes its own pending entries) or under a new one
// (and another router must claim them), at random.
func (s *soak) killProcs(ctx context.Context, rng *rand.Rand, group []*proc, routers bool) (string, error) {
	victims := []*proc{pick(rng, group)}
	if rng.IntN(4) == 0 {
		for _, p := range group {
			if p != victims[0] {
				victims = append(victims, p)
				break
			}
		}
	}
	var names []string
	if routers && rng.IntN(2) == 0 {
		// Kill while the routers are busy with a burst, so a victim is
		// likely to hold entries read and not yet acknowledged.
		n, err := s.burst(ctx, rng)
		if err != nil {
			return "", err
		}
		names = append(names, fmt.Sprintf("(right after a burst of %d events)", n))
	}
	for _, p := range victims {
		p.kill()
		names = append(names, p.name)
	}
	d := down(rng)
	_ = sleep(ctx, d)
	for _, p := range victims {
		if routers && rng.IntN(2) == 0 {
			p.gen++
			names = append(names, p.name+" back as a new consumer")
		}
		if err := p.start(); err != nil {
			return "", err
		}
	}
	for _, p := range victims {
		if err := p.waitReady(ctx, 30*time.Second); err != nil {
			return strings.Join(names, ", "), err
		}
	}
	return fmt.Sprintf("kill -9 %s, down %v", strings.Join(names, ", "), d.Round(time.Millisecond)), nil
}

// burst publishes 100 to 300 key-level events of tracer keys in one batch.
func (s *soak) burst(ctx context.Context, rng *rand.Rand) (int, error) {
	s.eventSeq++
	events := make([]wire.Event, 100+rng.IntN(201))
	ins := make([]*inval, len(events))
	for i := range events {
		tenant, domain := pick(rng, tenants), pick(rng, keyDomains)
		events[i] = wire.Event{ID: fmt.Sprintf("soak-%s-burst%d-%d", s.sc.name, s.eventSeq, i), Tenant: tenant, Domain: domain, Keys: s.freshKeys(rng, tenant, domain)}
		ins[i] = s.rec.beginInval(&inval{id: events[i].ID, tenant: tenant, domain: domain, keys: events[i].Keys, how: "publish"})
	}
	if _, err := s.pub.PublishBatch(ctx, events); err != nil {
		return 0, fmt.Errorf("burst: %w", err)
	}
	for _, in := range ins {
		s.rec.acked(in)
	}
	return len(events), nil
}

func (s *soak) busNodes(ctx context.Context, fn func(c *redis.Client) error) error {
	if cc, ok := s.bus.(*redis.ClusterClient); ok {
		return cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error { return fn(c) })
	}
	return fn(s.bus.(*redis.Client))
}

func (s *soak) clientKill(ctx context.Context) (string, error) {
	var mu sync.Mutex
	var killed int64
	err := s.busNodes(ctx, func(c *redis.Client) error {
		n, err := c.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
		mu.Lock()
		killed += n
		mu.Unlock()
		return err
	})
	return fmt.Sprintf("CLIENT KILL TYPE pubsub: %d connections", killed), err
}

// flushAll empties the standalone bus. In the same transaction it reads
// every ingress entry no router had read or acknowledged yet: those events
// are lost with the bus's data, and the checker does not hold them against
// the product. Everything routed before the flush must still reach the
// caches.
func (s *soak) flushAll(ctx context.Context) (string, error) {
	c := s.bus.(*redis.Client)
	type part struct {
		groups  *redis.XInfoGroupsCmd
		pending *redis.XPendingExtCmd
		entries *redis.XMessageSliceCmd
	}
	parts := make([]part, partitions)
	var flush *redis.StatusCmd
	_, err := c.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		for p := range parts {
			stream := names.IngressStream("invalidate", p)
			parts[p].groups = pipe.XInfoGroups(ctx, stream)
			parts[p].pending = pipe.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "routerd", Start: "-", End: "+", Count: 1 << 20})
			parts[p].entries = pipe.XRange(ctx, stream, "-", "+")
		}
		flush = pipe.FlushAll(ctx)
		return nil
	})
	if flush == nil || flush.Err() != nil {
		return "", fmt.Errorf("FLUSHALL: %v", err)
	}
	var lostIDs, lostEntries []string
	for p, pt := range parts {
		stream := names.IngressStream("invalidate", p)
		delivered := "" // the group's last delivered id; "" when there is no group
		for _, g := range pt.groups.Val() {
			if g.Name == "routerd" {
				delivered = g.LastDeliveredID
			}
		}
		pending := map[string]bool{}
		for _, pe := range pt.pending.Val() {
			pending[pe.ID] = true
		}
		for _, m := range pt.entries.Val() {
			if delivered != "" && !idLess(delivered, m.ID) && !pending[m.ID] {
				continue // read and acknowledged: routed
			}
			lostEntries = append(lostEntries, stream+" "+m.ID)
			if raw, ok := m.Values[wire.EventField].(string); ok {
				var ev struct {
					ID string `json:"id"`
				}
				if json.Unmarshal([]byte(raw), &ev) == nil && ev.ID != "" {
					lostIDs = append(lostIDs, ev.ID)
				}
			}
		}
	}
	s.rec.lost(lostIDs, lostEntries)
	return fmt.Sprintf("FLUSHALL; %d ingress entries no router had finished were lost with it", len(lostEntries)), nil
}

// flushAllAgentDown flushes the bus while the agents of profile-svc are
// down, right after a change of the quiet tenant was published to them:
// the message is gone from the history with the channel's meta, no later
// message on the channel starts a new epoch, and the agents must still
// catch up when they come back.
func (s *soak) flushAllAgentDown(ctx context.Context, rng *rand.Rand) (string, error) {
	var victims []*proc
	for _, p := range s.agents {
		if strings.HasSuffix(p.name, "-profile-svc") {
			victims = append(victims, p)
			p.kill()
		}
	}
	ch := "invalidate:" + quietTenant + ":active"
	version := func() int64 {
		v, _ := s.bus.HGet(ctx, "{"+ch+"}:meta", "version").Int64()
		return v
	}
	before := version()
	ev := wire.Event{Tenant: quietTenant, Domain: "user", Keys: s.freshKeys(rng, quietTenant, "user")}
	s.eventSeq++
	ev.ID = fmt.Sprintf("soak-%s-quiet-%d", s.sc.name, s.eventSeq)
	in := s.rec.beginInval(&inval{id: ev.ID, tenant: ev.Tenant, domain: ev.Domain, keys: ev.Keys, how: "publish"})
	if _, err := s.pub.Publish(ctx, ev); err != nil {
		return "", err
	}
	s.rec.acked(in)
	if err := redistest.Wait(ctx, 10*time.Second, ch+" published", func() bool { return version() > before }); err != nil {
		return "", err
	}
	detail, err := s.flushAll(ctx)
	if err != nil {
		return detail, err
	}
	d := down(rng)
	_ = sleep(ctx, d)
	for _, p := range victims {
		if err := p.start(); err != nil {
			return detail, err
		}
	}
	for _, p := range victims {
		if err := p.waitReady(ctx, 30*time.Second); err != nil {
			return detail, err
		}
	}
	return fmt.Sprintf("kill -9 the profile-svc agents; %s (%s) published on %s; %s; agents back %v later", ev.ID, strings.Join(ev.Keys, ","), ch, detail, d.Round(time.Millisecond)), nil
}

// idLess compares stream entry ids.
func idLess(a, b string) bool {
	am, as := splitID(a)
	bm, bs := splitID(b)
	return am < bm || am == bm && as < bs
}

func splitID(id string) (uint64, uint64) {
	ms, seq, _ := strings.Cut(id, "-")
	m, _ := strconv.ParseUint(ms, 10, 64)
	n, _ := strconv.ParseUint(seq, 10, 64)
	return m, n
}

// cacheSnapshot takes a snapshot of one service's cache, lets the system
// run a while, then kills the cache and starts it from the snapshot: the
// invalidations applied since, and the positions they wrote, are undone.
func (s *soak) cacheSnapshot(ctx context.Context, rng *rand.Rand) (string, error) {
	c := s.caches[pick(rng, serviceNames)]
	path, err := c.srv.Snapshot(ctx)
	if err != nil {
		return "", err
	}
	age := time.Duration(500+rng.IntN(2500)) * time.Millisecond
	_ = sleep(ctx, age)
	c.gate.Lock()
	err = c.srv.RestoreSnapshot(path)
	c.gate.Unlock()
	return fmt.Sprintf("%s cache restarted from a snapshot %v old", c.svc, age.Round(time.Millisecond)), err
}

// masterKill kills -9 a master of the bus cluster, waits for its replica
// to take over, then starts the old node again and waits until it has
// rejoined as a replica in sync, so the next kill can fail over too.
func (s *soak) masterKill(ctx context.Context) (string, error) {
	var victim *redistest.Server
	for _, n := range s.busClu.Nodes {
		if role(ctx, n.Addr) == "master" {
			victim = n
			break
		}
	}
	if victim == nil {
		return "", errors.New("no master found")
	}
	victim.Stop()
	killed := time.Now()
	if err := redistest.Wait(ctx, 30*time.Second, "a replica to take over from "+victim.Addr, func() bool {
		masters := 0
		for _, n := range s.busClu.Nodes {
			if n != victim && role(ctx, n.Addr) == "master" && clusterOK(ctx, n.Addr) {
				masters++
			}
		}
		return masters == 3
	}); err != nil {
		return "", err
	}
	failover := time.Since(killed)
	if err := victim.Relaunch(); err != nil {
		return "", err
	}
	err := redistest.Wait(ctx, 60*time.Second, victim.Addr+" back as a replica in sync", func() bool {
		for _, n := range s.busClu.Nodes {
			if !clusterOK(ctx, n.Addr) {
				return false
			}
		}
		return role(ctx, victim.Addr) == "slave" && linkUp(ctx, victim.Addr)
	})
	return fmt.Sprintf("kill -9 master %s; replica took over after %v; back as a replica after %v",
		victim.Addr, failover.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond)), err
}

func nodeInfo(ctx context.Context, addr, section string) map[string]string {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second})
	defer c.Close()
	out := map[string]string{}
	var text string
	if section == "cluster" {
		text, _ = c.ClusterInfo(ctx).Result()
	} else {
		text, _ = c.Info(ctx, section).Result()
	}
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	return out
}

func role(ctx context.Context, addr string) string { return nodeInfo(ctx, addr, "replication")["role"] }
func linkUp(ctx context.Context, addr string) bool {
	return nodeInfo(ctx, addr, "replication")["master_link_status"] == "up"
}
func clusterOK(ctx context.Context, addr string) bool {
	return nodeInfo(ctx, addr, "cluster")["cluster_state"] == "ok"
}

// ownedChannel picks a tenant's tag that some service receives.
func ownedChannel(rng *rand.Rand) (tenant, tag string) {
	for {
		tenant, tag = pick(rng, tenants), pick(rng, tagNames)
		for _, svc := range serviceNames {
			if owns(svc, tenant, tag) {
				return tenant, tag
			}
		}
	}
}

// keyOfTag is a key of a domain that maps to the tag.
func keyOfTag(rng *rand.Rand, tag string) string {
	for {
		d := pick(rng, domainNames)
		if slices.Contains(domainTags[d], tag) {
			return randomKey(rng, d)
		}
	}
}

// forge publishes, on a channel subscribers listen to, messages no router
// sent: the channel's epoch with a version far ahead, a payload naming
// another tenant, garbage, and a made-up epoch. None may stop the real
// messages that follow from being applied.
func (s *soak) forge(ctx context.Context, rng *rand.Rand) (string, error) {
	tenant, tag := ownedChannel(rng)
	ch := "invalidate:" + tenant + ":" + tag
	meta, err := s.bus.HMGet(ctx, "{"+ch+"}:meta", "epoch", "version").Result()
	if err != nil {
		return "", err
	}
	epoch, _ := meta[0].(string)
	if epoch == "" {
		epoch = "0a0b0c0d"
	}
	version, _ := strconv.ParseInt(fmt.Sprint(meta[1]), 10, 64)
	other := pick(rng, tenants)
	for other == tenant {
		other = pick(rng, tenants)
	}
	msg := func(m wire.Message) string { b, _ := json.Marshal(m); return string(b) }
	forged := []string{
		msg(wire.Message{Tenant: tenant, Tag: tag, Epoch: epoch, Version: 10_000_000_000_000, Keys: []string{keyOfTag(rng, tag)}, Event: "forged-huge"}),
		msg(wire.Message{Tenant: other, Tag: tag, Epoch: epoch, Version: version + 1, Keys: []string{keyOfTag(rng, tag)}, Event: "forged-tenant"}),
		`{"tenant":"` + tenant + `","tag":` + "\x00\xff garbage",
		msg(wire.Message{Tenant: tenant, Tag: tag, Epoch: "f0f0f0f0", Version: 1, Event: "forged-epoch"}),
	}
	order := rng.Perm(len(forged))
	for _, i := range order {
		var err error
		if s.sc.cluster {
			err = s.bus.SPublish(ctx, ch, forged[i]).Err()
		} else {
			err = s.bus.Publish(ctx, ch, forged[i]).Err()
		}
		if err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("4 forged messages on %s (at %s:%d): huge version, tenant %s in the payload, garbage, made-up epoch; order %v",
		ch, epoch, version, other, order), nil
}

// rawEvent is an event as another language would append it.
func (s *soak) rawEvent(rng *rand.Rand, tenant, domain string, withID bool, how string) (*inval, []byte) {
	ev := wire.Event{Tenant: tenant, Domain: domain, Keys: s.freshKeys(rng, tenant, domain), Origin: "soak-raw", TS: time.Now().UnixMilli()}
	if withID {
		s.eventSeq++
		ev.ID = fmt.Sprintf("soak-raw-%s-%d", s.sc.name, s.eventSeq)
	}
	data, err := ev.Marshal()
	if err != nil {
		panic(err) // the soak's own event: a bug in the soak
	}
	return &inval{id: ev.ID, tenant: tenant, domain: domain, keys: ev.Keys, how: how}, data
}

// rawDuplicate appends one event twice, with an id or without one.
func (s *soak) rawDuplicate(ctx context.Context, rng *rand.Rand) (string, error) {
	tenant := pick(rng, tenants)
	withID := rng.IntN(2) == 0
	in, data := s.rawEvent(rng, tenant, pick(rng, keyDomains), withID, faultRawDuplicate)
	stream := names.IngressStream("invalidate", wire.Partition(tenant, partitions))
	s.rec.beginInval(in)
	for range 2 {
		id, err := s.bus.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, data}}).Result()
		if err != nil {
			return "", err
		}
		s.rec.acked(in, stream+" "+id)
	}
	return fmt.Sprintf("%s appended twice to %s (event id %q)", in, stream, in.id), nil
}

// rawReorder appends events without ids with explicit entry ids: two of
// one tenant and domain with the same entry id on two partitions (the
// tenant's own and another, as a publisher that picked another partition
// would), and
// two more whose entry ids run against the order they were appended in.
func (s *soak) rawReorder(ctx context.Context, rng *rand.Rand) (string, error) {
	tenant := pick(rng, tenants)
	p1 := wire.Partition(tenant, partitions)
	p2 := (p1 + 1 + rng.IntN(partitions-1)) % partitions
	s1, s2 := names.IngressStream("invalidate", p1), names.IngressStream("invalidate", p2)
	base := uint64(time.Now().UnixMilli())
	for _, st := range []string{s1, s2} {
		info, err := s.bus.XInfoStream(ctx, st).Result()
		if err == nil {
			if ms, _ := splitID(info.LastGeneratedID); ms > base {
				base = ms
			}
		}
	}
	base += 1000
	steps := []struct {
		stream, id string
	}{
		{s1, fmt.Sprintf("%d-5", base)},
		{s2, fmt.Sprintf("%d-5", base)}, // the same entry id on another partition
		{s1, fmt.Sprintf("%d-0", base+2)},
		{s2, fmt.Sprintf("%d-0", base+1)}, // appended later, lower id
	}
	var done []string
	domain := pick(rng, keyDomains) // the colliding pair's: both reach the same channels
	for i, st := range steps {
		if i >= 2 {
			domain = pick(rng, keyDomains)
		}
		in, data := s.rawEvent(rng, tenant, domain, false, faultRawReorder)
		s.rec.beginInval(in)
		id, err := s.bus.XAdd(ctx, &redis.XAddArgs{Stream: st.stream, ID: st.id, Values: []any{wire.EventField, data}}).Result()
		if err != nil {
			return strings.Join(done, "; "), fmt.Errorf("XADD %s %s: %w", st.stream, st.id, err)
		}
		s.rec.acked(in, st.stream+" "+id)
		done = append(done, fmt.Sprintf("%s at %s %s", in, st.stream, id))
	}
	return strings.Join(done, "; "), nil
}
