package integration

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/wire"
)

// attack: a careless or hostile service team hands the publisher library
// field values no schema would let through — separators, braces, control
// bytes, NUL, invalid UTF-8, 1 MiB strings, integers at the int64 limits,
// ids of the forms the router keeps for itself. Each Publish (and
// PublishBatch) either refuses the event with an error naming the field,
// before anything is written, or the router routes it: a nil error for an
// event the router dead-letters would be a lie to the caller.
func TestAttack8PubHostileFieldsRefusedOrRouted(t *testing.T) {
	ctx := context.Background()
	mtx := testMatrix + `publishers:
  profile-svc: {domains: [user], tenants: all}
`
	e := newEnv(t, mtx)
	e.router(router.Options{})
	redistest.Eventually(t, 10*time.Second, "the partition count recorded", func() bool {
		return e.busC.Get(ctx, names.PartitionsKey("invalidate")).Val() == "4"
	})
	own, err := publisher.New(e.busC, publisher.Options{Publisher: "profile-svc"})
	if err != nil {
		t.Fatal(err)
	}

	mib := strings.Repeat("a", 1<<20)
	ev := func(f func(*wire.Event)) wire.Event {
		v := wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
		f(&v)
		return v
	}
	manyKeys := func(n, size int) []string {
		keys := make([]string, n)
		for i := range keys {
			k := fmt.Sprintf("user:%d:", i)
			keys[i] = k + strings.Repeat("k", size-len(k))
		}
		return keys
	}
	cases := []struct {
		name  string
		pub   *publisher.Publisher
		ev    wire.Event
		field string // the field the error names; "" when the event must be routed
	}{
		{"tenant with ':'", e.pub, ev(func(v *wire.Event) { v.Tenant = "ac:me" }), "tenant"},
		{"tenant with braces", e.pub, ev(func(v *wire.Event) { v.Tenant = "{acme}" }), "tenant"},
		{"tenant with a newline", e.pub, ev(func(v *wire.Event) { v.Tenant = "acme\n" }), "tenant"},
		{"tenant with NUL", e.pub, ev(func(v *wire.Event) { v.Tenant = "ac\x00me" }), "tenant"},
		{"tenant of 1 MiB", e.pub, ev(func(v *wire.Event) { v.Tenant = mib }), "tenant"},
		{"tenant of invalid UTF-8", e.pub, ev(func(v *wire.Event) { v.Tenant = "acme\xff" }), "tenant"},
		{"domain with braces", e.pub, ev(func(v *wire.Event) { v.Domain = "us{er}" }), "domain"},
		{"domain with NUL", e.pub, ev(func(v *wire.Event) { v.Domain = "user\x00" }), "domain"},
		{"domain of 1 MiB", e.pub, ev(func(v *wire.Event) { v.Domain = mib }), "domain"},
		{"id with a newline", e.pub, ev(func(v *wire.Event) { v.ID = "a\nb" }), "id"},
		{"id with NUL", e.pub, ev(func(v *wire.Event) { v.ID = "a\x00b" }), "id"},
		{"id of 1 MiB", e.pub, ev(func(v *wire.Event) { v.ID = mib }), "id"},
		{"id of invalid UTF-8", e.pub, ev(func(v *wire.Event) { v.ID = "\xc3\x28" }), "id"},
		{"id of a derived id", e.pub, ev(func(v *wire.Event) { v.ID = "invalidate:ingress:{3}:1764000000123-0" }), "id"},
		{"id of a hashed id", e.pub, ev(func(v *wire.Event) { v.ID = "sha256:00ff" }), "id"},
		{"id of a hashed id of 1 MiB", e.pub, ev(func(v *wire.Event) { v.ID = "sha256:" + mib }), "id"},
		{"id of a share", e.pub, ev(func(v *wire.Event) { v.ID = "order-7#keys:0-499" }), "id"},
		{"id of a share on own streams", own, ev(func(v *wire.Event) { v.ID = "order-7#keys:0-499" }), "id"},
		{"id with a slash", e.pub, ev(func(v *wire.Event) { v.ID = "profile-svc/1" }), "id"},
		{"entity with a newline", e.pub, ev(func(v *wire.Event) { v.Entity = "1042\n" }), "entity"},
		{"entity of 1 MiB", e.pub, ev(func(v *wire.Event) { v.Entity = mib }), "entity"},
		{"origin with NUL", e.pub, ev(func(v *wire.Event) { v.Origin = "\x00" }), "origin"},
		{"traceparent of 1 MiB", e.pub, ev(func(v *wire.Event) { v.Traceparent = mib }), "traceparent"},
		{"key with a newline", e.pub, ev(func(v *wire.Event) { v.Keys = []string{"user:1\n"} }), "keys[0]"},
		{"key with NUL", e.pub, ev(func(v *wire.Event) { v.Keys = []string{"user:1", "\x00"} }), "keys[1]"},
		{"key of invalid UTF-8", e.pub, ev(func(v *wire.Event) { v.Keys = []string{"user:\xff"} }), "keys[0]"},
		{"key of 1 MiB", e.pub, ev(func(v *wire.Event) { v.Keys = []string{mib} }), "keys[0]"},
		{"key with its tenant", e.pub, ev(func(v *wire.Event) { v.Keys = []string{"{tenant:acme}:user:1"} }), "keys[0]"},
		{"key of a tag set", e.pub, ev(func(v *wire.Event) { v.Keys = []string{"tag:active"} }), "keys[0]"},
		{"empty key", e.pub, ev(func(v *wire.Event) { v.Keys = []string{""} }), "keys[0]"},
		{"too many keys", e.pub, ev(func(v *wire.Event) { v.Keys = manyKeys(wire.MaxKeys+1, 12) }), "keys"},
		{"keys above 1 MiB", e.pub, ev(func(v *wire.Event) { v.Keys = manyKeys(2500, 500) }), "MaxEventBytes"},
		{"negative source_version", e.pub, ev(func(v *wire.Event) { v.SourceVersion = math.MinInt64 }), "source_version"},
		{"negative ts", e.pub, ev(func(v *wire.Event) { v.TS = -1 }), "ts"},

		{"separators and braces", e.pub, ev(func(v *wire.Event) {
			v.ID, v.Entity, v.Origin = "a:b{c}}", "1042:{x}", ":{}"
			v.Keys = []string{"user:{1}", "user:}", `page/home?x="1"&y=<2>\`}
		}), ""},
		{"id and key at their longest", e.pub, ev(func(v *wire.Event) {
			v.ID, v.Keys = strings.Repeat("i", wire.MaxIDLen), []string{"user:" + strings.Repeat("k", 507)}
		}), ""},
		{"int64 limits", e.pub, ev(func(v *wire.Event) { v.Entity, v.SourceVersion, v.TS = "1042", math.MaxInt64, math.MaxInt64 }), ""},
		{"just under 1 MiB of keys", e.pub, ev(func(v *wire.Event) { v.Keys = manyKeys(2000, 500) }), ""},
		{"own streams: a hashed id", own, ev(func(v *wire.Event) { v.ID = "sha256:00ff" }), ""},
		{"own streams: a derived id", own, ev(func(v *wire.Event) { v.ID = "invalidate:ingress:{3}:1-0" }), ""},
	}
	for i, tc := range cases {
		for _, batch := range []bool{false, true} {
			ev := tc.ev
			if ev.ID != "" && tc.field == "" {
				ev.ID = fmt.Sprintf("%s-%d-%v", ev.ID[:min(len(ev.ID), 200)], i, batch) // each its own event
			}
			var err error
			if batch {
				_, err = tc.pub.PublishBatch(ctx, []wire.Event{ev})
			} else {
				_, err = tc.pub.Publish(ctx, ev)
			}
			switch {
			case tc.field == "" && err != nil:
				t.Errorf("%s (batch %v): %v, want it sent", tc.name, batch, err)
			case tc.field == "":
			case err == nil:
				t.Errorf("%s (batch %v): sent, want an error naming %s", tc.name, batch, tc.field)
			case !strings.Contains(err.Error(), tc.field):
				t.Errorf("%s (batch %v): %v, want an error naming %s", tc.name, batch, err, tc.field)
			case len(err.Error()) > 2048:
				t.Errorf("%s (batch %v): an error of %d bytes: it repeats the value", tc.name, batch, len(err.Error()))
			}
		}
	}

	// Whatever was sent is routed: once the router has read and
	// acknowledged every entry of acme's ingress streams (the shared one
	// and profile-svc's), nothing was dead-lettered.
	streams := []string{names.IngressStream("invalidate", wire.Partition("acme", 4)), names.PublisherStream("invalidate", "profile-svc", wire.Partition("acme", 4))}
	redistest.Eventually(t, 20*time.Second, "every entry routed", func() bool {
		for _, s := range streams {
			groups, err := e.busC.XInfoGroups(ctx, s).Result()
			if err != nil || len(groups) != 1 || groups[0].Lag != 0 || groups[0].Pending != 0 {
				return false
			}
		}
		return true
	})
	for _, dl := range allDeadLetters(t, e.busC) {
		t.Errorf("Publish said nil, the router dead-lettered it: %s: %.300s", dl.Values["reason"], dl.Values["error"])
	}
}
