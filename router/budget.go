package router

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
)

// budgets are the shared buckets one send takes tokens from: a tenant's
// and the global one, kept on the bus so that every router draws on the
// same budget (docs/limits.md). Their keys are in other slots than the
// channels', so they are taken by their own script call, before the
// channel's publish; the tokens of messages the channel's bucket then
// refuses are given back.
type budgets struct {
	prefix         string
	tenant, global *matrix.Budget
	back           map[string]int // bucket key -> tokens to give back
}

func (r *Router) newBudgets() *budgets {
	mtx := r.matrix.Load()
	return &budgets{prefix: r.prefix, tenant: mtx.TenantBudget, global: mtx.GlobalBudget, back: map[string]int{}}
}

// bucket is one shared bucket a message needs.
type bucket struct {
	key    string
	budget *matrix.Budget
}

// of returns the shared buckets a message takes a token from.
func (b *budgets) of(o *outgoing) []bucket {
	var out []bucket
	if b.tenant != nil {
		out = append(out, bucket{names.TenantBudgetKey(b.prefix, o.msg.Tenant), b.tenant})
	}
	if b.global != nil {
		out = append(out, bucket{names.GlobalBudgetKey(b.prefix), b.global})
	}
	return out
}

// unused records that o took its tokens but was not sent.
func (b *budgets) unused(o *outgoing) {
	for _, k := range b.of(o) {
		b.back[k.key]++
	}
}

// takeBudgets takes a token for each message from the shared buckets it
// needs, in one pipeline with one call per bucket. It returns the messages
// that got all of theirs; the others go to the coalescer, due when their
// buckets will have a token. When the bus fails, the messages' entries
// fail (they are tried again) and those completed by that are returned.
func (r *Router) takeBudgets(ctx context.Context, b *budgets, out []*outgoing) ([]*outgoing, []*entry) {
	if b.tenant == nil && b.global == nil || len(out) == 0 {
		return out, nil
	}
	type want struct {
		budget *matrix.Budget
		n      int
		force  bool
	}
	wants := map[string]*want{}
	var order []string
	for _, o := range out {
		for _, k := range b.of(o) {
			w := wants[k.key]
			if w == nil {
				w = &want{budget: k.budget}
				wants[k.key] = w
				order = append(order, k.key)
			}
			w.n++
			w.force = w.force || o.force
		}
	}
	reqs := make([]lua.BudgetRequest, len(order))
	for i, key := range order {
		w := wants[key]
		reqs[i] = lua.BudgetRequest{Key: key, Rate: w.budget.Rate, Burst: w.budget.Burst, N: w.n, Force: w.force}
	}
	cmds, err := runScripts(ctx, r.c, func(pipe redis.Pipeliner) []*redis.Cmd {
		all := make([]*redis.Cmd, len(reqs))
		for i := range reqs {
			all[i] = lua.Queue(ctx, pipe, &reqs[i])
		}
		return all
	})
	granted := map[string]int{}
	waits := map[string]time.Duration{}
	for i, key := range order {
		if err != nil {
			break
		}
		res, e := reqs[i].Reply(cmds[i])
		if e != nil {
			err = e
			// What the calls before granted goes back.
			for _, k := range order[:i] {
				b.back[k] += granted[k]
			}
			break
		}
		granted[key] = res.Granted
		waits[key] = res.Wait
	}
	if err != nil {
		var done []*entry
		for _, o := range out {
			for _, p := range o.parts {
				if p.e.finish(err) {
					done = append(done, p.e)
				}
			}
		}
		r.log.Warn("taking tokens from the shared budgets", "err", err)
		return nil, done
	}
	// Messages take the granted tokens in order; one whose buckets are not
	// all granted is held, and what it took goes back.
	now := time.Now()
	var ok []*outgoing
	for _, o := range out {
		var wait time.Duration
		ks := b.of(o)
		for _, k := range ks {
			if granted[k.key] <= 0 {
				wait = max(wait, waits[k.key], time.Millisecond)
			}
		}
		if wait > 0 {
			r.co.hold(now, o, wait)
			continue
		}
		for _, k := range ks {
			granted[k.key]--
		}
		ok = append(ok, o)
	}
	for key, n := range granted {
		if n > 0 {
			b.back[key] += n
		}
	}
	return ok, nil
}

// giveBack returns to the shared buckets the tokens taken for messages
// that were not sent. A failure only leaves the budget stricter for a
// moment.
func (r *Router) giveBack(ctx context.Context, b *budgets) {
	if len(b.back) == 0 {
		return
	}
	_, err := runScripts(ctx, r.c, func(pipe redis.Pipeliner) []*redis.Cmd {
		var all []*redis.Cmd
		for key, n := range b.back {
			bud := b.global
			if key != names.GlobalBudgetKey(b.prefix) {
				bud = b.tenant
			}
			if n > 0 && bud != nil {
				req := lua.BudgetRequest{Key: key, Rate: bud.Rate, Burst: bud.Burst, N: -n}
				all = append(all, lua.Queue(ctx, pipe, &req))
			}
		}
		return all
	})
	if err != nil {
		r.log.Warn("giving back unused tokens", "err", err)
	}
}
