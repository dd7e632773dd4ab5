package wire

import (
	"fmt"
	"strconv"
	"strings"
)

// TenantShard is one instance's share of the tenants when k instances of a
// service split them (routerd agent --tenant-shard i/k,
// subscriber.Options.TenantShard): the tenants whose Partition(tenant, K) is
// I — the hash that spreads tenants over ingress partitions, so one rule
// says where a tenant goes. Every tenant belongs to exactly one of the k
// shards 0/k … k-1/k. The zero value takes every tenant.
type TenantShard struct {
	I, K int
}

// MaxTenantShards bounds K.
const MaxTenantShards = 4096

// ParseTenantShard parses "i/k": 0 ≤ i < k ≤ MaxTenantShards.
func ParseTenantShard(s string) (TenantShard, error) {
	is, ks, ok := strings.Cut(s, "/")
	if !ok {
		return TenantShard{}, fmt.Errorf("tenant shard %q: want i/k, this instance's number i of k instances (0/4 … 3/4)", s)
	}
	i, err := strconv.Atoi(is)
	if err != nil {
		return TenantShard{}, fmt.Errorf("tenant shard %q: i is not a number", s)
	}
	k, err := strconv.Atoi(ks)
	if err != nil {
		return TenantShard{}, fmt.Errorf("tenant shard %q: k is not a number", s)
	}
	sh := TenantShard{I: i, K: k}
	if err := sh.check(); err != nil {
		return TenantShard{}, fmt.Errorf("tenant shard %q: %w", s, err)
	}
	return sh, nil
}

// Check reports a shard that is not one of k: k below 1 or above
// MaxTenantShards, i outside 0…k-1. The zero value is valid.
func (s TenantShard) Check() error {
	if s == (TenantShard{}) {
		return nil
	}
	return s.check()
}

func (s TenantShard) check() error {
	if s.K < 1 || s.K > MaxTenantShards {
		return fmt.Errorf("k must be 1 to %d instances, not %d", MaxTenantShards, s.K)
	}
	if s.I < 0 || s.I >= s.K {
		return fmt.Errorf("i must be 0 to %d (instances are numbered from 0), not %d", s.K-1, s.I)
	}
	return nil
}

// Owns reports whether the tenant is in the shard.
func (s TenantShard) Owns(tenant string) bool {
	return s.K <= 1 || Partition(tenant, s.K) == s.I
}

// String is "i/k", or "all" for the zero value.
func (s TenantShard) String() string {
	if s == (TenantShard{}) {
		return "all"
	}
	return strconv.Itoa(s.I) + "/" + strconv.Itoa(s.K)
}
