// Package telemetry sets up OpenTelemetry tracing from the standard OTEL_*
// environment variables, and carries W3C trace context inside routerd's
// events and messages.
//
// OTEL_TRACES_EXPORTER selects the exporter: otlp, console, or none; unset
// means none, so tracing costs nothing unless asked for. otlp follows
// OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL (http/protobuf by default, or grpc)
// and the endpoint variables; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
// name the process. Setup's getenv chooses the exporter; the OTel SDK reads
// the endpoint and resource variables from the process environment itself.
package telemetry

import (
	"context"
	"fmt"
	"io"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Setup returns the tracer provider the environment asks for and a function
// that flushes and stops it. stdout receives the console exporter's spans.
func Setup(ctx context.Context, getenv func(string) string, stdout io.Writer, service string) (trace.TracerProvider, func(context.Context) error, error) {
	var exp sdktrace.SpanExporter
	var err error
	switch name := getenv("OTEL_TRACES_EXPORTER"); name {
	case "", "none":
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	case "console":
		exp, err = stdouttrace.New(stdouttrace.WithWriter(stdout))
	case "otlp":
		protocol := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
		if protocol == "" {
			protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
		}
		switch protocol {
		case "", "http/protobuf":
			exp, err = otlptracehttp.New(ctx)
		case "grpc":
			exp, err = otlptracegrpc.New(ctx)
		default:
			return nil, nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: routerd exports http/protobuf or grpc", protocol)
		}
	default:
		return nil, nil, fmt.Errorf("OTEL_TRACES_EXPORTER %q: use otlp, console or none", name)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("trace exporter: %w", err)
	}
	// The SDK reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (from the
	// process environment, percent-decoded as the specification says); they
	// override the default service name.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithFromEnv(),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if getenv("OTEL_TRACES_EXPORTER") == "console" {
		opts = append(opts, sdktrace.WithSyncer(exp)) // print at once, for people watching
	} else {
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	return tp, tp.Shutdown, nil
}

var propagator = propagation.TraceContext{}

// Inject returns the W3C traceparent of the span in ctx, or "".
func Inject(ctx context.Context) string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return "" // nothing to carry; and no map to allocate
	}
	c := propagation.MapCarrier{}
	propagator.Inject(ctx, c)
	return c["traceparent"]
}

// Extract returns ctx carrying the remote span context of a traceparent.
func Extract(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return propagator.Extract(ctx, propagation.MapCarrier{"traceparent": traceparent})
}

// Enabled reports whether tp records spans: false for nil and the no-op
// provider, so hot paths can skip span work when tracing is off.
func Enabled(tp trace.TracerProvider) bool {
	if tp == nil {
		return false
	}
	_, off := tp.(noop.TracerProvider)
	return !off
}

// Tracer returns the named tracer of tp, or a no-op one when tp is nil.
func Tracer(tp trace.TracerProvider, name string) trace.Tracer {
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	return tp.Tracer(name)
}
