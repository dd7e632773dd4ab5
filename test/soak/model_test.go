package soak

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// The world the soak runs: tenants, domains and their tags, the services
// that own each tag and the tenants each serves. The matrix file is written
// from it, and the checker derives from it, independently of the matrix
// package, which cached keys each invalidation must reach.
var (
	// tenants have a publisher each; quietTenant has none: only faults
	// publish for it, so its channel stays quiet after them.
	tenants     = []string{"acme", "globex", "initech", "umbrella"}
	quietTenant = "hooli"
	allTenants  = append(slices.Clone(tenants), quietTenant)
	domainNames = []string{"user", "product", "invoice", "catalog"}
	domainTags  = map[string][]string{
		"user":    {"active"},
		"product": {"electronics", "active"},
		"invoice": {"billing"},
		"catalog": {"catalog"},
	}
	tagNames    = []string{"active", "billing", "catalog", "electronics"}
	tagServices = map[string][]string{
		"active":      {"profile-svc", "search-svc"},
		"electronics": {"search-svc"},
		"billing":     {"billing-svc"},
		"catalog":     {"search-svc", "billing-svc"},
	}
	// keyDomains get key-level events only; whole-tag events go to the
	// catalog alone, so they do not wipe the other tags' keys and hide an
	// invalidation lost there.
	keyDomains   = []string{"user", "product", "invoice"}
	serviceNames = []string{"billing-svc", "profile-svc", "search-svc"}
	// serviceTenants: nil serves every tenant.
	serviceTenants = map[string][]string{
		"profile-svc": nil,
		"search-svc":  {"acme", "globex"},
		"billing-svc": {"acme", "initech"},
	}
)

const (
	// partitions of the ingress, as in the matrix.
	partitions = 4
	// keysPerDomain is the keyspace the writer rewrites at random: keys
	// <domain>:0 … <domain>:keysPerDomain-1. Tracer keys, <domain>:g<n>,
	// are written once and invalidated once.
	keysPerDomain = 30
)

func serves(svc, tenant string) bool {
	ts := serviceTenants[svc]
	return ts == nil || slices.Contains(ts, tenant)
}

// owns reports whether svc receives the channel of tenant's tag.
func owns(svc, tenant, tag string) bool {
	return slices.Contains(tagServices[tag], svc) && serves(svc, tenant)
}

func domainOf(key string) string {
	d, _, _ := strings.Cut(key, ":")
	return d
}

// registeredTags are the tags a service caches a tenant's key under: the
// tags of the key's domain that the service owns for the tenant. None means
// the service does not cache the key at all.
func registeredTags(svc, tenant, key string) []string {
	var out []string
	for _, tag := range domainTags[domainOf(key)] {
		if owns(svc, tenant, tag) {
			out = append(out, tag)
		}
	}
	return out
}

func matrixYAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\ningress: {partitions: %d}\ntags:\n", partitions)
	for _, tag := range tagNames {
		fmt.Fprintf(&b, "  %s: {services: [%s]}\n", tag, strings.Join(tagServices[tag], ", "))
	}
	b.WriteString("domains:\n")
	for _, d := range domainNames {
		fmt.Fprintf(&b, "  %s: {tags: [%s]}\n", d, strings.Join(domainTags[d], ", "))
	}
	b.WriteString("services:\n")
	for _, svc := range serviceNames {
		if ts := serviceTenants[svc]; ts == nil {
			fmt.Fprintf(&b, "  %s: {tenants: all}\n", svc)
		} else {
			fmt.Fprintf(&b, "  %s: {tenants: [%s]}\n", svc, strings.Join(ts, ", "))
		}
	}
	return b.String()
}

// dbKeysPerDomain is the model database's keyspace: keys <domain>:d0 …
// <domain>:d<dbKeysPerDomain-1> of each key-level domain, per tenant with a
// publisher. Readers cache them through tagstore.Fetch only, apart from the
// writer's keys.
const dbKeysPerDomain = 10

// dbKey is one row of the model database.
type dbKey struct{ tenant, key string }

// database is the soak's model of the services' source of truth: a version
// per row, bumped by each change, whose event is published after the
// commit. The verdict: once quiet, every value cached through Fetch is the
// row's current version.
type database struct {
	mu       sync.Mutex
	versions map[dbKey]int
	changes  map[dbKey][]*inval // the event of each change, in order: change n is changes[n-1]
	read     map[entryKey]bool  // the rows each service read through Fetch
}

func newDatabase() *database {
	return &database{versions: map[dbKey]int{}, changes: map[dbKey][]*inval{}, read: map[entryKey]bool{}}
}

// change commits a new version of a row; in is the event that announces it.
func (d *database) change(k dbKey, in *inval) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.versions[k]++
	d.changes[k] = append(d.changes[k], in)
}

// version reads a row, as a load does, and notes that svc read it.
func (d *database) version(svc string, k dbKey) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.read[entryKey{svc, k.tenant, k.key}] = true
	return "v" + strconv.Itoa(d.versions[k])
}
