package matrix

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/routerd/routerd/names"
)

// Limits are the storm limits of a channel.
type Limits struct {
	Rate     float64       `json:"rate"`     // messages per second a channel may send
	Burst    int           `json:"burst"`    // messages a channel may send at once
	Coalesce time.Duration `json:"coalesce"` // how long excess events are merged before sending
	MaxKeys  int           `json:"max_keys"` // above this many keys a message invalidates the whole tag
	History  int           `json:"history"`  // messages kept per channel for replay
	// HistoryTTL, when set, expires a channel's history and event ids this
	// long after its last message, so only recently active channels keep
	// one (the meta, the epoch and version, is kept). 0: kept for good.
	HistoryTTL time.Duration `json:"history_ttl"`
}

// Budget is a token bucket shared by many channels: every channel of one
// tenant, or every channel of the router.
type Budget struct {
	Rate  float64 `json:"rate"`
	Burst int     `json:"burst"`
}

// MaxPartitions bounds the ingress partition count (publishers and routers
// refuse a recorded count above it).
const MaxPartitions = names.MaxPartitions

// DefaultLimits are the limits that apply where the matrix sets none.
func DefaultLimits() Limits {
	return Limits{Rate: 100, Burst: 200, Coalesce: 20 * time.Millisecond, MaxKeys: 500, History: 1000}
}

// Tag is one tag of the matrix.
type Tag struct {
	Name     string
	Services []string // services that own caches under the tag
	Limits   Limits
}

// Domain maps a kind of domain data to the tags derived from it.
type Domain struct {
	Name string
	Tags []string
	// EntityRefs ("entity_refs: true"): an event of the domain that names
	// its entity and no keys invalidates, in each tag, what was cached
	// under the entity's reference and the tag's plain values (a message
	// with "refs" and "plain") instead of the whole tag; every event of the
	// domain that is not whole-tag names refs (the entity's, else the
	// domain's type level) beside its keys.
	EntityRefs bool
}

// Service is a consumer of invalidations.
type Service struct {
	Name       string
	AllTenants bool     // "tenants: all"
	Tenants    []string // when not AllTenants
	tenantSet  map[string]bool
}

// Serves reports whether the service holds caches for the tenant.
func (s *Service) Serves(tenant string) bool {
	if s.AllTenants {
		return true
	}
	if s.tenantSet != nil { // a parsed matrix; a long list is not scanned
		return s.tenantSet[tenant]
	}
	return slices.Contains(s.Tenants, tenant)
}

// Publisher is a grant of the publishers section: the publisher writes to
// its own ingress streams, and the router routes from them only the events
// of the domains and tenants granted here.
type Publisher struct {
	Name       string
	Domains    []string
	AllTenants bool     // "tenants: all"
	Tenants    []string // when not AllTenants
	domainSet  map[string]bool
	tenantSet  map[string]bool
}

func (p *Publisher) index() {
	p.domainSet = make(map[string]bool, len(p.Domains))
	for _, d := range p.Domains {
		p.domainSet[d] = true
	}
	p.tenantSet = make(map[string]bool, len(p.Tenants))
	for _, t := range p.Tenants {
		p.tenantSet[t] = true
	}
}

// Grants reports whether the publisher may publish events of the domain for
// the tenant.
func (p *Publisher) Grants(domain, tenant string) bool {
	if p.domainSet == nil {
		p.index()
	}
	return p.domainSet[domain] && (p.AllTenants || p.tenantSet[tenant])
}

// Granted reports whether the named publisher may publish events of the
// domain for the tenant; a publisher not in the matrix may publish nothing.
func (m *Matrix) Granted(publisher, domain, tenant string) bool {
	p, ok := m.Publishers[publisher]
	return ok && p.Grants(domain, tenant)
}

// PublisherNames returns the names of the publishers section, sorted.
func (m *Matrix) PublisherNames() []string { return slices.Sorted(maps.Keys(m.Publishers)) }

// PublishersOf returns the publishers granted the domain for the tenant,
// sorted.
func (m *Matrix) PublishersOf(domain, tenant string) []string {
	var out []string
	for _, name := range m.PublisherNames() {
		if m.Publishers[name].Grants(domain, tenant) {
			out = append(out, name)
		}
	}
	return out
}

// Matrix is a validated routing matrix. It is immutable once loaded.
type Matrix struct {
	File       string
	Version    int
	Prefix     string
	Partitions int
	Defaults   Limits
	Tags       map[string]*Tag
	Domains    map[string]*Domain
	Services   map[string]*Service
	// Publishers are the grants of the publishers section, by name: nil
	// when the matrix has none, and then no publisher has streams of its own.
	Publishers map[string]*Publisher
	// TenantBudget limits the messages of each tenant over all its
	// channels; nil for no limit.
	TenantBudget *Budget
	// GlobalBudget limits all messages of the fleet (every router on the
	// bus together); nil for no limit.
	GlobalBudget *Budget
	// Hash is the hex SHA-256 of the source, to tell which matrix is active.
	Hash string

	// routes caches Routes by domain, then tenant: the lookup on the hot
	// path allocates nothing once a (tenant, domain) has been seen.
	mu      sync.RWMutex
	routes  map[string]map[string][]Route
	entries int
}

// maxCachedRoutes bounds the route cache, so a flood of made-up tenants
// cannot grow it without end; beyond it routes are computed each time.
const maxCachedRoutes = 200_000

// Load reads and validates the matrix file at path.
func Load(path string) (*Matrix, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse validates a matrix; file names it in error messages.
func Parse(file string, data []byte) (*Matrix, error) {
	p := &parser{file: file}
	m := p.parse(data)
	if len(p.errs) > 0 {
		slices.SortStableFunc(p.errs, func(a, b *Error) int {
			return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
		})
		return nil, p.errs
	}
	sum := sha256.Sum256(data)
	m.Hash = hex.EncodeToString(sum[:])
	m.File = file
	return m, nil
}

// Route is one channel an event reaches.
type Route struct {
	Channel  string   `json:"channel"`
	Tag      string   `json:"tag"`
	Services []string `json:"services"`
	Limits   Limits   `json:"limits"`
	// EntityRefs: the domain has entity_refs, so an entity-level event
	// goes out as a message with refs rather than a whole tag, and the
	// domain's key-level events carry refs too.
	EntityRefs bool `json:"entity_refs,omitempty"`
}

// Routes returns the channels an event of tenant and domain is fanned out to:
// one per tag of the domain that has at least one service serving the tenant.
// It returns false when the domain is not in the matrix.
//
// The returned slice is shared by every caller: do not modify it.
func (m *Matrix) Routes(tenant, domain string) ([]Route, bool) {
	m.mu.RLock()
	routes, ok := m.routes[domain][tenant]
	m.mu.RUnlock()
	if ok {
		return routes, true
	}
	routes, known := m.computeRoutes(tenant, domain)
	if !known {
		return nil, false
	}
	m.mu.Lock()
	if m.entries < maxCachedRoutes {
		if m.routes == nil {
			m.routes = map[string]map[string][]Route{}
		}
		if m.routes[domain] == nil {
			m.routes[domain] = map[string][]Route{}
		}
		m.routes[domain][tenant] = routes
		m.entries++
	}
	m.mu.Unlock()
	return routes, true
}

func (m *Matrix) computeRoutes(tenant, domain string) ([]Route, bool) {
	d, ok := m.Domains[domain]
	if !ok {
		return nil, false
	}
	routes := make([]Route, 0, len(d.Tags))
	for _, tagName := range d.Tags {
		tag := m.Tags[tagName]
		var services []string
		for _, s := range tag.Services {
			if m.Services[s].Serves(tenant) {
				services = append(services, s)
			}
		}
		if len(services) == 0 {
			continue
		}
		routes = append(routes, Route{
			Channel:    names.Channel(m.Prefix, tenant, tagName),
			Tag:        tagName,
			Services:   services,
			Limits:     tag.Limits,
			EntityRefs: d.EntityRefs,
		})
	}
	return routes, true
}

// Subscription is what one service listens to.
type Subscription struct {
	Tags       []string // sorted
	AllTenants bool
	Tenants    []string // when not AllTenants
}

// SubscriptionFor returns the tags a service owns and the tenants it serves,
// or false when the service is not in the matrix.
func (m *Matrix) SubscriptionFor(service string) (Subscription, bool) {
	s, ok := m.Services[service]
	if !ok {
		return Subscription{}, false
	}
	sub := Subscription{AllTenants: s.AllTenants, Tenants: slices.Clone(s.Tenants)}
	for name, t := range m.Tags {
		if slices.Contains(t.Services, service) {
			sub.Tags = append(sub.Tags, name)
		}
	}
	slices.Sort(sub.Tags)
	return sub, true
}

// TagNames returns the tag names, sorted.
func (m *Matrix) TagNames() []string { return slices.Sorted(maps.Keys(m.Tags)) }

// DomainNames returns the domain names, sorted.
func (m *Matrix) DomainNames() []string { return slices.Sorted(maps.Keys(m.Domains)) }

// ServiceNames returns the service names, sorted.
func (m *Matrix) ServiceNames() []string { return slices.Sorted(maps.Keys(m.Services)) }

// MarshalJSON writes coalesce as a duration string ("20ms").
func (l Limits) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Rate     float64 `json:"rate"`
		Burst    int     `json:"burst"`
		Coalesce string  `json:"coalesce"`
		MaxKeys  int     `json:"max_keys"`
		History  int     `json:"history"`
		TTL      string  `json:"history_ttl,omitempty"`
	}{l.Rate, l.Burst, l.Coalesce.String(), l.MaxKeys, l.History, ttlString(l.HistoryTTL)})
}

func ttlString(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}
