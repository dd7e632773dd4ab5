// Package redisconn opens Redis clients from the command line's URLs: one
// URL for a standalone server, or a comma-separated list of seed nodes (or
// --cluster) for Redis Cluster. URLs follow go-redis (redis://, rediss://,
// user and password, db).
package redisconn

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Open returns a client for urls. cluster forces Redis Cluster even with one seed.
func Open(urls string, cluster bool) (redis.UniversalClient, error) {
	var list []string
	for _, u := range strings.Split(urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			list = append(list, u)
		}
	}
	if len(list) == 0 {
		return nil, errors.New("no Redis URL given")
	}
	opts := make([]*redis.Options, len(list))
	for i, u := range list {
		o, err := redis.ParseURL(u)
		if err != nil {
			return nil, fmt.Errorf("redis URL %q: %w", redact(u), err)
		}
		opts[i] = o
	}
	if !cluster && len(list) == 1 {
		return redis.NewClient(opts[0]), nil
	}
	first := opts[0]
	if first.DB != 0 {
		return nil, fmt.Errorf("redis URL %q: Redis Cluster has only db 0", redact(list[0]))
	}
	addrs := make([]string, len(opts))
	for i, o := range opts {
		addrs[i] = o.Addr
	}
	return redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: addrs, Username: first.Username, Password: first.Password, TLSConfig: first.TLSConfig,
		// Notice a failover in seconds, not the default minute.
		ClusterStateReloadInterval: 2 * time.Second,
	}), nil
}

// IsCluster reports whether the client is a Redis Cluster client. It is the
// one place that tells a cluster from one server: sharded pub/sub, calls
// grouped by slot and per-master work all follow from it.
func IsCluster(c redis.UniversalClient) bool { return Cluster(c) != nil }

// Cluster returns the Redis Cluster client behind c, or nil when c talks to
// one server.
func Cluster(c redis.UniversalClient) *redis.ClusterClient {
	cc, _ := c.(*redis.ClusterClient)
	return cc
}

// Masters returns the servers that hold the data behind c: every master of a
// cluster (as the client knows them now), or the one server.
func Masters(ctx context.Context, c redis.UniversalClient) ([]*redis.Client, error) {
	switch c := c.(type) {
	case *redis.Client:
		return []*redis.Client{c}, nil
	case *redis.ClusterClient:
		var mu sync.Mutex // ForEachMaster calls back concurrently
		var nodes []*redis.Client
		err := c.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
			mu.Lock()
			nodes = append(nodes, n)
			mu.Unlock()
			return nil
		})
		if err != nil {
			return nil, err
		}
		sort.Slice(nodes, func(i, j int) bool { return nodes[i].Options().Addr < nodes[j].Options().Addr })
		return nodes, nil
	default:
		return nil, fmt.Errorf("redisconn: unsupported Redis client %T", c)
	}
}

// ScanStreams returns the names of the streams matching pattern (a SCAN
// MATCH pattern) on every master behind c, sorted and each once. It walks
// the whole keyspace with SCAN: for discovery now and then, not per event.
func ScanStreams(ctx context.Context, c redis.UniversalClient, pattern string) ([]string, error) {
	masters, err := Masters(ctx, c)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, m := range masters {
		iter := m.ScanType(ctx, 0, pattern, 1000, "stream").Iterator()
		for iter.Next(ctx) {
			seen[iter.Val()] = true
		}
		if err := iter.Err(); err != nil {
			return nil, fmt.Errorf("%s: SCAN: %w", m.Options().Addr, err)
		}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

// redact hides the password of a URL for error messages.
func redact(u string) string {
	at := strings.LastIndex(u, "@")
	scheme := strings.Index(u, "://")
	if at < 0 || scheme < 0 {
		return u
	}
	return u[:scheme+3] + "***" + u[at:]
}
