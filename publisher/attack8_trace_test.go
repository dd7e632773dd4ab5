package publisher_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/routerd/routerd/publisher"
)

// attack: a tenant or domain of 1 MiB (a service passing an end user's
// input through) is refused, and its span does not carry the 1 MiB value
// to the trace collector: the span's attributes and error stay bounded.
func TestAttack8PubRefusedEventSpanBounded(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	p, err := publisher.New(c, publisher.Options{TracerProvider: tp, Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	mib := strings.Repeat("a", 1<<20)
	for _, ev := range []publisher.Event{{Tenant: mib, Domain: "user", WholeTag: true}, {Tenant: "acme", Domain: mib, WholeTag: true}} {
		if _, err := p.Publish(context.Background(), ev); err == nil {
			t.Fatal("an event of a 1 MiB name was sent")
		}
	}
	_, _ = p.Publish(context.Background(), publisher.Event{Tenant: "acme", Domain: "user", WholeTag: true}) // valid; the write fails
	spans := rec.Ended()
	if len(spans) != 3 || !slices.ContainsFunc(spans[2].Attributes(), func(a attribute.KeyValue) bool {
		return a.Key == "routerd.tenant" && a.Value.AsString() == "acme"
	}) {
		t.Fatalf("%d spans, the valid event's without its tenant", len(spans))
	}
	for _, s := range spans {
		size := len(s.Status().Description)
		for _, a := range s.Attributes() {
			size += len(a.Value.String())
		}
		for _, e := range s.Events() {
			for _, a := range e.Attributes {
				size += len(a.Value.String())
			}
		}
		if size > 4096 {
			t.Errorf("span %q carries %d bytes of attributes, status and events", s.Name(), size)
		}
	}
}
