package cli

import (
	"fmt"
	"slices"
	"strings"

	"github.com/routerd/routerd/matrix"
)

// eventShape is what an event names, as publish's flags give it.
type eventShape struct {
	entity   string
	keys     []string
	wholeTag bool
}

// describe says in words which event the shape is.
func (e eventShape) describe() string {
	switch {
	case e.wholeTag || e.entity == "" && len(e.keys) == 0:
		return "a whole-tag event (no --entity, no --keys)"
	case len(e.keys) == 0:
		return fmt.Sprintf("an entity-level event (--entity %s, no --keys)", e.entity)
	case e.entity == "":
		return fmt.Sprintf("an event with %s", plural(int64(len(e.keys)), "key", "keys"))
	default:
		return fmt.Sprintf("an event of entity %s with %s", e.entity, plural(int64(len(e.keys)), "key", "keys"))
	}
}

// drops says what an event of the shape makes the services of route r drop
// (docs/protocol.md, "Entity-level" and section 3.1).
func drops(m *matrix.Matrix, domain string, r matrix.Route, e eventShape) string {
	whole := "every value of tag " + r.Tag + " (whole tag)"
	if e.wholeTag || e.entity == "" && len(e.keys) == 0 {
		return whole
	}
	if len(e.keys) > r.Limits.MaxKeys {
		return fmt.Sprintf("every value of tag %s (whole tag: %d keys are more than its max_keys %d)", r.Tag, len(e.keys), r.Limits.MaxKeys)
	}
	if !r.EntityRefs {
		if len(e.keys) == 0 {
			return fmt.Sprintf("every value of tag %s (whole tag: domain %s has no entity_refs, so an event naming only its entity cannot be narrower)", r.Tag, domain)
		}
		return "its keys"
	}
	typeLevel := "what is registered at domain " + domain + "'s type level"
	switch {
	case e.entity == "":
		return "its keys and " + typeLevel
	case len(e.keys) > 0:
		return fmt.Sprintf("its keys, what is registered under %s/%s, and %s", domain, e.entity, typeLevel)
	}
	plain := fmt.Sprintf("what is registered under %s/%s, %s, and every plain value of tag %s (values cached without references)", domain, e.entity, typeLevel, r.Tag)
	if others := sharers(m, r.Tag, domain); len(others) > 0 {
		plain += fmt.Sprintf("; tag %s is shared with %s, whose plain values go too", r.Tag, strings.Join(others, ", "))
	}
	return plain
}

// sharers returns the domains other than domain whose tags include tag, sorted.
func sharers(m *matrix.Matrix, tag, domain string) []string {
	var out []string
	for _, d := range m.Domains {
		if d.Name != domain && slices.Contains(d.Tags, tag) {
			out = append(out, "domain "+d.Name)
		}
	}
	slices.Sort(out)
	return out
}
