package subscriber

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

const testMatrix = `
version: 1
tags:
  active: {services: [profile-svc]}
domains:
  user: {tags: [active]}
services:
  profile-svc: {tenants: [acme]}
`

func testMatrixParsed(t *testing.T) *matrix.Matrix {
	t.Helper()
	m, err := matrix.Parse("test.yaml", []byte(testMatrix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestNewRefusesBadOptions(t *testing.T) {
	bus := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer bus.Close()
	m := testMatrixParsed(t)
	noop := func(context.Context, Invalidation) error { return nil }
	for _, tc := range []struct {
		name string
		opt  Options
		want string
	}{
		{"no matrix", Options{Service: "profile-svc", Handler: noop}, "matrix is required"},
		{"bad service name", Options{Service: "bad name", Matrix: m, Handler: noop}, "service"},
		{"service not in the matrix", Options{Service: "other-svc", Matrix: m, Handler: noop}, "not in the matrix"},
		{"nowhere to apply", Options{Service: "profile-svc", Matrix: m}, "set Cache, Handler or both"},
		{"negative interval", Options{Service: "profile-svc", Matrix: m, Handler: noop, CheckInterval: -time.Second}, "negative check interval"},
		{"negative rate", Options{Service: "profile-svc", Matrix: m, Handler: noop, ApplyRate: -1}, "must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(bus, tc.opt)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// Run runs once at a time, and leaves no goroutine or timer behind.
func TestRunOnceAndStopsClean(t *testing.T) {
	srv := redistest.Start(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent()) // the server's process waiter ends at cleanup
	bus := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer bus.Close()
	must(t, bus.Set(context.Background(), names.GenerationKey("invalidate"), "g1", 0).Err()) // as a router marks it: ready needs it
	s, err := New(bus, Options{Service: "profile-svc", Matrix: testMatrixParsed(t),
		Handler: func(context.Context, Invalidation) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	redistest.Eventually(t, 10*time.Second, "subscriber ready", s.Ready)
	if err := s.Run(ctx); !errors.Is(err, ErrRunning) {
		t.Errorf("a second Run = %v, want ErrRunning", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v after cancel, want nil", err)
	}
	if s.Ready() {
		t.Error("still ready after Run returned")
	}
}

// A message with refs and no keys is entity-level and drops the tag's plain
// values too, whether it says "plain" or not: a router older than the field
// sent it without, and taken literally it dropped the values cached by
// reference only (plain values stayed; a receiver with no reference index
// dropped nothing).
func TestRefsWithoutKeysArePlain(t *testing.T) {
	for _, tc := range []struct {
		msg   wire.Message
		plain bool
	}{
		{wire.Message{Refs: []string{"user/1042"}}, true},
		{wire.Message{Refs: []string{"user/1042"}, Plain: true}, true},
		{wire.Message{Refs: []string{"user/1042"}, Keys: []string{"user:1042"}}, false},
		{wire.Message{Keys: []string{"user:1042"}}, false},
		{wire.Message{}, false}, // whole tag
	} {
		if got := messageInvalidation(&tc.msg, "").Plain; got != tc.plain {
			t.Errorf("%+v: plain %v, want %v", tc.msg, got, tc.plain)
		}
	}
}

// lockedBuffer is testbin.Buffer: written by a process or a logger while the test reads.
type lockedBuffer = testbin.Buffer

// A subscriber embedded without a Logger logs to slog.Default(): a service
// that set none used to see nothing, and a correct whole-tag repair looked
// like a lost precision.
func TestNoLoggerLogsToDefault(t *testing.T) {
	srv := redistest.Start(t)
	var buf lockedBuffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(prev)
	bus := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer bus.Close()
	s, err := New(bus, Options{Service: "profile-svc", Matrix: testMatrixParsed(t),
		Handler: func(context.Context, Invalidation) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	redistest.Eventually(t, 10*time.Second, "the subscriber's start logged to slog.Default()", func() bool {
		return strings.Contains(buf.String(), "msg=subscribed") && strings.Contains(buf.String(), "service=profile-svc")
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

// A shard keeps nothing for a tenant announced that another instance owns:
// its channels are never checked here, so a mark of them as heard was
// never taken back (a map growing with every new tenant of the k-1 others).
func TestShardKeepsNothingOfOthersAnnouncedTenants(t *testing.T) {
	bus := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer bus.Close()
	m, err := matrix.Parse("test.yaml", []byte(strings.Replace(testMatrix, "tenants: [acme]", "tenants: all", 1)))
	if err != nil {
		t.Fatal(err)
	}
	shard := wire.TenantShard{I: 0, K: 2}
	s, err := New(bus, Options{Service: "profile-svc", Matrix: m, TenantShard: shard,
		Handler: func(context.Context, Invalidation) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	others := 0
	for i := 0; i < 50; i++ {
		tenant := fmt.Sprintf("t%d", i)
		if shard.Owns(tenant) {
			continue // announced() would subscribe: needs a running listener
		}
		others++
		if err := s.handle(context.Background(), &redis.Message{Channel: names.TenantsChannel(s.prefix), Payload: tenant}); err != nil {
			t.Fatal(err)
		}
	}
	if others == 0 {
		t.Fatal("no tenant of the other shard among 50")
	}
	if len(s.heard) != 0 {
		t.Errorf("%d channels of the other shard's %d tenants kept as heard", len(s.heard), others)
	}
}

// Ready only once a position check started after every subscription was
// confirmed: the first check can run while one connection still subscribes
// (the connections confirm one by one), and what is published on its
// channels until then is missed and recovered by the check its
// confirmation asks for. Ready before that check, a service reads values
// the check has yet to invalidate; and a message published then on a
// channel the check finds at version 1 is replayed, not taken live
// (TestClusterManyChannelsPerMaster's "gaps").
func TestNotReadyUntilACheckCoversEverySubscription(t *testing.T) {
	srv := redistest.Start(t)
	bus := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer bus.Close()
	ctx := context.Background()
	must(t, bus.Set(ctx, names.GenerationKey("invalidate"), "g1", 0).Err()) // as a router marks it
	s, err := New(bus, Options{Service: "profile-svc", Matrix: testMatrixParsed(t), CheckInterval: time.Hour,
		Handler: func(context.Context, Invalidation) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	s.running.Store(true)
	// Two connections of one channel each, as a regroup starts them.
	a, b := &conn{}, &conn{}
	for _, c := range []*conn{a, b} {
		c.expected.Store(1)
		c.heard.Store(time.Now().UnixNano())
		s.health.addLink(c)
	}
	ck := newChecker()
	defer ck.retry.Stop()

	a.held.Store(1)
	s.confirmed(a, 1)
	s.runCheck(ctx, ck) // b still subscribing
	b.held.Store(1)
	s.confirmed(b, 1) // asks for the check that covers b's channel
	if s.Ready() {
		t.Fatal("ready with every subscription confirmed, before the check that covers the last one ran")
	}
	if p := s.Problems(); len(p) != 1 || p[0].Reason != ReasonSubscribing {
		t.Errorf("problems %v, want one of reason %s", p, ReasonSubscribing)
	}
	select {
	case <-s.checkReq:
		s.requestCheck() // still asked for
	default:
		t.Fatal("no check asked for after the last confirmation")
	}
	s.runCheck(ctx, ck)
	if p := s.Problems(); len(p) != 0 {
		t.Fatalf("not ready after the check that covers every subscription: %v", p)
	}
	// A connection lost and subscribed again: not ready again until the
	// check its confirmation asks for.
	b.held.Store(0)
	b.held.Store(1)
	s.confirmed(b, 1)
	if s.Ready() {
		t.Error("ready after a resubscription, before the check that covers it ran")
	}
	s.runCheck(ctx, ck)
	if p := s.Problems(); len(p) != 0 {
		t.Errorf("not ready after the check that covers the resubscription: %v", p)
	}
}
