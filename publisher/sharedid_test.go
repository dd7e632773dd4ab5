package publisher_test

import (
	"context"
	"strings"
	"testing"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/wire"
)

// On the shared ingress an id may hold no "/" (the form <publisher>/… of a
// publisher's own ids): the router would dead-letter it, so the publisher
// refuses it before writing anything. On a publisher's own streams it is
// the publisher's id like any other.
func TestSharedIngressRefusesIDWithSlash(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	shared, err := publisher.New(c, publisher.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ev := publisher.Event{ID: "profile-svc/order-7", Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
	if _, err := shared.Publish(ctx, ev); err == nil || !strings.Contains(err.Error(), `"profile-svc/order-7"`) {
		t.Fatalf("Publish of an id holding a / on the shared ingress: %v, want an error naming the id", err)
	}
	if _, err := shared.PublishBatch(ctx, []publisher.Event{ev}); err == nil {
		t.Fatal("PublishBatch of an id holding a / on the shared ingress: no error")
	}
	if n := c.XLen(ctx, names.IngressStream("invalidate", wire.Partition("acme", 8))).Val(); n != 0 {
		t.Fatalf("%d entries written", n)
	}
	own, err := publisher.New(c, publisher.Options{Publisher: "profile-svc"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := own.Publish(ctx, ev); err != nil {
		t.Fatalf("Publish on a publisher's own stream: %v", err)
	}
}

// attack: every id the router refuses as reserved (docs/protocol.md 2.3)
// is refused by Publish and PublishBatch too, before anything is written:
// a nil error for an event the router dead-letters would be a lie to the
// caller. The forms: on the shared ingress <prefix>:ingress:… (an id the
// router derives), sha256:… (an id too long to keep) and …#keys:… (a share
// of a split event); on a publisher's own streams …#keys:….
func TestReservedIDsRefusedBeforeSending(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	for _, tc := range []struct {
		opt      publisher.Options
		id       string
		reserved bool
	}{
		{publisher.Options{}, "invalidate:ingress:{7}:1764000000123-0", true},
		{publisher.Options{}, "sha256:9f86d081884c7d659a2feaa0c55ad015", true},
		{publisher.Options{}, "order-7#keys:0-499", true},
		{publisher.Options{Prefix: "app"}, "app:ingress:{7}:1-0", true},
		{publisher.Options{Prefix: "app"}, "invalidate:ingress:{7}:1-0", false}, // another prefix's form
		{publisher.Options{Publisher: "profile-svc"}, "order-7#keys:0-499", true},
		{publisher.Options{Publisher: "profile-svc"}, "sha256:9f86d081884c7d659a2feaa0c55ad015", false},
		{publisher.Options{Publisher: "profile-svc"}, "invalidate:ingress:{7}:1-0", false},
		{publisher.Options{}, "order-7#keys", false},
	} {
		p, err := publisher.New(c, tc.opt)
		if err != nil {
			t.Fatal(err)
		}
		ev := publisher.Event{ID: tc.id, Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
		_, err = p.Publish(ctx, ev)
		_, berr := p.PublishBatch(ctx, []publisher.Event{ev, ev})
		switch {
		case tc.reserved && (err == nil || !strings.Contains(err.Error(), `"`+tc.id+`"`)):
			t.Errorf("Publish of the reserved id %q (prefix %q, publisher %q): %v, want an error naming the id", tc.id, tc.opt.Prefix, tc.opt.Publisher, err)
		case tc.reserved && berr == nil:
			t.Errorf("PublishBatch of the reserved id %q (prefix %q, publisher %q): no error", tc.id, tc.opt.Prefix, tc.opt.Publisher)
		case !tc.reserved && (err != nil || berr != nil):
			t.Errorf("Publish of the id %q (prefix %q, publisher %q): %v, %v; want it sent", tc.id, tc.opt.Prefix, tc.opt.Publisher, err, berr)
		}
	}
}
