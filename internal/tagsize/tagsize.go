// Package tagsize finds the largest tag sets of a cache Redis and how fast
// they grow: the agent samples them for its metrics (Sampler), and routerd
// doctor compares two of its runs (Growth). The cardinality guard sends a
// tag above it down the slow chunked path, so an operator wants to see a
// set approach it before it does.
package tagsize

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/names"
)

// Set is a tag set and its size: the members of its plain set and of its
// ref-registered set (names.TagRefsKey) together, as the cardinality guard
// counts a tag.
type Set struct {
	Key     string `json:"key"`
	Members int64  `json:"members"`
}

// Top returns the n largest of sizes (by key), largest first, ties by key.
func Top(sizes map[string]int64, n int) []Set {
	out := make([]Set, 0, len(sizes))
	for k, v := range sizes {
		out = append(out, Set{k, v})
	}
	slices.SortFunc(out, func(a, b Set) int {
		return cmp.Or(cmp.Compare(b.Members, a.Members), cmp.Compare(a.Key, b.Key))
	})
	return out[:min(len(out), n)]
}

// Growth is how much each set of cur grew since prev, taken elapsed
// earlier, in members per hour; a set not in prev is left out.
func Growth(prev, cur []Set, elapsed time.Duration) map[string]float64 {
	if elapsed <= 0 {
		return nil
	}
	before := make(map[string]int64, len(prev))
	for _, s := range prev {
		before[s.Key] = s.Members
	}
	out := map[string]float64{}
	for _, s := range cur {
		if b, ok := before[s.Key]; ok {
			out[s.Key] = float64(s.Members-b) / elapsed.Hours()
		}
	}
	return out
}

// Options configure a Sampler.
type Options struct {
	// N is how many of the largest sets are exported (5): the metrics have
	// one series per rank, never one per tag or tenant.
	N int
	// MaxSets bounds the sets one sample sizes (10,000): beyond it, the
	// tenants are a sample of the tenant registry.
	MaxSets int
	// Guard is the cardinality guard, exported beside the sizes.
	Guard      int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Sampler sizes, now and then, the tag sets of a service's tags for the
// tenants of the cache's tenant registry (names.CacheTenantsKey), and
// exports the N largest and their growth. It needs only what the cache
// role's ACL grants (SSCAN, SCARD): no keyspace scan.
type Sampler struct {
	c   redis.UniversalClient
	opt Options

	mu   sync.Mutex
	tags []string
	prev []Set
	at   time.Time

	members, growth *prometheus.GaugeVec
}

// NewSampler makes a Sampler of the sets of tags in c. Its metrics exist at
// zero from the start.
func NewSampler(c redis.UniversalClient, tags []string, opt Options) *Sampler {
	if opt.N <= 0 {
		opt.N = 5
	}
	if opt.MaxSets <= 0 {
		opt.MaxSets = 10000
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	f := promauto.With(opt.Registerer)
	s := &Sampler{c: c, opt: opt, tags: tags,
		members: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "subscriber_largest_tag_set_members",
			Help: "Members of the largest tag sets the service holds (plain and ref-registered), by rank (1 the largest), as last sampled."}, []string{"rank"}),
		growth: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "subscriber_largest_tag_set_growth_per_hour",
			Help: "Growth of the set at each rank since the sample before, in members per hour (0 for a set that was not among the largest then)."}, []string{"rank"}),
	}
	f.NewGauge(prometheus.GaugeOpts{
		Name: "subscriber_cardinality_guard", Help: "The cardinality guard: tags with more members are deleted in chunks."}).Set(float64(opt.Guard))
	for r := 1; r <= opt.N; r++ {
		s.members.WithLabelValues(strconv.Itoa(r))
		s.growth.WithLabelValues(strconv.Itoa(r))
	}
	return s
}

// SetTags changes the tags sampled (a matrix reload).
func (s *Sampler) SetTags(tags []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tags = tags
}

// Sample sizes the sets once and updates the metrics; it returns the
// largest.
func (s *Sampler) Sample(ctx context.Context) ([]Set, error) {
	s.mu.Lock()
	tags := s.tags
	s.mu.Unlock()
	if len(tags) == 0 {
		return nil, nil
	}
	tenants, err := s.tenants(ctx, max(1, s.opt.MaxSets/len(tags)))
	if err != nil {
		return nil, err
	}
	sizes := map[string]int64{}
	for chunk := range slices.Chunk(tenants, max(1, 500/len(tags))) {
		cmds, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, t := range chunk {
				for _, tag := range tags {
					p.SCard(ctx, names.TagSetKey(t, tag))
					p.SCard(ctx, names.TagRefsKey(t, tag))
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		i := 0
		for _, t := range chunk {
			for _, tag := range tags {
				if n := cmds[i].(*redis.IntCmd).Val() + cmds[i+1].(*redis.IntCmd).Val(); n > 0 {
					sizes[names.TagSetKey(t, tag)] = n
				}
				i += 2
			}
		}
	}
	top := Top(sizes, s.opt.N)
	now := time.Now()
	s.mu.Lock()
	grown := Growth(s.prev, top, now.Sub(s.at))
	s.prev, s.at = top, now
	s.mu.Unlock()
	for r := 1; r <= s.opt.N; r++ {
		var members, growth float64
		if r <= len(top) {
			members, growth = float64(top[r-1].Members), grown[top[r-1].Key]
		}
		s.members.WithLabelValues(strconv.Itoa(r)).Set(members)
		s.growth.WithLabelValues(strconv.Itoa(r)).Set(growth)
	}
	return top, nil
}

// tenants reads up to limit tenants of the cache's tenant registry.
func (s *Sampler) tenants(ctx context.Context, limit int) ([]string, error) {
	var out []string
	var cursor uint64
	for {
		batch, next, err := s.c.SScan(ctx, names.CacheTenantsKey(), cursor, "", 1000).Result()
		if err != nil {
			return nil, err
		}
		for _, t := range batch {
			if names.Tenant(t) == nil { // a registry member that is no tenant names no key
				out = append(out, t)
			}
		}
		if next == 0 || len(out) >= limit {
			return out[:min(len(out), limit)], nil
		}
		cursor = next
	}
}

// Run samples every interval until ctx ends; a failed sample is logged and
// the next one tried.
func (s *Sampler) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := s.Sample(ctx); err != nil && ctx.Err() == nil {
			s.opt.Logger.Warn("sampling the largest tag sets failed; trying again later", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
