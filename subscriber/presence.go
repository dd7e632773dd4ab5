package subscriber

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
)

// A subscriber with a Cache moves the cache's positions as it applies. An
// agent with --deliver on the same cache Redis and service (routerd agent
// --deliver --cache-redis: Options.Delivers) continues, at its start, from
// those positions only when the process it delivers to was given
// everything they stand for: the clean mark (names.DeliveryKey) it leaves
// when it stops with everything delivered, and no other subscriber
// applying meanwhile. So every other subscriber with a Cache — an agent
// without --deliver, a service embedding the subscriber — takes the clean
// mark away when it starts, and records its presence in
// names.DeliveryPlainKey while it runs: "<id>@<unix seconds it expires>",
// renewed every presenceEvery, counted for presenceFor (so a subscriber
// killed counts a while longer), taken away when it stops.
const (
	presenceFor   = 30 * time.Second
	presenceEvery = 10 * time.Second
)

// presence is one run's member of names.DeliveryPlainKey.
type presence struct {
	s  *Subscriber
	id string

	mu      sync.Mutex
	member  string // the member written last ("" when none is)
	failing bool   // the last write failed
}

// runPresence records the subscriber's presence and takes the clean mark
// away, then renews the presence until ctx ends; the returned function
// stops that and takes the presence away. Nil for the agent with
// --deliver, and without a Cache.
func (s *Subscriber) runPresence(ctx context.Context) (stop func()) {
	if s.opt.Cache == nil || s.opt.Delivers {
		return func() {}
	}
	p := &presence{s: s, id: fmt.Sprintf("%d-%x", os.Getpid(), rand.Uint64())}
	p.announce(ctx)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.renew(rctx)
	}()
	return func() {
		cancel()
		<-done
		p.withdraw()
	}
}

// announce writes (or renews) the presence, through lua/delivery.lua so
// that it lands on a full cache Redis, and takes the clean mark (or the
// running agent's token) away: every time, not only at the start, so that
// a start that could not reach the cache Redis takes it once it answers,
// and an agent with --deliver that started since finds its token gone when
// it stops. A failure is warned of at the first of a streak.
func (p *presence) announce(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := fmt.Sprintf("%s@%d", p.id, time.Now().Add(presenceFor).Unix())
	key := names.DeliveryPlainKey(p.s.opt.Service)
	_, err := lua.Run(ctx, p.s.opt.Cache, &lua.PresenceRequest{Service: p.s.opt.Service, Member: m, Replaced: p.member})
	if err == nil {
		// Apart from the presence: the two keys are in different
		// slots of a cluster.
		if err = p.s.opt.Cache.Del(ctx, names.DeliveryKey(p.s.opt.Service)).Err(); err != nil {
			key = names.DeliveryKey(p.s.opt.Service)
			p.member = m // written all the same
		}
	}
	if err != nil {
		if !p.failing && ctx.Err() == nil {
			p.s.log.Warn("could not record in the cache Redis that this subscriber applies to it: an agent with --deliver on it may skip what this one applies (retried every second; grant the key: routerd acl --role cache)", "key", key, "err", err)
		}
		p.failing = true
		return
	}
	p.failing, p.member = false, m
}

// renew writes the presence afresh every presenceEvery (every second while
// writing it fails) until ctx ends.
func (p *presence) renew(ctx context.Context) {
	for {
		p.mu.Lock()
		wait := presenceEvery
		if p.failing {
			wait = time.Second
		}
		p.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		p.announce(ctx)
	}
}

// withdraw takes the presence away, and the clean mark (or the running
// agent's token) once more: this run may have applied before any renewal
// took it (a start that could not reach the cache Redis, which answered
// less than a second before the stop).
func (p *presence) withdraw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.s.opt.Cache.Del(ctx, names.DeliveryKey(p.s.opt.Service)).Err(); err != nil {
		p.s.log.Warn("could not take the clean mark of an agent with --deliver away at the stop: it may skip what this subscriber applied", "key", names.DeliveryKey(p.s.opt.Service), "err", err)
	}
	if p.member == "" {
		return
	}
	key := names.DeliveryPlainKey(p.s.opt.Service)
	if err := p.s.opt.Cache.SRem(ctx, key, p.member).Err(); err != nil {
		p.s.log.Debug("could not take this subscriber's presence away", "key", key, "err", err)
	}
	p.member = ""
}

// Undelivering counts the subscribers that apply to the cache Redis c for
// service without delivering to the process of its agent with --deliver
// (their members of names.DeliveryPlainKey not expired), taking expired
// members away.
func Undelivering(ctx context.Context, c redis.UniversalClient, service string) (int, error) {
	key := names.DeliveryPlainKey(service)
	members, err := c.SMembers(ctx, key).Result()
	if err != nil {
		return 0, err
	}
	n, now := 0, time.Now().Unix()
	for _, m := range members {
		at := strings.LastIndexByte(m, '@')
		exp, err := strconv.ParseInt(m[at+1:], 10, 64)
		if at >= 0 && err == nil && exp < now {
			c.SRem(ctx, key, m)
			continue
		}
		n++
	}
	return n, nil
}
