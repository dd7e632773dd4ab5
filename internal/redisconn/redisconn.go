// Package redisconn opens Redis clients from the command line's URLs: one
// URL for a standalone server, or a comma-separated list of seed nodes (or
// --cluster) for Redis Cluster. URLs follow go-redis (redis://, rediss://,
// user and password, db).
package redisconn

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Open returns a client for urls. cluster forces Redis Cluster even with one seed.
//
// A standalone URL is read by redis.ParseURL, a cluster's by
// redis.ParseClusterURL, so every option go-redis knows in a URL's query
// (dial_timeout, read_timeout, pool_size, max_redirects, addr=<more seeds>, …)
// reaches the client, and an unknown one is an error. Comma-separated seeds
// take the first URL's options and credentials: a later seed may repeat the
// credentials but not change them, and carries no options of its own.
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
	if !cluster && len(list) == 1 {
		o, err := redis.ParseURL(list[0])
		if err != nil {
			return nil, urlError(list[0], err)
		}
		return redis.NewClient(o), nil
	}
	var opt *redis.ClusterOptions
	for i, u := range list {
		o, query, err := parseSeed(u)
		if err != nil {
			return nil, urlError(u, err)
		}
		if i == 0 {
			opt = o
			continue
		}
		switch {
		case query != "":
			return nil, fmt.Errorf("redis URL %q: options go on the first URL only", redact(u))
		case (o.Username != "" || o.Password != "") && (o.Username != opt.Username || o.Password != opt.Password),
			(o.TLSConfig != nil) != (opt.TLSConfig != nil):
			return nil, fmt.Errorf("redis URL %q: the credentials and scheme of every seed must be the first URL's", redact(u))
		}
		opt.Addrs = append(opt.Addrs, o.Addrs...)
	}
	// Notice a failover in seconds, not the default minute.
	opt.ClusterStateReloadInterval = 2 * time.Second
	return redis.NewClusterClient(opt), nil
}

// parseSeed reads one cluster seed URL. redis.ParseClusterURL ignores the
// path, so a db other than 0, which a cluster does not have, is refused here.
// query is the URL's raw query.
func parseSeed(u string) (o *redis.ClusterOptions, query string, err error) {
	pu, err := url.Parse(u)
	if err != nil {
		return nil, "", err
	}
	if db := strings.Trim(pu.Path, "/"); db != "" && db != "0" {
		return nil, "", errors.New("a Redis Cluster has only db 0")
	}
	o, err = redis.ParseClusterURL(u)
	return o, pu.RawQuery, err
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

// urlError names the URL, without its password, in err; net/url's own
// errors quote the whole URL, so only their cause is kept.
func urlError(u string, err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	return fmt.Errorf("redis URL %q: %w", redact(u), err)
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
