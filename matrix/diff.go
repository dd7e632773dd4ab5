package matrix

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/routerd/routerd/names"
)

// Change is one difference between two matrices, as a line for people:
// "+ " added, "- " removed, "~ " changed.
type Change string

// Diff tells which channels and services, domain routes and limits a change
// from old to new adds, removes or alters. A service of every tenant is shown
// with the channel pattern <prefix>:*:<tag>.
func Diff(old, new *Matrix) []Change {
	var out []Change
	if old.Prefix != new.Prefix {
		out = append(out, Change(fmt.Sprintf("~ prefix %q → %q: every channel changes (restart routerd and every subscriber)", old.Prefix, new.Prefix)))
	}
	if old.Partitions != new.Partitions {
		out = append(out, Change(fmt.Sprintf("~ ingress.partitions %d → %d: routers read the new partitions at once and keep draining the old ones", old.Partitions, new.Partitions)))
	}

	oc, nc := old.channelServices(), new.channelServices()
	for _, ch := range unionKeys(oc, nc) {
		before, after := oc[ch], nc[ch]
		switch {
		case before == nil:
			out = append(out, Change(fmt.Sprintf("+ channel %s → %s", ch, strings.Join(after, ", "))))
		case after == nil:
			out = append(out, Change(fmt.Sprintf("- channel %s → %s", ch, strings.Join(before, ", "))))
		case !slices.Equal(before, after):
			out = append(out, Change(fmt.Sprintf("~ channel %s: services %s → %s", ch, strings.Join(before, ", "), strings.Join(after, ", "))))
		}
	}

	for _, d := range unionKeys(old.Domains, new.Domains) {
		var before, after []string
		var refsBefore, refsAfter bool
		if x := old.Domains[d]; x != nil {
			before, refsBefore = x.Tags, x.EntityRefs
		}
		if x := new.Domains[d]; x != nil {
			after, refsAfter = x.Tags, x.EntityRefs
		}
		if refsBefore != refsAfter && old.Domains[d] != nil && new.Domains[d] != nil {
			out = append(out, Change(fmt.Sprintf("~ domain %s: entity_refs %t → %t", d, refsBefore, refsAfter)))
		}
		for _, t := range after {
			if !slices.Contains(before, t) {
				out = append(out, Change(fmt.Sprintf("+ route domain %s → tag %s", d, t)))
			}
		}
		for _, t := range before {
			if !slices.Contains(after, t) {
				out = append(out, Change(fmt.Sprintf("- route domain %s → tag %s", d, t)))
			}
		}
	}

	for _, t := range unionKeys(old.Tags, new.Tags) {
		a, b := old.Tags[t], new.Tags[t]
		if a != nil && b != nil && a.Limits != b.Limits {
			out = append(out, Change(fmt.Sprintf("~ tag %s limits %s → %s", t, limitsString(a.Limits), limitsString(b.Limits))))
		}
	}
	out = append(out, diffPublishers(old, new)...)
	if s1, s2 := budgetString(old.TenantBudget), budgetString(new.TenantBudget); s1 != s2 {
		out = append(out, Change(fmt.Sprintf("~ tenant budget %s → %s", s1, s2)))
	}
	if s1, s2 := budgetString(old.GlobalBudget), budgetString(new.GlobalBudget); s1 != s2 {
		out = append(out, Change(fmt.Sprintf("~ global budget %s → %s", s1, s2)))
	}
	return out
}

// diffPublishers tells which publisher grants a change adds, removes or
// alters, and when the publishers section itself comes or goes.
func diffPublishers(old, new *Matrix) []Change {
	var out []Change
	switch {
	case old.Publishers == nil && new.Publishers != nil:
		out = append(out, "+ publishers section: publishers with a grant write to their own streams, checked by the router")
	case old.Publishers != nil && new.Publishers == nil:
		out = append(out, "- publishers section: the publishers' own streams are not routed any more; the shared ingress is, without a grant check, as before")
	}
	for _, name := range unionKeys(old.Publishers, new.Publishers) {
		a, b := old.Publishers[name], new.Publishers[name]
		switch {
		case a == nil:
			out = append(out, Change(fmt.Sprintf("+ publisher %s: %s (its streams are read at once)", name, grantString(b))))
		case b == nil:
			out = append(out, Change(fmt.Sprintf("- publisher %s: %s (its events are not routed any more)", name, grantString(a))))
		case grantString(a) != grantString(b):
			out = append(out, Change(fmt.Sprintf("~ publisher %s: %s → %s", name, grantString(a), grantString(b))))
		}
	}
	return out
}

func grantString(p *Publisher) string {
	tenants := "all"
	if !p.AllTenants {
		tenants = strings.Join(p.Tenants, ", ")
	}
	return fmt.Sprintf("domains %s; tenants %s", strings.Join(p.Domains, ", "), tenants)
}

// channelServices maps every channel (or pattern, for a service of every
// tenant) to the services that subscribe to it, sorted.
func (m *Matrix) channelServices() map[string][]string {
	out := map[string][]string{}
	for _, t := range m.Tags {
		for _, name := range t.Services {
			s := m.Services[name]
			tenants := s.Tenants
			if s.AllTenants {
				tenants = []string{"*"}
			}
			for _, tenant := range tenants {
				ch := names.Channel(m.Prefix, tenant, t.Name)
				out[ch] = append(out[ch], name)
			}
		}
	}
	for _, v := range out {
		slices.Sort(v)
	}
	return out
}

// unionKeys returns the keys of a and b, sorted, each once.
func unionKeys[V any](a, b map[string]V) []string {
	keys := slices.AppendSeq(slices.Collect(maps.Keys(a)), maps.Keys(b))
	slices.Sort(keys)
	return slices.Compact(keys)
}

func limitsString(l Limits) string {
	s := fmt.Sprintf("rate %g burst %d coalesce %v max_keys %d history %d", l.Rate, l.Burst, l.Coalesce, l.MaxKeys, l.History)
	if l.HistoryTTL > 0 {
		s += fmt.Sprintf(" history_ttl %v", l.HistoryTTL)
	}
	return s
}

func budgetString(b *Budget) string {
	if b == nil {
		return "none"
	}
	return fmt.Sprintf("%g/s burst %d", b.Rate, b.Burst)
}
