package subscriber

import (
	"slices"
	"testing"
)

// A record reads back as the interest it was made from; anything else is
// read or refused, never a panic.
func FuzzParseInterest(f *testing.F) {
	for _, s := range []string{"tags=a,b\ntenants=*", "tags=a\ntenants=acme,globex", "tags=\ntenants=", "", "tags=a", "x\ny"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rec string) {
		tags, all, tenants, ok := parseInterest(rec)
		if !ok {
			return
		}
		again := interestRecord(&interest{tagList: tags, allTenants: all, listed: tenants})
		t2, a2, n2, ok2 := parseInterest(again)
		if !ok2 || a2 != all || !slices.Equal(t2, tags) || !slices.Equal(n2, tenants) {
			t.Fatalf("%q read as %q %v %q, written back as %q, read as %q %v %q", rec, tags, all, tenants, again, t2, a2, n2)
		}
	})
}

func TestInterestRecordRoundTrip(t *testing.T) {
	for _, in := range []*interest{
		{tagList: []string{"active", "billing"}, allTenants: true},
		{tagList: []string{"active"}, listed: []string{"acme", "globex"}},
		{tagList: []string{"x:y"}, listed: nil},
	} {
		rec := interestRecord(in)
		tags, all, tenants, ok := parseInterest(rec)
		if !ok || all != in.allTenants || !slices.Equal(tags, in.tagList) || !slices.Equal(tenants, in.listed) {
			t.Errorf("%q read back as %v %v %v %v", rec, tags, all, tenants, ok)
		}
	}
	if _, _, _, ok := parseInterest("tags=a"); ok {
		t.Error("a record without tenants was read")
	}
}
