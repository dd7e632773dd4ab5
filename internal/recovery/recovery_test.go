package recovery

import (
	"testing"
)

func pos(e string, v int64) Position { return Position{Epoch: e, Version: v} }

var none Position

func TestOnMessage(t *testing.T) {
	for _, tc := range []struct {
		name      string
		head, msg Position
		want      Decision
	}{
		{"next version", pos("a", 4), pos("a", 5), Decision{Action: Apply, Reason: Consecutive}},
		{"same version again", pos("a", 4), pos("a", 4), Decision{Action: Ignore, Reason: Duplicate}},
		{"older version", pos("a", 4), pos("a", 2), Decision{Action: Ignore, Reason: Duplicate}},
		{"version skipped", pos("a", 4), pos("a", 6), Decision{Action: Verify, Reason: Gap}},
		{"version far ahead (forged?)", pos("a", 4), pos("a", 10_000_000_000_000), Decision{Action: Verify, Reason: Gap}},
		{"another epoch", pos("a", 4), pos("b", 1), Decision{Action: Verify, Reason: NewEpoch}},
		{"first message of a channel never applied: checked (its epoch may follow a lost one)", none, pos("a", 1), Decision{Action: Verify, Reason: NewChannel}},
		{"later message of a channel never applied", none, pos("a", 3), Decision{Action: Verify, Reason: NewChannel}},
		{"after the meta vanished, nothing continues", Lost, pos(LostEpoch, 1), Decision{Action: Verify, Reason: NewEpoch}},
		{"after the meta vanished, a new epoch", Lost, pos("b", 1), Decision{Action: Verify, Reason: NewEpoch}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := OnMessage(tc.head, tc.msg); got != tc.want {
				t.Errorf("OnMessage(%v, %v) = %+v, want %+v", tc.head, tc.msg, got, tc.want)
			}
		})
	}
}

func TestRecover(t *testing.T) {
	for _, tc := range []struct {
		name      string
		pos, meta Position
		want      Decision
	}{
		{"current", pos("a", 7), pos("a", 7), Decision{Action: Ignore, Reason: Current}},
		{"behind: replay the missing versions", pos("a", 4), pos("a", 7), Decision{Action: Replay, Reason: Gap, From: 5, To: pos("a", 7)}},
		{"ahead of the meta: repair", pos("a", 10_000_000_000_000), pos("a", 7), Decision{Action: Repair, Reason: Ahead, To: pos("a", 7)}},
		{"another epoch: whole tag", pos("a", 4), pos("b", 2), Decision{Action: WholeTag, Reason: NewEpoch, To: pos("b", 2)}},
		{"meta vanished while a position is held", pos("a", 4), none, Decision{Action: WholeTag, Reason: Vanished, To: Lost}},
		{"meta vanished, already handled", Lost, none, Decision{Action: Ignore, Reason: Current}},
		{"nothing published, nothing applied", none, none, Decision{Action: Ignore, Reason: Current}},
		{"new epoch after the loss: whole tag (another loss may lie between)", Lost, pos("b", 1), Decision{Action: WholeTag, Reason: NewEpoch, To: pos("b", 1)}},
		{"channel never applied: replay from 1", none, pos("a", 16), Decision{Action: Replay, Reason: NewChannel, From: 1, To: pos("a", 16)}},
		{"channel never applied, many versions: replay from 1 still (the history decides)", none, pos("a", 900), Decision{Action: Replay, Reason: NewChannel, From: 1, To: pos("a", 900)}},
		{"meta without a version", pos("a", 3), pos("a", 0), Decision{Action: WholeTag, Reason: Vanished, To: Lost}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Recover(tc.pos, tc.meta); got != tc.want {
				t.Errorf("Recover(%v, %v) = %+v, want %+v", tc.pos, tc.meta, got, tc.want)
			}
		})
	}
}

func TestConfirmed(t *testing.T) {
	for _, tc := range []struct {
		msg, meta Position
		want      bool
	}{
		{pos("a", 3), pos("a", 3), true},
		{pos("a", 1), pos("a", 3), true},
		{pos("a", 4), pos("a", 3), false},
		{pos("a", 10_000_000_000_000), pos("a", 3), false},
		{pos("b", 1), pos("a", 3), false},
		{pos("a", 0), pos("a", 3), false},
		{pos("a", 1), none, false},
	} {
		if got := Confirmed(tc.msg, tc.meta); got != tc.want {
			t.Errorf("Confirmed(%v, %v) = %v, want %v", tc.msg, tc.meta, got, tc.want)
		}
	}
}

func TestStart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		c     Channel
		want  Position
		moved bool
	}{
		{"no store: memory", Channel{Memory: pos("a", 5)}, pos("a", 5), false},
		{"same", Channel{Memory: pos("a", 5), Stored: pos("a", 5), HasStore: true}, pos("a", 5), false},
		{"cache rolled back", Channel{Memory: pos("a", 5), Stored: pos("a", 3), HasStore: true}, pos("a", 3), true},
		{"cache lost the position", Channel{Memory: pos("a", 5), HasStore: true}, none, true},
		{"another instance applied more", Channel{Memory: pos("a", 5), Stored: pos("a", 8), HasStore: true}, pos("a", 8), true},
		{"handler behind the cache: from the handler's", Channel{Memory: pos("a", 5), Stored: pos("a", 8), HasStore: true, HasHandler: true}, pos("a", 5), false},
		{"with a handler, cache rolled back: from the cache's", Channel{Memory: pos("a", 5), Stored: pos("a", 3), HasStore: true, HasHandler: true}, pos("a", 3), true},
		{"with a handler, across epochs: none (whole tag)", Channel{Memory: pos("a", 5), Stored: pos("b", 1), HasStore: true, HasHandler: true}, none, true},
		{"with a handler, cache lost its position", Channel{Memory: pos("a", 5), HasStore: true, HasHandler: true}, none, true},
		{"with a handler that failed the channel's first apply: none", Channel{Stored: pos("a", 1), HasStore: true, HasHandler: true}, none, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, moved := Start(tc.c)
			if got != tc.want || moved != tc.moved {
				t.Errorf("Start = %v %v, want %v %v", got, moved, tc.want, tc.moved)
			}
		})
	}
}

func TestFirst(t *testing.T) {
	replay := Decision{Action: Replay, Reason: NewChannel, From: 1, To: pos("a", 5)}
	if d, ok := First(replay, pos("a", 1)); !ok || d.To != pos("a", 1) || d.From != 1 {
		t.Errorf("First(replay 1..5, a:1) = %+v %v, want a replay of version 1 alone", d, ok)
	}
	for _, tc := range []struct {
		name string
		d    Decision
		msg  Position
	}{
		{"whole tag", Decision{Action: WholeTag, Reason: NewChannel, To: pos("a", 5)}, pos("a", 1)},
		{"another epoch's message", replay, pos("b", 1)},
		{"a later message", replay, pos("a", 3)},
		{"a gap's replay", Decision{Action: Replay, Reason: Gap, From: 2, To: pos("a", 5)}, pos("a", 1)},
	} {
		if d, ok := First(tc.d, tc.msg); ok || d != tc.d {
			t.Errorf("%s: First = %+v %v, want it unchanged", tc.name, d, ok)
		}
	}
}

func TestWatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Channel
		want bool
	}{
		{"bus kept, nothing published, nothing applied", Channel{BusKnown: true, HasHandler: true}, true},
		{"in-process cache, first look: it started with the subscriber", Channel{HasHandler: true}, true},
		{"cache Redis, first look: it may hold values from before", Channel{HasStore: true}, false},
		{"bus kept, the channel has a meta", Channel{BusKnown: true, Meta: pos("a", 1)}, false},
		{"bus kept, a position held", Channel{BusKnown: true, Memory: pos("a", 1)}, false},
		{"bus lost since", Channel{BusLost: true}, false},
		{"bus lost since, in-process cache", Channel{BusLost: true, HasHandler: true}, false},
		{"never looked, cache Redis", Channel{HasStore: true, HasHandler: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Watch(tc.c); got != tc.want {
				t.Errorf("Watch(%+v) = %v, want %v", tc.c, got, tc.want)
			}
		})
	}
}

func TestContiguous(t *testing.T) {
	entries := []Position{pos("a", 3), pos("a", 4), pos("a", 5)}
	if !Contiguous(entries, "a", 3, 5) {
		t.Error("3..5 of a is contiguous")
	}
	if Contiguous(entries, "a", 2, 5) {
		t.Error("a trimmed history (2 missing) was taken as complete")
	}
	if Contiguous(entries, "b", 3, 5) {
		t.Error("entries of another epoch were taken")
	}
	if Contiguous([]Position{pos("a", 3), pos("a", 5), pos("a", 6)}, "a", 3, 5) {
		t.Error("a hole was taken as contiguous")
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Channel
		want Decision
	}{
		{"current", Channel{Memory: pos("a", 3), Stored: pos("a", 3), HasStore: true, Meta: pos("a", 3)}, Decision{Action: Ignore, Reason: Current}},
		{"cache went back: replay from where it stands", Channel{Memory: pos("a", 5), Stored: pos("a", 3), HasStore: true, Meta: pos("a", 5)},
			Decision{Action: Replay, Reason: Gap, From: 4, To: pos("a", 5)}},
		{"cache lost its position", Channel{Memory: pos("a", 5), HasStore: true, Meta: pos("a", 5)},
			Decision{Action: Repair, Reason: RolledBack, To: pos("a", 5)}},
		{"cache back to an older Lost, bus empty", Channel{Memory: Position{Epoch: LostEpoch, Version: 9}, Stored: Position{Epoch: LostEpoch, Version: 4}, HasStore: true},
			Decision{Action: Repair, Reason: RolledBack, To: Lost}},
		{"no store: memory decides", Channel{Memory: pos("a", 5), Meta: pos("a", 7)}, Decision{Action: Replay, Reason: Gap, From: 6, To: pos("a", 7)}},
		{"bus lost its data, no position, no meta", Channel{HasStore: true, BusLost: true}, Decision{Action: WholeTag, Reason: Vanished, To: Lost}},
		{"bus lost its data again after Lost", Channel{Memory: Position{Epoch: LostEpoch, Version: 4}, Stored: Position{Epoch: LostEpoch, Version: 4}, HasStore: true, BusLost: true},
			Decision{Action: WholeTag, Reason: Vanished, To: Lost}},
		{"bus lost its data, the channel published since", Channel{Memory: pos("a", 5), Stored: pos("a", 5), HasStore: true, Meta: pos("b", 1), BusLost: true},
			Decision{Action: WholeTag, Reason: NewEpoch, To: pos("b", 1)}},
		{"no bus loss, no position, no meta", Channel{HasStore: true}, Decision{Action: Ignore, Reason: Current}},
		{"bus lost its data, no position, the channel published since: whole tag (an epoch may be lost before)",
			Channel{HasStore: true, Meta: pos("b", 1), BusLost: true}, Decision{Action: WholeTag, Reason: NewChannel, To: pos("b", 1)}},
		{"never looked, no position: whole tag (nothing tells what came before)",
			Channel{HasStore: true, Meta: pos("b", 1)}, Decision{Action: WholeTag, Reason: NewChannel, To: pos("b", 1)}},
		{"bus kept, cache covers every tenant: replay a young channel from 1",
			Channel{HasStore: true, Meta: pos("b", 2), BusKnown: true}, Decision{Action: Replay, Reason: NewChannel, From: 1, To: pos("b", 2)}},
		{"bus kept, older channel never applied: replay from 1 as far as the history reaches",
			Channel{HasStore: true, Meta: pos("b", 900), BusKnown: true}, Decision{Action: Replay, Reason: NewChannel, From: 1, To: pos("b", 900)}},
		{"bus kept, but the epoch started after the meta alone was lost: whole tag",
			Channel{HasStore: true, Meta: pos("b", 2), MetaRestarted: true, BusKnown: true}, Decision{Action: WholeTag, Reason: NewChannel, To: pos("b", 2)}},
		{"handler, channel watched, then an epoch lost with its meta and another started: whole tag",
			Channel{Meta: pos("b", 1), MetaRestarted: true, BusKnown: true, Watched: true, HasHandler: true}, Decision{Action: WholeTag, Reason: NewChannel, To: pos("b", 1)}},
		{"handler, bus kept, channel never watched: whole tag (an in-process cache has no tenant index)",
			Channel{Meta: pos("b", 2), BusKnown: true, HasHandler: true}, Decision{Action: WholeTag, Reason: NewChannel, To: pos("b", 2)}},
		{"handler, bus kept, channel watched without a meta: replay from 1",
			Channel{Meta: pos("b", 2), BusKnown: true, Watched: true, HasHandler: true}, Decision{Action: Replay, Reason: NewChannel, From: 1, To: pos("b", 2)}},
		{"handler, bus kept, the tenant announced since: replay from 1",
			Channel{Meta: pos("b", 2), BusKnown: true, Announced: true, HasHandler: true}, Decision{Action: Replay, Reason: NewChannel, From: 1, To: pos("b", 2)}},
		{"handler, the tenant announced, but the bus lost its data: whole tag",
			Channel{Meta: pos("b", 2), BusLost: true, Announced: true, HasHandler: true}, Decision{Action: WholeTag, Reason: NewChannel, To: pos("b", 2)}},
		{"store and handler, the tenant announced, never looked: whole tag",
			Channel{HasStore: true, Meta: pos("b", 2), Announced: true, HasHandler: true}, Decision{Action: WholeTag, Reason: NewChannel, To: pos("b", 2)}},
		{"store and handler, channel never watched: whole tag",
			Channel{HasStore: true, Meta: pos("b", 2), BusKnown: true, HasHandler: true}, Decision{Action: WholeTag, Reason: NewChannel, To: pos("b", 2)}},
		{"handler behind the cache: replay to it from its position", Channel{Memory: pos("a", 5), Stored: pos("a", 7), HasStore: true, Meta: pos("a", 7), HasHandler: true},
			Decision{Action: Replay, Reason: Gap, From: 6, To: pos("a", 7)}},
		{"handler and cache in two epochs: whole tag for both", Channel{Memory: pos("a", 5), Stored: pos("b", 1), HasStore: true, Meta: pos("b", 1), HasHandler: true},
			Decision{Action: Repair, Reason: RolledBack, To: pos("b", 1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Check(tc.c); got != tc.want {
				t.Errorf("Check(%+v) = %+v, want %+v", tc.c, got, tc.want)
			}
		})
	}
}

func chained(e string, v int64, chain string) Position {
	return Position{Epoch: e, Version: v, Chain: chain}
}

func TestLink(t *testing.T) {
	a, b := Link("", []byte(`{"epoch":"e","version":1}`)), Link("", []byte(`{"epoch":"e","version":1,"keys":["x"]}`))
	if len(a) != ChainLen || a == b {
		t.Errorf("Link of two messages = %q, %q: want %d hex digits each, different", a, b, ChainLen)
	}
	if Link(a, []byte("m")) == Link(b, []byte("m")) {
		t.Error("the same message after two chains links to the same chain")
	}
	// SHA-1 of prev + hex SHA-1 of the message, cut to 16 hex digits (as
	// docs/protocol.md says it; lua/publish_test.go checks the script).
	for _, v := range []struct{ prev, msg, want string }{{"", "m", "819729f12474eb20"}, {"0123456789abcdef", "n", "aa2a877c9ea24659"}} {
		if got := Link(v.prev, []byte(v.msg)); got != v.want {
			t.Errorf("Link(%q, %q) = %s, want %s", v.prev, v.msg, got, v.want)
		}
	}
}

func TestNext(t *testing.T) {
	m := []byte("m")
	for _, tc := range []struct {
		name      string
		head, msg Position
		want      string
	}{
		{"the epoch's first message", none, pos("a", 1), Link("", m)},
		{"after a chain", chained("a", 4, "c4"), pos("a", 5), Link("c4", m)},
		{"after a position without a chain", pos("a", 4), pos("a", 5), ""},
		{"not the next version", chained("a", 3, "c3"), pos("a", 5), ""},
		{"another epoch", chained("b", 4, "c4"), pos("a", 5), ""},
	} {
		if got := Next(tc.head, tc.msg, m); got.Chain != tc.want || got.Epoch != tc.msg.Epoch || got.Version != tc.msg.Version {
			t.Errorf("%s: Next = %+v, want chain %q", tc.name, got, tc.want)
		}
	}
}

// A forged next version applied, the channel's own message of it lost: the
// position is at the meta's version with another chain.
func TestCheckChains(t *testing.T) {
	meta := chained("a", 5, "real")
	for _, tc := range []struct {
		name string
		c    Channel
		want Decision
	}{
		{"the channel's chain: current", Channel{Memory: chained("a", 5, "real"), Stored: chained("a", 5, "real"), HasStore: true, Meta: meta},
			Decision{Action: Ignore, Reason: Current}},
		{"another chain at the meta's version: repair", Channel{Memory: chained("a", 5, "forged"), Stored: chained("a", 5, "forged"), HasStore: true, Meta: meta},
			Decision{Action: Repair, Reason: Diverged, To: meta}},
		{"without a store, the same", Channel{Memory: chained("a", 5, "forged"), Meta: meta, HasHandler: true},
			Decision{Action: Repair, Reason: Diverged, To: meta}},
		{"a position without a chain (an older version's): current", Channel{Memory: pos("a", 5), Stored: pos("a", 5), HasStore: true, Meta: meta},
			Decision{Action: Ignore, Reason: Current}},
		{"a meta without a chain (an older router's): current", Channel{Memory: chained("a", 5, "x"), Stored: chained("a", 5, "x"), HasStore: true, Meta: pos("a", 5)},
			Decision{Action: Ignore, Reason: Current}},
		{"behind: replay (the chain is checked on the way)", Channel{Memory: chained("a", 4, "forged"), Stored: chained("a", 4, "forged"), HasStore: true, Meta: meta},
			Decision{Action: Replay, Reason: Gap, From: 5, To: meta}},
		{"the cache holds another chain than memory: from the cache's", Channel{Memory: chained("a", 5, "real"), Stored: chained("a", 5, "forged"), HasStore: true, Meta: meta},
			Decision{Action: Repair, Reason: Diverged, To: meta}},
		{"handler and cache took two messages at one version: whole tag for both", Channel{Memory: chained("a", 5, "real"), Stored: chained("a", 5, "forged"), HasStore: true, HasHandler: true, Meta: meta},
			Decision{Action: Repair, Reason: RolledBack, To: meta}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Check(tc.c); got != tc.want {
				t.Errorf("Check(%+v) = %+v, want %+v", tc.c, got, tc.want)
			}
		})
	}
}

func TestAdopt(t *testing.T) {
	meta := chained("a", 5, "real")
	if chain, ok := Adopt(Channel{Memory: pos("a", 5), Stored: pos("a", 5), HasStore: true, Meta: meta}); !ok || chain != "real" {
		t.Errorf("a position without a chain at the meta's version: Adopt = %q %v, want the meta's", chain, ok)
	}
	for name, c := range map[string]Channel{
		"a chain already":        {Memory: chained("a", 5, "x"), Stored: chained("a", 5, "x"), HasStore: true, Meta: meta},
		"behind the meta":        {Memory: pos("a", 4), Stored: pos("a", 4), HasStore: true, Meta: meta},
		"a meta without a chain": {Memory: pos("a", 5), Stored: pos("a", 5), HasStore: true, Meta: pos("a", 5)},
		"no position":            {HasStore: true, Meta: meta},
	} {
		if chain, ok := Adopt(c); ok {
			t.Errorf("%s: Adopt = %q, want nothing adopted", name, chain)
		}
	}
}

func TestReplayed(t *testing.T) {
	p4, p5 := []byte("four"), []byte("five")
	c3 := "c3"
	c4 := Link(c3, p4)
	c5 := Link(c4, p5)
	msgs, payloads := []Position{pos("a", 4), pos("a", 5)}, [][]byte{p4, p5}

	at, ok := Replayed(chained("a", 3, c3), msgs, payloads, chained("a", 5, c5))
	if !ok || at[0] != chained("a", 4, c4) || at[1] != chained("a", 5, c5) {
		t.Errorf("from the channel's chain: %+v %v", at, ok)
	}
	if _, ok := Replayed(chained("a", 3, "forged"), msgs, payloads, chained("a", 5, c5)); ok {
		t.Error("a replay from another chain than the channel's was taken")
	}
	if at, ok := Replayed(pos("a", 3), msgs, payloads, chained("a", 5, c5)); !ok || at[0].Chain != "" || at[1].Chain != c5 {
		t.Errorf("from a position without a chain: %+v %v, want the meta's chain adopted at the end", at, ok)
	}
	if at, ok := Replayed(chained("a", 3, c3), msgs, payloads, pos("a", 5)); !ok || at[1].Chain != c5 {
		t.Errorf("to a meta without a chain: %+v %v, want the chain computed", at, ok)
	}
	first := Link("", []byte("one"))
	if at, ok := Replayed(none, []Position{pos("a", 1)}, [][]byte{[]byte("one")}, chained("a", 1, first)); !ok || at[0].Chain != first {
		t.Errorf("a new channel from version 1: %+v %v", at, ok)
	}
}
