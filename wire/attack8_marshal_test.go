package wire

import (
	"reflect"
	"testing"
)

// attack: whatever event a publisher builds, if Marshal accepts it (what
// the publisher library sends), the router's ParseEvent accepts what it
// sent and reads the same event back: a Publish that said nil can never
// end in a malformed dead letter for its encoding.
func FuzzMarshalledEventParses(f *testing.F) {
	f.Add("acme", "user", "01JDX", "1042", "user:1042", "", "profile-svc", "00-abc-01", int64(17), int64(1764000000123), false)
	f.Add("acme", "user", "", "1042", "", "", "", "", int64(0), int64(0), true)
	f.Add("a.b_c-d", "user:x", "a\"b\\c", "{x}", `page/home?x="1"&y=<2>\`, "k}", ":{}", "", int64(9223372036854775807), int64(9223372036854775807), false)
	f.Add("acme", "user", "\x00", "\n", "\xff", "user:1", "\u2028", "", int64(-1), int64(0), false)
	f.Fuzz(func(t *testing.T, tenant, domain, id, entity, key1, key2, origin, traceparent string, sv, ts int64, whole bool) {
		e := &Event{ID: id, Tenant: tenant, Domain: domain, Entity: entity, SourceVersion: sv, Origin: origin, TS: ts, Traceparent: traceparent, WholeTag: whole}
		for _, k := range []string{key1, key2} {
			if k != "" {
				e.Keys = append(e.Keys, k)
			}
		}
		b, err := e.Marshal()
		if err != nil {
			return
		}
		got, err := ParseEvent(b)
		if err != nil {
			t.Fatalf("Marshal accepted %+v as %s, ParseEvent refuses it: %v", e, b, err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("Marshal of %+v is %s, which parses as %+v", e, b, got)
		}
		if got.EntityLevel() != e.EntityLevel() {
			t.Fatalf("%s: entity-level %v, sent as %v", b, got.EntityLevel(), e.EntityLevel())
		}
	})
}
