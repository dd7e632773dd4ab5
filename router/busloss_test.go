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
