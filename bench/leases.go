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
	// against the naive Get and Set, each of a key never cached.
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
	naiveT, err := each(n/4, naive)
	if err != nil {
		return nil, err
	}
	missT, err := each(n/4, miss)
	if err != nil {
		return nil, err
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	rows := []Row{
		{Scenario: "8 leases", Metric: "Fetch, a hit (round trip)", Value: us(fetchT), Unit: "µs", Reference: "Get", RefValue: us(getT), Ratio: us(getT) / us(fetchT)},
		{Scenario: "8 leases", Metric: "Fetch, a miss (lease, load, fill)", Value: us(missT), Unit: "µs", Reference: "Get + Set (naive)", RefValue: us(naiveT), Ratio: us(naiveT) / us(missT)},
	}

	// The invalidation scripts, server time per call (commandstats), with
	// the lease deletion of lua/void.lua and without it. Whole-tag and
	// entity-level invalidations run the same code either way: their
	// leases are members of the sets they empty.
	m := scale(5000)
	for _, sc := range []struct {
		metric, script string
		void           [][2]string // the lease deletion, and what replaces it for "without"
		keys, invs     int         // cache keys per invalidation, invalidations per call
	}{
		{"invalidate.lua, 10 keys", "invalidate.lua",
			[][2]string{{"unlink_with_leases(lease_prefix(KEYS[1]), KEYS, 5, last)", "unlink(KEYS, 5, last)"}}, 10, 1},
		{"invalidate_keys.lua, 10 invalidations of 1 key", "invalidate_keys.lua",
			[][2]string{{"local prefix = lease_prefix(tagSet)", ""}, {"unlink_with_leases(prefix, KEYS, i, j)", "redis.call('UNLINK', unpack(KEYS, i, j))"}}, 1, 10},
		{"invalidate.lua, whole tag of 100 keys", "invalidate.lua", nil, 100, 0},
	} {
		with := lua.Sources[sc.script]
		without := with
		for _, r := range sc.void {
			was := without
			if without = strings.Replace(without, r[0], r[1], 1); without == was {
				return nil, fmt.Errorf("%s: no lease deletion %q to take out", sc.script, r[0])
			}
		}
		// The best of five alternating rounds each.
		withT, withoutT := 1e18, 1e18
		for range 5 {
			w, err := scriptCost(ctx, c, redis.NewScript(with), sc.script, sc.keys, sc.invs, m)
			if err != nil {
				return nil, err
			}
			wo, err := scriptCost(ctx, c, redis.NewScript(without), sc.script, sc.keys, sc.invs, m)
			if err != nil {
				return nil, err
			}
			withT, withoutT = min(withT, w), min(withoutT, wo)
		}
		rows = append(rows, Row{Scenario: "8 leases", Metric: sc.metric + ", server time per call", Value: withoutT, Unit: "µs",
			Reference: "with lease deletion", RefValue: withT, Ratio: withT / withoutT})
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

// scriptCost runs an invalidation script m times on freshly cached keys
// (with a position, as a subscriber does) and returns Redis's own time per
// call, from INFO commandstats (the seeding is SET and SADD, not scripts).
func scriptCost(ctx context.Context, c *redis.Client, s *redis.Script, name string, keys, invs, m int) (float64, error) {
	if err := s.Load(ctx, c).Err(); err != nil {
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
	if err := c.ConfigResetStat(ctx).Err(); err != nil {
		return 0, err
	}
	version := 0
	for range m {
		if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range names {
				p.Set(ctx, k, "v", 0)
				p.SAdd(ctx, tagSet, k)
			}
			return nil
		}); err != nil {
			return 0, err
		}
		var err error
		switch name {
		case "invalidate.lua":
			version++
			args := []any{5000, "e", version, "0", "", 0, "0"}
			k := []string{tagSet, pos, mark, refs}
			if invs > 0 {
				k = append(k, names...)
			}
			err = s.EvalSha(ctx, c, k, args...).Err()
		case "invalidate_keys.lua":
			args := []any{"e", "0", "", invs}
			for range invs {
				version++
				args = append(args, version, keys)
			}
			err = s.EvalSha(ctx, c, append([]string{tagSet, pos, mark, refs}, names...), args...).Err()
		}
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
	}
	info, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_evalsha:"); ok {
			for _, f := range strings.Split(rest, ",") {
				if v, ok := strings.CutPrefix(f, "usec_per_call="); ok {
					return strconv.ParseFloat(v, 64)
				}
			}
		}
	}
	return 0, fmt.Errorf("no evalsha in commandstats")
}
