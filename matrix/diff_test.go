package matrix

import (
	"reflect"
	"testing"
)

func TestDiff(t *testing.T) {
	old, err := Parse("old", []byte(routingMatrix))
	if err != nil {
		t.Fatal(err)
	}
	changed := `
version: 1
defaults: {rate: 100, burst: 200, coalesce: 20ms, max_keys: 500}
budgets: {tenant: {rate: 10, burst: 20}}
tags:
  active:      {services: [profile-svc, search-svc]}
  electronics: {services: [search-svc], rate: 50}
  price:       {services: [search-svc]}
domains:
  user:    {tags: [active]}
  product: {tags: [electronics, active, price]}
services:
  profile-svc: {tenants: all}
  search-svc:  {tenants: [acme, initech]}
`
	m, err := Parse("new", []byte(changed))
	if err != nil {
		t.Fatal(err)
	}
	got := Diff(old, m)
	expected := []Change{
		"+ channel invalidate:acme:price → search-svc",
		"- channel invalidate:globex:active → search-svc",
		"- channel invalidate:globex:electronics → search-svc",
		"+ channel invalidate:initech:active → search-svc",
		"- channel invalidate:initech:billing → billing-svc",
		"+ channel invalidate:initech:electronics → search-svc",
		"+ channel invalidate:initech:price → search-svc",
		"- route domain invoice → tag billing",
		"+ route domain product → tag price",
		"~ tag electronics limits rate 20 burst 200 coalesce 20ms max_keys 500 history 1000 → rate 50 burst 200 coalesce 20ms max_keys 500 history 1000",
		"~ tenant budget none → 10/s burst 20",
	}
	if !reflect.DeepEqual(got, expected) {
		t.Errorf("Diff:\n%v\nwant:\n%v", join(got), join(expected))
	}
	if d := Diff(m, m); len(d) != 0 {
		t.Errorf("a matrix differs from itself: %v", d)
	}
}

func join(cs []Change) string {
	s := ""
	for _, c := range cs {
		s += string(c) + "\n"
	}
	return s
}

func TestDiffPublishers(t *testing.T) {
	base := routingMatrix
	old, err := Parse("old", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	withGrants := func(grants string) *Matrix {
		t.Helper()
		m, err := Parse("new", []byte(base+"publishers:\n"+grants))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	a := withGrants("  profile-svc: {domains: [user], tenants: all}\n  shop: {domains: [product], tenants: [acme]}\n")
	b := withGrants("  profile-svc: {domains: [user, product], tenants: all}\n  billing: {domains: [invoice], tenants: [acme, globex]}\n")
	for _, tc := range []struct {
		from, to *Matrix
		want     []Change
	}{
		{old, a, []Change{
			"+ publishers section: publishers with a grant write to their own streams, checked by the router",
			"+ publisher profile-svc: domains user; tenants all (its streams are read at once)",
			"+ publisher shop: domains product; tenants acme (its streams are read at once)",
		}},
		{a, b, []Change{
			"+ publisher billing: domains invoice; tenants acme, globex (its streams are read at once)",
			"~ publisher profile-svc: domains user; tenants all → domains user, product; tenants all",
			"- publisher shop: domains product; tenants acme (its events are not routed any more)",
		}},
		{b, old, []Change{
			"- publishers section: the publishers' own streams are not routed any more; the shared ingress is, without a grant check, as before",
			"- publisher billing: domains invoice; tenants acme, globex (its events are not routed any more)",
			"- publisher profile-svc: domains user, product; tenants all (its events are not routed any more)",
		}},
	} {
		if got := Diff(tc.from, tc.to); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Diff:\n%v\nwant:\n%v", join(got), join(tc.want))
		}
	}
}
