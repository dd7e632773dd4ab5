package soak

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

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
		in := s.rec.beginInval(&inval{id: ev.ID, tenant: tenant, domain: domain, keys: ev.Keys, how: "publish"})
		for attempt := 0; ; attempt++ {
			pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := s.pub.Publish(pctx, ev)
			cancel()
			if err == nil {
				s.rec.acked(in)
				break
			}
			if attempt%20 == 0 {
				s.t.Logf("%s: publish %s: %v (retrying)", s.sc.name, ev.ID, err)
			}
			if sleep(ctx, 100*time.Millisecond) != nil {
				break
			}
		}
		_ = sleep(ctx, time.Duration(20+rng.IntN(80))*time.Millisecond)
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
