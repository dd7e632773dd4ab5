package matrix

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
)

// Digest is the hex SHA-256 of what the matrix routes: its prefix, each
// domain's tags and entity_refs, each tag's services, each service's
// tenants and each publisher's grant. Two routers whose digests are equal
// send every event to the same channels and refuse the same ones; the
// limits, the partition count, comments and the order of lists do not
// count. Unlike Hash, it is the same for the same routing written another
// way.
func (m *Matrix) Digest() string {
	type grant struct {
		Domains, Tenants []string
		AllTenants       bool
	}
	content := struct {
		Prefix     string
		Domains    map[string][]string
		EntityRefs []string
		Tags       map[string][]string
		Services   map[string]grant // Domains unused
		Publishers map[string]grant
	}{Prefix: m.Prefix, Domains: map[string][]string{}, Tags: map[string][]string{}, Services: map[string]grant{}, Publishers: map[string]grant{}}
	for name, d := range m.Domains {
		content.Domains[name] = sortedSet(d.Tags)
		if d.EntityRefs {
			content.EntityRefs = append(content.EntityRefs, name)
		}
	}
	slices.Sort(content.EntityRefs)
	for name, t := range m.Tags {
		content.Tags[name] = sortedSet(t.Services)
	}
	for name, s := range m.Services {
		g := grant{AllTenants: s.AllTenants}
		if !s.AllTenants {
			g.Tenants = sortedSet(s.Tenants)
		}
		content.Services[name] = g
	}
	for name, p := range m.Publishers {
		g := grant{Domains: sortedSet(p.Domains), AllTenants: p.AllTenants}
		if !p.AllTenants {
			g.Tenants = sortedSet(p.Tenants)
		}
		content.Publishers[name] = g
	}
	b, err := json.Marshal(content) // maps marshal with sorted keys
	if err != nil {
		panic("matrix: digest: " + err.Error()) // strings, maps and slices always encode
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// sortedSet is s sorted without duplicates, never nil.
func sortedSet(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return append([]string{}, slices.Compact(out)...)
}
