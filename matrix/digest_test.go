package matrix

import (
	"strings"
	"testing"
)

// The digest changes with what the matrix routes, and with nothing else.
func TestDigest(t *testing.T) {
	const base = `version: 1
tags:
  a: {services: [s1, s2]}
  b: {services: [s2]}
domains:
  d: {tags: [a]}
services:
  s1: {tenants: all}
  s2: {tenants: [acme, globex]}
publishers:
  p: {domains: [d], tenants: [acme]}
`
	digest := func(src string) string {
		t.Helper()
		m, err := Parse("m.yaml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		return m.Digest()
	}
	want := digest(base)
	same := map[string]string{
		"comment and spacing": "# a comment\n" + base,
		"list order":          replace(t, base, "s2: {tenants: [acme, globex]}", "s2: {tenants: [globex, acme]}"),
		"services order":      replace(t, base, "a: {services: [s1, s2]}", "a: {services: [s2, s1]}"),
		"limits":              replace(t, base, "b: {services: [s2]}", "b: {services: [s2], rate: 5}"),
		"partitions":          "ingress: {partitions: 4}\n" + base,
	}
	for name, src := range same {
		if got := digest(src); got != want {
			t.Errorf("%s: digest changed", name)
		}
	}
	differs := map[string]string{
		"tag added to a domain":    replace(t, base, "d: {tags: [a]}", "d: {tags: [a, b]}"),
		"domain added":             replace(t, base, "d: {tags: [a]}", "d: {tags: [a]}\n  e: {tags: [b]}"),
		"tenant added to service":  replace(t, base, "s2: {tenants: [acme, globex]}", "s2: {tenants: [acme, globex, initech]}"),
		"service to all tenants":   replace(t, base, "s2: {tenants: [acme, globex]}", "s2: {tenants: all}"),
		"grant widened":            replace(t, base, "p: {domains: [d], tenants: [acme]}", "p: {domains: [d], tenants: [acme, globex]}"),
		"service added to a tag":   replace(t, base, "b: {services: [s2]}", "b: {services: [s2, s1]}"),
		"entity refs":              replace(t, base, "d: {tags: [a]}", "d: {tags: [a], entity_refs: true}"),
		"publisher to all tenants": replace(t, base, "p: {domains: [d], tenants: [acme]}", "p: {domains: [d], tenants: all}"),
	}
	seen := map[string]string{want: "base"}
	for name, src := range differs {
		got := digest(src)
		if other, ok := seen[got]; ok {
			t.Errorf("%s: same digest as %s", name, other)
		}
		seen[got] = name
	}
}

func replace(t *testing.T, s, old, repl string) string {
	t.Helper()
	out := strings.Replace(s, old, repl, 1)
	if out == s {
		t.Fatalf("%q not found", old)
	}
	return out
}
