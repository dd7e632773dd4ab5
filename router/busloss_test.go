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

// Under a backlog that never drains (publishers add faster than the group
// reads), an operator trims the ingress (XTRIM … MAXLEN), and a publisher
// trims it too (XADD … MAXLEN): the unread entries deleted are counted
// while the backlog lasts, each once, not when (if ever) the group catches
// up, and the lag exported is the backlog's.
func TestBusLossTrimUnderABacklogIsCountedWhileItLasts(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	logs := newLockedLog()
	r, stream := busLossRouter(t, c, logs, Options{})
	if err := c.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err(); err != nil {
		t.Fatal(err)
	}
	read := func(n int64, ack bool) {
		t.Helper()
		res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "routerd", Consumer: "me", Streams: []string{stream, ">"}, Count: n, Block: -1}).Result()
		if err != nil || len(res[0].Messages) != int(n) {
			t.Fatalf("read %v, %v; want %d entries", res, err, n)
		}
		if ack {
			for _, m := range res[0].Messages {
				if err := c.XAck(ctx, stream, "routerd", m.ID).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	counted := func(want float64, backlog int64) {
		t.Helper()
		if err := r.housekeeping(ctx); err != nil {
			t.Fatal(err)
		}
		if got := lostCount(t, r); got != want {
			g, _ := c.XInfoGroups(ctx, stream).Result()
			t.Fatalf("routerd_ingress_entries_lost_total = %v, want %v (the group: %+v); log:\n%s", got, want, g, logs.String())
		}
		var lag dto.Metric
		if err := r.m.lag.Write(&lag); err != nil {
			t.Fatal(err)
		}
		if got := lag.GetGauge().GetValue(); got != float64(backlog) {
			t.Fatalf("routerd_ingress_lag_entries = %v, want the backlog's %d", got, backlog)
		}
	}
	addEvents(t, c, stream, 10)
	read(5, true)
	// The operator's trim: the 5 read and the next 2 unread.
	if err := c.XTrimMaxLen(ctx, stream, 3).Err(); err != nil {
		t.Fatal(err)
	}
	addEvents(t, c, stream, 20)
	read(4, false) // the group reads on, past the trim; 19 left
	counted(2, 19)
	read(6, true)
	addEvents(t, c, stream, 5)
	counted(2, 18) // counted once
	// A publisher that caps the stream (XADD … MAXLEN 10): of the 29
	// entries with its own, 19 deleted: 4 pending (counted by the claim
	// that finds them), 6 acknowledged and 9 unread.
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, MaxLen: 10, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["k"]}`}}).Err(); err != nil {
		t.Fatal(err)
	}
	counted(11, 10) // before the group read again: the head is past what it read
	read(3, false)
	addEvents(t, c, stream, 2)
	counted(11, 9)
	read(9, true) // caught up
	counted(11, 0)
	if l := logs.lines("deleted before any router read them", "stream="+stream); len(l) != 2 {
		t.Errorf("%d warnings of entries deleted unread, want 2 (one for each trim); log:\n%s", len(l), logs.String())
	}
}

// A router works through a backlog (10,000 entries, read 16 to 256 at a
// time) and an operator trims the stream in the middle of it, deleting
// what the group read and 500 entries it had not: the loss is counted
// before the group catches up — housekeeping, which would count it once
// the group has caught up, does not run here (an hour's ClaimInterval) —
// and counted once (housekeeping after the drain adds nothing).
func TestBusLossTrimDuringASustainedBacklogIsCountedByTheReads(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	logs := newLockedLog()
	m := runMatrix(t)
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	r, err := New(c, m, Options{Consumer: "me", BatchSize: 16, ClaimInterval: time.Hour, Block: 50 * time.Millisecond, Registerer: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	// The partition count recorded already: the router's start asks for
	// no housekeeping round (countChecked).
	if err := c.Set(ctx, names.PartitionsKey(m.Prefix), m.Partitions, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for range 10000 {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["k"]}`}})
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stop := runRouter(t, r)
	defer stop()
	group := func() redis.XInfoGroup {
		g, err := c.XInfoGroups(ctx, stream).Result()
		if err != nil || len(g) != 1 {
			return redis.XInfoGroup{Lag: -1} // not made yet
		}
		return g[0]
	}
	redistest.Eventually(t, 10*time.Second, "the router reading the backlog", func() bool { return group().EntriesRead >= 500 })
	// The trim: every entry before the 501st the group has not read.
	const lost = 500
	trim := redis.NewScript(`
local last
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for i = 1, #g, 2 do
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
end
local left = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', ARGV[1] + 1)
if #left <= tonumber(ARGV[1]) then
  return -1
end
redis.call('XTRIM', KEYS[1], 'MINID', left[#left][1])
return #left - 1`)
	if n, err := trim.Run(ctx, c, []string{stream}, lost).Int(); err != nil || n != lost {
		t.Fatalf("the trim deleted %d unread entries (%v), want %d: the router drained the backlog first", n, err, lost)
	}
	redistest.Eventually(t, 20*time.Second, "the loss counted", func() bool { return lostCount(t, r) >= lost })
	redistest.Eventually(t, 20*time.Second, "the backlog drained", func() bool {
		g := group()
		return g.Lag == 0 && g.Pending == 0
	})
	stop()
	if err := r.housekeeping(ctx); err != nil {
		t.Fatal(err)
	}
	if got := lostCount(t, r); got != lost {
		t.Errorf("routerd_ingress_entries_lost_total = %v, want %d; log:\n%s", got, lost, lastLogLines(logs, 10))
	}
	if l := logs.lines("deleted before any router read them", "stream="+stream, "entries=500"); len(l) != 1 {
		t.Errorf("%d warnings name the stream and the 500 entries, want 1; log:\n%s", len(l), lastLogLines(logs, 10))
	}
}

func lastLogLines(l *lockedLog, n int) string {
	lines := strings.Split(strings.TrimSpace(l.String()), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// One trim deletes both entries a dead router held pending and entries no
// router had read: the claim counts the first, housekeeping the second,
// and the metric holds their sum, whatever runs first, each entry once.
func TestBusLossTrimOfPendingAndUnreadCountedOnce(t *testing.T) {
	ctx := context.Background()
	for _, claimFirst := range []bool{false, true} {
		c := redistest.Start(t).Client(t)
		logs := newLockedLog()
		r, stream := busLossRouter(t, c, logs, Options{ClaimIdle: time.Millisecond, DeadAfter: minDeadAfter})
		if err := c.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err(); err != nil {
			t.Fatal(err)
		}
		addEvents(t, c, stream, 10)
		if err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "routerd", Consumer: "dead", Streams: []string{stream, ">"}, Count: 4}).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.XTrimMaxLen(ctx, stream, 3).Err(); err != nil { // 4 pending, 3 unread
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond) // ClaimIdle
		steps := []func() error{func() error { return r.housekeeping(ctx) }, func() error { return r.claim(ctx, stream) }}
		if claimFirst {
			steps[0], steps[1] = steps[1], steps[0]
		}
		for _, step := range append(steps, steps...) {
			if err := step(); err != nil {
				t.Fatal(err)
			}
		}
		if got := lostCount(t, r); got != 7 {
			t.Errorf("claim first %v: routerd_ingress_entries_lost_total = %v, want 7 (4 pending, 3 unread); log:\n%s", claimFirst, got, logs.String())
		}
	}
}
