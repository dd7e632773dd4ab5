package router

import (
	"context"
	"fmt"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/publisher"
)

// An event's "route" span lasts from its routing to the last of its channel
// messages published — directly, or later in a coalesced message — and is
// the parent of their "channel publish" spans.
func TestRouteSpanCoversChannelPublishes(t *testing.T) {
	c := redistest.Start(t).Client(t)
	// Tag b allows one message, then merges what follows for 50ms.
	m, err := matrix.Parse("m.yaml", []byte("version: 1\ningress: {partitions: 1}\ntags:\n  a: {services: [s]}\n  b: {services: [s], rate: 20, burst: 1, coalesce: 50ms}\ndomains:\n  user: {tags: [a, b]}\nservices:\n  s: {tenants: all}\n"))
	if err != nil {
		t.Fatal(err)
	}
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	r, err := New(c, m, Options{TracerProvider: tp, Block: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)

	p, err := publisher.New(c, publisher.Options{Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	ended := func(name string) []sdktrace.ReadOnlySpan {
		var out []sdktrace.ReadOnlySpan
		for _, s := range rec.Ended() {
			if s.Name() == name {
				out = append(out, s)
			}
		}
		return out
	}
	// e1 goes out on a and b at once; e2, published after it (one read
	// batch would merge them), goes out on a, and on b only in the
	// coalesced message: its first try on b, which b's bucket refused,
	// is a channel publish span of its own, marked held.
	if _, err := p.Publish(context.Background(), publisher.Event{ID: "e1", Tenant: "acme", Domain: "user", Keys: []string{"user:1"}}); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "e1's two channel publish spans ended", func() bool {
		return len(ended("channel publish")) == 2
	})
	if _, err := p.Publish(context.Background(), publisher.Event{ID: "e2", Tenant: "acme", Domain: "user", Keys: []string{"user:2"}}); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "two route spans and five channel publish spans ended", func() bool {
		return len(ended("route")) == 2 && len(ended("channel publish")) == 5
	})
	heldChildren := 0
	for _, route := range ended("route") {
		children, held := 0, 0
		for _, cp := range ended("channel publish") {
			if cp.Parent().SpanID() != route.SpanContext().SpanID() {
				continue
			}
			children++
			for _, a := range cp.Attributes() {
				if a.Key == "routerd.held_ms" {
					held++
				}
			}
			if cp.StartTime().Before(route.StartTime()) || cp.EndTime().After(route.EndTime()) {
				t.Errorf("route span %v–%v does not cover its channel publish %v–%v",
					route.StartTime().Format(time.StampMicro), route.EndTime().Format(time.StampMicro),
					cp.StartTime().Format(time.StampMicro), cp.EndTime().Format(time.StampMicro))
			}
		}
		// e2's message on b is a coalesced one of e2 alone: its span's
		// parent is e2's route span, so each route span has two that
		// published, and e2's one more that was held.
		if children-held != 2 {
			t.Errorf("route span %s has %d channel publish children (%d held), want 2 published", fmt.Sprint(route.Attributes()), children, held)
		}
		heldChildren += held
	}
	if heldChildren != 1 {
		t.Errorf("%d channel publish spans held, want 1", heldChildren)
	}
}
