package soak

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/routerd/routerd/internal/faultproxy"
)

// faultNetwork: a network fault on one agent's link to the bus or to its
// cache Redis, through a toxiproxy in front of it (internal/faultproxy):
// latency, a blackhole (data dropped, connections left open), a timeout
// (data dropped, then the connections closed), resets, or a thin bandwidth.
const faultNetwork = "network"

// links are one agent's connections through fault proxies: to the bus (a
// standalone bus only: a cluster's clients follow the nodes' own
// addresses) and to its cache Redis.
type links struct {
	bus, cache *faultproxy.Proxy
}

// agentLinks starts the fault proxies of an agent; the test's cleanup
// stops them.
func (s *soak) agentLinks(cacheAddr string) *links {
	l := &links{cache: faultproxy.Start(s.t, cacheAddr)}
	if s.busSrv != nil {
		l.bus = faultproxy.Start(s.t, s.busSrv.Addr)
	}
	return l
}

// network injects one network fault on a link of an agent, holds it, and
// heals it.
func (s *soak) network(ctx context.Context, rng *rand.Rand) (string, error) {
	p := pick(rng, s.agents)
	l := s.links[p.name]
	proxy, which := l.cache, "cache"
	if l.bus != nil && rng.IntN(2) == 0 {
		proxy, which = l.bus, "bus"
	}
	both := func(t faultproxy.Toxic) error {
		up, down := t, t
		up.Name, up.Stream = t.Type+"_up", "upstream"
		down.Name, down.Stream = t.Type+"_down", "downstream"
		if err := proxy.Add(up); err != nil {
			return err
		}
		return proxy.Add(down)
	}
	hold := time.Duration(500+rng.IntN(3500)) * time.Millisecond
	var what string
	var err error
	switch rng.IntN(5) {
	case 0:
		ms := 20 + rng.IntN(300)
		what = fmt.Sprintf("latency %dms ±%dms", ms, ms/4)
		err = both(faultproxy.Toxic{Type: "latency", Attributes: map[string]any{"latency": ms, "jitter": ms / 4}})
	case 1:
		what = "blackhole"
		err = proxy.Blackhole()
	case 2:
		ms := 100 + rng.IntN(1500)
		what = fmt.Sprintf("timeout after %dms (data dropped, then the connections closed)", ms)
		err = both(faultproxy.Toxic{Type: "timeout", Attributes: map[string]any{"timeout": ms}})
	case 3:
		ms := rng.IntN(300)
		what = fmt.Sprintf("connections reset %dms after data", ms)
		err = both(faultproxy.Toxic{Type: "reset_peer", Attributes: map[string]any{"timeout": ms}})
	default:
		kb := 1 + rng.IntN(32)
		what = fmt.Sprintf("bandwidth %d KB/s", kb)
		err = both(faultproxy.Toxic{Type: "bandwidth", Attributes: map[string]any{"rate": kb}})
	}
	if err != nil {
		_ = proxy.Heal()
		return what, err
	}
	_ = sleep(ctx, hold)
	if err := proxy.Heal(); err != nil {
		return what, err
	}
	return fmt.Sprintf("%s on %s's %s link for %v", what, p.name, which, hold.Round(time.Millisecond)), nil
}
