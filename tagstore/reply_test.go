package tagstore

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
)

// A script reply that is not what the script promises is an error, never an
// empty or unknown status taken for an outcome.
func TestUnexpectedRepliesAreErrors(t *testing.T) {
	cmd := func(v any) *redis.Cmd {
		c := redis.NewCmd(context.Background())
		c.SetVal(v)
		return c
	}
	for _, v := range []any{
		[]any{"SUCCESS", int64(3), int64(1)},
		[]any{"", int64(0)},
		[]any{"SUCCES", int64(0)},
		[]any{int64(1), int64(0)},
		[]any{"SUCCESS", "3"},
		"SUCCESS",
	} {
		if st, n, err := parseReply("t", cmd(v)); err == nil {
			t.Errorf("invalidate reply %#v read as %q %d", v, st, n)
		}
	}
	if st, n, err := parseReply("t", cmd([]any{"EMPTY_TAG_SET", int64(0)})); err != nil || st != EmptyTagSet || n != 0 {
		t.Errorf("a good reply: %q %d %v", st, n, err)
	}
	call := applyCall{groups: []applyGroup{{invs: []int{0, 1}}}, n: 2}
	keys := [][]string{{"tagset", "pos", "mark", "k"}, {"tagset", "pos", "mark", "k"}}
	for _, v := range []any{
		[]any{"SX", int64(1), int64(0)},
		[]any{"S", int64(1)},
		[]any{"SS", int64(1), "0"},
		[]any{"SSS", int64(1), int64(0), int64(0)},
	} {
		if r, err := call.replies(keys, cmd(v)); err == nil {
			t.Errorf("batched reply %#v read as %v", v, r)
		}
	}
	if r, err := call.replies(keys, cmd([]any{"SD", int64(1), int64(0)})); err != nil || r[0] != (reply{Success, 1}) || r[1] != (reply{Duplicate, 0}) {
		t.Errorf("a good batched reply: %v %v", r, err)
	}
}
