package router

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

func reasons(ps []Problem) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Reason
	}
	return out
}

// A bus that refuses the router's publishes (an ACL without PUBLISH) makes
// it not ready (publishing_failing) within seconds, though it answers pings
// and reads; it is ready again once a batch publishes. An entry's own error
// (a channel's meta key of another type) is not the bus refusing: the
// router stays ready while it dead-letters the entry.
func TestProblemsTellPublishingRefused(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	m := runMatrix(t)
	r, err := New(c, m, Options{Block: 50 * time.Millisecond, DeadLetterAfter: 1})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { cancel(); <-done }()
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)

	publish := func(tenant string) {
		t.Helper()
		ev, err := json.Marshal(wire.Event{ID: "ev-" + tenant, Tenant: tenant, Domain: "user", Keys: []string{"user:1"}, TS: time.Now().UnixMilli()})
		if err != nil {
			t.Fatal(err)
		}
		stream := names.IngressStream(m.Prefix, wire.Partition(tenant, m.Partitions))
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"event", ev}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	acl := func(rules ...any) {
		t.Helper()
		if err := c.Do(ctx, append([]any{"ACL", "SETUSER", "default"}, rules...)...).Err(); err != nil {
			t.Fatal(err)
		}
	}

	acl("-publish", "-spublish")
	publish("acme")
	redistest.Eventually(t, 10*time.Second, "publishing_failing while the bus refuses PUBLISH", func() bool {
		return slices.Contains(reasons(r.Problems()), ReasonPublishingFailing)
	})
	acl("+publish", "+spublish")
	redistest.Eventually(t, 10*time.Second, "ready once a batch publishes", r.Ready)

	channel := names.Channel(m.Prefix, "globex", "a")
	if err := c.Set(ctx, names.MetaKey(channel), "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	publish("globex")
	redistest.Eventually(t, 10*time.Second, "the entry dead-lettered poison", func() bool {
		return c.XLen(ctx, names.DeadLetterStream(m.Prefix)).Val() == 1
	})
	if f := r.health.publishing.Load(); f != nil {
		t.Errorf("an entry's own error counted as publishing failing: %s", f.err)
	}
}

// The live routers' hash overwritten with a string (the heartbeat answers
// WRONGTYPE): the router replaces it and registers again, and the steps
// after the heartbeat still run: the pending entries are exported.
func TestHousekeepingReplacesLiveRoutersOfAnotherType(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	m := runMatrix(t)
	r, err := New(c, m, Options{Block: 50 * time.Millisecond, ClaimInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { cancel(); <-done }()
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)

	if err := c.Set(ctx, names.RoutersKey(m.Prefix), "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// An entry another consumer of the group read and holds: pending.
	stream := names.IngressStream(m.Prefix, 0)
	// In one transaction, so this router cannot read it first.
	if _, err := c.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"event", "{}"}})
		pipe.XReadGroup(ctx, &redis.XReadGroupArgs{Group: r.opt.Group, Consumer: "other", Streams: []string{stream, ">"}, Count: 1, Block: -1})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the pending entry exported", func() bool {
		var g dto.Metric
		if err := r.m.pending.Write(&g); err != nil {
			t.Fatal(err)
		}
		return g.GetGauge().GetValue() == 1
	})
	redistest.Eventually(t, 10*time.Second, "the live routers' key replaced, with this router's registration", func() bool {
		v, err := c.HGet(ctx, names.RoutersKey(m.Prefix), r.opt.Consumer).Result()
		return err == nil && v != ""
	})
	var replaced dto.Metric
	if err := r.m.replaced.WithLabelValues(KeyLiveRouters).Write(&replaced); err != nil {
		t.Fatal(err)
	}
	if replaced.GetCounter().GetValue() < 1 {
		t.Error("routerd_internal_keys_replaced_total{internal_key=live_routers} did not count the replacement")
	}
}
