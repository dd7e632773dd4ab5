package wire

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/routerd/routerd/names"
)

func TestParseEvent(t *testing.T) {
	good := `{"id":"01JDX","tenant":"acme","domain":"user","entity":"1042","keys":["user:1042"],` +
		`"source_version":17,"origin":"profile-svc","ts":1764000000123,"traceparent":"00-abc-01"}`
	e, err := ParseEvent([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if e.Tenant != "acme" || e.Domain != "user" || e.SourceVersion != 17 || len(e.Keys) != 1 {
		t.Errorf("parsed %+v", e)
	}

	bad := []struct{ in, field string }{
		{`{"domain":"user"}`, "tenant"},
		{`{"tenant":"acme"}`, "domain"},
		{`{"tenant":"ac:me","domain":"user"}`, "tenant"},
		{`{"tenant":"acme","domain":"us er"}`, "domain"},
		{`{"tenant":"acme","domain":"user","keys":["a b"]}`, "keys[0]"},
		{`{"tenant":"acme","domain":"user","colour":"red"}`, "json"},
		{`{"tenant":"acme","domain":"user"} x`, "json"},
		{`{"tenant":"acme","domain":"user","source_version":-1}`, "source_version"},
		{`{"tenant":"acme","domain":"user","entity":"a\u0000"}`, "entity"},
		{`{"tenant":"acme","domain":"user","keys":[]}`, "keys"},
		{`not json`, "json"},
		{``, "json"},
	}
	for _, tt := range bad {
		_, err := ParseEvent([]byte(tt.in))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field {
			t.Errorf("ParseEvent(%s) = %v, want error on %q", tt.in, err, tt.field)
		}
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseEvent(%s) error does not wrap ErrMalformed", tt.in)
		}
	}
}

func TestMessageBodySplicesIntoValidMessage(t *testing.T) {
	m := &Message{Tenant: "acme", Tag: "active", Keys: []string{"user:1"}, Event: "e1", Domain: "user", TS: 5}
	body := MessageBody(m)
	// What lua/publish.lua does.
	full := `{"epoch":"9f2c","version":42` + string(body) + `}`
	got, err := ParseMessage([]byte(full))
	if err != nil {
		t.Fatalf("ParseMessage(%s): %v", full, err)
	}
	if got.Epoch != "9f2c" || got.Version != 42 || got.Tenant != "acme" || got.Keys[0] != "user:1" || got.Event != "e1" {
		t.Errorf("got %+v", got)
	}
}

func TestParseMessageRejects(t *testing.T) {
	for _, in := range []string{
		`{"tenant":"acme","tag":"active","epoch":"e","version":0}`,
		`{"tenant":"acme","tag":"active","version":1}`,
		`{"tenant":"a:b","tag":"active","epoch":"e","version":1}`,
		`{"tenant":"acme","tag":"a b","epoch":"e","version":1}`,
		`{"tenant":"acme","tag":"active","epoch":"e","version":1,"x":1}`,
	} {
		if _, err := ParseMessage([]byte(in)); err == nil {
			t.Errorf("ParseMessage(%s) accepted", in)
		}
	}
}

func TestPartitionIsStable(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { Partition("acme", 8) }); n != 0 {
		t.Errorf("Partition allocates %v times; it runs on every event", n)
	}
	// FNV-1a-32("acme") = 0x45fd71af (computed independently); other languages must agree.
	if got := Partition("acme", 8); got != int(uint32(0x45fd71af)%8) {
		t.Errorf("Partition(acme, 8) = %d", got)
	}
	if Partition("acme", 1) != 0 || Partition("acme", 0) != 0 {
		t.Error("a single partition must be 0")
	}
	if got := names.IngressStream("invalidate", 3); got != "invalidate:ingress:{3}" {
		t.Errorf("IngressStream = %q", got)
	}
}

// agreesWithEncodingJSON checks that what the decoder accepted, encoding/json
// (which is looser: it matches keys in any case and takes the last of a
// repeated key) decodes to the same value.
func agreesWithEncodingJSON[T any](t *testing.T, in string, got *T) {
	t.Helper()
	want := new(T)
	dec := json.NewDecoder(strings.NewReader(in))
	dec.DisallowUnknownFields()
	if e, ok := any(want).(*Event); ok {
		// WholeTag is not a JSON field: the absence of keys, and, with an
		// entity, "whole_tag": true.
		var withFlag struct {
			*Event
			WholeTag *bool `json:"whole_tag"`
		}
		withFlag.Event = e
		if err := dec.Decode(&withFlag); err != nil {
			t.Fatalf("accepted %s, which encoding/json refuses: %v", in, err)
		}
		e.WholeTag = e.Keys == nil && (e.Entity == "" || withFlag.WholeTag != nil && *withFlag.WholeTag)
	} else if err := dec.Decode(want); err != nil {
		t.Fatalf("accepted %s, which encoding/json refuses: %v", in, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s decoded to %+v, encoding/json to %+v", in, got, want)
	}
}

// encodesLikeEncodingJSON checks that b, our encoding of v, decodes to what
// encoding/json's encoding of v decodes to.
func encodesLikeEncodingJSON[T any](t *testing.T, b []byte, v *T) {
	t.Helper()
	want, _ := json.Marshal(v)
	var got, exp T
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("our encoding %s is not JSON: %v", b, err)
	}
	_ = json.Unmarshal(want, &exp)
	if !reflect.DeepEqual(got, exp) {
		t.Fatalf("our encoding %s decodes to %+v; encoding/json's %s to %+v", b, got, want, exp)
	}
}

func TestMessageBodyEncodesAnyString(t *testing.T) {
	for _, s := range []string{"plain", `q"uote`, `back\slash`, "<a&b>", "tab\t", "ünï", "\x00", "bad \xff utf-8", ""} {
		m := &Message{Tenant: s, Tag: s, Keys: []string{s, "k"}, Event: s, Domain: s, Origin: s, TS: 7, Traceparent: s}
		body := MessageBody(m)
		full := append([]byte(`{"epoch":"e","version":1`), body...)
		full = append(full, '}')
		m.Epoch, m.Version = "e", 1
		encodesLikeEncodingJSON(t, full, m)
	}
}

func TestDecodingIsStrict(t *testing.T) {
	for _, in := range []string{
		`{"TENANT":"acme","domain":"user"}`,                                       // encoding/json takes any case
		`{"tenant":"acme","tenant":"globex","domain":"user"}`,                     // and the last of a repeated key
		`{"tenant":"acme","domain":"user","ts":1.5}`,                              // not an integer
		`{"tenant":"acme","domain":"user","ts":1e3}`,                              // not written as an integer
		`{"tenant":"acme","domain":"user","ts":"5"}`,                              // a string
		`{"tenant":"acme","domain":"user","keys":"user:1"}`,                       // not an array
		`{"tenant":"acme","domain":"user","keys":["a",1]}`,                        // not a string
		`{"tenant":"acme","domain":"user","source_version":99999999999999999999}`, // beyond int64
		`["tenant","acme"]`,
		`{"tenant":"acme","domain":"user"}{}`,
	} {
		_, err := ParseEvent([]byte(in))
		var fe *FieldError
		if !errors.As(err, &fe) || !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseEvent(%s) = %v, want a FieldError", in, err)
		}
	}
	// null is an absent field, as for encoding/json (but for keys, above);
	// escapes are decoded,
	// in keys too.
	e, err := ParseEvent([]byte(`{"tenant":"ac\u006de","dom\u0061in":"user","id":null,"ts":null}`))
	if err != nil || e.Tenant != "acme" || e.ID != "" || e.Keys != nil || !e.WholeTag || e.TS != 0 {
		t.Errorf("got %+v, %v", e, err)
	}
}

// Whole-tag intent is explicit: on the wire by leaving keys out (an empty
// array is refused), in Go by WholeTag (no keys without it, none with it).
func TestWholeTagIsExplicit(t *testing.T) {
	for _, tt := range []struct {
		in    string
		whole bool
		err   string
	}{
		{`{"tenant":"acme","domain":"user"}`, true, ""},
		// A nil list encodes as null (Go's json.Marshal, Python's None):
		// as accidental as an empty one.
		{`{"tenant":"acme","domain":"user","keys":null}`, false, "keys: " + NullKeys},
		{`{"tenant":"acme","domain":"user","entity":"1","keys":null}`, false, "keys: " + NullKeys},
		{`{"tenant":"acme","domain":"user","keys":["a"]}`, false, ""},
		{`{"tenant":"acme","domain":"user","keys":[]}`, false, "keys: " + EmptyKeys},
	} {
		e, err := ParseEvent([]byte(tt.in))
		switch {
		case tt.err != "" && (err == nil || err.Error() != tt.err):
			t.Errorf("ParseEvent(%s) = %v, want %q", tt.in, err, tt.err)
		case tt.err == "" && (err != nil || e.WholeTag != tt.whole):
			t.Errorf("ParseEvent(%s) = %+v, %v, want WholeTag %v", tt.in, e, err, tt.whole)
		}
	}
	for _, tt := range []struct {
		e  Event
		ok bool
	}{
		{Event{Tenant: "acme", Domain: "user"}, false},
		{Event{Tenant: "acme", Domain: "user", Keys: []string{}}, false},
		{Event{Tenant: "acme", Domain: "user", Keys: []string{"a"}, WholeTag: true}, false},
		{Event{Tenant: "acme", Domain: "user", Keys: []string{}, WholeTag: true}, true},
		{Event{Tenant: "acme", Domain: "user", WholeTag: true}, true},
		{Event{Tenant: "acme", Domain: "user", Keys: []string{"a"}}, true},
	} {
		b, err := tt.e.Marshal()
		var fe *FieldError
		if tt.ok != (err == nil) || err != nil && (!errors.As(err, &fe) || fe.Field != "keys") {
			t.Errorf("Marshal(%+v) = %s, %v", tt.e, b, err)
			continue
		}
		if err == nil {
			back, err := ParseEvent(b)
			if err != nil || back.WholeTag != tt.e.WholeTag {
				t.Errorf("%s parsed back to %+v, %v", b, back, err)
			}
		}
	}
}

// An error quotes at most a bounded part of the input: it ends up in a dead letter.
func TestErrorsAreBounded(t *testing.T) {
	long := strings.Repeat("k", 100_000)
	for _, in := range []string{
		`{"tenant":"acme","domain":"user","` + long + `":1}`,
		`{"tenant":"acme","domain":"user","keys":["` + long + `"]}`,
		`{"tenant":"acme","domain":"user","id":"` + long + `"}`,
		`{"tenant":"acme","domain":"user"}` + long,
	} {
		if _, err := ParseEvent([]byte(in)); err == nil || len(err.Error()) > 300 {
			t.Errorf("error of %d bytes: %.300v", len(err.Error()), err)
		}
	}
}

func FuzzParseEvent(f *testing.F) {
	f.Add(`{"tenant":"acme","domain":"user","keys":["user:1"]}`)
	f.Add(`{"id":"x","tenant":"acme","domain":"user","source_version":3}`)
	f.Add(`{}`)
	f.Add(`{"tenant":"acme","domain":"user","keys":[]}`)
	f.Add(`{"tenant":"acme","domain":"user","keys":null}`)
	f.Add(`{"tenant":"acme","domain":"user","entity":"1042"}`)
	f.Add(`{"tenant":"acme","domain":"user","entity":"1042","whole_tag":true}`)
	f.Add(`{"tenant":"acme","domain":"user","whole_tag":false}`)
	f.Fuzz(func(t *testing.T, in string) {
		e, err := ParseEvent([]byte(in))
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		agreesWithEncodingJSON(t, in, e)
		b, err := e.Marshal()
		if err != nil {
			t.Fatalf("a parsed event does not marshal: %v", err)
		}
		encodesLikeEncodingJSON(t, b, e)
		if _, err := ParseEvent(b); err != nil {
			t.Fatalf("re-parse of %s: %v", b, err)
		}
	})
}

func FuzzParseMessage(f *testing.F) {
	f.Add(`{"tenant":"acme","tag":"active","epoch":"e1","version":1,"keys":["k"]}`)
	f.Add(`{"tenant":"acme","tag":"a:b","epoch":"e1","version":9}`)
	f.Add(`{"tenant":"acme","tag":"a","epoch":"e1","version":9,"refs":["user/1042","a:b/c d"]}`)
	f.Add(`{"tenant":"acme","tag":"a","epoch":"e1","version":9,"keys":["k"],"refs":["user/1042","user"],"plain":true}`)
	f.Fuzz(func(t *testing.T, in string) {
		m, err := ParseMessage([]byte(in))
		if err != nil {
			return
		}
		agreesWithEncodingJSON(t, in, m)
		body := MessageBody(m)
		full := `{"epoch":"` + m.Epoch + `","version":1` + string(body) + `}`
		if strings.ContainsAny(m.Epoch, `"\`) {
			return // the publish script only ever writes hex epochs
		}
		if _, err := ParseMessage([]byte(full)); err != nil {
			t.Fatalf("re-parse of %s: %v", full, err)
		}
	})
}

// The encoders size their buffer once: the longest fields fit.
func TestEncodeBufferIsBigEnough(t *testing.T) {
	e := &Event{ID: "x", Tenant: "t", Domain: "d", Entity: "e", Keys: []string{"a", "b"}, SourceVersion: 1<<63 - 1, Origin: "o", TS: 1<<63 - 1, Traceparent: "tp"}
	if b := e.encode(); len(b) > sizeOf(eventFixed, e.ID, e.Tenant, e.Domain, e.Entity, e.Origin, e.Traceparent)+keysSize(e.Keys) {
		t.Errorf("an event of %d bytes outgrows its buffer", len(b))
	}
	e = &Event{ID: "x", Tenant: "t", Domain: "d", Entity: "e", WholeTag: true, SourceVersion: 1<<63 - 1, Origin: "o", TS: 1<<63 - 1, Traceparent: "tp"}
	if b := e.encode(); len(b) > sizeOf(eventFixed, e.ID, e.Tenant, e.Domain, e.Entity, e.Origin, e.Traceparent)+keysSize(e.Keys) {
		t.Errorf("a whole-tag event of %d bytes outgrows its buffer", len(b))
	}
	m := &Message{Tenant: "t", Tag: "g", Keys: []string{"a"}, Refs: []string{"d/1"}, Event: "e", Domain: "d", Origin: "o", TS: 1<<63 - 1, Traceparent: "tp"}
	if b := messageBody(m); len(b) > sizeOf(messageFixed, m.Tenant, m.Tag, m.Event, m.Domain, m.Origin, m.Traceparent)+keysSize(m.Keys)+keysSize(m.Refs) {
		t.Errorf("a message body of %d bytes outgrows its buffer", len(b))
	}
}

// An entity alone makes an entity-level event; with "whole_tag": true it is
// whole-tag all the same. Both survive a round trip, and whole_tag beside
// keys, or not a boolean, is refused naming the field.
func TestEntityLevelEvents(t *testing.T) {
	for _, tt := range []struct {
		in            string
		whole, entity bool
		err           string
	}{
		{`{"tenant":"acme","domain":"user","entity":"1042"}`, false, true, ""},
		{`{"tenant":"acme","domain":"user","entity":"1042","whole_tag":true}`, true, false, ""},
		{`{"tenant":"acme","domain":"user","entity":"1042","whole_tag":false}`, false, true, ""},
		{`{"tenant":"acme","domain":"user","whole_tag":true}`, true, false, ""},
		{`{"tenant":"acme","domain":"user","entity":"1042","keys":["a"]}`, false, false, ""},
		{`{"tenant":"acme","domain":"user","keys":["a"],"whole_tag":true}`, false, false, "whole_tag: given with keys; a whole-tag event names no keys"},
		{`{"tenant":"acme","domain":"user","whole_tag":"yes"}`, false, false, "whole_tag: must be true or false"},
	} {
		e, err := ParseEvent([]byte(tt.in))
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("ParseEvent(%s) = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || e.WholeTag != tt.whole || e.EntityLevel() != tt.entity {
			t.Errorf("ParseEvent(%s) = %+v, %v; want WholeTag %v, EntityLevel %v", tt.in, e, err, tt.whole, tt.entity)
			continue
		}
		b, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseEvent(b)
		if err != nil || back.WholeTag != e.WholeTag || back.EntityLevel() != e.EntityLevel() {
			t.Errorf("%s parsed back to %+v, %v", b, back, err)
		}
	}
}

// A message's refs are checked one by one, naming the one that is wrong.
func TestMessageRefs(t *testing.T) {
	m, err := ParseMessage([]byte(`{"tenant":"acme","tag":"a","epoch":"e","version":1,"refs":["user/1042"]}`))
	if err != nil || len(m.Refs) != 1 || m.WholeTag() {
		t.Fatalf("ParseMessage = %+v, %v; want one ref, not whole-tag", m, err)
	}
	// A domain alone is its type level; keys, refs and plain come together.
	m, err = ParseMessage([]byte(`{"tenant":"acme","tag":"a","epoch":"e","version":1,"keys":["user:1"],"refs":["user/1","user"],"plain":true}`))
	if err != nil || len(m.Keys) != 1 || len(m.Refs) != 2 || !m.Plain || m.WholeTag() {
		t.Fatalf("ParseMessage = %+v, %v; want a key, two refs and plain", m, err)
	}
	back, err := ParseMessage(append(append([]byte(`{"epoch":"e","version":1`), MessageBody(m)...), '}'))
	if err != nil || !back.Plain || len(back.Refs) != 2 || len(back.Keys) != 1 {
		t.Errorf("message %+v parsed back to %+v, %v", m, back, err)
	}
	var fe *FieldError
	for in, field := range map[string]string{
		`{"tenant":"acme","tag":"a","epoch":"e","version":1,"refs":["user/1","us er"]}`:      "refs[1]",
		`{"tenant":"acme","tag":"a","epoch":"e","version":1,"refs":["user/1","/1"]}`:         "refs[1]",
		`{"tenant":"acme","tag":"a","epoch":"e","version":1,"keys":["user:1"],"plain":true}`: "plain",
		`{"tenant":"acme","tag":"a","epoch":"e","version":1,"refs":["user"],"plain":"yes"}`:  "plain",
	} {
		if _, err := ParseMessage([]byte(in)); !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("ParseMessage(%s) = %v; want an error naming %s", in, err, field)
		}
	}
}
