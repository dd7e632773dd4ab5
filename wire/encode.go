package wire

import (
	"encoding/json"
	"strconv"
)

// object appends the fields of a JSON object, in the order written, without
// reflection: events and messages are encoded once per event on the hot
// path. It produces what encoding/json would for the same struct, except that
// it leaves <, > and & as they are (encoding/json escapes them for HTML).
type object struct {
	b     []byte
	first bool
}

func newObject(size int) object {
	o := object{b: make([]byte, 0, size), first: true}
	o.b = append(o.b, '{')
	return o
}

func (o *object) key(name string) {
	if !o.first {
		o.b = append(o.b, ',')
	}
	o.first = false
	o.b = append(o.b, '"')
	o.b = append(o.b, name...)
	o.b = append(o.b, '"', ':')
}

// str appends a string field; omitEmpty leaves out "".
func (o *object) str(name, v string, omitEmpty bool) {
	if v == "" && omitEmpty {
		return
	}
	o.key(name)
	o.b = appendString(o.b, v)
}

// int appends an integer field; omitEmpty leaves out 0.
func (o *object) int(name string, v int64, omitEmpty bool) {
	if v == 0 && omitEmpty {
		return
	}
	o.key(name)
	o.b = strconv.AppendInt(o.b, v, 10)
}

// strs appends an array of strings, left out when empty.
func (o *object) strs(name string, v []string) {
	if len(v) == 0 {
		return
	}
	o.key(name)
	o.b = append(o.b, '[')
	for i, s := range v {
		if i > 0 {
			o.b = append(o.b, ',')
		}
		o.b = appendString(o.b, s)
	}
	o.b = append(o.b, ']')
}

// flag appends a true boolean field when set.
func (o *object) flag(name string, set bool) {
	if set {
		o.key(name)
		o.b = append(o.b, "true"...)
	}
}

func (o *object) close() []byte { return append(o.b, '}') }

// appendString appends s as a JSON string. Printable ASCII other than " and
// \ (every validated name and id) stands as it is; anything else goes
// through encoding/json.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c > '~' || c == '"' || c == '\\' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// sizeOf is what an object takes at most: fixed (every field name, its
// punctuation and the integers at their longest) plus the string values, so
// the buffer is allocated once.
func sizeOf(fixed int, fields ...string) int {
	n := fixed
	for _, f := range fields {
		n += len(f)
	}
	return n
}

// The fixed parts of sizeOf: names + 6 bytes of punctuation a field +
// integers of 19 digits.
const (
	eventFixed   = 57 + 9 + 4 + 10*6 + 2*19
	messageFixed = 43 + 4 + 5 + 4 + 10*6 + 19 // refs; plain and its true
)

func keysSize(keys []string) int {
	n := 0
	for _, k := range keys {
		n += len(k) + 3
	}
	return n
}

func (e *Event) encode() []byte {
	o := newObject(sizeOf(eventFixed, e.ID, e.Tenant, e.Domain, e.Entity, e.Origin, e.Traceparent) + keysSize(e.Keys))
	o.str("id", e.ID, true)
	o.str("tenant", e.Tenant, false)
	o.str("domain", e.Domain, false)
	o.str("entity", e.Entity, true)
	o.strs("keys", e.Keys)
	o.flag("whole_tag", e.WholeTag && e.Entity != "") // without an entity the absence of keys says it
	o.int("source_version", e.SourceVersion, true)
	o.str("origin", e.Origin, true)
	o.int("ts", e.TS, true)
	o.str("traceparent", e.Traceparent, true)
	return o.close()
}

// messageBody is MessageBody's encoding: the object without epoch and
// version, as ",…" without the closing brace.
func messageBody(m *Message) []byte {
	o := newObject(sizeOf(messageFixed, m.Tenant, m.Tag, m.Event, m.Domain, m.Origin, m.Traceparent) + keysSize(m.Keys) + keysSize(m.Refs))
	o.str("tenant", m.Tenant, false)
	o.str("tag", m.Tag, false)
	o.strs("keys", m.Keys)
	o.strs("refs", m.Refs)
	o.flag("plain", m.Plain)
	o.str("event", m.Event, true)
	o.str("domain", m.Domain, true)
	o.str("origin", m.Origin, true)
	o.int("ts", m.TS, true)
	o.str("traceparent", m.Traceparent, true)
	o.b[0] = ','
	return o.b
}
