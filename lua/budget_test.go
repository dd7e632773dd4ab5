package lua_test

import (
	"context"
	"testing"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/lua"
)

// The budget script grants what the shared bucket has, says when it will
// have more, takes back unused tokens up to the burst, and gives on credit
// when forced, which later takes delay.
func TestBudgetScript(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	const key = "invalidate:budget:tenant:acme"
	take := func(n int, force string) (int64, int64) {
		t.Helper()
		res, err := lua.Budget.Run(ctx, c, []string{key}, 0.1, 3, n, force).Int64Slice() // a token per 10 s
		if err != nil || len(res) != 2 {
			t.Fatalf("budget script: %v %v", res, err)
		}
		return res[0], res[1]
	}
	if got, wait := take(5, "0"); got != 3 || wait <= 0 || wait > 10_000 {
		t.Fatalf("a full bucket of 3 asked for 5: granted %d, wait %d ms", got, wait)
	}
	if got, wait := take(1, "0"); got != 0 || wait <= 0 {
		t.Fatalf("an empty bucket granted %d, wait %d ms", got, wait)
	}
	if got, _ := take(-5, "0"); got != 0 {
		t.Fatalf("a give-back granted %d", got)
	}
	if got, wait := take(4, "0"); got != 3 || wait <= 0 {
		t.Fatalf("after giving 5 back to a bucket of burst 3: granted %d of 4 (wait %d ms), want the burst", got, wait)
	}
	if got, _ := take(2, "1"); got != 2 {
		t.Fatalf("forced: granted %d of 2", got)
	}
	if got, wait := take(1, "0"); got != 0 || wait <= 20_000 {
		t.Fatalf("two tokens in debt: granted %d, wait %d ms, want over 20 s", got, wait)
	}
	if ttl := c.PTTL(ctx, key).Val(); ttl <= 0 {
		t.Errorf("the bucket does not expire (PTTL %v)", ttl)
	}
}

// The publish script takes a token of the channel's bucket per message it
// sends; without one it neither records nor sends the message and answers
// status 3 with the wait.
func TestPublishScriptChannelBucket(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	const ch = "invalidate:acme:hot"
	meta, history, events := "{"+ch+"}:meta", "{"+ch+"}:history", "{"+ch+"}:events"
	publish := func(force string, ids ...string) []int64 {
		t.Helper()
		args := []any{"PUBLISH", "e0", ch, 100, 0, 0.1, 1, force, len(ids)} // no TTL, burst 1, a token per 10 s
		for _, id := range ids {
			args = append(args, 1, id, `,"tenant":"acme","tag":"hot","event":"`+id+`"`)
		}
		res, err := lua.Publish.Run(ctx, c, []string{meta, history, events}, args...).Int64Slice()
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := publish("0", "a", "b"); len(res) != 4 || res[0] != 1 || res[1] != 0 || res[3] != 3 || res[2] <= 0 || res[2] > 10_000 {
		t.Fatalf("two messages on a bucket of burst 1: %v, want version 1 sent, then status 3 with a wait", res)
	}
	if n := c.ZCard(ctx, events).Val(); n != 1 {
		t.Errorf("%d event ids recorded, want only the sent one's", n)
	}
	if n := c.XLen(ctx, history).Val(); n != 1 {
		t.Errorf("%d history entries, want 1", n)
	}
	if res := publish("0", "a"); len(res) != 2 || res[1] != 1 {
		t.Errorf("a redelivery of a sent message: %v, want status 1 (no token needed)", res)
	}
	if res := publish("1", "b"); len(res) != 2 || res[0] != 2 || res[1] != 0 {
		t.Errorf("forced: %v, want version 2 sent", res)
	}
	if res := publish("0", "c"); len(res) != 2 || res[1] != 3 || res[0] <= 10_000 {
		t.Errorf("a token in debt: %v, want status 3 and a wait over 10 s", res)
	}
}
