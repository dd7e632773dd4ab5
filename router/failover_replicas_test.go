package router

import (
	"context"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
)

// The router's durable publish right after a Sentinel failover, whose new
// master has no replica yet, while the count read from the old master (1)
// is still kept: the WAIT acknowledges none, the count read again says
// there is no replica to wait for, and the messages stand as published
// (publisher's TestDurablePublishRightAfterAFailover for the ingress).
func TestPublishDurablyRightAfterAFailover(t *testing.T) {
	ctx := context.Background()
	s := redistest.StartSentinel(t, 1, 1)
	m, err := matrix.Parse("m.yaml", []byte("version: 1\ntags:\n  a: {services: [s]}\ndomains:\n  user: {tags: [a]}\nservices:\n  s: {tenants: all}\n"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(s.Client(t), m, Options{ReplicaTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var last error
	if err := redistest.Wait(ctx, 10*time.Second, "a message acknowledged by the replica", func() bool {
		last = r.publishDurably(ctx, []*outgoing{message("invalidate:acme:a", "a", "e1")}, "ep", "PUBLISH")[0].err
		return last == nil
	}); err != nil {
		t.Fatalf("%v: %v", err, last)
	}
	s.Failover(t)
	if res := r.publishDurably(ctx, []*outgoing{message("invalidate:acme:a", "a", "e2")}, "ep", "PUBLISH"); res[0].err != nil {
		t.Fatalf("the first message after the failover: %v", res[0].err)
	}
}
