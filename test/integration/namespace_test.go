package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/cli"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

// A hostile or careless publisher names a key that spells the tag set itself,
// with a raw XADD that no client library checked. The event is refused at the
// router (dead-lettered, the names error as its reason); the tag set survives,
// so a later whole-tag invalidation still deletes every key registered under
// the tag.
func TestEventKeyNamingTagSetIsDeadLettered(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.router(router.Options{})
	e.subscriber("search-svc", subscriber.Options{})
	e.seed("search-svc", "acme", "user:1", "active")
	e.seed("search-svc", "acme", "user:2", "active")

	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"event",
		`{"tenant":"acme","domain":"user","entity":"1","keys":["tag:active"]}`}}).Err())
	e.publish(wire.Event{Tenant: "acme", Domain: "user", WholeTag: true}) // the whole tag, after it

	e.waitGone("search-svc", "acme", "user:1")
	e.waitGone("search-svc", "acme", "user:2")
	var entries []redis.XMessage
	redistest.Eventually(t, 10*time.Second, "the event dead-lettered", func() bool {
		entries = allDeadLetters(t, e.busC)
		return len(entries) == 1
	})
	if got := entries[0].Values["reason"]; got != router.ReasonMalformed {
		t.Errorf("dead letter reason %v, want %s", got, router.ReasonMalformed)
	}
	if msg, _ := entries[0].Values["error"].(string); !strings.Contains(msg, "keys[0]") || !strings.Contains(msg, "reserved") {
		t.Errorf("dead letter error %q does not name keys[0] and the reserved namespace", msg)
	}
	// Only the whole-tag event reached the channel.
	if _, v := e.meta("invalidate:acme:active"); v != 1 {
		t.Errorf("channel at version %d, want 1 (the refused event must not be published)", v)
	}
	// The publisher library refuses such keys before they leave the service.
	_, err := e.pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"{tenant:acme}:user:1"}})
	if err == nil || !strings.Contains(err.Error(), "give the key without the {tenant:…}: prefix") {
		t.Errorf("Publish of a key with its tenant prefix: %v", err)
	}
	_, err = e.pub.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"pos:search-svc:active"}})
	if err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("Publish of a key naming a position: %v", err)
	}
}

// A message forged on the channel itself (a raw PUBLISH, past the router)
// that names the tag set as a key is refused by the subscriber's message
// validation: the tag set survives.
func TestForgedMessageNamingTagSetIgnored(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	reg := prometheus.NewRegistry()
	e.subscriber("search-svc", subscriber.Options{Registerer: reg})
	e.seed("search-svc", "acme", "user:1", "active")
	channel := "invalidate:acme:active"
	forged := `{"tenant":"acme","tag":"active","epoch":"f00d","version":1,"keys":["tag:active"]}`
	must(t, e.busC.Publish(ctx, channel, forged).Err())
	redistest.Eventually(t, 10*time.Second, "the forged message refused", func() bool {
		return metric(t, reg, "subscriber_invalid_messages_total") >= 1
	})
	if n := e.caches["search-svc"].Client(t).Exists(ctx, names.TagSetKey("acme", "active")).Val(); n != 1 {
		t.Error("a forged message deleted the tag set")
	}
	if !e.cached("search-svc", "acme", "user:1") {
		t.Error("a forged message deleted a cached key")
	}
}

// The tag store refuses a key that spells a position (or a tag set), so a
// Set cannot overwrite the position with a value, nor register the position
// under a tag for a later invalidation to delete.
func TestStoreRefusesInternalKeys(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	st, err := tagstore.New(c, tagstore.Options{})
	must(t, err)
	// A position, as a subscriber of service x on tag y keeps it.
	_, err = st.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "y", Service: "x", Position: tagstore.Position{Epoch: "e1", Version: 7}})
	must(t, err)
	pos := names.PositionKey("acme", "x", "y")

	const withoutPrefix = "give the key without the {tenant:…}: prefix"
	for key, why := range map[string]string{
		"pos:x:y":               "reserved",
		"tag:y":                 "reserved",
		"routerd:positions:x":   "reserved",
		"{tenant:acme}:pos:x:y": withoutPrefix,
		"{tenant:acme}:user:1":  withoutPrefix,
	} {
		err := st.Set(ctx, "acme", key, []byte("v"), 0, "y")
		if err == nil || !strings.Contains(err.Error(), `key "`+key+`"`) || !strings.Contains(err.Error(), why) {
			t.Errorf("Set(%q) = %v, want an error naming the key and saying %q", key, err, why)
		}
		_, err = st.InvalidateKeys(ctx, "acme", "y", key)
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("InvalidateKeys(%q) = %v, want an error saying %q", key, err, why)
		}
	}
	if got, err := c.Get(ctx, pos).Result(); err != nil || got != "e1:7" {
		t.Errorf("position %s = %q, %v; want e1:7", pos, got, err)
	}
	if n := c.Exists(ctx, names.TagSetKey("acme", "y")).Val(); n != 0 {
		t.Errorf("an internal key was registered under the tag")
	}
}

// routerd invalidate --keys refuses a key that names a position, and leaves
// the position alone.
func TestCLIInvalidateRefusesInternalKeys(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := srv.Client(t)
	pos := names.PositionKey("acme", "search-svc", "active")
	must(t, c.Set(ctx, pos, "e1:7", 0).Err())

	var out, errb strings.Builder
	code := cli.Main(ctx, []string{"invalidate", "--redis", "redis://" + srv.Addr, "--tenant", "acme", "--tag", "active",
		"--keys", "user:1,pos:search-svc:active"}, cli.Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	if code == 0 || !strings.Contains(errb.String(), `"pos:search-svc:active"`) || !strings.Contains(errb.String(), "reserved") {
		t.Errorf("invalidate --keys pos:…: exit %d, stdout %q, stderr %q; want a refusal naming the key", code, out.String(), errb.String())
	}
	if got, err := c.Get(ctx, pos).Result(); err != nil || got != "e1:7" {
		t.Errorf("position = %q, %v; want it untouched", got, err)
	}
}
