package router

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// readBefore is a go-redis hook that runs read once, just before the first
// command the client sends for which when is true.
type readBefore struct {
	once sync.Once
	when func(args []any) bool
	read func()
}

func (*readBefore) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *readBefore) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.when(cmd.Args()) {
			h.once.Do(h.read)
		}
		return next(ctx, cmd)
	}
}

func (h *readBefore) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			if h.when(cmd.Args()) {
				h.once.Do(h.read)
			}
		}
		return next(ctx, cmds)
	}
}

// isCmd reports whether args are the command name (and subcommand sub).
func isCmd(args []any, name, sub string) bool {
	return len(args) >= 2 && strings.EqualFold(fmt.Sprint(args[0]), name) && strings.EqualFold(fmt.Sprint(args[1]), sub)
}

// forgetSetup is a router "me" whose ForgetConsumers is short, on a
// stream whose group has four idle consumers: holder holds an entry, me,
// paused and gone hold nothing, and two entries wait to be read. The router
// connects as the Redis user given ("": the default user). readPaused
// reads them as paused; left lists the group's consumers and what each
// holds.
func forgetSetup(t *testing.T, user string) (r *Router, c *redis.Client, stream string, readPaused func(), left func() map[string]int64) {
	ctx := context.Background()
	srv := redistest.Start(t)
	other := srv.Client(t)
	c = srv.Client(t)
	if user != "" {
		if err := other.Do(ctx, "ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all", "-evalsha").Err(); err != nil {
			t.Fatal(err)
		}
		c = redis.NewClient(&redis.Options{Addr: srv.Addr, Username: user, Password: "secret"})
		t.Cleanup(func() { _ = c.Close() })
	}
	m := runMatrix(t)
	stream = names.IngressStream(m.Prefix, wire.Partition("acme", m.Partitions))
	if err := other.XGroupCreateMkStream(ctx, stream, "routerd", "0").Err(); err != nil {
		t.Fatal(err)
	}
	const idle = 20 * time.Millisecond
	r, err := New(c, m, Options{Consumer: "me", ForgetConsumers: idle})
	if err != nil {
		t.Fatal(err)
	}
	add := func() {
		t.Helper()
		if err := other.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["k"]}`}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	read := func(consumer string, count int64) {
		t.Helper()
		if err := other.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "routerd", Consumer: consumer, Streams: []string{stream, ">"}, Count: count, Block: -1}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	add()
	read("holder", 1)
	for _, name := range []string{"me", "paused", "gone"} {
		if err := other.XGroupCreateConsumer(ctx, stream, "routerd", name).Err(); err != nil {
			t.Fatal(err)
		}
	}
	add()
	add()
	redistest.Eventually(t, 10*time.Second, "every consumer idle", func() bool {
		cs, err := other.XInfoConsumers(ctx, stream, "routerd").Result()
		if err != nil || len(cs) != 4 {
			return false
		}
		for _, c := range cs {
			if c.Idle < 2*idle {
				return false
			}
		}
		return true
	})
	left = func() map[string]int64 {
		t.Helper()
		cs, err := other.XInfoConsumers(ctx, stream, "routerd").Result()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]int64{}
		for _, c := range cs {
			m[c.Name] = c.Pending
		}
		return m
	}
	return r, c, stream, func() { read("paused", 10) }, left
}

// A consumer found idle, with nothing pending, that reads before it is
// deleted (a router paused past ForgetConsumers, SIGSTOP or a CLIENT
// PAUSE that held its reads, resuming) keeps what it read: the check and
// XGROUP DELCONSUMER are one step, since the delete takes the consumer's
// pending entries out of the group, never claimed nor routed, and not
// counted as lost. Consumers still idle with nothing pending are removed;
// one holding entries is left for the claim, and the router's own consumer
// stays whatever its idle time.
func TestForgetConsumersKeepsAConsumerThatReadMeanwhile(t *testing.T) {
	r, c, stream, readPaused, left := forgetSetup(t, "")
	// paused resumes as the router forgets consumers: its read lands after
	// whatever the router asks before its first write.
	c.AddHook(&readBefore{when: func(args []any) bool { return !isCmd(args, "xinfo", "consumers") }, read: readPaused})
	if err := r.forgetConsumers(context.Background(), stream); err != nil {
		t.Fatal(err)
	}
	got := left()
	if p, ok := got["paused"]; !ok || p != 2 {
		t.Errorf("after the consumer read two entries as the router forgot consumers, it holds %d (kept: %v), want 2: lost %v entries, uncounted", p, ok, lostCount(t, r))
	}
	if p, ok := got["holder"]; !ok || p != 1 {
		t.Errorf("the consumer holding an entry holds %d (kept: %v), want 1", p, ok)
	}
	if _, ok := got["me"]; !ok {
		t.Errorf("the router's own consumer was removed")
	}
	if _, ok := got["gone"]; ok {
		t.Errorf("the idle consumer holding nothing was kept")
	}
	if n := lostCount(t, r); n != 0 {
		t.Errorf("routerd_ingress_entries_lost_total = %v, want 0", n)
	}
}

// A Redis user that may not run lua/forget.lua (EVALSHA refused: not one
// of routerd acl's) still has idle consumers removed, with a check and a
// delete apart: what a consumer read in between is lost, and counted in
// routerd_ingress_entries_lost_total. Here paused reads after the check
// (one XINFO CONSUMERS for all), before the first delete (gone's).
func TestForgetConsumersApartCountsWhatTheDeleteTook(t *testing.T) {
	ctx := context.Background()
	r, c, stream, readPaused, left := forgetSetup(t, "older")
	c.AddHook(&readBefore{when: func(args []any) bool { return isCmd(args, "xgroup", "delconsumer") }, read: readPaused})
	if err := r.forgetConsumers(ctx, stream); err != nil {
		t.Fatal(err)
	}
	got := left()
	if _, ok := got["gone"]; ok {
		t.Errorf("the idle consumer holding nothing was kept")
	}
	if p, ok := got["holder"]; !ok || p != 1 {
		t.Errorf("the consumer holding an entry holds %d (kept: %v), want 1", p, ok)
	}
	if _, ok := got["me"]; !ok {
		t.Errorf("the router's own consumer was removed")
	}
	if _, ok := got["paused"]; ok {
		t.Errorf("the consumer found idle was kept: the read did not land between the check and its delete")
	}
	if n := lostCount(t, r); n != 2 {
		t.Errorf("the consumer that read two entries was removed with them; routerd_ingress_entries_lost_total = %v, want 2", n)
	}
}
