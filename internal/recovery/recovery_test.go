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
		{"young channel never applied: replay from 1", none, pos("a", NewChannelReplay), Decision{Action: Replay, Reason: NewChannel, From: 1, To: pos("a", NewChannelReplay)}},
		{"older channel never applied: whole tag", none, pos("a", NewChannelReplay+1), Decision{Action: WholeTag, Reason: NewChannel, To: pos("a", NewChannelReplay+1)}},
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
		{"cache back to an older Lost, bus empty", Channel{Memory: Position{LostEpoch, 9}, Stored: Position{LostEpoch, 4}, HasStore: true},
			Decision{Action: Repair, Reason: RolledBack, To: Lost}},
		{"no store: memory decides", Channel{Memory: pos("a", 5), Meta: pos("a", 7)}, Decision{Action: Replay, Reason: Gap, From: 6, To: pos("a", 7)}},
		{"bus lost its data, no position, no meta", Channel{HasStore: true, BusLost: true}, Decision{Action: WholeTag, Reason: Vanished, To: Lost}},
		{"bus lost its data again after Lost", Channel{Memory: Position{LostEpoch, 4}, Stored: Position{LostEpoch, 4}, HasStore: true, BusLost: true},
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
		{"bus kept, older channel never applied: whole tag",
			Channel{HasStore: true, Meta: pos("b", NewChannelReplay+1), BusKnown: true}, Decision{Action: WholeTag, Reason: NewChannel, To: pos("b", NewChannelReplay+1)}},
		{"handler, bus kept, channel never watched: whole tag (an in-process cache has no tenant index)",
			Channel{Meta: pos("b", 2), BusKnown: true, HasHandler: true}, Decision{Action: WholeTag, Reason: NewChannel, To: pos("b", 2)}},
		{"handler, bus kept, channel watched without a meta: replay from 1",
			Channel{Meta: pos("b", 2), BusKnown: true, Watched: true, HasHandler: true}, Decision{Action: Replay, Reason: NewChannel, From: 1, To: pos("b", 2)}},
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
