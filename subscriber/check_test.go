package subscriber

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// replyError is an error a Redis server answered, as go-redis gives it.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// Only WRONGTYPE is an error of one channel, skipped while the others
// settle: every other answer (the server loading, busy, failing over, or
// refusing) fails the check, which is retried and keeps the service not
// ready.
func TestChannelErrorIsWrongTypeAlone(t *testing.T) {
	for _, tc := range []struct {
		err     error
		channel bool
	}{
		{replyError("WRONGTYPE Operation against a key holding the wrong kind of value"), true},
		{fmt.Errorf("{c}:meta: %w", replyError("WRONGTYPE Operation against a key")), true},
		{replyError("LOADING Redis is loading the dataset in memory"), false},
		{replyError("BUSY Redis is busy running a script"), false},
		{replyError("TRYAGAIN Multiple keys request during rehashing of slot"), false},
		{replyError("CLUSTERDOWN The cluster is down"), false},
		{replyError("MASTERDOWN Link with MASTER is down"), false},
		{replyError("MOVED 3999 127.0.0.1:6381"), false},
		{replyError("NOPERM this user has no permissions to access one of the keys"), false},
		{errors.New("dial tcp: connection refused"), false},
		{redis.Nil, false},
	} {
		if got := isChannelError(tc.err); got != tc.channel {
			t.Errorf("isChannelError(%q) = %v, want %v", tc.err, got, tc.channel)
		}
	}
}

// A meta the bus refuses to read (NOPERM here, as a cluster master that is
// loading answers LOADING for its slots alone) fails the check; a meta of
// another type is its channel's error alone.
func TestCheckFailsOnAMetaTheBusRefuses(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	const ch = "invalidate:acme:active"
	must(t, admin.Set(ctx, names.GenerationKey("invalidate"), "g1", 0).Err())
	must(t, admin.Do(ctx, "ACL", "SETUSER", "sub", "on", ">pw", "+@all", "~invalidate:*", "~"+names.HistoryKey(ch)).Err())
	bus := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "sub", Password: "pw"})
	t.Cleanup(func() { _ = bus.Close() })
	s, err := New(bus, Options{Service: "profile-svc", Matrix: testMatrixParsed(t),
		Handler: func(context.Context, Invalidation) error { return nil }})
	must(t, err)
	if err := s.check(ctx); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("check = %v, want it failing on NOPERM", err)
	}
	must(t, admin.Do(ctx, "ACL", "SETUSER", "sub", "allkeys").Err())
	must(t, admin.Set(ctx, names.MetaKey(ch), "not a hash", 0).Err())
	if err := s.check(ctx); err != nil {
		t.Fatalf("check with a meta of another type = %v, want that channel skipped", err)
	}
	if n := count(t, s.m.positionErrors); n != 1 {
		t.Errorf("position errors counted %v, want 1", n)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// busLoss is a bus hook that changes the bus's generation right after the
// first pipeline of metas is read, as a bus that lost its data (or
// restarted from an older snapshot) between a check's first read of its
// identity and its decisions.
type busLoss struct {
	admin *redis.Client
	fired atomic.Bool
}

func (h *busLoss) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *busLoss) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}

func (h *busLoss) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if len(cmds) > 0 && cmds[0].Name() == "hmget" && h.fired.CompareAndSwap(false, true) {
			if err := h.admin.Set(ctx, names.GenerationKey("invalidate"), "g2", 0).Err(); err != nil {
				return err
			}
		}
		return err
	}
}

// A check whose bus changed identity between its first read of it and its
// decisions decides nothing on what it read: the metas may be of a bus that
// came back without what the service saw, a new epoch at version 1 hiding
// a lost one. It checks again, sees the loss, and drops the whole tag of
// the channel it holds no position on, where it would have replayed
// version 1 alone under the identity it started with.
func TestCheckRedoneWhenTheBusChangesDuringIt(t *testing.T) {
	f := newExec(t, false)
	delete(f.s.pos, execChannel)
	const ch = "invalidate:acme:active"
	admin := f.cache
	run := admin.InfoMap(f.ctx, "server").Item("Server", "run_id")
	must(t, admin.Set(f.ctx, names.GenerationKey("invalidate"), "g1", 0).Err())
	must(t, f.s.store.RecordGeneration(f.ctx, "profile-svc", tagstore.BusIdentity("g1", []string{run})))
	raw, err := json.Marshal(&wire.Message{Tenant: "acme", Tag: "active", Epoch: "e2", Version: 1, Keys: []string{"user:1"}, Event: "ev1"})
	must(t, err)
	must(t, admin.XAdd(f.ctx, &redis.XAddArgs{Stream: names.HistoryKey(ch), ID: "1-0", Values: []any{names.HistoryField, string(raw)}}).Err())
	must(t, admin.HSet(f.ctx, names.MetaKey(ch), "epoch", "e2", "version", 1).Err())
	keys := f.cached(t, "user:1", "user:2")
	f.s.bus.(*redis.Client).AddHook(&busLoss{admin: admin})

	if err := f.s.check(f.ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.left(t, keys...); n != 0 {
		t.Errorf("%d values left: want the whole tag, the bus changed during the check", n)
	}
	if got, want := admin.Get(f.ctx, names.GenerationSeenKey("profile-svc")).Val(), tagstore.BusIdentity("g2", []string{run}); got != want {
		t.Errorf("recorded %q, want the identity the redone check saw, %q", got, want)
	}
}

// A FLUSHALL, FLUSHDB or SWAPDB that neither restarts the server nor takes the
// generation (a cluster master that does not hold it) still changes the
// bus's identity: it counts in the server's part of it.
func TestBusIdentityCountsFlushes(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	before, err := runIDs(ctx, c)
	must(t, err)
	run := c.InfoMap(ctx, "server").Item("Server", "run_id")
	if len(before) != 1 || before[0] != run {
		t.Fatalf("identity of a server that never flushed: %v, want its run_id %q alone", before, run)
	}
	must(t, c.FlushDB(ctx).Err())
	must(t, c.FlushAll(ctx).Err())
	must(t, c.Do(ctx, "SWAPDB", 0, 1).Err())
	after, err := runIDs(ctx, c)
	must(t, err)
	if want := run + "+flushes=3"; len(after) != 1 || after[0] != want {
		t.Fatalf("identity after a FLUSHDB, a FLUSHALL and a SWAPDB: %v, want %q", after, want)
	}
}

// A gap seen live is one gap: the message that shows it and the check it
// asks for count it once between them.
func TestLiveGapCountedOnce(t *testing.T) {
	f := newExec(t, false)
	const ch = "invalidate:acme:active"
	f.s.pos[ch] = f.p
	admin := f.cache
	run := admin.InfoMap(f.ctx, "server").Item("Server", "run_id")
	must(t, admin.Set(f.ctx, names.GenerationKey("invalidate"), "g1", 0).Err())
	must(t, f.s.store.RecordGeneration(f.ctx, "profile-svc", tagstore.BusIdentity("g1", []string{run})))
	f.s.seenGeneration = tagstore.BusIdentity("g1", []string{run})
	var chain string
	var last []byte
	for v := int64(1); v <= 3; v++ {
		raw, err := json.Marshal(&wire.Message{Tenant: "acme", Tag: "active", Epoch: "e1", Version: v, Keys: []string{fmt.Sprint("user:", v)}, Event: fmt.Sprint("ev", v)})
		must(t, err)
		must(t, admin.XAdd(f.ctx, &redis.XAddArgs{Stream: names.HistoryKey(ch), ID: fmt.Sprint(v, "-0"), Values: []any{names.HistoryField, string(raw)}}).Err())
		chain = recovery.Link(chain, raw)
		if v == 1 {
			f.p.at = recovery.Position{Epoch: "e1", Version: 1, Chain: chain}
		}
		last = raw
	}
	must(t, admin.HSet(f.ctx, names.MetaKey(ch), "epoch", "e1", "version", 3, "chain", "e1:3:"+chain).Err())
	keys := f.cached(t, "user:2", "user:3")

	// Version 2's PUBLISH was lost; version 3 arrives.
	must(t, f.s.handleBurst(f.ctx, &redis.Message{Channel: ch, Payload: string(last)}))
	if n := f.left(t, keys...); n != 0 {
		t.Fatalf("%d values left: versions 2 and 3 must be applied", n)
	}
	if got := count(t, f.s.m.gaps); got != 1 {
		t.Errorf("subscriber_gaps_total = %v for one lost message, want 1", got)
	}
}

// The first messages of many new channels received in one burst (tenants
// onboarded at once; every channel after the bus lost its data) are
// checked together, not a check's round trips per channel while the other
// channels wait; a channel's later message in the same burst is handled
// after its check, in order; and every one of them is applied.
func TestFirstMessagesOfABurstAreCheckedTogether(t *testing.T) {
	const tenants = 40
	f := newBurst(t, tenants, true, false)
	// Each channel published version 1; t0's channel version 2 as well.
	var burst []*redis.Message
	for i := range tenants {
		tenant := fmt.Sprint("t", i)
		f.cached(t, tenant, "user:1")
		burst = append(burst, f.publish(t, tenant, 1, "user:1"))
	}
	f.cached(t, "t0", "user:2")
	burst = append(burst, f.publish(t, "t0", 2, "user:2"))

	must(t, f.bus.ConfigResetStat(f.ctx).Err())
	must(t, f.burst(burst...))

	for i := range tenants {
		tenant := fmt.Sprint("t", i)
		last := int64(1)
		if i == 0 {
			last = 2
		}
		if left := f.left(t, tenant, "user:1", "user:2"); len(left) > 0 {
			t.Fatalf("%s: %v still cached: its messages were not applied", tenant, left)
		}
		if p := f.stored(t, tenant); p.Epoch != "e-"+tenant || p.Version != last {
			t.Errorf("%s's stored position %+v, want e-%s:%d", tenant, p, tenant, last)
		}
	}
	// A check reads the bus's identity (INFO) twice: once for the burst,
	// not once or twice per channel.
	calls := int64(0)
	if line := f.bus.InfoMap(f.ctx, "commandstats").Item("Commandstats", "cmdstat_info"); line != "" {
		_, err := fmt.Sscanf(line, "calls=%d,", &calls)
		must(t, err)
	}
	t.Logf("INFO calls: %d", calls)
	if calls > 12 {
		t.Errorf("the burst's checks called INFO %d times for %d channels: checked one channel at a time", calls, tenants)
	}
}
