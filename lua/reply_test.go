package lua

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func replyCmd(v any) *redis.Cmd {
	c := redis.NewCmd(context.Background())
	c.SetVal(v)
	return c
}

// A script reply that is not what the script promises is an error, never an
// empty or unknown status taken for an outcome.
func TestUnexpectedInvalidateRepliesAreErrors(t *testing.T) {
	var single InvalidateRequest
	for _, v := range []any{
		[]any{"SUCCESS", int64(3), int64(1)},
		[]any{"", int64(0)},
		[]any{"SUCCES", int64(0)},
		[]any{int64(1), int64(0)},
		[]any{"SUCCESS", "3"},
		"SUCCESS",
	} {
		if r, err := single.Reply(replyCmd(v)); err == nil {
			t.Errorf("invalidate reply %#v read as %v", v, r)
		}
	}
	if r, err := single.Reply(replyCmd([]any{"EMPTY_TAG_SET", int64(0)})); err != nil || r != (InvalidateResult{EmptyTagSet, 0}) {
		t.Errorf("a good reply: %v %v", r, err)
	}
	batched := InvalidateKeysRequest{Groups: []InvalidateGroup{{Invs: []KeyInvalidation{{Version: 1, Keys: []string{"k"}}, {Version: 2, Keys: []string{"k"}}}}}}
	for _, v := range []any{
		[]any{"SX", int64(1), int64(0)},
		[]any{"S", int64(1)},
		[]any{"SS", int64(1), "0"},
		[]any{"SSS", int64(1), int64(0), int64(0)},
	} {
		if r, err := batched.Reply(replyCmd(v)); err == nil {
			t.Errorf("batched reply %#v read as %v", v, r)
		}
	}
	if r, err := batched.Reply(replyCmd([]any{"SD", int64(1), int64(0)})); err != nil || r[0] != (InvalidateResult{InvalidateSuccess, 1}) || r[1] != (InvalidateResult{InvalidateDuplicate, 0}) {
		t.Errorf("a good batched reply: %v %v", r, err)
	}
}

// The other codecs refuse replies of the wrong shape too.
func TestUnexpectedRepliesAreErrors(t *testing.T) {
	pub := PublishRequest{Channels: []PublishChannel{{Messages: []PublishMessage{{IDs: []string{"a", "b"}}}}}}
	for _, v := range []any{
		[]any{int64(1)},
		[]any{int64(1), int64(9)},
		[]any{int64(1), int64(0), int64(0)},
		[]any{int64(1), int64(2), int64(1)},
	} {
		if r, err := pub.Reply(replyCmd(v)); err == nil {
			t.Errorf("publish reply %#v read as %v", v, r)
		}
	}
	if r, err := pub.Reply(replyCmd([]any{int64(1), int64(2), int64(1), int64(0)})); err != nil || r[0].Status != PublishPartial || !r[0].Recorded[0] || r[0].Recorded[1] {
		t.Errorf("a good partial reply: %v %v", r, err)
	}
	var budget BudgetRequest
	if r, err := budget.Reply(replyCmd([]any{int64(1)})); err == nil {
		t.Errorf("budget reply of one number read as %v", r)
	}
	var srcver SourceVersionRequest
	if r, err := srcver.Reply(replyCmd(int64(2))); err == nil {
		t.Errorf("srcver status 2 read as %v", r)
	}
	var lease LeaseRequest
	for _, v := range []any{[]any{"HIT"}, []any{"LEASED", "x"}, []any{"WAIT", "5"}, []any{"NO"}} {
		if r, err := lease.Reply(replyCmd(v)); err == nil {
			t.Errorf("lease reply %#v read as %v", v, r)
		}
	}
	var read ReadRequest
	for _, v := range []any{[]any{"x"}, []any{[]any{}, []any{int64(1), "f"}}, []any{[]any{}, []any{int64(1), "f", int64(3)}}} {
		if r, err := read.Reply(replyCmd(v)); err == nil {
			t.Errorf("read reply %#v read as %v", v, r)
		}
	}
}

// unread.lua's reply is {lost, last id}, lost never negative.
func TestUnexpectedUnreadRepliesAreErrors(t *testing.T) {
	var r UnreadRequest
	for _, v := range []any{
		[]any{int64(1)},
		[]any{int64(-1), "1-0"},
		[]any{"1", "1-0"},
		[]any{int64(1), int64(1)},
		int64(1),
	} {
		if got, err := r.Reply(replyCmd(v)); err == nil {
			t.Errorf("unread reply %#v read as %v", v, got)
		}
	}
	if got, err := r.Reply(replyCmd([]any{int64(3), "5-0"})); err != nil || got != (UnreadReply{Lost: 3, Last: "5-0"}) {
		t.Errorf("a good reply: %v %v", got, err)
	}
}

// forget.lua's reply is {name, idle ms, …}, in pairs, idle never negative.
func TestUnexpectedForgetRepliesAreErrors(t *testing.T) {
	var r ForgetRequest
	for _, v := range []any{
		[]any{"c"},
		[]any{"c", int64(-1)},
		[]any{int64(1), int64(1)},
		[]any{"c", "1"},
		int64(1),
	} {
		if got, err := r.Reply(replyCmd(v)); err == nil {
			t.Errorf("forget reply %#v read as %v", v, got)
		}
	}
	got, err := r.Reply(replyCmd([]any{"a", int64(5), "b", int64(0)}))
	if err != nil || len(got) != 2 || got[0] != (Forgotten{Name: "a", Idle: 5 * time.Millisecond}) || got[1] != (Forgotten{Name: "b"}) {
		t.Errorf("a good reply: %v %v", got, err)
	}
	if got, err := r.Reply(replyCmd([]any{})); err != nil || len(got) != 0 {
		t.Errorf("an empty reply: %v %v", got, err)
	}
}
