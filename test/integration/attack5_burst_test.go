package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// attack5 on the burst's deferred checks (a channel's first message, a new
// epoch or a gap is checked at the end of its burst with the others, what
// its channel received after it handled once the check is done): many new
// channels' first and second messages arrive in bursts, among forged ones a
// raw client PUBLISHes (another epoch, a version far ahead), while the bus
// refuses the subscriber the histories its checks read. The checks fail
// and drop what came behind them; the service says it is not ready; once
// the bus answers again, every genuine message is applied, each channel
// stands at its meta, and nothing forged moved a position.
func TestAttack5BurstChecksFailingWithForgeriesRecover(t *testing.T) {
	ctx := context.Background()
	const tenants = 60
	var list []string
	for i := range tenants {
		list = append(list, fmt.Sprint("t", i))
	}
	e := newEnv(t, `
version: 1
tags:
  active: {services: [svc]}
domains:
  user: {tags: [active]}
services:
  svc: {tenants: [`+strings.Join(list, ", ")+`]}
`)
	e.running(list...)
	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "on", ">pw", "~*", "&*", "+@all").Err())
	bus := redis.NewClient(&redis.Options{Addr: e.bus.Addr, Username: "sub", Password: "pw"})
	t.Cleanup(func() { _ = bus.Close() })
	e.router(router.Options{})
	reg := prometheus.NewRegistry()
	s, _ := e.subscriberOn(bus, "svc", subscriber.Options{Registerer: reg})
	for _, tenant := range list {
		e.seed("svc", tenant, "user:1", "active")
		e.seed("svc", tenant, "user:2", "active")
		e.seed("svc", tenant, "forged", "active")
	}

	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "-xrange").Err())
	forge := func(tenant, epoch string, v int64) {
		raw, err := json.Marshal(&wire.Message{Tenant: tenant, Tag: "active", Epoch: epoch, Version: v, Keys: []string{"forged"}, Event: fmt.Sprint("x/", tenant, v)})
		must(t, err)
		must(t, e.busC.Publish(ctx, names.Channel("invalidate", tenant, "active"), raw).Err())
	}
	for _, tenant := range list {
		forge(tenant, "evil", 1)
	}
	for v := 1; v <= 2; v++ {
		for _, tenant := range list {
			e.publish(wire.Event{Tenant: tenant, Domain: "user", Keys: []string{fmt.Sprint("user:", v)}})
			if v == 1 {
				// Far ahead of the meta, behind the channel's pending check.
				forge(tenant, "", 1000)
			}
		}
	}
	for _, tenant := range list {
		e.waitVersion(names.Channel("invalidate", tenant, "active"), 2)
	}
	redistest.Eventually(t, 10*time.Second, "svc not ready while its checks fail", func() bool {
		for _, p := range s.Problems() {
			if p.Reason == subscriber.ReasonCheckFailing {
				return true
			}
		}
		return false
	})
	// Forge the real epoch's far versions too, now the metas are there.
	for _, tenant := range list {
		ep, _ := e.meta(names.Channel("invalidate", tenant, "active"))
		forge(tenant, ep, 1000)
	}

	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "sub", "+xrange").Err())
	for _, tenant := range list {
		e.waitAllGone(15*time.Second, tenant+"'s user:1 and user:2 invalidated", "svc", tenant, []string{"user:1", "user:2"})
	}
	redistest.Eventually(t, 10*time.Second, "svc ready again", s.Ready)
	for _, tenant := range list {
		ch := names.Channel("invalidate", tenant, "active")
		ep, v := e.meta(ch)
		p, _, err := e.stores["svc"].ReadPosition(ctx, tenant, "svc", "active")
		must(t, err)
		if p.Epoch != ep || p.Version != v {
			t.Errorf("%s stored at %s:%d, its meta is %s:%d", ch, p.Epoch, p.Version, ep, v)
		}
		if !e.cached("svc", tenant, "forged") {
			t.Errorf("%s: the key only forged messages named was invalidated", tenant)
		}
	}
	if n := metric(t, reg, "subscriber_unconfirmed_messages_total"); n == 0 {
		t.Errorf("no forged message counted unconfirmed")
	}
}
