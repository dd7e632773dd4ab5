package lua_test

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/lua"
)

// publishOn runs publish.lua for messages on one channel (a bucket that
// never runs out in a test) and returns its reply.
func publishOn(ctx context.Context, c redis.Scripter, ch string, ids ...string) ([]lua.PublishResult, error) {
	var msgs []lua.PublishMessage
	for _, id := range ids {
		msgs = append(msgs, lua.PublishMessage{IDs: []string{id}, Body: []byte(`,"tenant":"acme","tag":"t","event":"` + id + `"`)})
	}
	req := lua.PublishRequest{Command: "PUBLISH", Epoch: "e0", Channels: []lua.PublishChannel{{Channel: ch, History: 100, Rate: 1000, Burst: 1000, Messages: msgs}}}
	return lua.Run(ctx, c, &req)
}

// Redis does not roll a script back when a command in it fails. A failure
// after the event ids were recorded must not leave them recorded (the retry
// would take the message for published and acknowledge it: an invalidation
// lost), and what the call did publish must be in the meta (the next
// version would otherwise repeat one in the history, and every later XADD
// fail: the channel wedged).
func TestPublishScriptFailureLosesNothing(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	const ch = "invalidate:acme:t"
	meta, history, events := "{"+ch+"}:meta", "{"+ch+"}:history", "{"+ch+"}:events"
	if res, err := publishOn(ctx, c, ch, "first"); err != nil || res[0].Status != lua.Published {
		t.Fatalf("first: %v %v", res, err)
	}

	// The history XADD fails (a key of another type): nothing recorded.
	must(t, c.Del(ctx, history).Err())
	must(t, c.Set(ctx, history, "x", 0).Err())
	if _, err := publishOn(ctx, c, ch, "second"); err == nil || !strings.HasPrefix(err.Error(), "WRONGTYPE") {
		t.Fatalf("publish onto a history of the wrong type: %v, want the WRONGTYPE error", err)
	}
	if _, err := c.ZScore(ctx, events, "second").Result(); err != redis.Nil {
		t.Fatalf("the failed message's event id stays recorded (err %v): its retry would be acknowledged unsent", err)
	}
	must(t, c.Del(ctx, history).Err())
	res, err := publishOn(ctx, c, ch, "second")
	if err != nil || res[0].Status != lua.Published || res[0].Version != 2 {
		t.Fatalf("retry once the key is repaired: %v %v, want version 2 published", res, err)
	}

	// The PUBLISH fails (the router's user may not publish on the channel),
	// after the history entry was written: the message is in the history,
	// so it counts as published (a subscriber replays it), and the meta says so.
	must(t, c.Do(ctx, "ACL", "SETUSER", "nopub", "on", ">pw", "~*", "+@all", "resetchannels").Err())
	nopub := redis.NewClient(&redis.Options{Addr: c.Options().Addr, Username: "nopub", Password: "pw"})
	defer nopub.Close()
	if _, err := publishOn(ctx, nopub, ch, "third", "fourth"); err == nil || !strings.Contains(err.Error(), "can't publish to the channel") {
		t.Fatalf("publish without the channel permission: %v, want the ACL error", err)
	}
	if v := c.HGet(ctx, meta, "version").Val(); v != "3" {
		t.Fatalf("meta version %s after the history took version 3: the next XADD would fail", v)
	}
	res, err = publishOn(ctx, c, ch, "third", "fourth")
	if err != nil || len(res) != 2 || res[0].Version != 3 || res[0].Status != lua.PublishDuplicate || res[1].Version != 4 || res[1].Status != lua.Published {
		t.Fatalf("retry with the permission back: %v %v, want third already at 3, fourth published at 4", res, err)
	}
	if n := c.XLen(ctx, history).Val(); n != 3 {
		t.Errorf("history holds %d entries, want 3 (second, third, fourth)", n)
	}
}

// After a message some of whose events were recorded before (status 2),
// the channel's later messages in the call are neither sent nor recorded
// (status 4): the router sends the first one's rest before them, so the
// channel's order holds.
func TestPublishScriptStopsBehindAPartlyRecordedMessage(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	const ch = "invalidate:acme:t"
	if res, err := publishOn(ctx, c, ch, "a"); err != nil || res[0].Status != lua.Published {
		t.Fatalf("first: %v %v", res, err)
	}
	req := lua.PublishRequest{Command: "PUBLISH", Epoch: "e0", Channels: []lua.PublishChannel{{Channel: ch, History: 100, Rate: 1000, Burst: 1000, Messages: []lua.PublishMessage{
		{IDs: []string{"a", "b"}, Body: []byte(`,"tenant":"acme","tag":"t","event":"a"`)},
		{IDs: []string{"c"}, Body: []byte(`,"tenant":"acme","tag":"t","event":"c"`)},
		{IDs: []string{"a"}, Body: []byte(`,"tenant":"acme","tag":"t","event":"a"`)},
	}}}}
	res, err := lua.Run(ctx, c, &req)
	want := []lua.PublishResult{
		{Version: 1, Status: lua.PublishPartial, Recorded: []bool{true, false}},
		{Version: 0, Status: lua.PublishBehind},
		{Version: 1, Status: lua.PublishDuplicate},
	}
	if err != nil || !reflect.DeepEqual(res, want) {
		t.Fatalf("reply %v (%v), want %v: partly recorded, then not tried, then a duplicate", res, err, want)
	}
	for _, id := range []string{"b", "c"} {
		if err := c.ZScore(ctx, "{"+ch+"}:events", id).Err(); err != redis.Nil {
			t.Errorf("event %s recorded (%v), though nothing was sent", id, err)
		}
	}
	if v := c.HGet(ctx, "{"+ch+"}:meta", "version").Val(); v != "1" {
		t.Errorf("version %s, want 1", v)
	}
}

// The meta's chain is recovery.Link over the history's messages in order,
// as a subscriber computes it from what it applies; it starts again with a
// new epoch, and catches up over the history when a router older than
// chains published in between (its versions leave the field behind).
func TestPublishKeepsTheChannelsChain(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	const ch = "invalidate:acme:t"
	meta, history := "{"+ch+"}:meta", "{"+ch+"}:history"
	want := func(what string) {
		t.Helper()
		entries, err := c.XRange(ctx, history, "-", "+").Result()
		must(t, err)
		chain := ""
		for _, e := range entries {
			chain = recovery.Link(chain, []byte(e.Values["m"].(string)))
		}
		epoch, version := c.HGet(ctx, meta, "epoch").Val(), c.HGet(ctx, meta, "version").Val()
		if got, want := c.HGet(ctx, meta, "chain").Val(), epoch+":"+version+":"+chain; got != want {
			t.Errorf("%s: meta chain %q, want %q", what, got, want)
		}
	}
	_, err := publishOn(ctx, c, ch, "a", "b")
	must(t, err)
	want("two messages")
	_, err = publishOn(ctx, c, ch, "c")
	must(t, err)
	want("one more")

	// An older router publishes version 4 without touching the chain.
	msg := `{"epoch":"e0","version":4,"tenant":"acme","tag":"t","event":"old"}`
	must(t, c.XAdd(ctx, &redis.XAddArgs{Stream: history, ID: "4-0", Values: []any{"m", msg}}).Err())
	must(t, c.HSet(ctx, meta, "version", 4).Err())
	_, err = publishOn(ctx, c, ch, "d")
	must(t, err)
	want("after an older router's version")

	must(t, c.Del(ctx, meta).Err()) // the meta vanished: a new epoch
	_, err = publishOn(ctx, c, ch, "e")
	must(t, err)
	want("a new epoch")
}

// A channel's first epoch says nothing more; an epoch started where the
// meta alone was lost (its history or event ids left) says restarted, and
// keeps saying it: a subscriber without a position must not take it for
// all the channel published. An epoch after a meta lost with everything
// else cannot tell (docs/operations.md: the bus must not evict).
func TestPublishMarksAnEpochStartedAfterALostMeta(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	const ch = "invalidate:acme:t"
	meta := "{" + ch + "}:meta"
	restarted := func() string { return c.HGet(ctx, meta, "restarted").Val() }
	_, err := publishOn(ctx, c, ch, "a")
	must(t, err)
	if r := restarted(); r != "" {
		t.Fatalf("a new channel's epoch says restarted=%q", r)
	}
	must(t, c.Unlink(ctx, meta).Err())
	_, err = publishOn(ctx, c, ch, "b")
	must(t, err)
	_, err = publishOn(ctx, c, ch, "c")
	must(t, err)
	if r, v := restarted(), c.HGet(ctx, meta, "version").Val(); r != "1" || v != "2" {
		t.Fatalf("after the meta alone was lost: restarted=%q at version %s, want 1 at 2", r, v)
	}
	must(t, c.Del(ctx, meta, "{"+ch+"}:history", "{"+ch+"}:events").Err())
	_, err = publishOn(ctx, c, ch, "d")
	must(t, err)
	if r := restarted(); r != "" {
		t.Fatalf("after everything of the channel was lost: restarted=%q (nothing tells it from a new channel)", r)
	}
}
