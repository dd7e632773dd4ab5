package wire

import (
	"fmt"
	"sync"

	"github.com/valyala/fastjson"
)

// decoder turns the JSON of an event or a message into its struct, strictly:
// the document is one object, every key is a known field spelt exactly
// (encoding/json would also take "TENANT"), no key appears twice, strings are
// strings and integers integers; null leaves a field unset (except an
// event's keys, where null is refused like []). It reuses a
// parser and keeps the values that repeat (tenant, domain, tag, …) so that
// decoding allocates little.
type decoder struct {
	p      fastjson.Parser
	intern map[string]string
	err    error
	// room, when not nil, is where the next array of strings goes if it
	// fits (an event's room for one key: decodeEvent).
	room []string
}

var decoders = sync.Pool{New: func() any { return &decoder{intern: map[string]string{}} }}

// maxInterned bounds each decoder's table of repeated values.
const maxInterned = 4096

// text is what a document comes as: go-redis's strings, or bytes.
type text interface{ string | []byte }

// parseText parses data with p, which copies it: nothing decoded points
// into data, and neither form is copied to the other first.
func parseText[T text](p *fastjson.Parser, data T) (*fastjson.Value, error) {
	if b, ok := any(data).([]byte); ok {
		return p.ParseBytes(b)
	}
	return p.Parse(string(data)) // a string already: no copy
}

// decodeObject parses data and calls field for every key, in order. field
// returns the key's field number (0 to 31), or -1 for a key it does not know.
func decodeObject[T text](data T, field func(d *decoder, key []byte, v *fastjson.Value) int) error {
	return decodeObjectRoom(data, field, nil)
}

// decodeObjectRoom is decodeObject with room for the first array of
// strings decoded, if it fits.
func decodeObjectRoom[T text](data T, field func(d *decoder, key []byte, v *fastjson.Value) int, room []string) error {
	d := decoders.Get().(*decoder)
	d.room = room
	defer func() {
		d.room = nil
		decoders.Put(d)
	}()
	d.err = nil
	v, err := parseText(&d.p, data)
	if err != nil {
		return &FieldError{"json", err.Error()}
	}
	return d.object(v, field)
}

// object calls field for every key of the object v, in order.
func (d *decoder) object(v *fastjson.Value, field func(d *decoder, key []byte, v *fastjson.Value) int) error {
	d.err = nil
	o, err := v.Object()
	if err != nil {
		return &FieldError{"json", "not a JSON object"}
	}
	var seen uint32
	o.Visit(func(k []byte, v *fastjson.Value) {
		if d.err != nil {
			return
		}
		f := field(d, k, v)
		switch {
		case f < 0:
			d.err = &FieldError{"json", fmt.Sprintf("unknown field %q", shorten(k))}
		case seen&(1<<f) != 0:
			d.err = &FieldError{"json", fmt.Sprintf("field %q appears twice", shorten(k))}
		default:
			seen |= 1 << f
		}
	})
	return d.err
}

// shorten bounds a field name quoted in an error: an error (and the dead
// letter that records it) must not grow with the input.
func shorten(k []byte) string {
	if len(k) > 64 {
		return string(k[:64]) + "…"
	}
	return string(k)
}

// str decodes a string field; intern keeps values that repeat across
// documents.
func (d *decoder) str(dst *string, name string, v *fastjson.Value, intern bool) {
	switch v.Type() {
	case fastjson.TypeNull:
		return
	case fastjson.TypeString:
	default:
		d.fail(name, "must be a string")
		return
	}
	b := v.GetStringBytes()
	if !intern {
		*dst = string(b)
		return
	}
	if s, ok := d.intern[string(b)]; ok {
		*dst = s
		return
	}
	s := string(b)
	if len(d.intern) >= maxInterned {
		clear(d.intern)
	}
	d.intern[s] = s
	*dst = s
}

// int decodes an integer field.
func (d *decoder) int(dst *int64, name string, v *fastjson.Value) {
	if v.Type() == fastjson.TypeNull {
		return
	}
	n, err := v.Int64()
	if err != nil || v.Type() != fastjson.TypeNumber {
		d.fail(name, "must be an integer")
		return
	}
	*dst = n
}

// bool decodes a boolean field.
func (d *decoder) bool(dst *bool, name string, v *fastjson.Value) {
	switch v.Type() {
	case fastjson.TypeNull:
	case fastjson.TypeTrue:
		*dst = true
	case fastjson.TypeFalse:
		*dst = false
	default:
		d.fail(name, "must be true or false")
	}
}

// strs decodes an array of strings.
func (d *decoder) strs(dst *[]string, name string, v *fastjson.Value) {
	if v.Type() == fastjson.TypeNull {
		return
	}
	items, err := v.Array()
	if err != nil {
		d.fail(name, "must be an array of strings")
		return
	}
	var out []string
	if d.room != nil && len(items) <= cap(d.room) { // not nil: "keys": [] stays an empty list, refused
		out, d.room = d.room[:len(items)], nil
	} else {
		out = make([]string, len(items))
	}
	for i, item := range items {
		if item.Type() != fastjson.TypeString {
			d.fail(fmt.Sprintf("%s[%d]", name, i), "must be a string")
			return
		}
		out[i] = string(item.GetStringBytes())
	}
	*dst = out
}

func (d *decoder) fail(field, reason string) {
	if d.err == nil {
		d.err = &FieldError{field, reason}
	}
}

// eventRoom is an event with room for one key: an event that names one
// key (most do) takes one allocation, not two.
type eventRoom struct {
	e   Event
	key [1]string
}

func decodeEvent[T text](data T) (*Event, error) {
	w := new(eventRoom)
	e := &w.e
	err := decodeObjectRoom(data, e.field, w.key[:0])
	if err == nil {
		err = e.settle()
	}
	return e, err
}

// decodeEvents decodes a JSON array of events, each on its own: an item that
// breaks a rule gets its error and its JSON, the others their event.
func decodeEvents[T text](data T) ([]Packed, error) {
	d := decoders.Get().(*decoder)
	defer decoders.Put(d)
	v, err := parseText(&d.p, data)
	if err != nil {
		return nil, &FieldError{EventsField, err.Error()}
	}
	items, err := v.Array()
	if err != nil {
		return nil, &FieldError{EventsField, "not a JSON array of events"}
	}
	if len(items) == 0 {
		return nil, &FieldError{EventsField, "an empty array; an entry carries at least one event"}
	}
	if len(items) > MaxPacked {
		return nil, &FieldError{EventsField, fmt.Sprintf("more than %d events in one entry", MaxPacked)}
	}
	out := make([]Packed, len(items))
	evs := make([]Event, len(items)) // one allocation for the entry
	for i, item := range items {
		e := &evs[i]
		err := d.object(item, e.field)
		if err == nil {
			err = e.settle()
		}
		if err == nil {
			err = e.Validate()
		}
		if err != nil {
			out[i] = Packed{Err: err, JSON: item.MarshalTo(nil)}
			continue
		}
		out[i].Event = e
	}
	return out, nil
}

// field decodes one key of an event's JSON object into e.
func (e *Event) field(d *decoder, key []byte, v *fastjson.Value) int {
	switch string(key) {
	case "id":
		d.str(&e.ID, "id", v, false)
		return 0
	case "tenant":
		d.str(&e.Tenant, "tenant", v, true)
		return 1
	case "domain":
		d.str(&e.Domain, "domain", v, true)
		return 2
	case "entity":
		d.str(&e.Entity, "entity", v, false)
		return 3
	case "keys":
		if v.Type() == fastjson.TypeNull {
			d.fail("keys", NullKeys)
			return 4
		}
		d.strs(&e.Keys, "keys", v)
		if e.Keys != nil && len(e.Keys) == 0 {
			d.fail("keys", EmptyKeys)
		}
		return 4
	case "source_version":
		d.int(&e.SourceVersion, "source_version", v)
		return 5
	case "origin":
		d.str(&e.Origin, "origin", v, true)
		return 6
	case "ts":
		d.int(&e.TS, "ts", v)
		return 7
	case "traceparent":
		d.str(&e.Traceparent, "traceparent", v, false)
		return 8
	case "whole_tag":
		d.bool(&e.WholeTag, "whole_tag", v) // settled by settle
		return 20
	default:
		return -1
	}
}

// settle derives WholeTag once an event is decoded: no "keys" is the whole
// tag, unless the event names its entity alone (entity-level)
// without saying "whole_tag": true.
func (e *Event) settle() error {
	if e.WholeTag && e.Keys != nil {
		return &FieldError{"whole_tag", "given with keys; a whole-tag event names no keys"}
	}
	e.WholeTag = e.Keys == nil && (e.Entity == "" || e.WholeTag)
	return nil
}

func decodeMessage[T text](data T) (*Message, error) {
	m := new(Message)
	err := decodeObject(data, func(d *decoder, key []byte, v *fastjson.Value) int {
		switch string(key) {
		case "tenant":
			d.str(&m.Tenant, "tenant", v, true)
			return 9
		case "tag":
			d.str(&m.Tag, "tag", v, true)
			return 10
		case "epoch":
			d.str(&m.Epoch, "epoch", v, true)
			return 11
		case "version":
			d.int(&m.Version, "version", v)
			return 12
		case "keys":
			d.strs(&m.Keys, "keys", v)
			return 13
		case "refs":
			d.strs(&m.Refs, "refs", v)
			return 21
		case "plain":
			d.bool(&m.Plain, "plain", v)
			return 22
		case "event":
			d.str(&m.Event, "event", v, false)
			return 14
		case "domain":
			d.str(&m.Domain, "domain", v, true)
			return 15
		case "origin":
			d.str(&m.Origin, "origin", v, true)
			return 16
		case "ts":
			d.int(&m.TS, "ts", v)
			return 17
		case "traceparent":
			d.str(&m.Traceparent, "traceparent", v, false)
			return 18
		default:
			return -1
		}
	})
	return m, err
}
