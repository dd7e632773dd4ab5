package subscriber

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// The executor's unit tests: execute, stage and flushBatch carry a settled
// decision out against a real cache Redis, with no subscription and no
// check around them. The decisions themselves are internal/recovery's.

const execChannel = "routerd:invalidate:acme:active"

type execFixture struct {
	s     *Subscriber
	cache *redis.Client
	p     *position
	ctx   context.Context
	// handled are the invalidations the Handler got (with a Handler).
	handled []Invalidation
	fail    error // the Handler's answer
}

func newExec(t *testing.T, withHandler bool) *execFixture {
	t.Helper()
	srv := redistest.Start(t)
	f := &execFixture{cache: srv.Client(t), ctx: context.Background()}
	opt := Options{Service: "profile-svc", Matrix: testMatrixParsed(t), Cache: f.cache, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if withHandler {
		opt.Handler = func(_ context.Context, inv Invalidation) error {
			if f.fail != nil {
				return f.fail
			}
			f.handled = append(f.handled, inv)
			return nil
		}
	}
	s, err := New(srv.Client(t), opt)
	if err != nil {
		t.Fatal(err)
	}
	f.s = s
	f.p = &position{tenant: "acme", tag: "active"}
	s.pos[execChannel] = f.p
	return f
}

// cached caches values under the tag, and returns their keys.
func (f *execFixture) cached(t *testing.T, keys ...string) []string {
	t.Helper()
	for _, k := range keys {
		if err := f.s.store.Set(f.ctx, "acme", k, []byte("v"), time.Hour, "active"); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func (f *execFixture) left(t *testing.T, keys ...string) int {
	t.Helper()
	n := 0
	for _, k := range keys {
		if _, err := f.s.store.Get(f.ctx, "acme", k); err == nil {
			n++
		} else if !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
	}
	return n
}

func (f *execFixture) stored(t *testing.T) tagstore.Position {
	t.Helper()
	p, _, err := f.s.store.ReadPosition(f.ctx, "acme", "profile-svc", "active")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (f *execFixture) setStored(t *testing.T, at string) {
	t.Helper()
	if err := f.cache.Set(f.ctx, names.PositionKey("acme", "profile-svc", "active"), at, 0).Err(); err != nil {
		t.Fatal(err)
	}
}

func execMsg(v int64, keys ...string) *wire.Message {
	return &wire.Message{Tenant: "acme", Tag: "active", Epoch: "e1", Version: v, Keys: keys, Event: "ev" + strconv.FormatInt(v, 10)}
}

func TestExecuteWholeTag(t *testing.T) {
	f := newExec(t, false)
	keys := f.cached(t, "a", "b")
	f.p.at = recovery.Position{Epoch: "e1", Version: 2}
	f.setStored(t, "e1:2")
	to := recovery.Position{Epoch: "e1", Version: 40, Chain: "00112233445566ff"}
	if err := f.s.execute(f.ctx, execChannel, f.p, recovery.Decision{Action: recovery.WholeTag, Reason: recovery.Gap, To: to}, nil, nil, false); err != nil {
		t.Fatal(err)
	}
	if n := f.left(t, keys...); n != 0 {
		t.Errorf("%d values left after the whole tag", n)
	}
	if got := f.stored(t); got != (tagstore.Position{Epoch: "e1", Version: 40, Chain: to.Chain}) || f.p.at != to {
		t.Errorf("stored %v, memory %v, want both %v", got, f.p.at, to)
	}
	if got := count(t, f.s.m.recoveries.WithLabelValues("whole_tag")); got != 1 {
		t.Errorf("whole_tag recoveries %v, want 1", got)
	}
}

// A whole tag to Lost takes the moment as its version (recovery.Stamp).
func TestExecuteWholeTagToLostIsStamped(t *testing.T) {
	f := newExec(t, false)
	f.p.at = recovery.Position{Epoch: "e1", Version: 2}
	before := time.Now().UnixMilli()
	if err := f.s.execute(f.ctx, execChannel, f.p, recovery.Decision{Action: recovery.WholeTag, Reason: recovery.Vanished, To: recovery.Lost}, nil, nil, false); err != nil {
		t.Fatal(err)
	}
	if f.p.at.Epoch != recovery.LostEpoch || f.p.at.Version < before {
		t.Errorf("memory at %v, want lost stamped at or after %d", f.p.at, before)
	}
	if got := f.stored(t); got.Epoch != recovery.LostEpoch || got.Version != f.p.at.Version {
		t.Errorf("stored %v, want %v", got, f.p.at)
	}
}

// A repair sets a position that is ahead back; a whole tag would refuse to.
func TestExecuteRepairSetsThePositionBack(t *testing.T) {
	f := newExec(t, false)
	keys := f.cached(t, "a")
	f.setStored(t, "e1:9")
	f.p.at = recovery.Position{Epoch: "e1", Version: 9}
	to := recovery.Position{Epoch: "e1", Version: 5}
	if err := f.s.execute(f.ctx, execChannel, f.p, recovery.Decision{Action: recovery.Repair, Reason: recovery.Ahead, To: to}, nil, nil, false); err != nil {
		t.Fatal(err)
	}
	if got := f.stored(t); got != (tagstore.Position{Epoch: "e1", Version: 5}) || f.p.at != to || f.left(t, keys...) != 0 {
		t.Errorf("after the repair: stored %v, memory %v, %d values left; want e1:5 and none", got, f.p.at, f.left(t, keys...))
	}
	if got := count(t, f.s.m.recoveries.WithLabelValues("repair")); got != 1 {
		t.Errorf("repair recoveries %v, want 1", got)
	}
}

// A replay is staged: the position moves at once, the cache at the
// flush, each message in order, and the channel stands at the position the
// decision computed for each.
func TestExecuteReplayIsStagedInOrder(t *testing.T) {
	f := newExec(t, false)
	f.cached(t, "a", "b", "c")
	f.setStored(t, "e1:2")
	f.p.at = recovery.Position{Epoch: "e1", Version: 2}
	msgs := []*wire.Message{execMsg(3, "a"), execMsg(4, "b")}
	at := []recovery.Position{{Epoch: "e1", Version: 3, Chain: "aaaaaaaaaaaaaaaa"}, {Epoch: "e1", Version: 4, Chain: "bbbbbbbbbbbbbbbb"}}
	d := recovery.Decision{Action: recovery.Replay, Reason: recovery.Gap, From: 3, To: at[1]}
	if err := f.s.execute(f.ctx, execChannel, f.p, d, msgs, at, false); err != nil {
		t.Fatal(err)
	}
	if len(f.s.batch) != 2 || f.p.at != at[1] || f.left(t, "a", "b") != 2 {
		t.Fatalf("staged %d, memory %v, %d values left: want 2 staged, %v, the values still cached", len(f.s.batch), f.p.at, f.left(t, "a", "b"), at[1])
	}
	if err := f.s.flushBatch(f.ctx); err != nil {
		t.Fatal(err)
	}
	if f.left(t, "a", "b") != 0 || f.left(t, "c") != 1 {
		t.Errorf("after the replay: a, b left %d (want 0), c left %d (want 1)", f.left(t, "a", "b"), f.left(t, "c"))
	}
	if got := f.stored(t); got != (tagstore.Position{Epoch: "e1", Version: 4, Chain: at[1].Chain}) {
		t.Errorf("stored %v, want %v", got, at[1])
	}
}

// A staged message the cache refuses (its position is not the previous
// version: the cache went back) sets the channel back to where it stood,
// with the later ones of the channel, and asks for a check.
func TestFlushBatchSetsAFailedChannelBack(t *testing.T) {
	f := newExec(t, false)
	keys := f.cached(t, "a", "b")
	f.setStored(t, "e1:1") // the cache went back behind memory
	f.p.at = recovery.Position{Epoch: "e1", Version: 4}
	f.s.stage(execChannel, f.p, execMsg(5, "a"), recovery.Position{Epoch: "e1", Version: 5})
	f.s.stage(execChannel, f.p, execMsg(6, "b"), recovery.Position{Epoch: "e1", Version: 6})
	err := f.s.flushBatch(f.ctx)
	if !errors.Is(err, errCacheMoved) {
		t.Fatalf("flushBatch = %v, want errCacheMoved", err)
	}
	if f.p.at != (recovery.Position{Epoch: "e1", Version: 4}) || f.left(t, keys...) != 2 || f.stored(t).Version != 1 {
		t.Errorf("memory %v, stored %v, %d values left: want memory back at e1:4, the cache untouched", f.p.at, f.stored(t), f.left(t, keys...))
	}
	select {
	case <-f.s.checkReq:
	default:
		t.Error("no check requested after the cache refused")
	}
}

// The first message of a channel, replayed alone by its check, is taken as
// it would have been live: staged (no local limit), counted as no recovery.
func TestExecuteFirstIsTakenLive(t *testing.T) {
	f := newExec(t, false)
	msg := execMsg(1, "a")
	at := []recovery.Position{{Epoch: "e1", Version: 1, Chain: recovery.Link("", []byte("{}"))}}
	d := recovery.Decision{Action: recovery.Replay, Reason: recovery.NewChannel, From: 1, To: at[0]}
	if err := f.s.execute(f.ctx, execChannel, f.p, d, []*wire.Message{msg}, at, true); err != nil {
		t.Fatal(err)
	}
	if len(f.s.batch) != 1 || f.p.at != at[0] || f.p.last.Event != msg.Event {
		t.Errorf("staged %d, memory %v, last %+v", len(f.s.batch), f.p.at, f.p.last)
	}
	if got := count(t, f.s.m.recoveries.WithLabelValues("replay")); got != 0 {
		t.Errorf("replay recoveries %v, want 0 (not a recovery)", got)
	}
}

// With a Handler, an invalidation reaches it after the cache; a Handler
// that fails leaves the channel where it stood, for the next check.
func TestExecuteHandler(t *testing.T) {
	f := newExec(t, true)
	f.p.at = recovery.Position{Epoch: "e1", Version: 2}
	to := recovery.Position{Epoch: "e1", Version: 7}
	f.fail = errors.New("in-process cache down")
	err := f.s.execute(f.ctx, execChannel, f.p, recovery.Decision{Action: recovery.WholeTag, Reason: recovery.Gap, To: to}, nil, nil, false)
	if err == nil || f.p.at.Version != 2 {
		t.Fatalf("execute = %v, memory %v: want the Handler's error, memory unmoved", err, f.p.at)
	}
	f.fail = nil
	if err := f.s.execute(f.ctx, execChannel, f.p, recovery.Decision{Action: recovery.WholeTag, Reason: recovery.Gap, To: to}, nil, nil, false); err != nil {
		t.Fatal(err)
	}
	if len(f.handled) != 1 || !f.handled[0].Recovered || len(f.handled[0].Keys) != 0 || f.handled[0].Version != 7 || f.p.at != to {
		t.Errorf("handled %+v, memory %v", f.handled, f.p.at)
	}
}

// Ignore carries out nothing.
func TestExecuteIgnore(t *testing.T) {
	f := newExec(t, false)
	keys := f.cached(t, "a")
	f.p.at = recovery.Position{Epoch: "e1", Version: 2}
	if err := f.s.execute(f.ctx, execChannel, f.p, recovery.Decision{Action: recovery.Ignore, Reason: recovery.Current}, nil, nil, false); err != nil {
		t.Fatal(err)
	}
	if f.left(t, keys...) != 1 || f.p.at.Version != 2 {
		t.Errorf("ignore changed something: %d left, memory %v", f.left(t, keys...), f.p.at)
	}
}

func count(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// published adds messages to the channel's history as the router does.
func (f *execFixture) published(t *testing.T, msgs ...*wire.Message) [][]byte {
	t.Helper()
	var out [][]byte
	for _, m := range msgs {
		raw, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		id := strconv.FormatInt(m.Version, 10) + "-0"
		if err := f.s.bus.XAdd(f.ctx, &redis.XAddArgs{Stream: names.HistoryKey(execChannel), ID: id, Values: []any{names.HistoryField, string(raw)}}).Err(); err != nil {
			t.Fatal(err)
		}
		out = append(out, raw)
	}
	return out
}

// settle checks a replay against the history read for it (history): a
// history that holds it gives the messages with their chained positions,
// one that lacks a version gives the whole tag, one whose chain does not
// follow from the start (a forged message was applied) the whole tag too.
func TestSettleChecksTheHistory(t *testing.T) {
	f := newExec(t, false)
	raws := f.published(t, execMsg(1, "a"), execMsg(2, "b"))
	c1 := recovery.Link("", raws[0])
	to := recovery.Position{Epoch: "e1", Version: 2, Chain: recovery.Link(c1, raws[1])}
	replay := recovery.Decision{Action: recovery.Replay, Reason: recovery.Gap, From: 2, To: to}
	settle := func(start recovery.Position, d recovery.Decision) (recovery.Decision, []*wire.Message, []recovery.Position) {
		t.Helper()
		msgs, payloads, held, err := f.s.history(f.ctx, execChannel, d.To.Epoch, d.From, d.To.Version)
		must(t, err)
		d, at := f.s.settle(execChannel, start, d, msgs, payloads, held)
		return d, msgs, at
	}
	d, msgs, at := settle(recovery.Position{Epoch: "e1", Version: 1, Chain: c1}, replay)
	if d.Action != recovery.Replay || len(msgs) != 1 || msgs[0].Version != 2 || len(at) != 1 || at[0] != to {
		t.Fatalf("settle = %+v %v %v", d, msgs, at)
	}
	d, _, _ = settle(recovery.Position{Epoch: "e1", Version: 2},
		recovery.Decision{Action: recovery.Replay, Reason: recovery.Gap, From: 3, To: recovery.Position{Epoch: "e1", Version: 4}})
	if d.Action != recovery.WholeTag || d.Reason != recovery.Gap {
		t.Errorf("settle past the history = %+v, want the whole tag", d)
	}
	d, _, _ = settle(recovery.Position{Epoch: "e1", Version: 1, Chain: "ffffffffffffffff"}, replay)
	if d.Action != recovery.WholeTag || d.Reason != recovery.Diverged || count(t, f.s.m.unconfirmed) != 1 {
		t.Errorf("settle from a forged chain = %+v (unconfirmed %v), want the whole tag, diverged", d, count(t, f.s.m.unconfirmed))
	}
}

// A replay after the cache went back behind memory (a Handler keeps its
// own position) checks its chain from where the check started, the
// cache's position, not from memory: a forged version the cache had
// applied there is caught (the whole tag goes) rather than replayed over.
func TestReplayChecksTheChainFromTheCheckStart(t *testing.T) {
	f := newExec(t, true)
	raws := f.published(t, execMsg(1, "a"), execMsg(2, "b"), execMsg(3, "c"))
	c1 := recovery.Link("", raws[0])
	c2 := recovery.Link(c1, raws[1])
	c3 := recovery.Link(c2, raws[2])
	must(t, f.s.bus.HSet(f.ctx, names.MetaKey(execChannel), "epoch", "e1", "version", 3, "chain", "e1:3:"+c3).Err())
	keys := f.cached(t, "a", "b", "c")
	// The Handler applied up to 3; the cache holds version 1 of a forged
	// message (another chain), from a snapshot taken then.
	f.p.at = recovery.Position{Epoch: "e1", Version: 3, Chain: c3}
	f.setStored(t, "e1:1:ffffffffffffffff")
	if _, err := f.s.checkTargets(f.ctx, []target{{execChannel, "acme", "active"}}, "", nil); err != nil {
		t.Fatal(err)
	}
	if f.left(t, keys...) != 0 || count(t, f.s.m.unconfirmed) != 1 {
		t.Errorf("%d values left, unconfirmed %v: want the whole tag (a too, which the forged version 1 left cached), one unconfirmed",
			f.left(t, keys...), count(t, f.s.m.unconfirmed))
	}
}

// contested carries out recovery.Contest: a second message of a version
// whose history holds the one applied is ignored; when the history holds
// the other, the whole tag goes and the position takes the channel's chain.
func TestContestedCarriesOutContest(t *testing.T) {
	f := newExec(t, false)
	ownMsg := execMsg(2, "b")
	raws := f.published(t, execMsg(1, "a"), ownMsg)
	c1 := recovery.Link("", raws[0])
	keys := f.cached(t, "a", "b")
	t1 := target{execChannel, "acme", "active"}

	f.p.at = recovery.Position{Epoch: "e1", Version: 2, Chain: recovery.Link(c1, raws[1])}
	f.p.last = recovery.Live{At: recovery.Position{Epoch: "e1", Version: 2}, Event: ownMsg.Event, Prev: c1}
	forged := execMsg(2, "x")
	forged.Event = "forged"
	if err := f.s.contested(f.ctx, t1, f.p, forged); err != nil {
		t.Fatal(err)
	}
	if f.left(t, keys...) != 2 || count(t, f.s.m.recoveries.WithLabelValues("repair")) != 0 {
		t.Fatalf("the forgery was not ignored: %d values left", f.left(t, keys...))
	}

	// The forgery came first and was applied; the real message comes second.
	f.setStored(t, "e1:2:aaaaaaaaaaaaaaaa")
	f.p.at = recovery.Position{Epoch: "e1", Version: 2, Chain: "aaaaaaaaaaaaaaaa"}
	f.p.last = recovery.Live{At: recovery.Position{Epoch: "e1", Version: 2}, Event: "forged", Prev: c1}
	if err := f.s.contested(f.ctx, t1, f.p, ownMsg); err != nil {
		t.Fatal(err)
	}
	want := recovery.Position{Epoch: "e1", Version: 2, Chain: recovery.Link(c1, raws[1])}
	if f.left(t, keys...) != 0 || f.p.at != want || f.stored(t).Chain != want.Chain || f.p.last.Event != ownMsg.Event {
		t.Errorf("after the repair: %d values left, memory %v (chain %q), stored %v, last %+v; want none, %v (chain %q)",
			f.left(t, keys...), f.p.at, f.p.at.Chain, f.stored(t), f.p.last, want, want.Chain)
	}
}
