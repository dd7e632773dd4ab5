package subscriber

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// Attacks on the burst's deferred checks (handle, verifyAll): a channel's
// message that needs a check waits for the end of the burst, with what its
// channel received after it. These tests hand the subscriber bursts exactly
// as the bus would deliver them, forged messages among them as a raw
// client's PUBLISH makes them, against a bus and a cache Redis of their own.

// burstFixture is a subscriber of service svc on tag active of tenants
// t0…tn-1, with a bus and (unless handler only) a cache Redis of its own,
// the bus marked and its identity seen by the service; cacheArgs are the
// cache's redis-server arguments.
type burstFixture struct {
	ctx    context.Context
	bus    *redis.Client // the admin's: histories, metas, ACLs
	cache  *redis.Client // nil for a Handler alone
	sub    *redis.Client // the subscriber's bus client, user "sub"
	s      *Subscriber
	chains map[string]string

	mu      sync.Mutex
	handled []Invalidation
	fail    error            // the Handler's answer
	refuse  map[string]error // the Handler's answer for a tenant's invalidations
}

func newBurst(t *testing.T, tenants int, cache, handler bool, cacheArgs ...string) *burstFixture {
	t.Helper()
	var y strings.Builder
	y.WriteString("version: 1\ntags:\n  active: {services: [svc]}\ndomains:\n  user: {tags: [active]}\nservices:\n  svc: {tenants: [")
	for i := range tenants {
		if i > 0 {
			y.WriteString(", ")
		}
		fmt.Fprintf(&y, "t%d", i)
	}
	y.WriteString("]}\n")
	m, err := matrix.Parse("m.yaml", []byte(y.String()))
	must(t, err)
	busSrv := redistest.Start(t)
	f := &burstFixture{ctx: context.Background(), bus: busSrv.Client(t), chains: map[string]string{}}
	must(t, f.bus.Do(f.ctx, "ACL", "SETUSER", "sub", "on", ">pw", "+@all", "allkeys", "allchannels").Err())
	f.sub = redis.NewClient(&redis.Options{Addr: busSrv.Addr, Username: "sub", Password: "pw"})
	t.Cleanup(func() { _ = f.sub.Close() })
	opt := Options{Service: "svc", Matrix: m, Buffer: 1024, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if cache {
		f.cache = redistest.Start(t, cacheArgs...).Client(t)
		opt.Cache = f.cache
	}
	if handler {
		opt.Handler = func(_ context.Context, inv Invalidation) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.fail != nil {
				return f.fail
			}
			if err := f.refuse[inv.Tenant]; err != nil {
				return err
			}
			f.handled = append(f.handled, inv)
			return nil
		}
	}
	f.s, err = New(f.sub, opt)
	must(t, err)
	must(t, f.bus.Set(f.ctx, names.GenerationKey("invalidate"), "g1", 0).Err())
	f.seen(t)
	return f
}

// seen records the bus's identity as the service's last complete check
// would have.
func (f *burstFixture) seen(t *testing.T) {
	t.Helper()
	runs, err := runIDs(f.ctx, f.bus)
	must(t, err)
	g, err := f.bus.Get(f.ctx, names.GenerationKey("invalidate")).Result()
	must(t, err)
	gen := tagstore.BusIdentity(g, runs)
	if f.s.store != nil {
		must(t, f.s.store.RecordGeneration(f.ctx, "svc", gen))
	}
	f.s.seenGeneration = gen
}

func burstChannel(tenant string) string { return names.Channel("invalidate", tenant, "active") }

// publish publishes version v of the tenant's channel as the router does
// (history, then meta with the chain), and returns the message as
// received.
func (f *burstFixture) publish(t *testing.T, tenant string, v int64, keys ...string) *redis.Message {
	t.Helper()
	ch := burstChannel(tenant)
	raw, err := json.Marshal(&wire.Message{Tenant: tenant, Tag: "active", Epoch: "e-" + tenant, Version: v, Keys: keys, Event: fmt.Sprint(tenant, "/", v)})
	must(t, err)
	must(t, f.bus.XAdd(f.ctx, &redis.XAddArgs{Stream: names.HistoryKey(ch), ID: fmt.Sprint(v, "-0"), Values: []any{names.HistoryField, string(raw)}}).Err())
	f.chains[ch] = recovery.Link(f.chains[ch], raw)
	must(t, f.bus.HSet(f.ctx, names.MetaKey(ch), "epoch", "e-"+tenant, "version", v, "chain", fmt.Sprintf("e-%s:%d:%s", tenant, v, f.chains[ch])).Err())
	return &redis.Message{Channel: ch, Payload: string(raw)}
}

// forged is a message a raw client PUBLISHes on the tenant's channel: in
// no history, confirmed by no meta.
func forged(t *testing.T, tenant, epoch string, v int64, event string, keys ...string) *redis.Message {
	t.Helper()
	raw, err := json.Marshal(&wire.Message{Tenant: tenant, Tag: "active", Epoch: epoch, Version: v, Keys: keys, Event: event})
	must(t, err)
	return &redis.Message{Channel: burstChannel(tenant), Payload: string(raw)}
}

// burst hands the subscriber the messages as one burst.
func (f *burstFixture) burst(msgs ...*redis.Message) error {
	for _, m := range msgs[1:] {
		f.s.in <- m
	}
	return f.s.handleBurst(f.ctx, msgs[0])
}

func (f *burstFixture) cached(t *testing.T, tenant string, keys ...string) {
	t.Helper()
	for _, k := range keys {
		must(t, f.s.store.Set(f.ctx, tenant, k, []byte("v"), time.Hour, "active"))
	}
}

// left lists the keys of the tenant still cached.
func (f *burstFixture) left(t *testing.T, tenant string, keys ...string) []string {
	t.Helper()
	var out []string
	for _, k := range keys {
		if _, err := f.s.store.Get(f.ctx, tenant, k); err == nil {
			out = append(out, k)
		} else if !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
	}
	return out
}

func (f *burstFixture) stored(t *testing.T, tenant string) tagstore.Position {
	t.Helper()
	p, _, err := f.s.store.ReadPosition(f.ctx, tenant, "svc", "active")
	must(t, err)
	return p
}

// refusing makes the Handler refuse the tenant's invalidations with err.
func (f *burstFixture) refusing(tenant string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuse = map[string]error{tenant: err}
}

// versions lists, per tenant, the versions the Handler was given.
func (f *burstFixture) versions() map[string][]int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	got := map[string][]int64{}
	for _, inv := range f.handled {
		got[inv.Tenant] = append(got[inv.Tenant], inv.Version)
	}
	return got
}

// A burst mixing forged and genuine messages around channels' pending
// checks: a forged first message of another epoch before the real first
// one, a forged version far ahead queued behind a pending check, a forged
// copy of a version just checked, and a forged first message of a channel
// that never published. Every genuine message is applied, each channel
// ends at its meta and no further, and no forged message moves a position.
func TestForgedMessagesAroundPendingChecks(t *testing.T) {
	f := newBurst(t, 4, true, false)
	t0v1 := f.publish(t, "t0", 1, "k0-1")
	t0v2 := f.publish(t, "t0", 2, "k0-2")
	t1v1 := f.publish(t, "t1", 1, "k1-1")
	t3v1 := f.publish(t, "t3", 1, "k3-1")
	f.publish(t, "t3", 2, "k3-2") // its PUBLISH lost
	t3v3 := f.publish(t, "t3", 3, "k3-3")
	f.cached(t, "t0", "k0-1", "k0-2")
	f.cached(t, "t1", "k1-1", "f1-1")
	f.cached(t, "t2", "f2-1")
	f.cached(t, "t3", "k3-1", "k3-2", "k3-3", "f3-9")

	err := f.burst(
		forged(t, "t0", "evil", 1, "x/1", "f0-1"), // makes t0's check
		t1v1,
		t0v1,
		forged(t, "t2", "evil", 1, "x/2", "f2-1"), // t2 never published
		forged(t, "t0", "e-t0", 9, "x/3", "f0-9"), // far ahead, behind t0's pending check
		t3v1,
		forged(t, "t1", "e-t1", 1, "x/4", "f1-1"), // another message at t1's version 1
		t0v2,
		t3v3, // version 2 lost: a gap, after t3's pending check
		forged(t, "t3", "e-t3", 9, "x/5", "f3-9"),
	)
	must(t, err)

	for tenant, keys := range map[string][]string{"t0": {"k0-1", "k0-2"}, "t1": {"k1-1"}, "t3": {"k3-1", "k3-2", "k3-3"}} {
		if left := f.left(t, tenant, keys...); len(left) > 0 {
			t.Errorf("%s: %v still cached: a genuine message of the burst was not applied", tenant, left)
		}
	}
	for tenant, want := range map[string]int64{"t0": 2, "t1": 1, "t3": 3} {
		if p := f.stored(t, tenant); p.Epoch != "e-"+tenant || p.Version != want {
			t.Errorf("%s stored at %s:%d, want its meta e-%s:%d", tenant, p.Epoch, p.Version, tenant, want)
		}
	}
	if p := f.stored(t, "t2"); p.Epoch != "" || p.Version != 0 {
		t.Errorf("t2, which never published, stored at %s:%d: a forged message moved its position", p.Epoch, p.Version)
	}
	// Confirmed by nothing, they delete nothing where no recovery had to
	// go whole: t1's and t2's forged keys, and t3's (replayed).
	for tenant, key := range map[string]string{"t1": "f1-1", "t2": "f2-1", "t3": "f3-9"} {
		if left := f.left(t, tenant, key); len(left) == 0 {
			t.Errorf("%s: %s, named by a forged message alone, was invalidated", tenant, key)
		}
	}
	if n := count(t, f.s.m.unconfirmed); n < 4 {
		t.Errorf("unconfirmed messages counted %v, want at least 4 (t0's two, t2's, t3's; t1's is contested)", n)
	}
	// The next check finds every channel where the burst left it.
	gaps := count(t, f.s.m.gaps)
	must(t, f.s.check(f.ctx))
	if n := count(t, f.s.m.gaps); n != gaps {
		t.Errorf("the check after the burst found %v more gaps: the burst left a channel off its meta", n-gaps)
	}
}

// A channel whose message after a lost PUBLISH is deferred, followed in
// the same burst by many more — one delivered twice, and a forged one far
// ahead among them, which takes a second round of checks with genuine ones
// behind it — gets every version to the Handler once, in order, and the
// cache follows; so do the first messages of other channels in the burst.
func TestMessagesBehindAPendingCheckInOrderOnce(t *testing.T) {
	for _, cache := range []bool{true, false} {
		t.Run(fmt.Sprint("cache=", cache), func(t *testing.T) {
			f := newBurst(t, 3, cache, true)
			must(t, f.burst(f.publish(t, "t0", 1, "k1")))
			var live []*redis.Message
			const last = 40
			for v := int64(2); v <= last; v++ {
				m := f.publish(t, "t0", v, fmt.Sprint("k", v))
				switch v {
				case 17: // lost
				case 23:
					live = append(live, m, m) // delivered twice
				case 30:
					live = append(live, m, forged(t, "t0", "e-t0", 99, "x/99", "f99"), live[len(live)-1])
				default:
					live = append(live, m)
				}
			}
			t1 := f.publish(t, "t1", 1, "k1")
			t2 := f.publish(t, "t2", 1, "k1")
			burst := append([]*redis.Message{live[0], t1}, live[1:20]...)
			burst = append(append(burst, t2), live[20:]...)
			must(t, f.burst(burst...))

			versions := f.versions()
			var want []int64
			for v := int64(1); v <= last; v++ {
				want = append(want, v)
			}
			if fmt.Sprint(versions["t0"]) != fmt.Sprint(want) {
				t.Errorf("t0's versions handled: %v\nwant each of 1…%d once, in order", versions["t0"], last)
			}
			for _, tenant := range []string{"t1", "t2"} {
				if fmt.Sprint(versions[tenant]) != "[1]" {
					t.Errorf("%s's versions handled: %v, want [1]", tenant, versions[tenant])
				}
			}
			if cache {
				if p := f.stored(t, "t0"); p.Version != last {
					t.Errorf("t0 stored at version %d, want %d", p.Version, last)
				}
			}
			if n := count(t, f.s.m.unconfirmed); n != 1 {
				t.Errorf("unconfirmed counted %v, want 1 (the forged version 99)", n)
			}
		})
	}
}

// The burst's check fails for every deferred channel (the bus refuses the
// histories, the Handler fails): the burst says so (the applier then
// retries a full check), and the messages its channels received after the
// deferred ones, dropped with it, are applied by that check once the bus
// or the Handler is back. Nothing stays cached, no version is skipped.
func TestFailedBurstCheckLeavesNothingBehind(t *testing.T) {
	const tenants = 200 // most of a burst of maxBatch
	for _, tc := range []struct {
		name           string
		cache, handler bool
		refuse, allow  func(f *burstFixture) error
	}{
		{"bus refuses the histories", true, false,
			func(f *burstFixture) error { return f.bus.Do(f.ctx, "ACL", "SETUSER", "sub", "-xrange").Err() },
			func(f *burstFixture) error { return f.bus.Do(f.ctx, "ACL", "SETUSER", "sub", "+xrange").Err() }},
		{"bus refuses the metas", true, true,
			func(f *burstFixture) error { return f.bus.Do(f.ctx, "ACL", "SETUSER", "sub", "-hmget").Err() },
			func(f *burstFixture) error { return f.bus.Do(f.ctx, "ACL", "SETUSER", "sub", "+hmget").Err() }},
		{"handler fails", false, true,
			func(f *burstFixture) error { f.fail = errors.New("in-process cache refuses"); return nil },
			func(f *burstFixture) error { f.fail = nil; return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newBurst(t, tenants, tc.cache, tc.handler)
			var burst, second []*redis.Message
			for i := range tenants {
				tenant := fmt.Sprint("t", i)
				burst = append(burst, f.publish(t, tenant, 1, "k1"))
				second = append(second, f.publish(t, tenant, 2, "k2"))
				if tc.cache {
					f.cached(t, tenant, "k1", "k2")
				}
			}
			must(t, tc.refuse(f))
			if err := f.burst(append(burst, second[:tenants/4]...)...); err == nil {
				t.Fatal("the burst's check failed and the burst returned no error: nothing retries it")
			}
			must(t, tc.allow(f))
			// The applier's retry, and the rest of the second versions.
			must(t, f.s.check(f.ctx))
			must(t, f.burst(second[tenants/4:]...))

			handled := f.versions()
			for i := range tenants {
				tenant := fmt.Sprint("t", i)
				if tc.cache {
					if left := f.left(t, tenant, "k1", "k2"); len(left) > 0 {
						t.Fatalf("%s: %v still cached after the check", tenant, left)
					}
					if p := f.stored(t, tenant); p.Version != 2 {
						t.Fatalf("%s stored at version %d, want 2", tenant, p.Version)
					}
				}
				if tc.handler {
					// Each version once, or the whole tag at 2.
					if h := fmt.Sprint(handled[tenant]); h != "[1 2]" && h != "[2]" {
						t.Fatalf("%s: versions handled %s, want [1 2]", tenant, h)
					}
				}
			}
		})
	}
}

// The bus loses its data (FLUSHALL) between a channel's first message and
// the end of the burst that checks it: the message's meta is gone, so
// nothing the burst received on the channel is believed; the tag's values
// go whole, and the position does not claim the lost epoch.
func TestBusFlushedBeforeTheBurstsCheck(t *testing.T) {
	f := newBurst(t, 2, true, false)
	v1 := f.publish(t, "t0", 1, "k1")
	v2 := f.publish(t, "t0", 2, "k2")
	f.cached(t, "t0", "k1", "k2", "other")
	must(t, f.s.handle(f.ctx, v1))
	must(t, f.s.handle(f.ctx, v2))
	if len(f.s.deferred) != 1 || len(f.s.deferred[0].after) != 1 {
		t.Fatalf("deferred %+v, want t0's version 1 with version 2 behind it", f.s.deferred)
	}
	must(t, f.bus.FlushAll(f.ctx).Err())
	must(t, f.bus.Set(f.ctx, names.GenerationKey("invalidate"), "g2", 0).Err()) // a router marks it again
	must(t, f.bus.Do(f.ctx, "ACL", "SETUSER", "sub", "on", ">pw", "+@all", "allkeys", "allchannels").Err())
	must(t, errors.Join(f.s.verifyAll(f.ctx), f.s.flushBatch(f.ctx)))

	if left := f.left(t, "t0", "k1", "k2", "other"); len(left) > 0 {
		t.Errorf("%v still cached: the bus lost the channel, its whole tag must go", left)
	}
	if p := f.stored(t, "t0"); p.Epoch == "e-t0" {
		t.Errorf("stored at %s:%d: a position of the epoch the bus lost", p.Epoch, p.Version)
	}
}

// One deferred channel whose check cannot succeed (its history replaced by
// a key of another type after it published) fails the burst's check, and
// with it the messages every channel of the round received after its
// deferred one are dropped: the other channels' own checks, which brought
// them to their metas, applied those already. Nothing of theirs is lost,
// and the channel that fails is the only one left behind.
func TestOneBrokenChannelLosesNothingOfTheOthersInItsRound(t *testing.T) {
	f := newBurst(t, 3, true, false)
	var burst, second []*redis.Message
	for _, tenant := range []string{"t0", "t1", "t2"} {
		burst = append(burst, f.publish(t, tenant, 1, "k1"))
		second = append(second, f.publish(t, tenant, 2, "k2"))
		f.cached(t, tenant, "k1", "k2")
	}
	must(t, f.bus.Del(f.ctx, names.HistoryKey(burstChannel("t1"))).Err())
	must(t, f.bus.Set(f.ctx, names.HistoryKey(burstChannel("t1")), "not a stream", 0).Err())
	if err := f.burst(append(burst, second...)...); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Fatalf("burst = %v, want t1's check failing on WRONGTYPE", err)
	}
	for _, tenant := range []string{"t0", "t2"} {
		if left := f.left(t, tenant, "k1", "k2"); len(left) > 0 {
			t.Errorf("%s: %v still cached: dropped with the failed round", tenant, left)
		}
		if p := f.stored(t, tenant); p.Version != 2 {
			t.Errorf("%s stored at version %d, want 2", tenant, p.Version)
		}
	}
	if left := f.left(t, "t1", "k1", "k2"); len(left) != 2 {
		t.Errorf("t1: only %v cached, its history unreadable: want both left for the check that can read it", left)
	}
}

// A channel whose check keeps failing (its history of another type) is in
// the first part of a check of more than checkChunk channels: the channels
// of the later parts are checked all the same, so a PUBLISH one of them
// lost is recovered while an operator fixes the other, not only after.
func TestBrokenChannelDoesNotStopTheCheckOfLaterParts(t *testing.T) {
	f := newBurst(t, checkChunk+1, true, false)
	last := fmt.Sprint("t", checkChunk)
	for _, tenant := range []string{"t0", last} {
		must(t, f.burst(f.publish(t, tenant, 1, "k1")))
		f.publish(t, tenant, 2, "k2") // its PUBLISH lost
		f.cached(t, tenant, "k2")
	}
	must(t, f.bus.Del(f.ctx, names.HistoryKey(burstChannel("t0"))).Err())
	must(t, f.bus.Set(f.ctx, names.HistoryKey(burstChannel("t0")), "not a stream", 0).Err())
	if err := f.s.check(f.ctx); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Fatalf("check = %v, want t0's recovery failing on WRONGTYPE", err)
	}
	if left := f.left(t, last, "k2"); len(left) > 0 {
		t.Errorf("%s's lost version 2 not recovered: the check stopped at the part of the channel that failed", last)
	}
}

// The same with a Handler alone that refuses one tenant's invalidations:
// the other channels of the round get their second versions from the
// burst.
func TestOneRefusedChannelLosesNothingOfTheOthersInItsRoundHandler(t *testing.T) {
	f := newBurst(t, 3, false, true)
	// A check saw the channels before they published (watched): their
	// first messages are taken alone, as with a cache.
	must(t, f.s.check(f.ctx))
	var burst, second []*redis.Message
	for _, tenant := range []string{"t0", "t1", "t2"} {
		burst = append(burst, f.publish(t, tenant, 1, "k1"))
		second = append(second, f.publish(t, tenant, 2, "k2"))
	}
	refused := errors.New("t1 refused")
	f.refusing("t1", refused)
	if err := f.burst(append(burst, second...)...); !errors.Is(err, refused) {
		t.Fatalf("burst = %v, want t1's invalidation refused", err)
	}
	got := f.versions()
	for _, tenant := range []string{"t0", "t2"} {
		if fmt.Sprint(got[tenant]) != "[1 2]" {
			t.Errorf("%s: versions handled %v, want [1 2]", tenant, got[tenant])
		}
		if at := f.s.pos[burstChannel(tenant)].at; at.Version != 2 {
			t.Errorf("%s at %s, want version 2", tenant, at.String())
		}
	}
}

// A channel's in-order message of the burst that its Handler refuses (one
// tenant's part of an in-process cache down) does not fail the check of
// the burst's other channels: their first messages, and what came after
// them, are applied by the burst, not left to the next full check.
func TestRefusedInOrderMessageDoesNotFailTheBurstsCheck(t *testing.T) {
	f := newBurst(t, 3, false, true)
	must(t, f.s.check(f.ctx)) // the channels watched: first messages taken alone
	must(t, f.burst(f.publish(t, "t1", 1, "k1")))
	t1 := f.publish(t, "t1", 2, "k2")
	burst := []*redis.Message{t1}
	for _, tenant := range []string{"t0", "t2"} {
		burst = append(burst, f.publish(t, tenant, 1, "k1"))
	}
	for _, tenant := range []string{"t0", "t2"} {
		burst = append(burst, f.publish(t, tenant, 2, "k2"))
	}
	refused := errors.New("t1 refused")
	f.refusing("t1", refused)
	if err := f.burst(burst...); !errors.Is(err, refused) {
		t.Fatalf("burst = %v, want t1's invalidation refused", err)
	}
	got := f.versions()
	for _, tenant := range []string{"t0", "t2"} {
		if fmt.Sprint(got[tenant]) != "[1 2]" {
			t.Errorf("%s: versions handled %v, want [1 2]", tenant, got[tenant])
		}
	}
	if at := f.s.pos[burstChannel("t1")].at; at.Version != 1 {
		t.Errorf("t1 at %s, want version 1: its version 2 was refused", at.String())
	}
}

// The bus's identity changes while the burst's check reads the metas (it
// restarted or lost its data right then): the check decides nothing on
// what it read, checks again, sees the loss, and takes the tag of the
// channel without a position whole — where, under the identity it started
// with, it would have taken the first message alone.
func TestBurstsCheckRedoneWhenTheBusChangesDuringIt(t *testing.T) {
	f := newBurst(t, 2, true, false)
	v1 := f.publish(t, "t0", 1, "k1")
	v2 := f.publish(t, "t0", 2, "k2")
	f.cached(t, "t0", "k1", "k2", "other")
	f.sub.AddHook(&busLoss{admin: f.bus})
	must(t, f.burst(v1, v2))
	if left := f.left(t, "t0", "k1", "k2", "other"); len(left) > 0 {
		t.Errorf("%v still cached: the bus changed during the check, the whole tag must go", left)
	}
	if p := f.stored(t, "t0"); p.Epoch != "e-t0" || p.Version != 2 {
		t.Errorf("stored at %s:%d, want the meta e-t0:2", p.Epoch, p.Version)
	}
}

// Under the local limit, a channel's first message deferred with a hundred
// more behind it: what the limit refuses merges into the channel's queued
// work after the check, and once applied, every key is gone, the position
// is the last version, and the Handler saw versions only going up.
func TestMessagesBehindAPendingCheckUnderTheLocalLimit(t *testing.T) {
	f := newBurst(t, 2, true, true)
	must(t, f.s.check(f.ctx)) // the channels watched: first messages taken alone
	f.s.opt.ApplyRate, f.s.opt.ApplyBurst, f.s.opt.Coalesce = 10, 2, time.Hour
	f.s.limiter = rate.NewLimiter(rate.Limit(f.s.opt.ApplyRate), f.s.opt.ApplyBurst)
	const last = 100
	var burst []*redis.Message
	var keys []string
	for v := int64(1); v <= last; v++ {
		k := fmt.Sprint("k", v)
		keys = append(keys, k)
		burst = append(burst, f.publish(t, "t0", v, k))
	}
	f.cached(t, "t0", keys...)
	must(t, f.burst(burst...))
	if f.s.queued[burstChannel("t0")] == nil {
		t.Fatal("nothing queued: the limit let a hundred invalidations through")
	}
	must(t, f.s.flushQueued(f.ctx, true))
	if left := f.left(t, "t0", keys...); len(left) > 0 {
		t.Errorf("%d keys still cached, %v…", len(left), left[0])
	}
	if p := f.stored(t, "t0"); p.Version != last {
		t.Errorf("stored at version %d, want %d", p.Version, last)
	}
	var prev int64
	for _, inv := range f.handled {
		if inv.Version <= prev {
			t.Fatalf("Handler got version %d after %d", inv.Version, prev)
		}
		prev = inv.Version
	}
	if prev != last {
		t.Errorf("the Handler's last version %d, want %d", prev, last)
	}
}

// Under the local limit, a channel's queued work its Handler keeps refusing
// (its tenant's part of an in-process cache down) fails the check, which
// still checks the other channels: a PUBLISH another channel lost is
// recovered meanwhile.
func TestRefusedQueuedWorkDoesNotStopTheCheck(t *testing.T) {
	f := newBurst(t, 2, false, true)
	must(t, f.s.check(f.ctx)) // the channels watched: first messages taken alone
	must(t, f.burst(f.publish(t, "t0", 1, "k1"), f.publish(t, "t1", 1, "k1")))
	f.publish(t, "t0", 2, "k2") // its PUBLISH lost
	f.s.opt.ApplyRate, f.s.opt.ApplyBurst, f.s.opt.Coalesce = 1, 1, time.Hour
	f.s.limiter = rate.NewLimiter(rate.Limit(f.s.opt.ApplyRate), f.s.opt.ApplyBurst)
	var burst []*redis.Message
	for v := int64(2); v <= 4; v++ {
		burst = append(burst, f.publish(t, "t1", v, fmt.Sprint("k", v)))
	}
	must(t, f.burst(burst...))
	if f.s.queued[burstChannel("t1")] == nil {
		t.Fatal("nothing of t1 queued")
	}
	refused := errors.New("t1 refused")
	f.refusing("t1", refused)
	if err := f.s.check(f.ctx); !errors.Is(err, refused) {
		t.Fatalf("check = %v, want t1's queued work refused", err)
	}
	if at := f.s.pos[burstChannel("t0")].at; at.Version != 2 {
		t.Errorf("t0 at %s: its lost version 2 not recovered while t1's work is refused", at.String())
	}
}

// One channel of a burst's check whose recovery is refused (its Handler
// refuses a gap's replay) does not hold back another channel's whole tag
// in the same check, and the burst's error names that channel alone:
// another channel's new epoch is taken whole, at once.
func TestRefusedRecoveryDoesNotHoldBackAnotherChannelsWholeTag(t *testing.T) {
	f := newBurst(t, 3, false, true)
	must(t, f.s.check(f.ctx)) // the channels watched: first messages taken alone
	must(t, f.burst(f.publish(t, "t1", 1, "k1"), f.publish(t, "t2", 1, "k1")))
	f.publish(t, "t1", 2, "k2") // its PUBLISH lost
	gap := f.publish(t, "t1", 3, "k3")

	// t2's channel starts a new epoch: the bus lost its meta and history.
	ch := burstChannel("t2")
	must(t, f.bus.Del(f.ctx, names.HistoryKey(ch), names.MetaKey(ch)).Err())
	raw, err := json.Marshal(&wire.Message{Tenant: "t2", Tag: "active", Epoch: "new-t2", Version: 1, Keys: []string{"k9"}, Event: "t2/new1"})
	must(t, err)
	must(t, f.bus.XAdd(f.ctx, &redis.XAddArgs{Stream: names.HistoryKey(ch), ID: "1-0", Values: []any{names.HistoryField, string(raw)}}).Err())
	must(t, f.bus.HSet(f.ctx, names.MetaKey(ch), "epoch", "new-t2", "version", 1, "chain", "new-t2:1:"+recovery.Link("", raw)).Err())

	refused := errors.New("t1 refused")
	f.refusing("t1", refused)
	err = f.burst(gap, &redis.Message{Channel: ch, Payload: string(raw)})
	if !errors.Is(err, refused) {
		t.Fatalf("burst = %v, want t1's recovery refused", err)
	}
	if strings.Contains(err.Error(), ch) {
		t.Errorf("burst = %v: t1's refusal reported under %s", err, ch)
	}
	if at := f.s.pos[ch].at; at.Epoch != "new-t2" || at.Version != 1 {
		t.Errorf("t2 at %s, want new-t2:1", at.String())
	}
	whole := false
	f.mu.Lock()
	for _, inv := range f.handled {
		whole = whole || (inv.Tenant == "t2" && inv.Epoch == "new-t2" && len(inv.Keys) == 0 && len(inv.Refs) == 0)
	}
	f.mu.Unlock()
	if !whole {
		t.Error("t2's tag not invalidated whole for its new epoch")
	}
}

// A check's error names at most a few failures and counts the rest: it is
// readiness's detail and a log line, whatever the number of channels
// refused. It stays a failure of channels alone, and each named failure
// is still found in it.
func TestCheckErrorNamesAFewFailures(t *testing.T) {
	var all error
	first := errors.New("invalidate:t0:active: refused")
	all = first
	for i := 1; i < 1000; i++ {
		all = errors.Join(all, fmt.Errorf("invalidate:t%d:active: refused", i))
	}
	err := boundChannels(channelsError{all})
	if !isChannels(err) || !errors.Is(err, first) {
		t.Fatalf("bounded %v: not a failure of channels, or its first failure lost", err)
	}
	if msg := err.Error(); len(msg) > 400 || !strings.Contains(msg, "and 995 more failures") {
		t.Errorf("bounded error of %d bytes: %q", len(msg), msg)
	}
	few := channelsError{errors.Join(first, errors.New("b"))}
	if got := boundChannels(few); got.Error() != few.Error() || !isChannels(got) {
		t.Errorf("an error of two failures became %v", got)
	}
}
