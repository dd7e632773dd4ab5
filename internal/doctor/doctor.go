// Package doctor checks a Redis for what breaks cache invalidation and says
// how to fix it: an old version, an eviction policy that can drop tag sets,
// routerd's scripts in the slow log, tag sets near the cardinality guard,
// ingress streams no router reads, ingress lag and pending entries, memory
// fragmentation, pattern subscriptions that tax every PUBLISH.
package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/eviction"
	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/internal/tagsize"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
)

// Level of a finding.
type Level string

// Levels: Fail makes the doctor exit 1.
const (
	OK   Level = "ok"
	Warn Level = "warn"
	Fail Level = "FAIL"
)

// Finding is one check's result.
type Finding struct {
	Level   Level
	Node    string // the server's address
	Check   string
	Message string
}

// Options tune the checks.
type Options struct {
	Prefix           string // routerd's prefix, for the ingress checks
	CardinalityGuard int    // the subscribers' guard (5000)
	MaxLag           int64  // ingress entries not yet routed before it is a problem (10000)
	ScanLimit        int    // keys the tag set scan looks at per server (100000)
	// GrowthFile, when set, keeps the largest tag sets between runs: a run
	// reports how each grew since the run that last wrote the file, then
	// writes its own.
	GrowthFile string
}

// growthSets is how many of the largest tag sets per server a growth file
// keeps.
const growthSets = 20

// Run checks every server behind c (each master of a cluster).
func Run(ctx context.Context, c redis.UniversalClient, opt Options) ([]Finding, error) {
	if opt.Prefix == "" {
		opt.Prefix = names.DefaultPrefix
	}
	if opt.CardinalityGuard == 0 {
		opt.CardinalityGuard = tagstore.DefaultCardinalityGuard
	}
	if opt.MaxLag == 0 {
		opt.MaxLag = 10000
	}
	if opt.ScanLimit == 0 {
		opt.ScanLimit = 100000
	}
	var out []Finding
	var sets []tagsize.Set
	nodes, err := redisconn.Masters(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("doctor: %w", err)
	}
	for _, n := range nodes {
		fs, big, err := checkNode(ctx, n, opt)
		out = append(out, fs...)
		if err != nil {
			return out, err
		}
		sets = append(sets, big...)
	}
	if opt.GrowthFile != "" {
		out = append(out, growth(opt, sets, time.Now()))
	}
	return append(out, checkIngress(ctx, c, opt)...), nil
}

// needs says which Redis routerd needs, and why.
const needs = "routerd needs 7.0 or newer (XAUTOCLAIM, XINFO lag, sharded pub/sub); upgrade the server"

// tooOld reports whether version, INFO's redis_version, is older than
// routerd needs.
func tooOld(version string) bool {
	major, _ := strconv.Atoi(strings.Split(version, ".")[0])
	return major < 7
}

// CheckVersions reads the version of every server behind c (each master of
// a cluster) and returns an error naming the first that is older than
// routerd needs; role ("bus", "cache") names c in it. A server whose
// version could not be read (unreachable, INFO refused by an ACL) is no
// reason to refuse: unread says which and why, for the caller to warn.
func CheckVersions(ctx context.Context, c redis.UniversalClient, role string) (unread, err error) {
	nodes, err := redisconn.Masters(ctx, c)
	if err != nil {
		return fmt.Errorf("listing the %s Redis's masters: %w", role, err), nil
	}
	var errs []error
	for _, n := range nodes {
		nctx, nc := redisconn.OnNode(ctx, c, n) // c's hooks see it
		sections, err := nc.InfoMap(nctx, "server").Result()
		if err != nil {
			errs = append(errs, fmt.Errorf("the %s Redis %s: INFO server: %w", role, n.Options().Addr, err))
			continue
		}
		version := sections["Server"]["redis_version"]
		if version == "" {
			errs = append(errs, fmt.Errorf("the %s Redis %s: INFO server has no redis_version", role, n.Options().Addr))
			continue
		}
		if tooOld(version) {
			return errors.Join(errs...), fmt.Errorf("the %s Redis %s runs Redis %s: %s", role, n.Options().Addr, version, needs)
		}
	}
	return errors.Join(errs...), nil
}

// info returns the fields of one INFO section.
func info(ctx context.Context, c *redis.Client, section string) (map[string]string, error) {
	sections, err := c.InfoMap(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, fields := range sections { // one, titled as Redis titles it ("Server")
		maps.Copy(m, fields)
	}
	return m, nil
}

// checkNode checks one server; it returns the findings and its largest
// tag sets.
func checkNode(ctx context.Context, c *redis.Client, opt Options) ([]Finding, []tagsize.Set, error) {
	node := c.Options().Addr
	var out []Finding
	add := func(l Level, check, format string, args ...any) {
		out = append(out, Finding{Level: l, Node: node, Check: check, Message: fmt.Sprintf(format, args...)})
	}
	srv, err := info(ctx, c, "server")
	if err != nil {
		return nil, nil, fmt.Errorf("%s: INFO: %w", node, err)
	}
	version := srv["redis_version"]
	if tooOld(version) {
		add(Fail, "version", "Redis %s: %s", version, needs)
	} else {
		add(OK, "version", "Redis %s", version)
	}

	policy, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
	evict := policy["maxmemory-policy"]
	if err != nil {
		add(Warn, "eviction", "cannot read maxmemory-policy (%v); make sure it is not allkeys-*", err)
	} else if p := policy["maxmemory-policy"]; eviction.EvictsUntimed(p) {
		add(Fail, "eviction", "maxmemory-policy %s can evict tag sets, channel metadata and ingress streams: CONFIG SET maxmemory-policy noeviction on the bus, or volatile-lru with TTLs on cached values on a cache", p)
	} else {
		add(OK, "eviction", "maxmemory-policy %s", p)
	}

	slow, err := c.SlowLogGet(ctx, 128).Result()
	if err != nil {
		add(Warn, "slowlog", "cannot read the slow log: %v", err)
	} else {
		var hits []string
		for _, e := range slow {
			if len(e.Args) >= 2 && strings.EqualFold(e.Args[0], "evalsha") {
				if name := lua.ScriptName(e.Args[1]); name != "" {
					hits = append(hits, fmt.Sprintf("%s %v", name, e.Duration))
				}
			}
		}
		if len(hits) > 0 {
			add(Fail, "slowlog", "routerd scripts in the slow log (%s): look for huge tag sets (lower --cardinality-guard) or keys lists (lower max_keys)", strings.Join(hits, ", "))
		} else {
			add(OK, "slowlog", "no routerd script among the last %d slow log entries", len(slow))
		}
	}

	if pers, err := info(ctx, c, "persistence"); err != nil {
		add(Warn, "persistence", "cannot read INFO persistence: %v", err)
	} else if pers["aof_enabled"] != "1" {
		add(Warn, "persistence", "no append-only file: on the bus, an ingress entry acknowledged to a publisher is lost if Redis restarts before routing it (CONFIG SET appendonly yes, with appendfsync always to lose nothing or everysec to lose at most a second; see docs/architecture.md)")
	} else {
		add(OK, "persistence", "append-only file on")
	}

	mem, err := info(ctx, c, "memory")
	if err == nil {
		ratio, _ := strconv.ParseFloat(mem["mem_fragmentation_ratio"], 64)
		used, _ := strconv.ParseInt(mem["used_memory"], 10, 64)
		if ratio > 1.5 && used > 64<<20 {
			add(Warn, "memory", "mem_fragmentation_ratio %.2f: memory is fragmented; consider activedefrag yes", ratio)
		} else {
			add(OK, "memory", "mem_fragmentation_ratio %.2f, used_memory %d MB", ratio, used>>20)
		}
	}

	if n, err := c.PubSubNumPat(ctx).Result(); err != nil {
		add(Warn, "pubsub", "cannot read PUBSUB NUMPAT: %v", err)
	} else if n > 0 {
		add(Warn, "pubsub", "%d pattern subscriptions (distinct patterns, PUBSUB NUMPAT)%s: Redis matches each against the channel of every PUBLISH on this server, whatever its channel, "+
			"so every publish costs O(patterns) (1,000 patterns made the unpipelined PUBLISH rate to a routerd channel 4 to 9x slower: make bench, pubsub scenario); "+
			"routerd's own subscribers use none (they subscribe to exact channels from the tenant registry): find the clients with CLIENT LIST (psub=) and make them subscribe to channels",
			n, patternHolders(ctx, c))
	} else {
		add(OK, "pubsub", "no pattern subscription: a PUBLISH is matched against its own channel's subscribers only")
	}

	big, complete, refs, err := largestTags(ctx, c, opt.ScanLimit, growthSets)
	if refs && eviction.EvictsTimed(evict) && !eviction.EvictsUntimed(evict) {
		add(Warn, "eviction", "maxmemory-policy %s with entity references (tag #refs sets found): a reference set expires with its values, so Redis may evict it before them and an entity-level invalidation then misses them: CONFIG SET maxmemory-policy noeviction", evict)
	}
	scope := "the whole keyspace scanned"
	if !complete {
		scope = fmt.Sprintf("only the first ~%d keys scanned", opt.ScanLimit)
	}
	if err != nil {
		add(Warn, "tags", "cannot scan tag sets: %v", err)
	} else {
		var near []string
		for _, t := range big {
			if t.Members >= int64(opt.CardinalityGuard)*8/10 {
				near = append(near, fmt.Sprintf("%s (%d)", t.Key, t.Members))
			}
		}
		switch {
		case len(near) > 0:
			add(Warn, "tags", "tag sets near or above the cardinality guard %d, deleted by the chunked path: %s", opt.CardinalityGuard, strings.Join(near, ", "))
		case len(big) > 0:
			add(OK, "tags", "largest tag set %s has %d members (guard %d; %s)", big[0].Key, big[0].Members, opt.CardinalityGuard, scope)
		default:
			add(OK, "tags", "no tag sets (%s)", scope)
		}
	}
	return out, big, nil
}

// patternHolders names the clients that hold pattern subscriptions (" held
// by 2 clients (10.0.0.5:40312 name=x psub=3, ...)"), or "" when CLIENT
// LIST is not allowed.
func patternHolders(ctx context.Context, c *redis.Client) string {
	list, err := c.ClientList(ctx).Result()
	if err != nil {
		return ""
	}
	var holders []string
	for _, line := range strings.Split(list, "\n") {
		fields := map[string]string{}
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				fields[k] = v
			}
		}
		if n, _ := strconv.Atoi(fields["psub"]); n > 0 {
			h := fields["addr"]
			if fields["name"] != "" {
				h += " name=" + fields["name"]
			}
			holders = append(holders, h+" psub="+fields["psub"])
		}
	}
	if len(holders) == 0 {
		return ""
	}
	shown := holders[:min(len(holders), 5)]
	more := ""
	if len(holders) > len(shown) {
		more = fmt.Sprintf(", and %d more", len(holders)-len(shown))
	}
	clients := "clients"
	if len(holders) == 1 {
		clients = "client"
	}
	return fmt.Sprintf(" held by %d %s (%s%s)", len(holders), clients, strings.Join(shown, ", "), more)
}

// largestTags scans up to about limit keys for tag sets and returns the n
// largest, whether the scan covered the whole keyspace, and whether it met
// a ref-registered set (entity references are in use). A tag's size is
// that of its tag set (plain values) and its ref-registered set
// (names.TagRefsKey) together, as the cardinality guard counts a whole tag.
func largestTags(ctx context.Context, c *redis.Client, limit, n int) (top []tagsize.Set, complete, refs bool, err error) {
	sizes := map[string]int64{} // by tag set key
	var cursor uint64
	scanned := 0
	for scanned < limit {
		keys, next, err := c.ScanType(ctx, cursor, names.TagSetKey("*", "*"), 1000, "set").Result()
		if err != nil {
			return nil, false, false, err
		}
		scanned += 1000
		if len(keys) > 0 {
			cmds, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, k := range keys {
					p.SCard(ctx, k)
				}
				return nil
			})
			if err != nil {
				return nil, false, false, err
			}
			for i, k := range keys {
				refs = refs || strings.HasSuffix(k, names.TagRefsSuffix)
				sizes[strings.TrimSuffix(k, names.TagRefsSuffix)] += cmds[i].(*redis.IntCmd).Val()
			}
		}
		if next == 0 {
			complete = true
			break
		}
		cursor = next
	}
	return tagsize.Top(sizes, n), complete, refs, nil
}

// growthRecord is what a growth file holds.
type growthRecord struct {
	Taken time.Time     `json:"taken"`
	Sets  []tagsize.Set `json:"sets"`
}

// growth compares the largest tag sets with those the growth file recorded
// and records them; its finding warns of a set that reaches the guard
// within a day at its growth since then.
func growth(opt Options, sets []tagsize.Set, now time.Time) Finding {
	f := Finding{Level: OK, Node: "-", Check: "growth"}
	var prev growthRecord
	data, err := os.ReadFile(opt.GrowthFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		f.Level, f.Message = Warn, fmt.Sprintf("cannot read %s: %v", opt.GrowthFile, err)
		return f
	default:
		if err := json.Unmarshal(data, &prev); err != nil {
			f.Level, f.Message = Warn, fmt.Sprintf("%s is not a growth file of routerd doctor (%v): remove it", opt.GrowthFile, err)
			return f
		}
	}
	if data, err = json.MarshalIndent(growthRecord{Taken: now.UTC(), Sets: sets}, "", "  "); err == nil {
		err = os.WriteFile(opt.GrowthFile, append(data, '\n'), 0o644)
	}
	if err != nil {
		f.Level, f.Message = Warn, fmt.Sprintf("cannot record the tag set sizes in %s: %v", opt.GrowthFile, err)
		return f
	}
	if prev.Taken.IsZero() {
		f.Message = fmt.Sprintf("no earlier run recorded in %s: the sizes of the %d largest tag sets are recorded now; run again later to see their growth", opt.GrowthFile, len(sets))
		return f
	}
	elapsed := now.Sub(prev.Taken)
	perHour := tagsize.Growth(prev.Sets, sets, elapsed)
	before := map[string]int64{}
	for _, s := range prev.Sets {
		before[s.Key] = s.Members
	}
	var grew, soon []string
	for _, s := range sets { // largest first
		rate, ok := perHour[s.Key]
		if !ok || s.Members == before[s.Key] {
			continue
		}
		grew = append(grew, fmt.Sprintf("%s %+d to %d (%+.0f/hour)", s.Key, s.Members-before[s.Key], s.Members, rate))
		guard := float64(opt.CardinalityGuard)
		if rate > 0 && float64(s.Members) < guard && float64(s.Members)+24*rate >= guard {
			soon = append(soon, fmt.Sprintf("%s in %.1f hours", s.Key, (guard-float64(s.Members))/rate))
		}
	}
	since := fmt.Sprintf("since %s (%s ago)", prev.Taken.Format(time.RFC3339), elapsed.Round(time.Second))
	switch {
	case len(soon) > 0:
		f.Level, f.Message = Warn, fmt.Sprintf("tag sets reach the cardinality guard %d within a day at their growth %s: %s; grew: %s", opt.CardinalityGuard, since, strings.Join(soon, ", "), strings.Join(grew, ", "))
	case len(grew) > 0:
		f.Message = fmt.Sprintf("largest tag sets %s: %s", since, strings.Join(grew, ", "))
	default:
		f.Message = fmt.Sprintf("none of the largest tag sets changed size %s", since)
	}
	return f
}

// checkIngress reports routerd's ingress: streams under the prefix that no
// router reads (a name that is not a partition), partitions without a
// consumer group, lag, pending entries and dead letters.
func checkIngress(ctx context.Context, c redis.UniversalClient, opt Options) []Finding {
	node := "ingress"
	streams, err := redisconn.ScanStreams(ctx, c, names.IngressPattern(opt.Prefix))
	if err != nil {
		return []Finding{{Warn, node, "ingress", fmt.Sprintf("cannot look for ingress streams: %v", err)}}
	}
	var out []Finding
	partitions := map[string]bool{}
	for _, s := range streams {
		if _, err := names.ParseIngressStream(opt.Prefix, s); err == nil {
			partitions[s] = true
			continue
		}
		n, _ := c.XLen(ctx, s).Result()
		if pub := names.StreamPublisher(opt.Prefix, s); pub != "" {
			// A granted publisher's own stream: read when the matrix in
			// force names the publisher, which its consumer group shows.
			if groups, err := c.XInfoGroups(ctx, s).Result(); err != nil || len(groups) == 0 {
				out = append(out, Finding{Fail, node, "ingress", fmt.Sprintf("%s (%d entries) is publisher %s's stream, read by no router: add %s to the matrix's publishers section (routerd takes it up on reload)", s, n, pub, pub)})
			} else {
				partitions[s] = true
			}
			continue
		}
		out = append(out, Finding{Fail, node, "ingress", fmt.Sprintf("%s (%d entries) is read by no router: %s", s, n, unreadFix(opt.Prefix, s))})
	}
	n, err := c.Get(ctx, names.PartitionsKey(opt.Prefix)).Int()
	// A count that cannot be read (a user without GET, a value that is not
	// a count) is said so: not taken for a count of zero.
	unreadable := err != nil && !errors.Is(err, redis.Nil)
	if unreadable {
		out = append(out, Finding{Warn, node, "ingress", fmt.Sprintf("cannot read %s: %v; only the partition streams found are checked", names.PartitionsKey(opt.Prefix), err)})
		if len(partitions) == 0 {
			return out
		}
	} else if err != nil && len(partitions) == 0 {
		return append(out, Finding{OK, node, "ingress", fmt.Sprintf("no %s here: not a routerd bus, or routerd never ran", names.PartitionsKey(opt.Prefix))})
	}
	for p := 0; p < n; p++ {
		partitions[names.IngressStream(opt.Prefix, p)] = true
	}
	var lag, pending int64
	for _, s := range slices.Sorted(maps.Keys(partitions)) {
		groups, err := c.XInfoGroups(ctx, s).Result()
		if err != nil {
			out = append(out, Finding{Fail, node, "ingress", fmt.Sprintf("%s has no consumer group: %v (is routerd serve running? it takes up new partitions within a minute)", s, err)})
			continue
		}
		for _, g := range groups {
			lag += g.Lag
			pending += g.Pending
		}
	}
	if lag > opt.MaxLag {
		out = append(out, Finding{Fail, node, "ingress", fmt.Sprintf("%d events not yet routed over %d partition streams (pending %d): add routerd instances or find why they are slow", lag, len(partitions), pending)})
	} else {
		count := fmt.Sprintf("%d partitions (%d streams)", n, len(partitions))
		if unreadable {
			count = fmt.Sprintf("%d partition streams", len(partitions))
		}
		out = append(out, Finding{OK, node, "ingress", fmt.Sprintf("%s, lag %d, pending %d", count, lag, pending)})
	}
	for _, s := range []struct{ stream, what string }{
		{names.DeadLetterStream(opt.Prefix), "XRANGE it to see why they were refused; fix the cause, then routerd deadletter replay"},
		{names.InvalidDeadLetterStream(opt.Prefix), "malformed or too large: XRANGE it to see why; fix the publisher and publish them again (a replay only has them refused again)"},
	} {
		if dl, _ := c.XLen(ctx, s.stream).Result(); dl > 0 {
			events := "events"
			if dl == 1 {
				events = "event"
			}
			out = append(out, Finding{Warn, node, "deadletter", fmt.Sprintf("%d %s in %s: %s", dl, events, s.stream, s.what)})
		}
	}
	return out
}

// unreadFix says how to bring the events of a stream no router reads to one
// that a router reads.
func unreadFix(prefix, stream string) string {
	rest := strings.TrimPrefix(stream, prefix+":ingress:")
	if p, err := strconv.Atoi(rest); err == nil && p >= 0 && p < names.MaxPartitions && strconv.Itoa(p) == rest {
		to := names.IngressStream(prefix, p)
		return fmt.Sprintf("a partition's name has its number in braces: make its publisher write to %s (or use the publisher library), "+
			"then move its entries there (XRANGE %s - +, XADD %s * event <each entry's event>) and DEL it", to, stream, to)
	}
	return fmt.Sprintf("ingress partitions are named %s, p = FNV-1a-32(tenant) mod the count in %s: fix its publisher (or use the publisher library), "+
		"then re-publish its entries' events (routerd publish, or XADD to the tenant's partition) and DEL it",
		prefix+":ingress:{<p>}", names.PartitionsKey(prefix))
}
