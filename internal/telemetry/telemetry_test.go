package telemetry

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

// resourceOf starts and ends one span under the environment's provider and
// returns the console exporter's output, which carries the resource.
func resourceOf(t *testing.T) string {
	t.Helper()
	var out bytes.Buffer
	tp, stop, err := Setup(context.Background(), os.Getenv, &out, "routerd")
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("test").Start(context.Background(), "x")
	span.End()
	if err := stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func attr(key, value string) string {
	return `{"Key":"` + key + `","Value":{"Type":"STRING","Value":"` + value + `"}}`
}

// OTEL_RESOURCE_ATTRIBUTES is read as the OpenTelemetry specification says:
// values percent-decoded, spaces around keys and values trimmed.
func TestResourceFromEnvironment(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "console")
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod%20eu, team = cache")
	out := resourceOf(t)
	for _, want := range []string{attr("service.name", "routerd"), attr("deployment.environment", "prod eu"), attr("team", "cache")} {
		if !strings.Contains(out, want) {
			t.Errorf("resource lacks %s:\n%s", want, out)
		}
	}

	t.Setenv("OTEL_SERVICE_NAME", "router-eu")
	if out := resourceOf(t); !strings.Contains(out, attr("service.name", "router-eu")) {
		t.Errorf("OTEL_SERVICE_NAME not applied:\n%s", out)
	}
}

// A malformed OTEL_RESOURCE_ATTRIBUTES is an error naming the variable, not
// attributes silently skipped.
func TestBadResourceAttributes(t *testing.T) {
	t.Setenv("OTEL_TRACES_EXPORTER", "console")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "team=cache,broken")
	_, _, err := Setup(context.Background(), os.Getenv, &bytes.Buffer{}, "routerd")
	if err == nil || !strings.Contains(err.Error(), "OTEL_RESOURCE_ATTRIBUTES") {
		t.Errorf("Setup: %v", err)
	}
}
