package router

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// busLossRouter is a router (not run) on the stream of acme, logging into
// logs, its metrics in a registry of its own.
func busLossRouter(t *testing.T, c redis.UniversalClient, logs *lockedLog, opt Options) (*Router, string) {
	t.Helper()
	m := runMatrix(t)
	opt.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	opt.Registerer = prometheus.NewRegistry()
	if opt.Consumer == "" {
		opt.Consumer = "me"
	}
	r, err := New(c, m, opt)
	if err != nil {
		t.Fatal(err)
	}
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	r.streams = []string{stream}
	return r, stream
}

// lockedLog is a log the router writes while the test reads it.
type lockedLog struct {
	mu  chan struct{}
	buf strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	if l.mu == nil {
		panic("lockedLog not made with newLockedLog")
	}
	l.mu <- struct{}{}
	defer func() { <-l.mu }()
	return l.buf.Write(p)
}

func (l *lockedLog) String() string {
	l.mu <- struct{}{}
	defer func() { <-l.mu }()
	return l.buf.String()
}

func newLockedLog() *lockedLog { return &lockedLog{mu: make(chan struct{}, 1)} }

// lines returns the lines of the log that hold every one of parts.
func (l *lockedLog) lines(parts ...string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		all := line != ""
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}

// addEvents appends n events of acme to stream, returning their ids.
func addEvents(t *testing.T, c redis.UniversalClient, stream string, n int) []string {
	t.Helper()
	var ids []string
	for range n {
		id, err := c.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["k"]}`}}).Result()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// A router died with entries pending (read, not acknowledged) and an
// operator deleted two of them by hand (XDEL): the claim that takes the
// dead router's entries finds them gone and acknowledges them. That loss
// is counted in routerd_ingress_entries_lost_total and logged once for the
// claim round (the stream, how many), and housekeeping's check of entries
// deleted unread does not count them again.
func TestBusLossPendingEntriesDeletedAreCountedOnceWhenClaimed(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	logs := newLockedLog()
	r, stream := busLossRouter(t, c, logs, Options{ClaimIdle: time.Millisecond, DeadAfter: minDeadAfter, BatchSize: 2})
	if err := c.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err(); err != nil {
		t.Fatal(err)
	}
	ids := addEvents(t, c, stream, 5)
	if err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "routerd", Consumer: "dead", Streams: []string{stream, ">"}, Count: 5}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.XDel(ctx, stream, ids[1], ids[3]).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond) // ClaimIdle
	if err := r.claim(ctx, stream); err != nil {
		t.Fatal(err)
	}
	if n, err := c.XPending(ctx, stream, "routerd").Result(); err != nil || n.Count != 0 {
		t.Fatalf("pending after the claim: %+v, %v", n, err)
	}
	if got := lostCount(t, r); got != 2 {
		t.Errorf("routerd_ingress_entries_lost_total = %v after the claim, want 2", got)
	}
	if l := logs.lines("stream="+stream, "entries=2", "deleted"); len(l) != 1 {
		t.Errorf("%d log lines name the stream and the 2 entries deleted while pending, want 1; log:\n%s", len(l), logs.String())
	}
	// Housekeeping, twice: nothing more is counted.
	for range 2 {
		if err := r.housekeeping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := lostCount(t, r); got != 2 {
		t.Errorf("routerd_ingress_entries_lost_total = %v after housekeeping, want 2 (counted once)", got)
	}
}

// lostCount is routerd_ingress_entries_lost_total.
func lostCount(t *testing.T, r *Router) float64 {
	t.Helper()
	var m dto.Metric
	if err := r.m.lost.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A bus stream's slot moves to another master while routers run (a
// resharding: CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE of the stream,
// then SETSLOT NODE). The claims run on a client that retries nothing
// (onceOnly); while the stream is on the new master and the slot still
// migrating the old one answers ASK, and once the slot is moved it answers
// MOVED to a client whose slot map is older. Neither means the claim ran:
// the claim round follows the redirect and takes the dead router's
// entries, with no error, in both states.
func TestBusLossClaimFollowsASlotMigration(t *testing.T) {
	ctx := context.Background()
	cl := redistest.StartCluster(t, 3, 1)
	c := cl.Client(t)
	logs := newLockedLog()
	r, stream := busLossRouter(t, c, logs, Options{ClaimIdle: time.Millisecond, DeadAfter: minDeadAfter})
	r.claimC = onceOnly(c)
	defer r.claimC.Close()
	if err := c.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err(); err != nil {
		t.Fatal(err)
	}
	deadRead := func() {
		t.Helper()
		addEvents(t, c, stream, 3)
		if err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "routerd", Consumer: "dead", Streams: []string{stream, ">"}, Count: 10}).Err(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond) // ClaimIdle
	}
	claimed := func(state string) {
		t.Helper()
		// The claims' client has seen the slot map of before.
		if err := r.claim(ctx, stream); err != nil {
			t.Fatalf("%s: the claim round failed: %v", state, err)
		}
		p, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "routerd", Start: "-", End: "+", Count: 10, Consumer: "dead"}).Result()
		if err != nil || len(p) != 0 {
			t.Fatalf("%s: the dead router's entries left pending: %v, %v", state, p, err)
		}
	}
	deadRead()
	claimed("before") // the claims' client learns the slot map

	from, err := c.MasterForKey(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	slot, err := c.ClusterKeySlot(ctx, stream).Result()
	if err != nil {
		t.Fatal(err)
	}
	var to *redis.Client
	var masters []*redis.Client
	for _, n := range cl.Nodes {
		nc := redis.NewClient(&redis.Options{Addr: n.Addr})
		defer nc.Close()
		if info, err := nc.Info(ctx, "replication").Result(); err == nil && strings.Contains(info, "role:master") {
			masters = append(masters, nc)
			if n.Addr != from.Options().Addr && to == nil {
				to = nc
			}
		}
	}
	fromC := redis.NewClient(&redis.Options{Addr: from.Options().Addr})
	defer fromC.Close()
	fromID, _ := fromC.ClusterMyID(ctx).Result()
	toID, _ := to.ClusterMyID(ctx).Result()
	do := func(c *redis.Client, args ...any) {
		t.Helper()
		if err := c.Do(ctx, args...).Err(); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	deadRead()
	do(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID)
	do(fromC, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID)
	host, port, _ := strings.Cut(to.Options().Addr, ":")
	do(fromC, "MIGRATE", host, port, "", 0, 5000, "KEYS", stream)
	claimed("stream migrated, slot migrating (ASK)")

	deadRead()
	for _, m := range masters {
		do(m, "CLUSTER", "SETSLOT", slot, "NODE", toID)
	}
	claimed("slot moved (MOVED)")
	if l := logs.lines("level=ERROR"); len(l) > 0 {
		t.Errorf("errors logged:\n%s", strings.Join(l, "\n"))
	}
}
