package matrix

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// Error is one problem in a matrix file, with its position.
type Error struct {
	File string
	Line int
	Col  int
	Msg  string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Errors is every problem found in a matrix, in file order. Use errors.As to
// get it from the error Load or Parse returns.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

const (
	// minRate keeps a coalesced message's wait (one token) well under the
	// time after which another router claims the entries it holds.
	minRate    = 0.1
	maxRate    = 1_000_000
	maxHistory = 1_000_000
	// A history TTL shorter than a minute would expire histories a
	// subscriber still needs to replay a reconnection; longer than a year
	// is no TTL.
	minHistoryTTL = time.Minute
	maxHistoryTTL = 365 * 24 * time.Hour
)

type parser struct {
	file string
	errs Errors
}

func (p *parser) errorf(n *yaml.Node, format string, args ...any) {
	line, col := 1, 1
	if n != nil && n.Line > 0 {
		line, col = n.Line, n.Column
	}
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Col: col, Msg: fmt.Sprintf(format, args...)})
}

// field is one key of a mapping with its value node.
type field struct {
	key   *yaml.Node
	value *yaml.Node
}

// mapping returns the fields of a mapping node, reporting duplicates and
// fields not in allowed (nil allows any name). what names the mapping.
func (p *parser) mapping(n *yaml.Node, what string, allowed ...string) []field {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "%s must be a mapping, not %s", what, kindName(n))
		return nil
	}
	seen := make(map[string]bool, len(n.Content)/2)
	var fields []field
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, "%s has a key that is not a string", what)
			continue
		}
		if seen[k.Value] {
			p.errorf(k, "%s: %q is defined twice", what, k.Value)
			continue
		}
		seen[k.Value] = true
		if allowed != nil && !slices.Contains(allowed, k.Value) {
			p.errorf(k, "%s: unknown field %q (known: %s)", what, k.Value, strings.Join(allowed, ", "))
			continue
		}
		fields = append(fields, field{k, v})
	}
	return fields
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "empty"
}

func (p *parser) scalar(n *yaml.Node, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errorf(n, "%s must be a value, not %s", what, kindName(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) integer(n *yaml.Node, what string, min, max int) (int, bool) {
	s, ok := p.scalar(n, what)
	if !ok {
		return 0, false
	}
	v, err := strconv.Atoi(s)
	if err != nil || n.Tag != "!!int" {
		p.errorf(n, "%s must be a whole number, not %q", what, s)
		return 0, false
	}
	if v < min || v > max {
		p.errorf(n, "%s must be between %d and %d, not %d", what, min, max, v)
		return 0, false
	}
	return v, true
}

func (p *parser) strings(n *yaml.Node, what string) []string {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "%s must be a list, not %s", what, kindName(n))
		return nil
	}
	out := make([]string, 0, len(n.Content))
	seen := make(map[string]bool)
	for _, item := range n.Content {
		s, ok := p.scalar(item, what+" entry")
		if !ok {
			continue
		}
		if seen[s] {
			p.errorf(item, "%s lists %q twice", what, s)
			continue
		}
		seen[s] = true
		out = append(out, s)
	}
	return out
}

// ref is a name used somewhere, to check against its definition later.
type ref struct {
	node *yaml.Node
	name string
}

func (p *parser) parse(data []byte) *Matrix {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		p.errs = append(p.errs, yamlError(p.file, err))
		return nil
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		p.errorf(nil, "the matrix is empty")
		return nil
	}
	root := doc.Content[0]
	m := &Matrix{
		Prefix:     names.DefaultPrefix,
		Partitions: wire.DefaultPartitions,
		Defaults:   DefaultLimits(),
		Tags:       map[string]*Tag{},
		Domains:    map[string]*Domain{},
		Services:   map[string]*Service{},
	}
	var tagsNode, domainsNode, servicesNode, publishersNode *yaml.Node
	var haveVersion bool
	for _, f := range p.mapping(root, "matrix", "version", "prefix", "ingress", "defaults", "budgets", "tags", "domains", "services", "publishers") {
		switch f.key.Value {
		case "version":
			haveVersion = true
			if v, ok := p.integer(f.value, "version", 1, 1); ok {
				m.Version = v
			}
		case "prefix":
			if s, ok := p.scalar(f.value, "prefix"); ok {
				if err := names.Prefix(s); err != nil {
					p.errorf(f.value, "%v", err)
				}
				m.Prefix = s
			}
		case "ingress":
			for _, g := range p.mapping(f.value, "ingress", "partitions") {
				if v, ok := p.integer(g.value, "ingress.partitions", 1, MaxPartitions); ok {
					m.Partitions = v
				}
			}
		case "defaults":
			m.Defaults = p.limits(f.value, "defaults", DefaultLimits())
		case "budgets":
			for _, g := range p.mapping(f.value, "budgets", "tenant", "global") {
				b := p.budget(g.value, "budgets."+g.key.Value)
				if g.key.Value == "tenant" {
					m.TenantBudget = b
				} else {
					m.GlobalBudget = b
				}
			}
		case "tags":
			tagsNode = f.value
		case "domains":
			domainsNode = f.value
		case "services":
			servicesNode = f.value
		case "publishers":
			publishersNode = f.value
		}
	}
	if root.Kind == yaml.MappingNode && !haveVersion {
		p.errorf(root, "version is required (version: 1)")
	}

	// Services first, then tags, then domains: each checks its references
	// against what came before, so the order in the file does not matter.
	if servicesNode != nil {
		for _, f := range p.mapping(servicesNode, "services", nil...) {
			if err := names.Service(f.key.Value); err != nil {
				p.errorf(f.key, "%v", err)
			}
			m.Services[f.key.Value] = p.service(f.key.Value, f.value)
		}
	}
	if tagsNode != nil {
		// A service's stored position on a tag is keyed by
		// names.PositionName, and both may hold ':'.
		positions := map[string][2]string{}
		for _, f := range p.mapping(tagsNode, "tags", nil...) {
			if err := names.Tag(f.key.Value); err != nil {
				p.errorf(f.key, "%v", err)
			}
			t, used := p.tag(f.key, f.value, m.Defaults)
			m.Tags[t.Name] = t
			for _, u := range used {
				if _, ok := m.Services[u.name]; !ok {
					p.errorf(u.node, "tag %q: undefined service %q", t.Name, u.name)
				}
				key := names.PositionName(u.name, t.Name)
				if o, ok := positions[key]; ok && o != [2]string{u.name, t.Name} {
					p.errorf(u.node, "service %q on tag %q would keep its positions under the same keys as service %q on tag %q "+
						"(…:pos:%s): rename one of them (':' in a service or tag name)", u.name, t.Name, o[0], o[1], key)
				}
				positions[key] = [2]string{u.name, t.Name}
			}
		}
	}
	if domainsNode != nil {
		for _, f := range p.mapping(domainsNode, "domains", nil...) {
			if err := names.Domain(f.key.Value); err != nil {
				p.errorf(f.key, "%v", err)
			}
			d := &Domain{Name: f.key.Value}
			for _, g := range p.mapping(f.value, "domain "+strconvQuote(d.Name), "tags", "entity_refs") {
				if g.key.Value == "entity_refs" {
					d.EntityRefs = p.boolean(g.value, "domain "+strconvQuote(d.Name)+": entity_refs")
					continue
				}
				for i, t := range p.strings(g.value, "tags") {
					if _, ok := m.Tags[t]; !ok {
						p.errorf(g.value.Content[i], "domain %q: undefined tag %q", d.Name, t)
					}
					d.Tags = append(d.Tags, t)
				}
			}
			if len(d.Tags) == 0 {
				p.errorf(f.key, "domain %q maps to no tags", d.Name)
			}
			m.Domains[d.Name] = d
		}
	}
	if publishersNode != nil {
		m.Publishers = map[string]*Publisher{}
		for _, f := range p.mapping(publishersNode, "publishers", nil...) {
			var bad *names.Error
			if errors.As(names.Service(f.key.Value), &bad) {
				bad.Field = "publisher"
				p.errorf(f.key, "%v", bad)
			}
			m.Publishers[f.key.Value] = p.publisher(f.key.Value, f.value, m.Domains)
		}
	}
	return m
}

// publisher reads one grant of the publishers section: the domains (which
// must exist) and the tenants ("all" or a list) it may publish for.
func (p *parser) publisher(name string, n *yaml.Node, domains map[string]*Domain) *Publisher {
	pub := &Publisher{Name: name}
	what := "publisher " + strconvQuote(name)
	var haveDomains, haveTenants bool
	for _, f := range p.mapping(n, what, "domains", "tenants") {
		if f.key.Value == "tenants" {
			haveTenants = true
			pub.AllTenants, pub.Tenants = p.tenants(f.value, what)
			continue
		}
		haveDomains = true
		for i, d := range p.strings(f.value, "domains") {
			if _, ok := domains[d]; !ok {
				p.errorf(f.value.Content[i], "%s: undefined domain %q", what, d)
				continue
			}
			pub.Domains = append(pub.Domains, d)
		}
	}
	if n.Kind == yaml.MappingNode {
		if !haveDomains {
			p.errorf(n, "%s: domains is required (a list of domains it may publish)", what)
		}
		if !haveTenants {
			p.errorf(n, "%s: tenants is required (\"all\" or a list)", what)
		}
	}
	pub.index()
	return pub
}

// tenants reads "all" or a list of valid tenants; what names the owner.
func (p *parser) tenants(n *yaml.Node, what string) (all bool, list []string) {
	if n.Kind == yaml.ScalarNode && n.Value == "all" {
		return true, nil
	}
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "%s: tenants must be \"all\" or a list of tenants", what)
		return false, nil
	}
	for i, t := range p.strings(n, "tenants") {
		if err := names.Tenant(t); err != nil {
			p.errorf(n.Content[i], "%s: %v", what, err)
			continue
		}
		list = append(list, t)
	}
	return false, list
}

func strconvQuote(s string) string { return strconv.Quote(s) }

func (p *parser) service(name string, n *yaml.Node) *Service {
	s := &Service{Name: name}
	var have bool
	for _, f := range p.mapping(n, "service "+strconvQuote(name), "tenants") {
		have = true
		s.AllTenants, s.Tenants = p.tenants(f.value, "service "+strconvQuote(name))
	}
	s.tenantSet = make(map[string]bool, len(s.Tenants))
	for _, t := range s.Tenants {
		s.tenantSet[t] = true
	}
	if n.Kind == yaml.MappingNode && !have {
		p.errorf(n, "service %q: tenants is required (\"all\" or a list)", name)
	}
	return s
}

func (p *parser) tag(key, n *yaml.Node, defaults Limits) (*Tag, []ref) {
	t := &Tag{Name: key.Value, Limits: defaults}
	var used []ref
	what := "tag " + strconvQuote(t.Name)
	limitFields := []string{"rate", "burst", "coalesce", "max_keys", "history", "history_ttl"}
	var limitNode yaml.Node
	limitNode.Kind = yaml.MappingNode
	for _, f := range p.mapping(n, what, append([]string{"services"}, limitFields...)...) {
		if f.key.Value == "services" {
			for i, s := range p.strings(f.value, "services") {
				t.Services = append(t.Services, s)
				used = append(used, ref{f.value.Content[i], s})
			}
			continue
		}
		limitNode.Content = append(limitNode.Content, f.key, f.value)
	}
	t.Limits = p.limits(&limitNode, what, defaults)
	if n.Kind == yaml.MappingNode && len(t.Services) == 0 {
		p.errorf(key, "%s has no services", what)
	}
	return t, used
}

func (p *parser) budget(n *yaml.Node, what string) *Budget {
	var b Budget
	var haveRate, haveBurst bool
	for _, f := range p.mapping(n, what, "rate", "burst") {
		if f.key.Value == "rate" {
			haveRate = true
			b.Rate, _ = p.rate(f.value, what+".rate")
		} else {
			haveBurst = true
			b.Burst, _ = p.integer(f.value, what+".burst", 1, 10_000_000)
		}
	}
	if n.Kind == yaml.MappingNode && (!haveRate || !haveBurst) {
		p.errorf(n, "%s needs both rate and burst", what)
	}
	return &b
}

// rate reads a positive number of messages per second.
func (p *parser) rate(n *yaml.Node, what string) (float64, bool) {
	s, ok := p.scalar(n, what)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v < minRate || v > maxRate || (n.Tag != "!!int" && n.Tag != "!!float") {
		p.errorf(n, "%s must be a number of messages per second from %g to %g, not %q", what, minRate, float64(maxRate), s)
		return 0, false
	}
	return v, true
}

func (p *parser) limits(n *yaml.Node, what string, base Limits) Limits {
	l := base
	for _, f := range p.mapping(n, what, "rate", "burst", "coalesce", "max_keys", "history", "history_ttl") {
		name := what + "." + f.key.Value
		switch f.key.Value {
		case "rate":
			if v, ok := p.rate(f.value, name); ok {
				l.Rate = v
			}
		case "burst":
			if v, ok := p.integer(f.value, name, 1, 1_000_000); ok {
				l.Burst = v
			}
		case "max_keys":
			if v, ok := p.integer(f.value, name, 1, wire.MaxKeys); ok {
				l.MaxKeys = v
			}
		case "history":
			if v, ok := p.integer(f.value, name, 1, maxHistory); ok {
				l.History = v
			}
		case "coalesce":
			s, ok := p.scalar(f.value, name)
			if !ok {
				continue
			}
			d, err := time.ParseDuration(s)
			if err != nil || d < 0 || d > time.Minute {
				p.errorf(f.value, "%s must be a duration from 0s to 1m such as 20ms, not %q", name, s)
				continue
			}
			l.Coalesce = d
		case "history_ttl":
			s, ok := p.scalar(f.value, name)
			if !ok {
				continue
			}
			d, err := time.ParseDuration(s)
			if err != nil || d != 0 && (d < minHistoryTTL || d > maxHistoryTTL) || d%time.Millisecond != 0 {
				p.errorf(f.value, "%s must be 0 (kept for good) or a duration from 1m to 8760h (a year) such as 24h, in whole milliseconds, not %q", name, s)
				continue
			}
			l.HistoryTTL = d
		}
	}
	return l
}

// yamlError turns a yaml.v3 syntax error ("yaml: line 3: …") into an Error.
func yamlError(file string, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, tail, ok := strings.Cut(rest, ":"); ok {
			if v, err := strconv.Atoi(num); err == nil {
				line, msg = v, strings.TrimSpace(tail)
			}
		}
	}
	return &Error{File: file, Line: line, Col: 1, Msg: "YAML syntax: " + msg}
}

// boolean reads true or false (YAML's other spellings, such as yes, are
// refused: they read as strings in YAML 1.2).
func (p *parser) boolean(n *yaml.Node, what string) bool {
	s, ok := p.scalar(n, what)
	if !ok {
		return false
	}
	if n.Tag != "!!bool" || (s != "true" && s != "false") {
		p.errorf(n, "%s must be true or false, not %q", what, s)
		return false
	}
	return s == "true"
}
