package recovery

import "testing"

func TestDecide(t *testing.T) {
	msg1 := pos("b", 1)
	for _, tc := range []struct {
		name string
		c    Channel
		want Plan
	}{
		{"current: nothing to do, memory stays",
			Channel{Memory: pos("a", 3), Stored: pos("a", 3), HasStore: true, Meta: pos("a", 3)},
			Plan{Decision: Decision{Action: Ignore, Reason: Current}, At: pos("a", 3)}},
		{"the cache went back: memory starts from it",
			Channel{Memory: pos("a", 5), Stored: pos("a", 3), HasStore: true, Meta: pos("a", 5)},
			Plan{Decision: Decision{Action: Replay, Reason: Gap, From: 4, To: pos("a", 5)}, At: pos("a", 3), Moved: true}},
		{"another instance applied more: memory starts from the cache",
			Channel{Memory: pos("a", 3), Stored: pos("a", 5), HasStore: true, Meta: pos("a", 6)},
			Plan{Decision: Decision{Action: Replay, Reason: Gap, From: 6, To: pos("a", 6)}, At: pos("a", 5), Moved: true}},
		{"with a Handler memory stays the Handler's while the cache moved",
			Channel{Memory: pos("a", 5), Stored: pos("a", 7), HasStore: true, Meta: pos("a", 7), HasHandler: true},
			Plan{Decision: Decision{Action: Replay, Reason: Gap, From: 6, To: pos("a", 7)}, At: pos("a", 5)}},
		{"a position without a chain at the meta adopts the meta's",
			Channel{Memory: pos("a", 3), Stored: pos("a", 3), HasStore: true, Meta: chained("a", 3, "c3")},
			Plan{Decision: Decision{Action: Ignore, Reason: Current}, At: chained("a", 3, "c3")}},
		{"the cache moved to a position without a chain: memory takes the cache's",
			Channel{Memory: chained("a", 2, "c2"), Stored: pos("a", 3), HasStore: true, Meta: chained("a", 3, "c3")},
			Plan{Decision: Decision{Action: Ignore, Reason: Current}, At: pos("a", 3), Moved: true}},
		{"no meta, no position, the bus kept: watched",
			Channel{HasStore: true, BusKnown: true},
			Plan{Decision: Decision{Action: Ignore, Reason: Current}, Watch: true}},
		{"no meta, no position, never looked: not watched",
			Channel{HasStore: true},
			Plan{Decision: Decision{Action: Ignore, Reason: Current}}},
		{"a first message replayed alone",
			Channel{HasStore: true, Meta: pos("b", 3), BusKnown: true, Message: msg1},
			Plan{Decision: Decision{Action: Replay, Reason: NewChannel, From: 1, To: msg1}, First: true}},
		{"a first message of a channel that cannot be fresh: whole tag, confirmed",
			Channel{HasStore: true, Meta: pos("b", 3), Message: msg1},
			Plan{Decision: Decision{Action: WholeTag, Reason: NewChannel, To: pos("b", 3)}}},
		{"a message the meta does not confirm: unconfirmed, the check goes on",
			Channel{Memory: pos("a", 3), Stored: pos("a", 3), HasStore: true, Meta: pos("a", 4), Message: pos("a", 9)},
			Plan{Decision: Decision{Action: Replay, Reason: Gap, From: 4, To: pos("a", 4)}, At: pos("a", 3), Unconfirmed: true}},
		{"a message of an epoch without a meta: unconfirmed, nothing to do",
			Channel{HasStore: true, BusKnown: true, Message: msg1},
			Plan{Decision: Decision{Action: Ignore, Reason: Current}, Watch: true, Unconfirmed: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.want.Start, _ = Start(tc.c) // TestStart holds it
			if got := Decide(tc.c); got != tc.want {
				t.Errorf("Decide(%+v)\n = %+v\nwant %+v", tc.c, got, tc.want)
			}
		})
	}
}

// Decide is the composition of the single rules, whatever the channel.
func TestDecideComposes(t *testing.T) {
	positions := []Position{{}, pos("a", 2), pos("a", 3), chained("a", 3, "x"), pos("b", 1), {Epoch: LostEpoch, Version: 7}}
	metas := []Position{{}, pos("a", 3), chained("a", 3, "y"), pos("b", 1)}
	for _, mem := range positions {
		for _, st := range positions {
			for _, meta := range metas {
				for flags := 0; flags < 64; flags++ {
					c := Channel{Memory: mem, Stored: st, Meta: meta, HasStore: flags&1 != 0, BusLost: flags&2 != 0,
						BusKnown: flags&2 == 0 && flags&4 != 0, Watched: flags&8 != 0, Announced: flags&16 != 0, HasHandler: flags&32 != 0}
					pl := Decide(c)
					if pl.Action == Ignore {
						if d := Check(c); d.Action != Ignore {
							t.Fatalf("Decide(%+v) ignores, Check says %+v", c, d)
						}
					} else if d := Check(c); pl.Decision != d {
						t.Fatalf("Decide(%+v) = %+v, Check says %+v", c, pl.Decision, d)
					}
					if start, moved := Start(c); pl.Start != start || pl.Moved != moved || pl.Watch != Watch(c) {
						t.Fatalf("Decide(%+v) = %+v: Start, Moved or Watch differs from Start and Watch", c, pl)
					}
					if !c.HasHandler && pl.Moved && pl.At != c.Stored {
						t.Fatalf("Decide(%+v): the cache moved, memory at %v, not the cache's", c, pl.At)
					}
					want := mem // only the chain may change (Adopt)
					if !c.HasHandler && pl.Moved {
						want = c.Stored
					}
					if pl.At.Epoch != want.Epoch || pl.At.Version != want.Version {
						t.Fatalf("Decide(%+v): memory at %v, want %v", c, pl.At, want)
					}
				}
			}
		}
	}
}

func TestContested(t *testing.T) {
	last := Live{At: pos("a", 4), Event: "e1", Prev: "c3"}
	for _, tc := range []struct {
		name  string
		last  Live
		msg   Position
		event string
		want  bool
	}{
		{"another event at the version", last, pos("a", 4), "e2", true},
		{"the same event again: a redelivery", last, pos("a", 4), "e1", false},
		{"no event id (an older router)", last, pos("a", 4), "", false},
		{"nothing taken live with an event id", Live{At: pos("a", 4)}, pos("a", 4), "e2", false},
		{"another version", last, pos("a", 3), "e2", false},
		{"another epoch", last, pos("b", 4), "e2", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Contested(tc.last, tc.msg, tc.event); got != tc.want {
				t.Errorf("Contested(%+v, %v, %q) = %v, want %v", tc.last, tc.msg, tc.event, got, tc.want)
			}
		})
	}
}

func TestContest(t *testing.T) {
	last := Live{At: pos("a", 4), Event: "forged", Prev: "c3"}
	payload := []byte(`{"own":true}`)
	for _, tc := range []struct {
		name    string
		applied Position
		last    Live
		own     *Own
		want    Decision
	}{
		{"the history holds the message applied: the newcomer is forged",
			chained("a", 4, "c4"), Live{At: pos("a", 4), Event: "real", Prev: "c3"}, &Own{Event: "real", Payload: payload},
			Decision{Action: Ignore, Reason: Contended}},
		{"the history holds the other: repair, the position takes the channel's own chain",
			chained("a", 4, "forgedchain"), last, &Own{Event: "real", Payload: payload},
			Decision{Action: Repair, Reason: Contended, To: chained("a", 4, Link("c3", payload))}},
		{"the history no longer holds the version (or cannot be read): repair without a chain",
			chained("a", 4, "forgedchain"), last, nil,
			Decision{Action: Repair, Reason: Contended, To: pos("a", 4)}},
		{"applied past the contested version: repair where it stands, chain unknown",
			chained("a", 6, "c6"), last, &Own{Event: "real", Payload: payload},
			Decision{Action: Repair, Reason: Contended, To: pos("a", 6)}},
		{"the chain before it unknown: none after",
			pos("a", 4), Live{At: pos("a", 4), Event: "forged"}, &Own{Event: "real", Payload: payload},
			Decision{Action: Repair, Reason: Contended, To: pos("a", 4)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Contest(tc.applied, tc.last, tc.own); got != tc.want {
				t.Errorf("Contest = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	p1, p2 := []byte(`{"v":1}`), []byte(`{"v":2}`)
	c1 := Link("", p1)
	c2 := Link(c1, p2)
	replay := Decision{Action: Replay, Reason: Gap, From: 2, To: chained("a", 2, c2)}
	for _, tc := range []struct {
		name     string
		d        Decision
		start    Position
		held     bool
		msgs     []Position
		payloads [][]byte
		want     Decision
		wantAt   []Position
	}{
		{"not a replay: as it is", Decision{Action: Repair, Reason: Ahead, To: pos("a", 2)}, pos("a", 3), false, nil, nil,
			Decision{Action: Repair, Reason: Ahead, To: pos("a", 2)}, nil},
		{"the history holds them: replay, extending the chain", replay, chained("a", 1, c1), true, []Position{pos("a", 2)}, [][]byte{p2},
			replay, []Position{chained("a", 2, c2)}},
		{"the history lacks some: whole tag, same reason", replay, chained("a", 1, c1), false, nil, nil,
			Decision{Action: WholeTag, Reason: Gap, To: replay.To}, nil},
		{"the chain reached is not the meta's: whole tag, diverged", replay, chained("a", 1, "forged"), true, []Position{pos("a", 2)}, [][]byte{p2},
			Decision{Action: WholeTag, Reason: Diverged, To: replay.To}, nil},
		{"a start without a chain takes the meta's at the end", replay, pos("a", 1), true, []Position{pos("a", 2)}, [][]byte{p2},
			replay, []Position{chained("a", 2, c2)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, at := Resolve(tc.d, tc.start, tc.held, tc.msgs, tc.payloads)
			if got != tc.want || len(at) != len(tc.wantAt) {
				t.Fatalf("Resolve = %+v %v, want %+v %v", got, at, tc.want, tc.wantAt)
			}
			for i := range at {
				if at[i] != tc.wantAt[i] {
					t.Errorf("position %d = %v (chain %q), want %v (chain %q)", i, at[i], at[i].Chain, tc.wantAt[i], tc.wantAt[i].Chain)
				}
			}
		})
	}
}
