package router

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// A consumer is silent when two listings of its stream's consumers, a touch
// apart, find it idle for DeadAfter, and nothing it did in between: one
// listing is not enough, since a replica promoted by a failover (or a Redis
// restarted from its file) knows of each consumer only its last read that
// delivered entries, not its touches.
func TestSilence(t *testing.T) {
	const deadAfter = 5 * time.Second
	t0 := time.Unix(1_000_000, 0)
	type listing struct {
		at     time.Duration // after t0
		idle   time.Duration
		silent bool
	}
	for _, tc := range []struct {
		name     string
		listings []listing
	}{
		{"dead: idle twice, a touch apart", []listing{{0, 6 * time.Second, false}, {time.Second, 7 * time.Second, true}}},
		{"idle twice, less than a touch apart", []listing{{0, 6 * time.Second, false}, {500 * time.Millisecond, 6500 * time.Millisecond, false}, {time.Second, 7 * time.Second, true}}},
		{"touched in between (the stale idle of a new master)", []listing{{0, 10 * time.Second, false}, {time.Second, 200 * time.Millisecond, false}, {2 * time.Second, 1200 * time.Millisecond, false}}},
		{"read in between, silent again", []listing{{0, 6 * time.Second, false}, {time.Second, 500 * time.Millisecond, false}, {6 * time.Second, 5500 * time.Millisecond, false}, {7 * time.Second, 6500 * time.Millisecond, true}}},
		{"touched between listings further apart than DeadAfter", []listing{{0, 6 * time.Second, false}, {7 * time.Second, 5 * time.Second, false}, {8 * time.Second, 6 * time.Second, true}}},
		{"round trips blur the instant", []listing{{0, 6 * time.Second, false}, {time.Second, 6800 * time.Millisecond, true}}},
		{"never idle for DeadAfter", []listing{{0, 4 * time.Second, false}, {time.Second, 4900 * time.Millisecond, false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := silence{}
			for i, l := range tc.listings {
				got := s.silent("stream", []redis.XInfoConsumer{{Name: "other", Pending: 1, Idle: l.idle}}, "me", deadAfter, t0.Add(l.at))
				if (len(got) == 1) != l.silent {
					t.Fatalf("listing %d (%+v): silent %v, want %v", i, l, got, l.silent)
				}
			}
		})
	}
	s := silence{}
	for range 2 {
		for _, c := range []redis.XInfoConsumer{{Name: "me", Pending: 1, Idle: time.Hour}, {Name: "idle", Idle: time.Hour}} {
			if got := s.silent("stream", []redis.XInfoConsumer{c}, "me", deadAfter, t0); len(got) != 0 {
				t.Errorf("%+v found silent: this router itself, or one holding nothing", c)
			}
		}
	}
}

// A router found idle for DeadAfter by the first listing is not taken for
// dead on it (after a failover every router that did not read lately
// looks so); the claim takes its entries when a later listing finds it
// still silent.
func TestClaimTakesARouterForDeadOnTwoListings(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	m := runMatrix(t)
	stream := readBy(t, c, m, "other")
	r, err := New(c, m, Options{Consumer: "me", DeadAfter: time.Second, ClaimIdle: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r.streams = []string{stream}
	pendingFor := func(consumer string) int {
		p, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "routerd", Start: "-", End: "+", Count: 10, Consumer: consumer}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return len(p)
	}
	redistest.Eventually(t, 10*time.Second, "the other router silent for DeadAfter", func() bool {
		cs, err := c.XInfoConsumers(ctx, stream, "routerd").Result()
		return err == nil && len(cs) == 1 && cs[0].Idle >= r.opt.DeadAfter
	})
	if err := r.claim(ctx, stream); err != nil {
		t.Fatal(err)
	}
	if pendingFor("other") != 1 {
		t.Fatal("the other router's entry was claimed on the first listing that found it silent")
	}
	redistest.Eventually(t, 10*time.Second, "the silent router's entry claimed", func() bool {
		if err := r.claim(ctx, stream); err != nil {
			t.Fatal(err)
		}
		return pendingFor("other") == 0
	})
}

// readBy appends an event of acme to its ingress stream and has
// consumer read it (the group made first), as a router that read it and
// went silent; it returns the stream.
func readBy(t *testing.T, c *redis.Client, m *matrix.Matrix, consumer string) string {
	t.Helper()
	ctx := context.Background()
	stream := names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	if err := c.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["k"]}`}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Do(ctx, "XREADGROUP", "GROUP", "routerd", consumer, "COUNT", 1, "STREAMS", stream, ">").Err(); err != nil {
		t.Fatal(err)
	}
	return stream
}
