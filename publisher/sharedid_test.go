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
