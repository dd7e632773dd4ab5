package soak

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

func pick[T any](rng *rand.Rand, xs []T) T { return xs[rng.IntN(len(xs))] }

func randomKey(rng *rand.Rand, domain string) string {
	return fmt.Sprintf("%s:%d", domain, rng.IntN(keysPerDomain))
}

// randomKeys returns 1 to 3 distinct keys of the domain.
func randomKeys(rng *rand.Rand, domain string) []string {
	var keys []string
	for n := 1 + rng.IntN(3); len(keys) < n; {
		k := randomKey(rng, domain)
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// writeLoop caches keys, as the services would after reading their data:
// each write stores a value of its own under the key's tags in every
// service that caches the key.
func (s *soak) writeLoop(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		tenant, domain := pick(rng, allTenants), pick(rng, domainNames)
		s.writeKey(tenant, randomKey(rng, domain))
		_ = sleep(ctx, time.Duration(2+rng.IntN(6))*time.Millisecond)
	}
}

// writeKey caches a value of its own for the tenant's key in every
// service that caches the key, under the key's tags there.
func (s *soak) writeKey(tenant, key string) {
	for _, svc := range serviceNames {
		tags := registeredTags(svc, tenant, key)
		if len(tags) == 0 {
			continue
		}
		c := s.caches[svc]
		c.gate.RLock()
		w := s.rec.beginWrite(entryKey{svc, tenant, key})
		// Not a ctx the end cancels: a write cut off would have an unknown outcome.
		err := c.store.Set(context.Background(), tenant, key, []byte(w.value()), 0, tags...)
		s.rec.endWrite(w, err)
		c.gate.RUnlock()
		if err != nil {
			s.t.Logf("%s: write %s: %v", s.sc.name, w.e, err)
		}
	}
}

// freshKeys writes one or two tracer keys of the domain, never written
// before and never again: an invalidation of them that is lost leaves them
// cached to the end, where a lost invalidation of a key the writer keeps
// rewriting would be hidden by the next write.
func (s *soak) freshKeys(rng *rand.Rand, tenant, domain string) []string {
	keys := make([]string, 1+rng.IntN(2))
	for i := range keys {
		keys[i] = fmt.Sprintf("%s:g%d", domain, s.tracerSeq.Add(1))
		s.writeKey(tenant, keys[i])
	}
	return keys
}

// publishLoop publishes changes through the publisher library: some keys
// of one domain (one time in three tracer keys written just before), or,
// one catalog event in three, the whole catalog tag. A
// failed publish (a master down) is retried with the same event id until
// it is acknowledged, as a service would.
// Each tenant publishes from a loop of its own, so a tenant whose
// partition is on a dead master does not hold the others up.
func (s *soak) publishLoop(ctx context.Context, rng *rand.Rand, tenant string) {
	for i := 0; ctx.Err() == nil; i++ {
		domain := pick(rng, domainNames)
		ev := wire.Event{ID: fmt.Sprintf("soak-%s-%s-%d", s.sc.name, tenant, i), Tenant: tenant, Domain: domain}
		switch {
		case domain == "catalog" && rng.IntN(3) == 0: // whole tag, said explicitly
			ev.WholeTag = true
		case rng.IntN(3) == 0:
			ev.Keys = s.freshKeys(rng, tenant, domain)
		default:
			ev.Keys = randomKeys(rng, domain)
		}
		s.publishAcked(ctx, ev, s.rec.beginInval(&inval{id: ev.ID, tenant: tenant, domain: domain, keys: ev.Keys, how: "publish"}))
		_ = sleep(ctx, time.Duration(20+rng.IntN(80))*time.Millisecond)
	}
}

// publishAcked publishes an event, retried with the same id until Redis
// acknowledges it or ctx ends.
func (s *soak) publishAcked(ctx context.Context, ev wire.Event, in *inval) {
	for attempt := 0; ; attempt++ {
		pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := s.pub.Publish(pctx, ev)
		cancel()
		if err == nil {
			s.rec.acked(in)
			return
		}
		if attempt%20 == 0 {
			s.t.Logf("%s: publish %s: %v (retrying)", s.sc.name, ev.ID, err)
		}
		if sleep(ctx, 100*time.Millisecond) != nil {
			return
		}
	}
}

// changeLoop is the model database's writer for a tenant: each change
// commits a new version of a row, then publishes its key-level event.
func (s *soak) changeLoop(ctx context.Context, rng *rand.Rand, tenant string) {
	for i := 0; ctx.Err() == nil; i++ {
		domain := pick(rng, keyDomains)
		key := fmt.Sprintf("%s:d%d", domain, rng.IntN(dbKeysPerDomain))
		ev := wire.Event{ID: fmt.Sprintf("soak-%s-%s-db%d", s.sc.name, tenant, i), Tenant: tenant, Domain: domain, Keys: []string{key}}
		in := &inval{id: ev.ID, tenant: tenant, domain: domain, keys: ev.Keys, how: "publish"}
		s.db.change(dbKey{tenant, key}, in)
		s.publishAcked(ctx, ev, s.rec.beginInval(in))
		_ = sleep(ctx, time.Duration(20+rng.IntN(80))*time.Millisecond)
	}
}

// Fetch options of the readers: a short lease and wait, so that a read
// holding a cache's gate never holds up a fault for long.
var readOptions = tagstore.FetchOptions{LeaseTime: time.Second, WaitLimit: time.Second}

// readLoop is a service's readers: each reads a row through Fetch, whose
// load reads the row's current version and returns it after a random
// delay (the time a query takes, in which the row may change).
func (s *soak) readLoop(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		tenant, domain := pick(rng, tenants), pick(rng, keyDomains)
		k := dbKey{tenant, fmt.Sprintf("%s:d%d", domain, rng.IntN(dbKeysPerDomain))}
		svc := pick(rng, serviceNames)
		opt := readOptions
		if opt.Tags = registeredTags(svc, tenant, k.key); len(opt.Tags) == 0 {
			continue
		}
		delay := time.Duration(rng.IntN(20)) * time.Millisecond
		c := s.caches[svc]
		c.gate.RLock()
		_, err := c.store.Fetch(context.Background(), tenant, k.key, opt, func(context.Context) ([]byte, error) {
			v := s.db.version(svc, k)
			time.Sleep(delay)
			s.fetchLoads.Add(1)
			return []byte(v), nil
		})
		c.gate.RUnlock()
		s.fetches.Add(1)
		if err != nil && !errors.Is(err, tagstore.ErrLeaseWait) {
			s.t.Logf("%s: fetch %s/%s in %s: %v", s.sc.name, tenant, k.key, svc, err)
		}
		_ = sleep(ctx, time.Duration(1+rng.IntN(4))*time.Millisecond)
	}
}

// listen records every deletion in a cache, from its keyspace
// notifications, for the delay report. It resubscribes after a restart.
func (s *soak) listen(ctx context.Context, c *cache) {
	ps := c.client.Subscribe(ctx, "__keyevent@0__:del")
	defer ps.Close()
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	for {
		msg, err := ps.ReceiveMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			_ = sleep(ctx, 50*time.Millisecond)
			continue
		}
		// {tenant:<t>}:<key>
		rest, ok := strings.CutPrefix(msg.Payload, "{tenant:")
		if !ok {
			continue
		}
		tenant, key, ok := strings.Cut(rest, "}:")
		if ok {
			s.rec.deleted(entryKey{c.svc, tenant, key})
		}
	}
}
