package publisher_test

import (
	"context"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
)

// A durable publish right after a failover, whose new master has no
// replica yet (Sentinel makes the old master its replica only later),
// while the replica count read from the old master (1) is still kept:
// the WAIT 1 acknowledges none, and the count read again says the master
// has no replica to wait for. The publish stands, as one to a master
// without replica does (warned), rather than failing after WaitTimeout
// for a replica the master does not have.
func TestDurablePublishRightAfterAFailover(t *testing.T) {
	ctx := context.Background()
	s := redistest.StartSentinel(t, 1, 1)
	p, err := publisher.New(s.Client(t), publisher.Options{Partitions: 1, Durable: true, WaitTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ev := publisher.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}
	var last error
	if err := redistest.Wait(ctx, 10*time.Second, "a durable publish acknowledged by the replica", func() bool {
		_, last = p.Publish(ctx, ev)
		return last == nil
	}); err != nil {
		t.Fatalf("%v: %v", err, last)
	}
	stream := names.IngressStream(names.DefaultPrefix, 0)
	before, err := s.Servers[1].Client(t).XLen(ctx, stream).Result() // the replica acknowledged them
	if err != nil {
		t.Fatal(err)
	}
	promoted := s.Failover(t)
	if _, err := p.Publish(ctx, ev); err != nil {
		t.Fatalf("the first durable publish after the failover: %v", err)
	}
	if n, err := promoted.Client(t).XLen(ctx, stream).Result(); err != nil || n != before+1 {
		t.Errorf("the promoted master's ingress stream has %d entries (%v), want %d", n, err, before+1)
	}
}
