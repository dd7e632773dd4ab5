package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
)

// An agent without --deliver runs on the same cache Redis as an agent with
// --deliver and --cache-redis (operations.md allows several agents on one
// cache Redis, and at most one with --deliver and --cache-redis). The
// --deliver agent stops cleanly; what is published while it is down the
// plain agent applies, moving the cache's positions. The --deliver agent
// started again must hand the process those invalidations, or a reset:
// continuing from the cache's positions would skip them for good.
func TestAttack9DeliverBesideAPlainAgentLosesNothing(t *testing.T) {
	bus, cache, rcv, args := deliverRig(t)

	plain := startAgent(t, "--redis", bus.URL, "--cache-redis", cache.URL)
	plain.waitReady(t)
	a := startAgent(t, args...)
	a.waitReady(t)
	publishKeys(t, bus.URL, "user", "user:1")
	redistest.Eventually(t, 10*time.Second, "user:1 delivered", hasKeys(rcv, "acme:active", 1))
	a.waitDelivered(t, rcv)
	a.stop(t)

	// Published while the --deliver agent is down: the plain agent applies
	// it to the cache and records the position.
	publishKeys(t, bus.URL, "user", "user:2")
	redistest.Eventually(t, 10*time.Second, "the plain agent applied user:2", func() bool {
		_, metrics := get(t, "http://"+plain.addr+"/metrics")
		return strings.Contains(metrics, `subscriber_messages_applied_total{tag="active"} 2`+"\n")
	})

	before := len(rcv.objects())
	b := startAgent(t, args...)
	b.waitReady(t)
	redistest.Eventually(t, 10*time.Second, "user:2 (or a reset) handed to the process", func() bool {
		for _, d := range rcv.objects()[before:] {
			if d.Reset || d.WholeTag {
				return true
			}
			for _, k := range d.Keys {
				if k == "user:2" {
					return true
				}
			}
		}
		return false
	})

	// The agent without --deliver stops first: it ran during this run, so
	// this run's stop is not clean (attack11) ...
	plain.stop(t)
	redistest.Eventually(t, 10*time.Second, "the agent took the receiver's answers", func() bool {
		_, metrics := get(t, "http://"+b.addr+"/metrics")
		return strings.Contains(metrics, fmt.Sprintf(`subscriber_deliveries_total{outcome="delivered"} %d`+"\n", len(rcv.objects())-before))
	})
	b.stop(t)
	if v, _ := cache.Client(t).Get(context.Background(), names.DeliveryKey("search-svc")).Result(); v == "clean" {
		t.Errorf("an agent without --deliver ran during this run, yet its stop left the cache clean:\n%s", b.errb.String())
	}
	// ... but with no agent without --deliver left, the next run's clean
	// stop marks the cache clean again: the presence of one is not kept
	// forever.
	beforeC := len(rcv.objects())
	c := startAgent(t, args...)
	c.waitReady(t)
	redistest.Eventually(t, 10*time.Second, "the next agent took the receiver's answers", func() bool {
		_, metrics := get(t, "http://"+c.addr+"/metrics")
		return strings.Contains(metrics, fmt.Sprintf(`subscriber_deliveries_total{outcome="delivered"} %d`+"\n", len(rcv.objects())-beforeC))
	})
	c.stop(t)
	if v, _ := cache.Client(t).Get(context.Background(), names.DeliveryKey("search-svc")).Result(); v != "clean" {
		t.Errorf("a clean stop with no agent without --deliver left the delivery mark %q:\n%s", v, c.errb.String())
	}
}
