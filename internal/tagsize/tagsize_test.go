package tagsize

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/tagstore"
)

func TestTopAndGrowth(t *testing.T) {
	top := Top(map[string]int64{"a": 3, "b": 9, "c": 3, "d": 1}, 3)
	if fmt.Sprint(top) != "[{b 9} {a 3} {c 3}]" {
		t.Errorf("Top = %v", top)
	}
	g := Growth([]Set{{"a", 1}, {"b", 10}}, []Set{{"a", 3}, {"c", 5}}, 30*time.Minute)
	if len(g) != 1 || g["a"] != 4 {
		t.Errorf("Growth = %v, want a: 4 per hour only", g)
	}
	if Growth(nil, top, 0) != nil {
		t.Error("Growth over no time")
	}
}

// The sampler sizes the service's tag sets (plain and ref-registered
// together) for the tenants the cache holds, exports the largest by rank
// with the guard, and their growth on the next sample; ranks beyond the sets
// found read 0, and every series exists before the first sample.
func TestSamplerExportsLargestAndGrowth(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	store, err := tagstore.New(c, tagstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	add := func(tenant, tag string, from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if err := store.Set(ctx, tenant, fmt.Sprintf("k:%d", i), []byte("v"), 0, tag); err != nil {
				t.Fatal(err)
			}
		}
	}
	add("acme", "active", 0, 30)
	add("globex", "active", 0, 10)
	add("acme", "other", 0, 50) // not one of the service's tags
	if _, err := store.SetRefs(ctx, "globex", "gql:1", []byte("v"), 0, []string{"active"}, []tagstore.Ref{{Domain: "user", Entity: "1"}}); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	s := NewSampler(c, []string{"active", "electronics"}, Options{N: 3, Guard: 5000, Registerer: reg})
	if n := len(gauges(t, reg)); n != 7 {
		t.Errorf("%d series before the first sample, want 3 ranks × 2 and the guard", n)
	}
	top, err := s.Sample(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(top) != "[{{tenant:acme}:tag:active 30} {{tenant:globex}:tag:active 11}]" || gauges(t, reg)["subscriber_cardinality_guard"] != 5000 {
		t.Errorf("largest = %v", top)
	}
	for rank, want := range map[string]float64{"1": 30, "2": 11, "3": 0} {
		if got := gauges(t, reg)["subscriber_largest_tag_set_members"+rank]; got != want {
			t.Errorf("rank %s: %v members, want %v", rank, got, want)
		}
	}
	add("acme", "active", 30, 40)
	if _, err := s.Sample(ctx); err != nil {
		t.Fatal(err)
	}
	if g := gauges(t, reg)["subscriber_largest_tag_set_growth_per_hour1"]; g <= 0 {
		t.Errorf("growth of rank 1 after 10 more members = %v, want > 0", g)
	}
	if g := gauges(t, reg)["subscriber_largest_tag_set_growth_per_hour2"]; g != 0 {
		t.Errorf("growth of rank 2, unchanged = %v", g)
	}
}

// gauges returns every gauge of reg by name and rank ("…members1"), the
// guard by name alone.
func gauges(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += l.GetValue()
			}
			out[key] = m.GetGauge().GetValue()
		}
	}
	return out
}
