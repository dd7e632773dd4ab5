package names

import (
	"errors"
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
