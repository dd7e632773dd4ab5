package wire

import (
	"errors"
	"strings"
	"testing"
)

// A packed entry's events are decoded and validated one by one: a bad one
// gets its own error and JSON, the others are decoded as ParseEvent would.
func TestParseEvents(t *testing.T) {
	in := `[{"id":"a","tenant":"acme","domain":"user","keys":["user:1"]},` +
		`{"tenant":"acme","domain":"user","keys":[]},` +
		`{"tenant":"acme","domain":"user"}]`
	got, err := ParseEvents([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("%d events", len(got))
	}
	if got[0].Err != nil || got[0].Event.ID != "a" || got[0].Event.Keys[0] != "user:1" {
		t.Errorf("event 0: %+v", got[0])
	}
	if got[1].Event != nil || got[1].Err == nil || !strings.Contains(got[1].Err.Error(), EmptyKeys) || string(got[1].JSON) != `{"tenant":"acme","domain":"user","keys":[]}` {
		t.Errorf("event 1: %+v", got[1])
	}
	if got[2].Err != nil || !got[2].Event.WholeTag {
		t.Errorf("event 2: %+v", got[2])
	}
	for _, bad := range []string{`{}`, `[]`, `[`, `"x"`} {
		if _, err := ParseEvents([]byte(bad)); err == nil || !errors.Is(err, ErrMalformed) || !strings.HasPrefix(err.Error(), EventsField+": ") {
			t.Errorf("%s: %v", bad, err)
		}
	}
	if _, err := ParseEvents([]byte(`[` + strings.Repeat(`{},`, MaxPacked) + `{}]`)); err == nil {
		t.Error("more than MaxPacked events accepted")
	}
}

func FuzzParseEvents(f *testing.F) {
	f.Add(`[{"tenant":"acme","domain":"user","keys":["user:1"]}]`)
	f.Add(`[{"tenant":"acme","domain":"user"},{"keys":[]},3,null]`)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, in string) {
		got, err := ParseEvents([]byte(in))
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		for i, p := range got {
			if (p.Event == nil) == (p.Err == nil) {
				t.Fatalf("event %d: neither or both of an event and an error: %+v", i, p)
			}
			if p.Err != nil {
				if !errors.Is(p.Err, ErrMalformed) {
					t.Fatalf("event %d: error %v does not wrap ErrMalformed", i, p.Err)
				}
				continue
			}
			b, err := p.Event.Marshal()
			if err != nil {
				t.Fatalf("event %d parsed but does not marshal: %v", i, err)
			}
			if _, err := ParseEvent(b); err != nil {
				t.Fatalf("event %d: re-parse of %s: %v", i, b, err)
			}
		}
	})
}
