package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/tagstore"
)

// leases measures tagstore.Fetch against Get (a hit), the miss path
// against the naive Get and Set, and the invalidation scripts with their
// lease deletion against the same scripts without it (docs/BENCHMARKS.md).
func leases(dir string) ([]Row, error) {
	srv, err := redistest.Launch(dir)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer c.Close()
	ctx := context.Background()
	store, err := tagstore.New(c, tagstore.Options{})
	if err != nil {
		return nil, err
	}
	value := []byte(strings.Repeat("v", 200))
	opt := tagstore.FetchOptions{Tags: []string{"t"}}
	load := func(context.Context) ([]byte, error) { return value, nil }
	n := scale(20000)

	// A hit: Fetch against Get of the same key, the best of five
	// alternating rounds (the machine is shared).
	if err := store.Set(ctx, "acme", "hot", value, 0, "t"); err != nil {
		return nil, err
	}
	get := func() error { _, err := store.Get(ctx, "acme", "hot"); return err }
	fetch := func() error { _, err := store.Fetch(ctx, "acme", "hot", opt, load); return err }
	getT, fetchT := time.Duration(1<<62), time.Duration(1<<62)
	for range 5 {
		d, err := each(n, get)
		if err != nil {
			return nil, err
		}
		getT = min(getT, d)
		if d, err = each(n, fetch); err != nil {
			return nil, err
		}
		fetchT = min(fetchT, d)
	}

	// A miss: Fetch (GET, lease.lua, load, set.lua with the token)
	// against the naive Get and Set, each of a key never cached, the best
	// of five alternating rounds.
	seq := 0
	naive := func() error {
		seq++
		key := "naive:" + strconv.Itoa(seq)
		if _, err := store.Get(ctx, "acme", key); err != redis.Nil {
			return fmt.Errorf("naive miss: %v", err)
		}
		return store.Set(ctx, "acme", key, value, 0, "t")
	}
	miss := func() error {
		seq++
		_, err := store.Fetch(ctx, "acme", "miss:"+strconv.Itoa(seq), opt, load)
		return err
	}
	naiveT, missT := time.Duration(1<<62), time.Duration(1<<62)
	for range 5 {
		d, err := each(n/10, naive)
		if err != nil {
			return nil, err
		}
		naiveT = min(naiveT, d)
		if d, err = each(n/10, miss); err != nil {
			return nil, err
		}
		missT = min(missT, d)
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	rows := []Row{
		{Scenario: "8 leases", Metric: "Fetch, a hit (round trip)", Value: us(fetchT), Unit: "µs", Reference: "Get", RefValue: us(getT), Ratio: us(getT) / us(fetchT)},
		{Scenario: "8 leases", Metric: "Fetch, a miss (lease, load, fill)", Value: us(missT), Unit: "µs", Reference: "Get + Set (naive)", RefValue: us(naiveT), Ratio: us(naiveT) / us(missT)},
	}

	// The invalidation scripts, server time per call (commandstats): on
	// keys half of which have a fill in flight (lease.lua added them to
	// the tag set; no value yet), and on keys all cached. The scripts have
	// no lease code: an invalidation voids a fill by taking its key out of
	// the tag, as it does a cached value's.
	m := scale(5000)
	for _, sc := range []struct {
		metric, script string
		keys, invs     int // cache keys per invalidation, invalidations per call (0: whole tag)
	}{
		{"invalidate.lua, 10 keys", "invalidate.lua", 10, 1},
		{"invalidate_keys.lua, 10 invalidations of 1 key", "invalidate_keys.lua", 1, 10},
		{"invalidate.lua, whole tag of 100 keys", "invalidate.lua", 100, 0},
	} {
		// The best of five alternating rounds each.
		withT, withoutT := 1e18, 1e18
		for range 5 {
			w, err := scriptCost(ctx, c, sc.script, sc.keys, sc.invs, m, true)
			if err != nil {
				return nil, err
			}
			wo, err := scriptCost(ctx, c, sc.script, sc.keys, sc.invs, m, false)
			if err != nil {
				return nil, err
			}
			withT, withoutT = min(withT, w), min(withoutT, wo)
		}
		rows = append(rows, Row{Scenario: "8 leases", Metric: sc.metric + ", server time per call", Value: withoutT, Unit: "µs",
			Reference: "half the keys leased", RefValue: withT, Ratio: withT / withoutT})
	}
	return rows, nil
}

// each runs fn n times and returns the mean time of one.
func each(n int, fn func() error) (time.Duration, error) {
	t0 := time.Now()
	for range n {
		if err := fn(); err != nil {
			return 0, err
		}
	}
	return time.Since(t0) / time.Duration(n), nil
}

// scriptCost runs an invalidation script m times on keys cached afresh
// each time (half of them leased instead, with leased) and with a
// position, as a subscriber does, and returns Redis's own time per call
// from INFO commandstats, read before and after each call (the seeding
// runs lease.lua, an EVALSHA too).
func scriptCost(ctx context.Context, c *redis.Client, name string, keys, invs, m int, leased bool) (float64, error) {
	if err := lua.Load(ctx, c, lua.CacheScripts()...); err != nil {
		return 0, err
	}
	tagSet, refs := "{tenant:acme}:tag:b", "{tenant:acme}:tag:b#refs"
	pos, mark := "{tenant:acme}:pos:svc:b", "{tenant:acme}:pos:svc:b#batch"
	total := keys * max(invs, 1)
	names := make([]string, total)
	for i := range names {
		names[i] = "{tenant:acme}:k:" + strconv.Itoa(i)
	}
	if err := c.Del(ctx, pos).Err(); err != nil {
		return 0, err
	}
	var script time.Duration
	version := 0
	for range m {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, k := range names {
				if leased && i%2 == 0 {
					p.Del(ctx, "{tenant:acme}:lease:"+k)
					req := lua.LeaseRequest{Key: k, LeaseKey: "{tenant:acme}:lease:" + k, Sets: []string{tagSet}, Token: "token", LeaseTime: time.Minute}
					lua.Queue(ctx, p, &req)
					continue
				}
				p.Set(ctx, k, "v", 0)
				p.SAdd(ctx, tagSet, k)
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
		before, err := evalshaTime(ctx, c)
		if err != nil {
			return 0, err
		}
		switch name {
		case "invalidate.lua":
			version++
			k := []string{tagSet, pos, mark, refs}
			if invs > 0 {
				k = append(k, names...)
			}
			req := lua.InvalidateRequest{Keys: k, Guard: 5000, Epoch: "e", Version: int64(version), Mode: lua.MayJump}
			_, err = lua.Run(ctx, c, &req)
		case "invalidate_keys.lua":
			g := lua.InvalidateGroup{Head: []string{tagSet, pos, mark, refs}, Epoch: "e", Mode: lua.MayJump}
			for j := range invs {
				version++
				g.Invs = append(g.Invs, lua.KeyInvalidation{Version: int64(version), Keys: names[j*keys : (j+1)*keys]})
			}
			req := lua.InvalidateKeysRequest{Groups: []lua.InvalidateGroup{g}}
			_, err = lua.Run(ctx, c, &req)
		}
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		after, err := evalshaTime(ctx, c)
		if err != nil {
			return 0, err
		}
		script += after - before
	}
	return float64(script) / float64(time.Microsecond) / float64(m), nil
}

// evalshaTime is the server time spent in EVALSHA so far (INFO
// commandstats).
func evalshaTime(ctx context.Context, c *redis.Client) (time.Duration, error) {
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_evalsha:"); ok {
			for _, f := range strings.Split(rest, ",") {
				if v, ok := strings.CutPrefix(f, "usec="); ok {
					us, err := strconv.ParseInt(v, 10, 64)
					return time.Duration(us) * time.Microsecond, err
				}
			}
		}
	}
	return 0, nil
}
