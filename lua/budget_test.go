package lua_test

import (
	"context"
	"testing"
	"time"

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
	take := func(n int, force string) (int, int64) {
		t.Helper()
		req := lua.BudgetRequest{Key: key, Rate: 0.1, Burst: 3, N: n, Force: force == "1"} // a token per 10 s
		res, err := lua.Run(ctx, c, &req)
		if err != nil {
			t.Fatalf("budget script: %v %v", res, err)
		}
		return res.Granted, res.Wait.Milliseconds()
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
	history, events := "{"+ch+"}:history", "{"+ch+"}:events"
	publish := func(force string, ids ...string) []lua.PublishResult {
		t.Helper()
		var msgs []lua.PublishMessage
		for _, id := range ids {
			msgs = append(msgs, lua.PublishMessage{IDs: []string{id}, Body: []byte(`,"tenant":"acme","tag":"hot","event":"` + id + `"`)})
		}
		// burst 1, a token per 10 s
		req := lua.PublishRequest{Command: "PUBLISH", Epoch: "e0", Channels: []lua.PublishChannel{{Channel: ch, History: 100, Rate: 0.1, Burst: 1, Force: force == "1", Messages: msgs}}}
		res, err := lua.Run(ctx, c, &req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := publish("0", "a", "b"); len(res) != 2 || res[0].Version != 1 || res[0].Status != lua.Published || res[1].Status != lua.PublishNoToken || res[1].Wait <= 0 || res[1].Wait > 10*time.Second {
		t.Fatalf("two messages on a bucket of burst 1: %v, want version 1 sent, then status 3 with a wait", res)
	}
	if n := c.ZCard(ctx, events).Val(); n != 1 {
		t.Errorf("%d event ids recorded, want only the sent one's", n)
	}
	if n := c.XLen(ctx, history).Val(); n != 1 {
		t.Errorf("%d history entries, want 1", n)
	}
	if res := publish("0", "a"); len(res) != 1 || res[0].Status != lua.PublishDuplicate {
		t.Errorf("a redelivery of a sent message: %v, want status 1 (no token needed)", res)
	}
	if res := publish("1", "b"); len(res) != 1 || res[0].Version != 2 || res[0].Status != lua.Published {
		t.Errorf("forced: %v, want version 2 sent", res)
	}
	if res := publish("0", "c"); len(res) != 1 || res[0].Status != lua.PublishNoToken || res[0].Wait <= 10*time.Second {
		t.Errorf("a token in debt: %v, want status 3 and a wait over 10 s", res)
	}
}
