// Package shard finds the master that owns a key — the standalone server, or
// a cluster master — and what routerd needs to know of it to make writes
// durable: how many replicas it has. (Epochs follow the master's
// replication id, which the publish script reads on the server itself: an
// id looked up beforehand could be from before a restart.)
package shard

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redisconn"
)

// WaitCmd is a WAIT for n replicas within timeout, to end a pipeline with.
func WaitCmd(ctx context.Context, n int, timeout time.Duration) *redis.IntCmd {
	return redis.NewIntCmd(ctx, "wait", n, timeout.Milliseconds())
}

// Shard is one master. Writes that must survive a failover end their
// pipeline on C with WAIT 1 when the master has a replica.
type Shard struct {
	C *redis.Client

	mu       sync.Mutex
	replicas int64
	at       time.Time
}

// infoTTL is how long a shard's replica count is used.
const infoTTL = 2 * time.Second

// Replicas returns the number of replicas connected to the shard's master.
func (s *Shard) Replicas(ctx context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.at.IsZero() && time.Since(s.at) < infoTTL {
		return s.replicas, nil
	}
	info, err := s.C.InfoMap(ctx, "replication").Result()
	if err != nil {
		return 0, err
	}
	repl := info["Replication"]
	if role := repl["role"]; role != "master" {
		return 0, fmt.Errorf("%s is a %s, not a master", s.C.Options().Addr, role)
	}
	replicas, _ := strconv.ParseInt(repl["connected_slaves"], 10, 64)
	s.replicas, s.at = replicas, time.Now()
	return replicas, nil
}

// Forget makes the next Replicas call ask the server again.
func (s *Shard) Forget() {
	s.mu.Lock()
	s.at = time.Time{}
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
	addr := node.Options().Addr
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.byAddr == nil {
		ss.byAddr = map[string]*Shard{}
	}
	sh := ss.byAddr[addr]
	if sh == nil || sh.C != node {
		sh = &Shard{C: node}
		ss.byAddr[addr] = sh
	}
	return sh, nil
}

// Moved tells the set that a write to a shard failed (a redirect, a dead
// master): on a cluster it reloads the slot map so the next Of finds the
// master that owns the slot now.
func (ss *Set) Moved(ctx context.Context) {
	if cc := redisconn.Cluster(ss.C); cc != nil {
		cc.ReloadState(ctx)
	}
}
