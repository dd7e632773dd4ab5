// Package shard finds the master that owns a key — the standalone server, or
// a cluster master — and what routerd needs to know of it to make writes
// durable: how many replicas it has. (Epochs follow the master's
// replication id, which the publish script reads on the server itself: an
// id looked up beforehand could be from before a restart.)
package shard

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"

	"github.com/routerd/routerd/internal/redisconn"
)

// WaitCmd is a WAIT for n replicas within timeout, to end a pipeline with.
func WaitCmd(ctx context.Context, n int, timeout time.Duration) *redis.IntCmd {
	return redis.NewIntCmd(ctx, "wait", n, timeout.Milliseconds())
}

// Shard is one master. Writes that must survive a failover end their
// pipeline with WAIT 1 when the master has a replica.
type Shard struct {
	// C is the master's node client (the client itself for one server).
	// Send through Pipelined, not on C: a cluster client's hooks see
	// nothing sent on C.
	C *redis.Client
	// via is the client the Set was given, whose hooks the shard's calls
	// pass (redisconn.OnNode).
	via redis.UniversalClient

	mu       sync.Mutex
	replicas int64
	at       time.Time // when replicas was read; zero: ask again
	gen      uint64    // Forget's count: an INFO sent before the last Forget is not kept
	info     singleflight.Group
}

// infoTTL is how long a shard's replica count is used.
const infoTTL = 2 * time.Second

// Replicas returns the number of replicas connected to the shard's master.
// Callers that find no fresh count share one INFO: none holds a lock
// across the network, and each waits for the shared INFO only until its
// own ctx ends (a stalled master holds every caller for its ctx, not for
// the client's read timeout once per caller in turn). The INFO goes on
// without a caller's cancel, within the client's own timeouts, and its
// count serves the callers after it.
func (s *Shard) Replicas(ctx context.Context) (int64, error) {
	s.mu.Lock()
	if !s.at.IsZero() && time.Since(s.at) < infoTTL {
		n := s.replicas
		s.mu.Unlock()
		return n, nil
	}
	gen := s.gen
	s.mu.Unlock()
	ask := context.WithoutCancel(ctx)
	// Keyed by gen: a caller after a Forget does not take an answer sent
	// before it.
	ch := s.info.DoChan(strconv.FormatUint(gen, 10), func() (any, error) { return s.ask(ask, gen) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return 0, r.Err
		}
		return r.Val.(int64), nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// ask reads the master's replica count with INFO and keeps it, unless
// Forget was called since gen.
func (s *Shard) ask(ctx context.Context, gen uint64) (int64, error) {
	ctx, c := redisconn.OnNode(ctx, s.via, s.C)
	info, err := c.InfoMap(ctx, "replication").Result()
	if err != nil {
		return 0, err
	}
	repl := info["Replication"]
	if role := repl["role"]; role != "master" {
		return 0, fmt.Errorf("%s is a %s, not a master", s.C.Options().Addr, role)
	}
	replicas, _ := strconv.ParseInt(repl["connected_slaves"], 10, 64)
	s.mu.Lock()
	if s.gen == gen {
		s.replicas, s.at = replicas, time.Now()
	}
	s.mu.Unlock()
	return replicas, nil
}

// Pipelined runs fn's commands in one pipeline on the master, on one of its
// connections and in order, through the client the Set was given: on a
// cluster, that client's hooks see them (redisconn.OnNode) and its slot
// routing, redirects and retries do not apply.
func (s *Shard) Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error) {
	ctx, c := redisconn.OnNode(ctx, s.via, s.C)
	return c.Pipelined(ctx, fn)
}

// Recount is for a write whose WAIT acknowledged fewer replicas than
// Replicas said: it forgets the count and reads it again at once. A
// failover behind a client that stays the same (a Sentinel failover
// client) leaves the count of the old master in use for up to infoTTL,
// and the new master may have no replica yet: 0 then says the write is one
// to a master without replica, which a durable write does not wait for,
// rather than one a replica failed to acknowledge.
func (s *Shard) Recount(ctx context.Context) (int64, error) {
	s.Forget()
	return s.Replicas(ctx)
}

// Forget makes the next Replicas call ask the server again.
func (s *Shard) Forget() {
	s.mu.Lock()
	s.at = time.Time{}
	s.gen++
	s.mu.Unlock()
}

// Set maps masters to their Shard; for a standalone server there is one.
type Set struct {
	C      redis.UniversalClient
	mu     sync.Mutex
	byAddr map[string]*Shard
}

// Of returns the shard that owns a key's (or sharded channel's) slot.
func (ss *Set) Of(ctx context.Context, key string) (*Shard, error) {
	var node *redis.Client
	if cc := redisconn.Cluster(ss.C); cc != nil {
		n, err := cc.MasterForKey(ctx, key)
		if err != nil {
			return nil, err
		}
		node = n
	} else if c, ok := ss.C.(*redis.Client); ok {
		node = c
	} else {
		return nil, fmt.Errorf("shard: unsupported Redis client %T", ss.C)
	}
	return ss.of(node), nil
}

// of returns the shard of a master's node client.
func (ss *Set) of(node *redis.Client) *Shard {
	addr := node.Options().Addr
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.byAddr == nil {
		ss.byAddr = map[string]*Shard{}
	}
	sh := ss.byAddr[addr]
	if sh == nil || sh.C != node {
		sh = &Shard{C: node, via: ss.C}
		ss.byAddr[addr] = sh
	}
	return sh
}

// At returns the shard of the master at addr, as a cluster's redirect
// (MOVED, ASK) names it: the cluster client's own node of that address, a
// master or a replica it knew before a failover promoted it. A node the
// client does not know yet (one just added) is an error; the slot map is
// read again, so a later call finds it.
func (ss *Set) At(ctx context.Context, addr string) (*Shard, error) {
	cc := redisconn.Cluster(ss.C)
	if cc == nil {
		return nil, fmt.Errorf("shard: redirected to %s, but the client is not a cluster client", addr)
	}
	var mu sync.Mutex // ForEachShard calls back concurrently
	var node *redis.Client
	err := cc.ForEachShard(ctx, func(_ context.Context, n *redis.Client) error {
		if sameAddr(n.Options().Addr, addr) {
			mu.Lock()
			node = n
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if node == nil {
		cc.ReloadState(ctx)
		return nil, fmt.Errorf("shard: redirected to %s, a node the cluster client does not know yet", addr)
	}
	return ss.of(node), nil
}

// MaxRedirects is how many redirects a write follows: the cluster client's
// MaxRedirects (3 by default), 0 for one server.
func (ss *Set) MaxRedirects() int {
	if cc := redisconn.Cluster(ss.C); cc != nil {
		return cc.Options().MaxRedirects
	}
	return 0
}

// sameAddr reports whether two host:port addresses are the same, an IPv6
// host with brackets or without (a redirect's may have none).
func sameAddr(a, b string) bool {
	norm := func(addr string) string {
		i := strings.LastIndexByte(addr, ':')
		if i < 0 {
			return addr
		}
		return net.JoinHostPort(strings.Trim(addr[:i], "[]"), addr[i+1:])
	}
	return norm(a) == norm(b)
}

// Moved tells the set that a write to a shard failed (a redirect, a dead
// master): on a cluster it reloads the slot map so the next Of finds the
// master that owns the slot now.
func (ss *Set) Moved(ctx context.Context) {
	if cc := redisconn.Cluster(ss.C); cc != nil {
		cc.ReloadState(ctx)
	}
}
