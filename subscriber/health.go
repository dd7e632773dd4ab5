package subscriber

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/breaker"
	"github.com/routerd/routerd/internal/eviction"
	"github.com/routerd/routerd/internal/readiness"
	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/matrix"
)

// The reasons a subscriber is not ready (Problem.Reason): invalidations
// are not flowing, or may not be applied as they must.
const (
	// ReasonStarting: not running, or no position check has completed
	// yet, or no router has marked the bus (its generation key) yet.
	ReasonStarting = "starting"
	// ReasonBusLinkSilent: a pub/sub connection to the bus did not answer
	// a ping within LinkDeadline (the bus is down, or the network to it
	// drops packets), or is reconnecting.
	ReasonBusLinkSilent = "bus_link_silent"
	// ReasonSubscribing: the bus has not confirmed every subscription of
	// the service yet (subscribing, or subscribing again after a
	// connection was lost), or the position check that follows has not
	// completed: messages of the channels not held are missed until then,
	// and recovered by that check.
	ReasonSubscribing = "subscribing"
	// ReasonCheckFailing: the last position check failed (the bus or the
	// cache Redis could not be read), or none succeeded for three check
	// intervals.
	ReasonCheckFailing = "position_check_failing"
	// ReasonCacheFailing: the cache Redis does not answer (its circuit
	// breaker is open, its pings go unanswered, or a call has waited
	// longer than LinkDeadline: CLIENT PAUSE, a long script): invalidations
	// wait, and are replayed by the position check once it answers.
	ReasonCacheFailing = "cache_failing"
	// ReasonCacheChanged: the cache Redis restarted or failed over (a
	// master's run_id changed) and the position check that finds what it
	// lost has not completed yet: values invalidated before may be
	// readable again until it has.
	ReasonCacheChanged = "cache_changed"
	// ReasonEvictionPolicy: the cache Redis's maxmemory-policy can evict
	// what invalidation needs (or cannot be read), and the risk was not
	// accepted (Options.AcceptEvictionRisk).
	ReasonEvictionPolicy = "eviction_policy"
	// ReasonHandlerFailing: the Handler (an in-process cache, or the
	// agent's --deliver) has not returned for LinkDeadline, or its last
	// call failed: invalidations wait, and are replayed once it takes them.
	ReasonHandlerFailing = "handler_failing"
)

// Reasons lists every reason a subscriber reports, for metrics.
var Reasons = []string{ReasonStarting, ReasonBusLinkSilent, ReasonSubscribing, ReasonCheckFailing, ReasonCacheFailing, ReasonCacheChanged, ReasonEvictionPolicy, ReasonHandlerFailing}

// Timing of the health signals.
const (
	// PingEvery is how often a quiet pub/sub connection is pinged.
	PingEvery = time.Second
	// LinkDeadline is how long a pub/sub connection may stay without
	// answering (a message, a subscription or a pong) before the link
	// counts as silent.
	LinkDeadline = 3 * time.Second
	// cacheProbeEvery is how often the cache Redis is pinged while it
	// answers; after probeTimeout without an answer a ping counts as failed.
	cacheProbeEvery = 500 * time.Millisecond
	probeTimeout    = time.Second
)

// A Problem is one reason the subscriber is not ready, with what was seen.
type Problem = readiness.Problem

// health is what Problems is computed from; safe for concurrent use.
type health struct {
	checkOK    atomic.Int64            // unix nanos of the last complete check that succeeded
	checkErr   atomic.Pointer[string]  // the last check failed: why
	evicts     atomic.Pointer[string]  // the cache's eviction policy is a risk not accepted
	unmarked   atomic.Pointer[string]  // the checks wait for a router to mark the bus: why
	handling   atomic.Int64            // unix nanos the Handler call in flight started; 0 when none
	handlerErr atomic.Pointer[string]  // the Handler's last call failed: why
	regroupErr atomic.Pointer[Problem] // the last regroup could not subscribe: why
	refused    atomic.Pointer[string]  // the bus refuses channels to the service's user: which
	// noChannels: the last regroup found no channel to subscribe to (a
	// tenant shard that owns none of its service's tenants): no link is
	// expected.
	noChannels atomic.Bool
	// cacheChanges counts the changes of the cache Redis's identity seen
	// (watchCache); cacheChecked is the count the last complete check
	// that succeeded started after. Not ready while it is behind.
	cacheChanges, cacheChecked atomic.Int64
	cache                      *breaker.Breaker // nil without a cache Redis
	probe                      *breaker.Probe   // of the cache Redis

	mu    sync.Mutex
	links map[*conn]bool
}

func (h *health) addLink(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.links == nil {
		h.links = map[*conn]bool{}
	}
	h.links[c] = true
}

func (h *health) removeLink(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.links, c)
}

// subscriptions sums the subscriptions expected and held over the links
// (h.mu held).
func (h *health) subscriptions() (expected, held int64) {
	for c := range h.links {
		e, n := c.expected.Load(), c.held.Load()
		expected += e
		held += min(n, e) // more while unsubscribing
	}
	return expected, held
}

// Ready reports whether invalidations are flowing: Problems is empty.
func (s *Subscriber) Ready() bool { return len(s.Problems()) == 0 }

// Problems lists why the subscriber is not ready, nothing when it is: not
// running or not checked yet, a silent pub/sub link, failing position
// checks, a failing cache Redis, an eviction policy that can evict tag sets.
func (s *Subscriber) Problems() []Problem {
	if !s.running.Load() {
		return []Problem{{Reason: ReasonStarting, Detail: "not running"}}
	}
	regroup := s.health.regroupErr.Load()
	if !s.ready.Load() {
		if d := s.health.unmarked.Load(); d != nil {
			return []Problem{{Reason: ReasonStarting, Detail: *d + "; checking again every second"}}
		}
		out := []Problem{{Reason: ReasonStarting, Detail: "subscribing and checking positions; no position check has completed yet"}}
		if regroup != nil { // what keeps it from subscribing
			out = append(out, *regroup)
		}
		if e := s.health.evicts.Load(); e != nil { // read at start
			out = append(out, Problem{Reason: ReasonEvictionPolicy, Detail: *e})
		}
		return out
	}
	var out []Problem
	if regroup != nil {
		out = append(out, *regroup)
	}
	now := time.Now()
	h := &s.health
	h.mu.Lock()
	if len(h.links) == 0 && !h.noChannels.Load() {
		out = append(out, Problem{Reason: ReasonBusLinkSilent, Detail: "no pub/sub connection to the bus (subscribing again)"})
	}
	for c := range h.links {
		if quiet := now.Sub(time.Unix(0, c.heard.Load())); quiet > LinkDeadline && !c.waiting.Load() {
			where := "the bus"
			if c.addr != "" {
				where = c.addr
			}
			out = append(out, Problem{Reason: ReasonBusLinkSilent, Detail: fmt.Sprintf("no answer on the pub/sub connection to %s for %v (pinged every %v)", where, quiet.Round(100*time.Millisecond), PingEvery)})
			break
		}
	}
	expected, held := h.subscriptions()
	h.mu.Unlock()
	if r := h.refused.Load(); r != nil {
		out = append(out, Problem{Reason: ReasonSubscribing, Detail: *r})
	}
	if held < expected {
		out = append(out, Problem{Reason: ReasonSubscribing, Detail: fmt.Sprintf("the bus confirmed %d of %d subscriptions", held, expected)})
	} else if s.covered.Load() < s.rounds.Load() {
		out = append(out, Problem{Reason: ReasonSubscribing, Detail: "the bus confirmed every subscription; the position check that recovers what was missed while subscribing has not completed yet"})
	}
	if e := h.checkErr.Load(); e != nil {
		out = append(out, Problem{Reason: ReasonCheckFailing, Detail: "the last position check failed: " + *e})
	} else if since := now.Sub(time.Unix(0, h.checkOK.Load())); since > 3*s.opt.CheckInterval {
		out = append(out, Problem{Reason: ReasonCheckFailing, Detail: fmt.Sprintf("no position check succeeded for %v", since.Round(time.Second))})
	}
	if h.cache != nil {
		if failing, err := h.cache.Failing(); failing {
			out = append(out, Problem{Reason: ReasonCacheFailing, Detail: fmt.Sprintf("the cache Redis does not answer (%v); invalidations wait and are replayed once it does", err)})
		} else if silent := h.probe.Silent(); silent > LinkDeadline {
			out = append(out, Problem{Reason: ReasonCacheFailing, Detail: fmt.Sprintf("the cache Redis has not answered a ping for %v", silent.Round(100*time.Millisecond))})
		} else if waiting := h.cache.Waiting(); waiting > LinkDeadline {
			out = append(out, Problem{Reason: ReasonCacheFailing, Detail: fmt.Sprintf("a call to the cache Redis has waited %v for an answer (paused, or blocked by a long script?); invalidations wait", waiting.Round(100*time.Millisecond))})
		}
	}
	if h.cacheChanges.Load() > h.cacheChecked.Load() {
		out = append(out, Problem{Reason: ReasonCacheChanged, Detail: "the cache Redis restarted or failed over; the position check that invalidates again what it lost has not completed yet"})
	}
	if e := h.evicts.Load(); e != nil {
		out = append(out, Problem{Reason: ReasonEvictionPolicy, Detail: *e})
	}
	if since := h.handling.Load(); since != 0 && now.Sub(time.Unix(0, since)) > LinkDeadline {
		out = append(out, Problem{Reason: ReasonHandlerFailing, Detail: fmt.Sprintf("the Handler has not returned for %v; invalidations wait", now.Sub(time.Unix(0, since)).Round(100*time.Millisecond))})
	} else if e := h.handlerErr.Load(); e != nil {
		out = append(out, Problem{Reason: ReasonHandlerFailing, Detail: "the Handler's last call failed: " + *e + "; it is given again"})
	}
	return out
}

// checked records the outcome of a complete position check.
func (s *Subscriber) checked(err error) {
	if err != nil {
		msg := err.Error()
		s.health.checkErr.Store(&msg)
		return
	}
	s.health.checkErr.Store(nil)
	s.health.checkOK.Store(time.Now().UnixNano())
}

// newHealthMetrics exports Problems as subscriber_not_ready{reason}, and
// the subscriptions expected and held.
func (s *Subscriber) newHealthMetrics(reg prometheus.Registerer) {
	f := promauto.With(reg)
	for _, state := range []string{"expected", "held"} {
		f.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "subscriber_subscriptions", ConstLabels: prometheus.Labels{"state": state},
			Help: "Pub/sub subscriptions the service needs (expected) and the bus confirmed (held); ready waits until they are equal.",
		}, func() float64 {
			s.health.mu.Lock()
			defer s.health.mu.Unlock()
			expected, held := s.health.subscriptions()
			if state == "held" {
				return float64(held)
			}
			return float64(expected)
		})
	}
	readiness.NotReadyGauges(reg, "subscriber_not_ready",
		"1 while the subscriber is not ready for this reason (see docs/operations.md#readiness), else 0.", Reasons, s.Problems)
}

// refsInUse reports whether a domain with entity references maps to a tag
// of the service: their reference sets live in its cache with TTLs.
func refsInUse(m *matrix.Matrix, tags []string) bool {
	own := map[string]bool{}
	for _, t := range tags {
		own[t] = true
	}
	for _, d := range m.Domains {
		if !d.EntityRefs {
			continue
		}
		for _, t := range d.Tags {
			if own[t] {
				return true
			}
		}
	}
	return false
}

// checkEviction reads the cache Redis's maxmemory-policy (INFO memory, on
// every master) and records whether it is a risk (eviction.CacheProblem).
// Unless the risk is accepted, the subscriber is then not ready. A cache
// that does not answer leaves the last finding (the breaker reports it).
func (s *Subscriber) checkEviction(ctx context.Context) {
	if s.store == nil {
		return
	}
	problem, err := s.evictionProblem(ctx)
	if err != nil {
		if !redis.HasErrorPrefix(err, "NOPERM") {
			// Not an answer about the policy (no answer, the breaker open,
			// WRONGPASS, LOADING): the breaker and the check report it.
			return
		}
		problem = fmt.Sprintf("cannot read the cache Redis's maxmemory-policy (%v): grant the cache user +info (routerd acl --role cache), or accept the risk", err)
	}
	prev := s.health.evicts.Load()
	if problem == "" {
		if prev != nil {
			s.log.Info("the cache Redis's eviction policy is safe now")
		}
		s.health.evicts.Store(nil)
		return
	}
	if s.opt.AcceptEvictionRisk {
		if !s.evictionWarned {
			s.evictionWarned = true
			s.log.Warn("eviction risk accepted (AcceptEvictionRisk / --accept-eviction-risk): values may stay cached past their invalidation", "risk", problem)
		}
		return
	}
	if prev == nil || *prev != problem {
		s.log.Error("not ready: the cache Redis's eviction policy can lose invalidations; fix it or accept the risk (--accept-eviction-risk)", "risk", problem)
	}
	s.health.evicts.Store(&problem)
}

func (s *Subscriber) evictionProblem(ctx context.Context) (string, error) {
	nodes, err := redisconn.Masters(ctx, s.opt.Cache)
	if err != nil {
		return "", err
	}
	refs := s.cur.refs // the matrix in force, not the one at start
	for _, n := range nodes {
		nctx, nc := redisconn.OnNode(ctx, s.opt.Cache, n) // the cache client's hooks see it
		raw, err := nc.Info(nctx, "memory").Result()
		if err != nil {
			return "", err
		}
		policy := infoField(raw, "maxmemory_policy")
		if p := eviction.CacheProblem(policy, refs); p != "" {
			if len(nodes) > 1 {
				p = n.Options().Addr + ": " + p
			}
			return p, nil
		}
	}
	return "", nil
}

// infoField returns one field of an INFO reply.
func infoField(info, field string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}
