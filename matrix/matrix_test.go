package matrix

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/names"
)

func TestGoodMatrices(t *testing.T) {
	files, _ := filepath.Glob("testdata/good/*.yaml")
	if len(files) == 0 {
		t.Fatal("no good matrices")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			m, err := Load(f)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(m.Hash) != 64 || m.Version != 1 {
				t.Errorf("hash %q version %d", m.Hash, m.Version)
			}
		})
	}
}

func TestBadMatrices(t *testing.T) {
	files, _ := filepath.Glob("testdata/bad/*.yaml")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Parse(filepath.Base(f), data)
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("Parse = %v, want matrix.Errors", err)
			}
			for _, e := range errs {
				if e.Line < 1 || e.Col < 1 || !strings.HasPrefix(e.Error(), filepath.Base(f)+":") {
					t.Errorf("error without position: %q", e)
				}
			}
			want, err := os.ReadFile(strings.TrimSuffix(f, ".yaml") + ".errors")
			if os.IsNotExist(err) {
				return
			}
			if got := errs.Error(); got != strings.TrimSpace(string(want)) {
				t.Errorf("errors:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestSyntaxErrorHasLine(t *testing.T) {
	_, err := Load("testdata/bad/syntax.yaml")
	if err == nil || !strings.HasPrefix(err.Error(), "testdata/bad/syntax.yaml:") || !strings.Contains(err.Error(), "YAML syntax") {
		t.Fatalf("err = %v", err)
	}
}

const routingMatrix = `
version: 1
defaults: {rate: 100, burst: 200, coalesce: 20ms, max_keys: 500}
tags:
  active:      {services: [profile-svc, search-svc]}
  electronics: {services: [search-svc], rate: 20}
  billing:     {services: [billing-svc]}
domains:
  user:    {tags: [active]}
  product: {tags: [electronics, active]}
  invoice: {tags: [billing]}
services:
  profile-svc: {tenants: all}
  search-svc:  {tenants: [acme, globex]}
  billing-svc: {tenants: [initech]}
`

func TestRoutes(t *testing.T) {
	m, err := Parse("inline", []byte(routingMatrix))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		tenant, domain string
		want           map[string][]string // channel -> services
		known          bool
	}{
		{"acme", "user", map[string][]string{"invalidate:acme:active": {"profile-svc", "search-svc"}}, true},
		{"umbrella", "user", map[string][]string{"invalidate:umbrella:active": {"profile-svc"}}, true},
		{"acme", "product", map[string][]string{
			"invalidate:acme:electronics": {"search-svc"},
			"invalidate:acme:active":      {"profile-svc", "search-svc"},
		}, true},
		{"umbrella", "product", map[string][]string{"invalidate:umbrella:active": {"profile-svc"}}, true},
		{"acme", "invoice", map[string][]string{}, true},
		{"initech", "invoice", map[string][]string{"invalidate:initech:billing": {"billing-svc"}}, true},
		{"acme", "order", nil, false},
	}
	for _, tt := range tests {
		routes, known := m.Routes(tt.tenant, tt.domain)
		if known != tt.known {
			t.Errorf("%s/%s known = %v", tt.tenant, tt.domain, known)
			continue
		}
		got := map[string][]string{}
		for _, r := range routes {
			got[r.Channel] = r.Services
		}
		if tt.want != nil && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s/%s routes = %v, want %v", tt.tenant, tt.domain, got, tt.want)
		}
	}
	routes, _ := m.Routes("acme", "product")
	if routes[0].Limits.Rate != 20 || routes[0].Limits.Burst != 200 || routes[0].Limits.Coalesce != 20*time.Millisecond {
		t.Errorf("electronics limits = %+v, want rate 20 over the defaults", routes[0].Limits)
	}
}

func TestSubscriptionFor(t *testing.T) {
	m, err := Parse("inline", []byte(routingMatrix))
	if err != nil {
		t.Fatal(err)
	}
	sub, ok := m.SubscriptionFor("search-svc")
	if !ok || !reflect.DeepEqual(sub.Tags, []string{"active", "electronics"}) || sub.AllTenants || !reflect.DeepEqual(sub.Tenants, []string{"acme", "globex"}) {
		t.Errorf("search-svc = %+v", sub)
	}
	sub, _ = m.SubscriptionFor("profile-svc")
	if !sub.AllTenants || !reflect.DeepEqual(sub.Tags, []string{"active"}) {
		t.Errorf("profile-svc = %+v", sub)
	}
	if _, ok := m.SubscriptionFor("nobody"); ok {
		t.Error("unknown service found")
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/*.yaml")
	for _, file := range files {
		data, _ := os.ReadFile(file)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse("fuzz", data)
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %v is not matrix.Errors", err)
			}
			return
		}
		// A matrix that loads must route every domain without panicking
		// and only to defined services.
		for _, d := range m.DomainNames() {
			routes, _ := m.Routes("acme", d)
			for _, r := range routes {
				for _, s := range r.Services {
					if m.Services[s] == nil {
						t.Fatalf("route to undefined service %q", s)
					}
				}
			}
		}
		// No two service–tag pairs share a stored position
		// (names.PositionName joins them with ':', which both may hold).
		pairs := map[string]string{}
		for _, tag := range m.TagNames() {
			for _, svc := range m.Tags[tag].Services {
				key, pair := names.PositionName(svc, tag), svc+" on "+tag
				if o, ok := pairs[key]; ok && o != pair {
					t.Fatalf("%s and %s both keep their positions under …:pos:%s", o, pair, key)
				}
				pairs[key] = pair
			}
		}
		// A publisher is granted only domains that exist.
		for _, name := range m.PublisherNames() {
			for _, d := range m.Publishers[name].Domains {
				if m.Domains[d] == nil || !m.Publishers[name].Grants(d, "acme") && m.Publishers[name].AllTenants {
					t.Fatalf("publisher %q: grant of undefined or unusable domain %q", name, d)
				}
			}
		}
	})
}

func TestPublisherGrants(t *testing.T) {
	m, err := Parse("inline", []byte(routingMatrix+`
publishers:
  profile-svc: {domains: [user], tenants: all}
  shop:        {domains: [product, invoice], tenants: [acme]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.PublisherNames(); !reflect.DeepEqual(got, []string{"profile-svc", "shop"}) {
		t.Errorf("PublisherNames = %v", got)
	}
	for _, tc := range []struct {
		publisher, domain, tenant string
		want                      bool
	}{
		{"profile-svc", "user", "acme", true},
		{"profile-svc", "user", "anyone", true},
		{"profile-svc", "product", "acme", false},
		{"shop", "product", "acme", true},
		{"shop", "invoice", "acme", true},
		{"shop", "product", "globex", false},
		{"shop", "user", "acme", false},
		{"ghost", "user", "acme", false},
	} {
		if got := m.Granted(tc.publisher, tc.domain, tc.tenant); got != tc.want {
			t.Errorf("Granted(%s, %s, %s) = %v, want %v", tc.publisher, tc.domain, tc.tenant, got, tc.want)
		}
	}
	if got := m.PublishersOf("product", "acme"); !reflect.DeepEqual(got, []string{"shop"}) {
		t.Errorf("PublishersOf(product, acme) = %v", got)
	}
	plain, err := Parse("inline", []byte(routingMatrix))
	if err != nil {
		t.Fatal(err)
	}
	if plain.Publishers != nil || plain.Granted("profile-svc", "user", "acme") {
		t.Errorf("a matrix without publishers grants %v", plain.Publishers)
	}
}

// entity_refs turns entity-level messages on for a domain: its routes say
// so, and the other domains' do not.
func TestEntityRefs(t *testing.T) {
	m, err := Parse("inline", []byte(`
version: 1
tags:
  users: {services: [s]}
  products: {services: [s]}
domains:
  user: {tags: [users], entity_refs: true}
  product: {tags: [products], entity_refs: false}
  order: {tags: [users, products]}
services:
  s: {tenants: all}
`))
	if err != nil {
		t.Fatal(err)
	}
	for domain, want := range map[string]bool{"user": true, "product": false, "order": false} {
		routes, _ := m.Routes("acme", domain)
		for _, rt := range routes {
			if rt.EntityRefs != want {
				t.Errorf("route %s of domain %s: EntityRefs %v, want %v", rt.Channel, domain, rt.EntityRefs, want)
			}
		}
		if len(routes) == 0 {
			t.Errorf("domain %s has no routes", domain)
		}
	}
}
