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

// Entities and domains may both contain ':'; their key stays distinct.
func TestSourceVersionKeyIsUnambiguous(t *testing.T) {
	a := SourceVersionKey("invalidate", "acme", "user:profile", "1")
	b := SourceVersionKey("invalidate", "acme", "user", "profile:1")
	if a == b {
		t.Errorf("two entities share %q", a)
	}
	if got := SourceVersionKey("invalidate", "acme", "user", "1042"); got != "invalidate:srcver:{acme}:user/1042" {
		t.Errorf("SourceVersionKey = %q", got)
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
	} {
		if got := StreamPublisher("invalidate", tc.stream); got != tc.want {
			t.Errorf("StreamPublisher(%q) = %q, want %q", tc.stream, got, tc.want)
		}
	}
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
