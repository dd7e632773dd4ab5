package names

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestValidation(t *testing.T) {
	tests := []struct {
		name        string
		tenant, tag bool
	}{
		{"acme", true, true},
		{"a", true, true},
		{"Acme-1.x_y", true, true},
		{"user:active", false, true},
		{"", false, false},
		{"-acme", false, false},
		{".acme", false, false},
		{"ac me", false, false},
		{"ac*me", false, false},
		{"ac{me}", false, false},
		{"ac?me", false, false},
		{"ac[me]", false, false},
		{"äcme", false, false},
		{strings.Repeat("a", 64), true, true},
		{strings.Repeat("a", 65), false, true},
		{strings.Repeat("a", 128), false, true},
		{strings.Repeat("a", 129), false, false},
	}
	for _, tt := range tests {
		if got := Tenant(tt.name) == nil; got != tt.tenant {
			t.Errorf("Tenant(%q) valid = %v, want %v", tt.name, got, tt.tenant)
		}
		if got := Tag(tt.name) == nil; got != tt.tag {
			t.Errorf("Tag(%q) valid = %v, want %v", tt.name, got, tt.tag)
		}
	}
}

func TestErrorNamesFieldAndRule(t *testing.T) {
	err := Tenant("a:b")
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	if !strings.Contains(err.Error(), "tenant") || !strings.Contains(err.Error(), "^[A-Za-z0-9]") {
		t.Errorf("error %q does not name the field and rule", err)
	}
}

func TestKey(t *testing.T) {
	for _, k := range []string{"user:1042", "a", "x{y}", strings.Repeat("k", MaxKeyLen)} {
		if err := Key(k); err != nil {
			t.Errorf("Key(%q) = %v", k, err)
		}
	}
	for _, k := range []string{"", "a b", "a\nb", "a\x00", "é", strings.Repeat("k", MaxKeyLen+1)} {
		if Key(k) == nil {
			t.Errorf("Key(%q) accepted", k)
		}
	}
}

// A key can never name a tag set, a position or another key routerd keeps.
func TestKeyCannotNameInternalKeys(t *testing.T) {
	for _, k := range []string{"user:1042", "tags:x", "position", "TAG:active", "Pos:x", "routerdx:y", "x:tag:y", "x{tenant:a}:tag:b", "{tenantx}:y", "{user}:1"} {
		if err := Key(k); err != nil {
			t.Errorf("Key(%q) = %v", k, err)
		}
	}
	for k, why := range map[string]string{
		"tag:active":               `first segment "tag" is reserved`,
		"tag":                      `first segment "tag" is reserved`,
		"pos:search-svc:active":    `first segment "pos" is reserved`,
		"routerd:positions:svc":    `first segment "routerd" is reserved`,
		"ref:user/1042":            `first segment "ref" is reserved`,
		"lease:user:1":             `first segment "lease" is reserved`,
		"{tenant:acme}:user:1":     "give the key without the {tenant:…}: prefix",
		"{tenant:acme}:tag:active": "give the key without the {tenant:…}: prefix",
		"{tenant:":                 "give the key without the {tenant:…}: prefix",
	} {
		err := Key(k)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), `key "`+k+`"`) {
			t.Errorf("Key(%q) = %v, want it refused saying %q", k, err, why)
		}
	}
	for _, full := range []string{TagSetKey("acme", "active"), TagSetKey("a", "b:c"), PositionKey("acme", "svc", "active"), PositionIndexKey("svc"), "{tenant:}:pos:x", RefKey("acme", Ref("user", "1042")), RefKey("acme", "user"), LeaseKey("acme", "{tenant:acme}:user:1"), LeaseKey("a", "x")} {
		if CacheKey(full) == nil {
			t.Errorf("CacheKey(%q) accepted an internal key", full)
		}
	}
	for _, full := range []string{"{tenant:acme}:user:1", "user:1", "{tenant:acme}:tags:x", "cache:{tenant:acme}:tag:x", "{tenant:acme"} {
		if err := CacheKey(full); err != nil {
			t.Errorf("CacheKey(%q) = %v", full, err)
		}
	}
}

// FuzzKey holds Key to its promise: a key it accepts, rendered by the default
// template for any tenant (or by "${key}" alone), is never an internal key,
// and internal keys of any valid names are always recognised.
func FuzzKey(f *testing.F) {
	f.Add("user:1042", "acme", "active", "search-svc")
	f.Add("tag:active", "acme", "active", "search-svc")
	f.Add("pos:search-svc:active", "acme", "a:b", "svc")
	f.Add("{tenant:acme}:tag:active", "acme", "active", "svc")
	f.Add("routerd:positions:svc", "a", "b", "c")
	f.Add("lease:user:1", "acme", "active", "svc")
	f.Fuzz(func(t *testing.T, key, tenant, tag, service string) {
		if Key(key) == nil {
			for i := 0; i < len(key); i++ {
				if key[i] <= ' ' || key[i] > '~' {
					t.Fatalf("Key accepted %q with byte %#x", key, key[i])
				}
			}
			if err := CacheKey(key); err != nil {
				t.Fatalf("Key accepted %q, which is internal as it stands: %v", key, err)
			}
			if ValidTenant(tenant) {
				if err := CacheKey(TenantTag(tenant) + ":" + key); err != nil {
					t.Fatalf("Key accepted %q, which the default template renders as an internal key: %v", key, err)
				}
			}
		}
		if ValidTenant(tenant) && ValidTag(tag) && ValidTag(service) {
			for _, full := range []string{TagSetKey(tenant, tag), PositionKey(tenant, service, tag), PositionIndexKey(service), RefKey(tenant, Ref(tag, key)), RefKey(tenant, tag), LeaseKey(tenant, key)} {
				if CacheKey(full) == nil {
					t.Fatalf("CacheKey(%q) does not recognise an internal key", full)
				}
			}
		}
	})
}

func TestChannelRoundTrip(t *testing.T) {
	tests := []struct{ prefix, tenant, tag string }{
		{"invalidate", "acme", "active"},
		{"invalidate", "acme", "user:active:x"},
		{"inv:prod", "globex", "a"},
	}
	for _, tt := range tests {
		ch := Channel(tt.prefix, tt.tenant, tt.tag)
		tenant, tag, err := ParseChannel(tt.prefix, ch)
		if err != nil || tenant != tt.tenant || tag != tt.tag {
			t.Errorf("ParseChannel(%q) = %q, %q, %v", ch, tenant, tag, err)
		}
	}
	for _, ch := range []string{"other:acme:active", "invalidate:acme", "invalidate::x", "invalidate:acme:", "invalidate:a*:x"} {
		if _, _, err := ParseChannel("invalidate", ch); err == nil {
			t.Errorf("ParseChannel(%q) accepted", ch)
		}
	}
}

func TestKeysShareSlotWithChannel(t *testing.T) {
	ch := Channel("invalidate", "acme", "active")
	for _, k := range []string{MetaKey(ch), HistoryKey(ch), EventsKey(ch)} {
		if !strings.HasPrefix(k, "{"+ch+"}:") {
			t.Errorf("%q does not carry the channel as hash tag", k)
		}
	}
	if got := TagSetKey("acme", "active"); got != "{tenant:acme}:tag:active" {
		t.Errorf("TagSetKey = %q", got)
	}
	if got := PositionKey("acme", "search-svc", "active"); got != "{tenant:acme}:pos:search-svc:active" {
		t.Errorf("PositionKey = %q", got)
	}
	if got := PositionIndexKey("search-svc"); got != "routerd:positions:search-svc" {
		t.Errorf("PositionIndexKey = %q", got)
	}
}

func FuzzParseChannel(f *testing.F) {
	f.Add("invalidate", "invalidate:acme:active")
	f.Add("invalidate", "invalidate:acme:a:b")
	f.Add("p", "p::")
	f.Fuzz(func(t *testing.T, prefix, ch string) {
		tenant, tag, err := ParseChannel(prefix, ch)
		if err != nil {
			return
		}
		if Tenant(tenant) != nil || Tag(tag) != nil {
			t.Fatalf("ParseChannel(%q, %q) returned invalid parts %q %q", prefix, ch, tenant, tag)
		}
		if got := Channel(prefix, tenant, tag); got != ch {
			t.Fatalf("round trip %q -> %q", ch, got)
		}
	})
}

// Entities and domains may both contain ':'; their key stays distinct. An
// entity on the shared ingress that spells a publisher's ("profile-svc/42")
// does not share that publisher's key.
func TestSourceVersionKeyIsUnambiguous(t *testing.T) {
	a := SourceVersionKey("invalidate", "acme", "user:profile", "", "1")
	b := SourceVersionKey("invalidate", "acme", "user", "", "profile:1")
	if a == b {
		t.Errorf("two entities share %q", a)
	}
	shared := SourceVersionKey("invalidate", "acme", "user", "", "profile-svc/42")
	own := SourceVersionKey("invalidate", "acme", "user", "profile-svc", "42")
	if shared == own {
		t.Errorf("the shared ingress's entity profile-svc/42 and publisher profile-svc's entity 42 share %q", own)
	}
	for _, tc := range []struct{ publisher, want string }{
		{"", "invalidate:srcver:{acme}:user//1042"},
		{"profile-svc", "invalidate:srcver:{acme}:user/profile-svc/1042"},
	} {
		if got := SourceVersionKey("invalidate", "acme", "user", tc.publisher, "1042"); got != tc.want {
			t.Errorf("SourceVersionKey(publisher %q) = %q, want %q", tc.publisher, got, tc.want)
		}
	}
}

// No two (domain, publisher, entity) of a tenant share a source_version key,
// whatever the entity spells: the key space of the shared ingress and of
// each publisher are disjoint.
func FuzzSourceVersionKey(f *testing.F) {
	f.Add("user", "", "profile-svc/42", "user", "profile-svc", "42")
	f.Add("user", "", "/a/b", "user", "a", "b")
	f.Add("user:x", "p", "1", "user", "x/p", "1")
	f.Fuzz(func(t *testing.T, d1, p1, e1, d2, p2, e2 string) {
		valid := func(d, p, e string) bool {
			return ValidTag(d) && (p == "" || ValidTag(p)) && e != "" && len(e) <= MaxEntityLen
		}
		if !valid(d1, p1, e1) || !valid(d2, p2, e2) {
			return
		}
		k1 := SourceVersionKey("invalidate", "acme", d1, p1, e1)
		k2 := SourceVersionKey("invalidate", "acme", d2, p2, e2)
		if (k1 == k2) != (d1 == d2 && p1 == p2 && e1 == e2) {
			t.Fatalf("(%q, %q, %q) -> %q and (%q, %q, %q) -> %q", d1, p1, e1, k1, d2, p2, e2, k2)
		}
	})
}

func TestIngressStreamRoundTrip(t *testing.T) {
	for _, p := range []int{0, 7, 12, MaxPartitions - 1} {
		got, err := ParseIngressStream("invalidate", IngressStream("invalidate", p))
		if err != nil || got != p {
			t.Errorf("partition %d: parsed %d, %v", p, got, err)
		}
	}
	for _, bad := range []string{
		"invalidate:ingress:7", "invalidate:ingress:{07}", "invalidate:ingress:{x}", "invalidate:ingress:{}",
		"invalidate:ingress:{-1}", "invalidate:ingress:{1024}", "invalidate:ingress:{7", "invalidate:ingress:{7}x",
		"invalidate:ingress:pub:{7}", "other:ingress:{7}", "invalidate:ingress:{+7}",
	} {
		if p, err := ParseIngressStream("invalidate", bad); err == nil {
			t.Errorf("%q parsed as partition %d", bad, p)
		} else if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "stream") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestPublisherStream(t *testing.T) {
	s := PublisherStream("invalidate", "profile-svc", 3)
	if s != "invalidate:ingress:profile-svc:{3}" {
		t.Errorf("PublisherStream = %q", s)
	}
	for _, tc := range []struct{ stream, want string }{
		{s, "profile-svc"},
		{PublisherStream("invalidate", "a:b", 0), "a:b"},
		{"invalidate:ingress:{3}", ""},
		{"invalidate:ingress:partitions", ""},
		{"invalidate:ingress:p:{x}", ""},
		{"invalidate:ingress::{1}", ""},
		{"other:ingress:p:{1}", ""},
		{"invalidate:deadletter", ""},
		{InvalidDeadLetterStream("invalidate"), ""},
		{RoutersKey("invalidate"), ""},
	} {
		if got := StreamPublisher("invalidate", tc.stream); got != tc.want {
			t.Errorf("StreamPublisher(%q) = %q, want %q", tc.stream, got, tc.want)
		}
	}
}

func FuzzParseIngressStream(f *testing.F) {
	f.Add("invalidate:ingress:{7}")
	f.Add("invalidate:ingress:7")
	f.Add("invalidate:ingress:{0012}")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseIngressStream("invalidate", s)
		if err != nil {
			return
		}
		if p < 0 || p >= MaxPartitions || IngressStream("invalidate", p) != s {
			t.Errorf("%q parsed as %d, which names %q", s, p, IngressStream("invalidate", p))
		}
	})
}

func FuzzStreamPublisher(f *testing.F) {
	f.Add("invalidate", "profile-svc", 3)
	f.Add("p:q", "a:b", 0)
	f.Fuzz(func(t *testing.T, prefix, publisher string, p int) {
		if Prefix(prefix) != nil || Service(publisher) != nil || p < 0 || p > 1023 {
			return
		}
		if got := StreamPublisher(prefix, PublisherStream(prefix, publisher, p)); got != publisher {
			t.Fatalf("round trip of %q: %q", publisher, got)
		}
		if got := StreamPublisher(prefix, prefix+":ingress:{"+strconv.Itoa(p)+"}"); got != "" {
			t.Fatalf("shared stream read as publisher %q", got)
		}
	})
}

// A ref splits back into the one (domain, entity) it was made of, even when
// the entity holds ':' or '/'; anything else is refused naming the rule.
func TestRef(t *testing.T) {
	for _, tt := range []struct{ domain, entity string }{{"user", "1042"}, {"a:b", "c"}, {"a", "b:c"}, {"product", "x/y z"}} {
		d, e, err := ParseRef(Ref(tt.domain, tt.entity))
		if err != nil || d != tt.domain || e != tt.entity {
			t.Errorf("ParseRef(Ref(%q, %q)) = %q, %q, %v", tt.domain, tt.entity, d, e, err)
		}
	}
	if RefKey("acme", Ref("a:b", "c")) == RefKey("acme", Ref("a", "b:c")) {
		t.Error("two (domain, entity) pairs share a reference set")
	}
	for _, bad := range []string{"", "user", "user/", "/1042", "us er/1", "user/\x01", "user/" + strings.Repeat("x", 257)} {
		if _, _, err := ParseRef(bad); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "<domain>/<entity>") {
			t.Errorf("ParseRef(%q) = %v, want the ref rule", bad, err)
		}
	}
}

func FuzzParseRef(f *testing.F) {
	f.Add("user/1042")
	f.Add("a:b/c/d")
	f.Fuzz(func(t *testing.T, ref string) {
		d, e, err := ParseRef(ref)
		if err != nil {
			return
		}
		if Ref(d, e) != ref || strings.Contains(d, "/") {
			t.Fatalf("ParseRef(%q) = %q, %q: does not make the ref back", ref, d, e)
		}
	})
}

// A message's ref is an entity reference or a domain alone (its type level);
// a tag's ref-registered set never names a tag set nor a cache key.
func TestRefOrDomain(t *testing.T) {
	for _, ok := range []string{"user", "a:b", "user/1042", "a/b/c"} {
		if err := RefOrDomain(ok); err != nil {
			t.Errorf("RefOrDomain(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "us er", "user/", "/1", "-x", "user/\x01"} {
		if err := RefOrDomain(bad); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "<domain>/<entity>") {
			t.Errorf("RefOrDomain(%q) = %v, want the ref rule", bad, err)
		}
	}
	k := TagRefsKey("acme", "users")
	if k != "{tenant:acme}:tag:users#refs" || ValidTag("users"+TagRefsSuffix) || CacheKey(k) == nil {
		t.Errorf("TagRefsKey = %q: may collide with a tag set or a cache key", k)
	}
}

func FuzzRefOrDomain(f *testing.F) {
	f.Add("user")
	f.Add("user/1042")
	f.Fuzz(func(t *testing.T, ref string) {
		if RefOrDomain(ref) != nil {
			return
		}
		if d, _, err := ParseRef(ref); err != nil && !ValidTag(ref) || err == nil && !ValidTag(d) {
			t.Fatalf("RefOrDomain(%q) accepted neither a ref nor a domain", ref)
		}
	})
}
