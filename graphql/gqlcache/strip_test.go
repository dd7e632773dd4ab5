package gqlcache

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/routerd/routerd/tagstore"
)

var types = map[string]string{"User": "user", "Product": "product"}

// strip takes the added fields out, keeps everything else in order, and
// reads a ref for every object of a mapped type: by id, or at the type
// level without a usable one.
func TestStrip(t *testing.T) {
	for _, tt := range []struct {
		in, out string
		refs    []tagstore.Ref
	}{
		{`{"user":{"name":"Ada","__routerd_typename":"User","__routerd_id":"1042"}}`, `{"user":{"name":"Ada"}}`,
			[]tagstore.Ref{{Domain: "user", Entity: "1042"}}},
		{`{"products":[{"z":1,"a":2,"__routerd_typename":"Product","__routerd_id":881},{"__routerd_typename":"Product","__routerd_id":"881","n":null}]}`,
			`{"products":[{"z":1,"a":2},{"n":null}]}`, []tagstore.Ref{{Domain: "product", Entity: "881"}}},
		{`{"u":{"__routerd_typename":"User","__routerd_id":null,"x":true}}`, `{"u":{"x":true}}`, []tagstore.Ref{{Domain: "user"}}},
		{`{"u":{"__routerd_typename":"User","__routerd_id":"` + string(bytes.Repeat([]byte("x"), 300)) + `"}}`, `{"u":{}}`, []tagstore.Ref{{Domain: "user"}}},
		{`{"o":{"__routerd_typename":"Order","__routerd_id":"1","s":"<&>\u00e9"}}`, `{"o":{"s":"<&>é"}}`, nil},
		{`null`, `null`, nil},
	} {
		out, refs, err := strip([]byte(tt.in), types)
		if err != nil || string(out) != tt.out || !reflect.DeepEqual(refs, tt.refs) {
			t.Errorf("strip(%s) = %s, %v, %v; want %s, %v", tt.in, out, refs, err, tt.out, tt.refs)
		}
	}
}

// FuzzStrip: whatever JSON comes in, what goes out is JSON, and a document
// without the added fields comes out as encoding/json reads it.
func FuzzStrip(f *testing.F) {
	f.Add(`{"user":{"name":"Ada","__routerd_typename":"User","__routerd_id":"1042"}}`)
	f.Add(`[1,"a",{"b":[null,true,1.5e3]}]`)
	f.Fuzz(func(t *testing.T, in string) {
		if !json.Valid([]byte(in)) {
			return
		}
		out, _, err := strip([]byte(in), types)
		if err != nil {
			if bytes.Contains([]byte(in), []byte("__routerd_")) {
				return
			}
			t.Fatalf("strip(%s): %v", in, err)
		}
		if !json.Valid(out) {
			t.Fatalf("strip(%s) = %s: not JSON", in, out)
		}
		if bytes.Contains([]byte(in), []byte("__routerd_")) {
			return
		}
		var a, b any
		_ = json.Unmarshal([]byte(in), &a)
		_ = json.Unmarshal(out, &b)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("strip(%s) = %s: changed the document", in, out)
		}
	})
}
