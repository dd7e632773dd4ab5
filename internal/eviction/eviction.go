// Package eviction holds the one rule of which Redis maxmemory-policy can
// evict what invalidation depends on. routerd doctor reports it; the
// subscriber (and so routerd agent) refuses to report ready on a cache Redis
// whose policy breaks it, unless the operator accepted the risk.
package eviction

import (
	"fmt"
	"strings"
)

// EvictsUntimed reports whether policy may evict keys without a time to
// live: tag sets, positions, the indexes (on a cache Redis) and channel
// metas, histories and ingress streams (on the bus). An evicted tag set
// leaves its values cached with nothing left to find them by.
func EvictsUntimed(policy string) bool { return strings.HasPrefix(policy, "allkeys-") }

// EvictsTimed reports whether policy may evict keys that have a time to
// live: the entity reference sets, which expire with their values and so
// may be evicted before them.
func EvictsTimed(policy string) bool {
	return strings.HasPrefix(policy, "volatile-") || EvictsUntimed(policy)
}

// CacheProblem says why policy is unsafe on a service's cache Redis, or ""
// when it is safe. refs: entity references are in use (a domain with
// entity_refs), whose sets expire with their values.
func CacheProblem(policy string, refs bool) string {
	switch {
	case EvictsUntimed(policy):
		return fmt.Sprintf("maxmemory-policy %s can evict tag sets, whose values then stay cached past their invalidation: CONFIG SET maxmemory-policy noeviction (or volatile-lru with TTLs on cached values)", policy)
	case refs && EvictsTimed(policy):
		return fmt.Sprintf("maxmemory-policy %s with entity references in use: a reference set expires with its values, so Redis may evict it before them and an entity-level invalidation then misses them: CONFIG SET maxmemory-policy noeviction", policy)
	}
	return ""
}
