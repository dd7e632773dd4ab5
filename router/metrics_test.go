package router

import (
	"errors"
	"reflect"
	"testing"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
)

// Every metric the router keeps is registered: registering any of them again
// is refused as already registered.
func TestEveryMetricRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := reflect.ValueOf(newMetrics(reg)).Elem()
	for i := range m.NumField() {
		f := m.Field(i)
		f = reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem() // unexported
		c, ok := f.Interface().(prometheus.Collector)
		if !ok {
			t.Fatalf("metrics.%s is not a collector", m.Type().Field(i).Name)
		}
		var already prometheus.AlreadyRegisteredError
		if err := reg.Register(c); !errors.As(err, &already) {
			t.Errorf("metrics.%s was not registered (Register again: %v)", m.Type().Field(i).Name, err)
		}
	}
	newMetrics(nil) // no registerer: nothing registered, no panic
}
