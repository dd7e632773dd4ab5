// Package wire defines what travels through Redis: domain-change events on the
// ingress streams and invalidation messages on the channels, their JSON
// encoding, their validation, and the names of the streams that carry them.
package wire

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/routerd/routerd/names"
)

// DefaultPartitions is the number of ingress partitions when the matrix sets none.
const DefaultPartitions = 8

// MaxKeys bounds the keys one event or message may name.
const MaxKeys = 10000

// DefaultMaxEventBytes is the default bound on the JSON of one event: the
// router refuses (dead-letters) a larger one and the publisher does not send it.
const DefaultMaxEventBytes = 1 << 20

// MaxIDLen bounds event ids, entity ids and origins.
const MaxIDLen = 256

// ShareMark separates an event id from the key range of one share of it:
// the router records the shares of an event naming more keys than its
// channel's max_keys as <id>#keys:<from>-<to>.
const ShareMark = "#keys:"

// ReservedID says why a publisher may not supply id: it has the form of an
// id the router makes itself, and the channel's record of published ids
// would take the two for one event (docs/protocol.md 2.3). On every ingress
// that is an id holding ShareMark; on the shared ingress (own false) also
// <prefix>:ingress:… (an event published without an id), sha256:… (an id
// too long to keep) and any id holding a "/" (<publisher>/…, the ids of
// publishers' own streams, whether or not that publisher is granted yet).
// It is "" for any other id.
func ReservedID(prefix, id string, own bool) string {
	switch {
	case strings.Contains(id, ShareMark):
		return fmt.Sprintf("%q has the form reserved for the shares of an event naming more than max_keys keys (…%s…, on every ingress)", id, ShareMark)
	case own:
		return ""
	case strings.HasPrefix(id, prefix+":ingress:"):
		return fmt.Sprintf("%q has the form reserved for events published without an id (%s:ingress:…)", id, prefix)
	case strings.HasPrefix(id, "sha256:"):
		return fmt.Sprintf("%q has the form reserved for ids too long to keep (sha256:…)", id)
	case strings.Contains(id, "/"):
		return fmt.Sprintf("%q holds a \"/\": the shared ingress refuses it, the form <publisher>/… is reserved for the events of publishers' own streams", id)
	}
	return ""
}

// ErrMalformed is wrapped by every decoding and validation error of this package.
var ErrMalformed = errors.New("wire: malformed")

// FieldError names the field that was wrong and why.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Unwrap lets errors.Is(err, ErrMalformed) match.
func (e *FieldError) Unwrap() error { return ErrMalformed }

// Partition returns the ingress partition of a tenant: FNV-1a-32(tenant) mod n.
func Partition(tenant string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a() // allocates nothing: the compiler keeps it on the stack
	h.Write([]byte(tenant))
	return int(h.Sum32() % uint32(n))
}

// EventField is the field of an ingress stream entry that holds one event.
const EventField = "event"

// EventsField is the field of an ingress stream entry that holds many: a JSON
// array of events (what PublishBatch sends). An entry has one of the two.
// Each packed event is its own: its own id, validation and dead letter.
const EventsField = "events"

// MaxPacked bounds the events one entry may pack.
const MaxPacked = 10000

// Packed is one event of a packed entry: the event, or why it was refused
// and its JSON.
type Packed struct {
	Event *Event
	Err   error
	JSON  []byte // set with Err
}

// ParseEvents decodes the JSON array of a packed entry. An error means the
// array itself is wrong (not JSON, not an array, empty, too long); an event
// in it that breaks a rule gets its own Err, and the others are decoded.
func ParseEvents(data []byte) ([]Packed, error) { return decodeEvents(data) }

// ParseEventsString is ParseEvents of a string (a stream entry's value as
// go-redis returns it), without copying it to bytes first.
func ParseEventsString(data string) ([]Packed, error) { return decodeEvents(data) }

// Event is a domain-change event as published to an ingress stream.
//
// An event names the keys it invalidates (and, with its Entity, on a domain
// where the matrix turns entity_refs on, what was cached under the entity's
// reference too); or it is an entity-level event: it names its Entity and
// no keys, and invalidates what was cached under the entity's reference
// <domain>/<entity> in every tag of its domain and the tags' values cached
// without references (where the matrix turns entity_refs on for the domain;
// elsewhere the whole tags); or it is a whole-tag event: it invalidates
// every tag of its domain whole.
// That intent is explicit, never implied by an empty list: Keys (non-empty),
// WholeTag, or an Entity alone, so a caller whose computed key list came out
// empty gets an error instead of flushing whole tags. On the wire an event
// without "keys" is whole-tag unless it has an "entity"; one with an entity
// says "whole_tag": true to be whole-tag all the same. `"keys": []` is
// refused.
type Event struct {
	// ID names the change, one per change (never an entity's id): the
	// router publishes an id once per channel, so a later change with an
	// id already published is dropped as its duplicate. Publishing the same
	// change again (a retry) with its id is what makes the retry harmless.
	// Empty, the publisher library gives it one.
	ID     string   `json:"id,omitempty"`
	Tenant string   `json:"tenant"`
	Domain string   `json:"domain"`
	Entity string   `json:"entity,omitempty"`
	Keys   []string `json:"keys,omitempty"`
	// WholeTag marks an event without keys: every tag of the domain is
	// invalidated whole. It travels as the absence of "keys", and, with an
	// Entity (which alone would make an entity-level event), as
	// "whole_tag": true.
	WholeTag      bool   `json:"-"`
	SourceVersion int64  `json:"source_version,omitempty"`
	Origin        string `json:"origin,omitempty"`
	TS            int64  `json:"ts,omitempty"`
	Traceparent   string `json:"traceparent,omitempty"`
}

// Validate checks every field; the error names the first field that is wrong.
func (e *Event) Validate() error {
	if e.Tenant == "" {
		return &FieldError{"tenant", "is required"}
	}
	if err := names.Tenant(e.Tenant); err != nil {
		return &FieldError{"tenant", err.Error()}
	}
	if e.Domain == "" {
		return &FieldError{"domain", "is required"}
	}
	if err := names.Domain(e.Domain); err != nil {
		return &FieldError{"domain", err.Error()}
	}
	if err := printable("id", e.ID); err != nil {
		return err
	}
	if err := printable("entity", e.Entity); err != nil {
		return err
	}
	if err := printable("origin", e.Origin); err != nil {
		return err
	}
	if err := printable("traceparent", e.Traceparent); err != nil {
		return err
	}
	if e.SourceVersion < 0 {
		return &FieldError{"source_version", "must not be negative"}
	}
	if e.TS < 0 {
		return &FieldError{"ts", "must not be negative"}
	}
	switch {
	case e.WholeTag && len(e.Keys) > 0:
		return &FieldError{"keys", "given with WholeTag; a whole-tag event names no keys"}
	case !e.WholeTag && len(e.Keys) == 0 && e.Entity == "":
		return &FieldError{"keys", "none given; set WholeTag to invalidate every tag of the domain whole, or Entity for an entity-level event"}
	}
	return validKeys(e.Keys)
}

// EntityLevel reports whether the event names its entity and no keys, and
// is not whole-tag: it invalidates what was cached under the entity's
// reference (names.Ref(Domain, Entity)), where the domain has entity_refs.
func (e *Event) EntityLevel() bool { return e.Entity != "" && len(e.Keys) == 0 && !e.WholeTag }

// EmptyKeys is the rule an event with `"keys": []` breaks.
const EmptyKeys = "empty keys; omit keys to invalidate whole tags"

// NullKeys is the rule an event with `"keys": null` breaks: a nil list
// encodes as null, so null is as accidental as [].
const NullKeys = "null keys; omit keys to invalidate whole tags"

// Printable checks a free-text field of an event (id, entity, origin,
// traceparent): at most MaxIDLen bytes of printable ASCII. The error names
// the field.
func Printable(field, s string) error { return printable(field, s) }

func printable(field, s string) error {
	if len(s) > MaxIDLen {
		return &FieldError{field, fmt.Sprintf("longer than %d bytes", MaxIDLen)}
	}
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return &FieldError{field, "must be printable ASCII"}
		}
	}
	return nil
}

func validKeys(keys []string) error {
	if len(keys) > MaxKeys {
		return &FieldError{"keys", fmt.Sprintf("more than %d keys", MaxKeys)}
	}
	for i, k := range keys {
		if err := names.Key(k); err != nil {
			return &FieldError{fmt.Sprintf("keys[%d]", i), err.Error()}
		}
	}
	return nil
}

// ParseEvent decodes and validates an event. Unknown fields are errors, so a
// misspelt field is reported instead of silently ignored.
func ParseEvent(data []byte) (*Event, error) { return parse(data, decodeEvent[[]byte]) }

// ParseEventString is ParseEvent of a string (a stream entry's value as
// go-redis returns it), without copying it to bytes first.
func ParseEventString(data string) (*Event, error) { return parse(data, decodeEvent[string]) }

// Marshal encodes a valid event.
func (e *Event) Marshal() ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return e.encode(), nil
}

// Message is one invalidation on a channel.
type Message struct {
	Tenant  string   `json:"tenant"`
	Tag     string   `json:"tag"`
	Epoch   string   `json:"epoch"`
	Version int64    `json:"version"`
	Keys    []string `json:"keys,omitempty"`
	// Refs and Plain are documented here once; the other invalidation
	// types (tagstore.Invalidation, subscriber.Invalidation,
	// deliver.Invalidation) carry them with this meaning.
	//
	// Refs are entity references, "<domain>/<entity>" (names.Ref): drop
	// every value cached under one of them (and under the type-level
	// reference of their domains), or a domain alone: drop what is cached
	// under its type-level reference. A message with Refs and no Keys is
	// entity-level, not whole-tag. Keys and Refs may come together (an
	// event naming its entity and its keys, or merged events).
	Refs []string `json:"refs,omitempty"`
	// Plain (only with Refs): drop too every value of the tag cached
	// without refs (tagstore.Set, not SetRefs). An event naming its entity
	// and no keys does not say which plain values it changed, so they go
	// whole, as with a whole-tag event; the values cached under refs go
	// by ref.
	Plain       bool   `json:"plain,omitempty"`
	Event       string `json:"event,omitempty"`
	Domain      string `json:"domain,omitempty"`
	Origin      string `json:"origin,omitempty"`
	TS          int64  `json:"ts,omitempty"`
	Traceparent string `json:"traceparent,omitempty"`
}

// DropsPlain reports whether the message drops the tag's plain values: it
// says "plain", or it has refs and no keys (entity-level), which a router
// older than the field sent without saying so, and a channel's history may
// still hold.
func (m *Message) DropsPlain() bool { return m.Plain || (len(m.Refs) > 0 && len(m.Keys) == 0) }

// WholeTag reports whether the message invalidates its whole tag.
func (m *Message) WholeTag() bool { return len(m.Keys) == 0 && len(m.Refs) == 0 }

// Validate checks every field of a message read from a channel or history.
func (m *Message) Validate() error {
	if err := names.Tenant(m.Tenant); err != nil {
		return &FieldError{"tenant", err.Error()}
	}
	if err := names.Tag(m.Tag); err != nil {
		return &FieldError{"tag", err.Error()}
	}
	if m.Epoch == "" {
		return &FieldError{"epoch", "is required"}
	}
	if err := printable("epoch", m.Epoch); err != nil {
		return err
	}
	if m.Version < 1 {
		return &FieldError{"version", "must be at least 1"}
	}
	if m.Domain != "" {
		if err := names.Domain(m.Domain); err != nil {
			return &FieldError{"domain", err.Error()}
		}
	}
	for _, f := range [...]struct{ name, v string }{{"event", m.Event}, {"origin", m.Origin}, {"traceparent", m.Traceparent}} {
		if err := printable(f.name, f.v); err != nil {
			return err
		}
	}
	if err := validKeys(m.Keys); err != nil {
		return err
	}
	if m.Plain && len(m.Refs) == 0 {
		return &FieldError{"plain", "given without refs; a message dropping every value of its tag names no keys and no refs"}
	}
	return validRefs(m.Refs)
}

// MaxRefs bounds the refs one message may name.
const MaxRefs = MaxKeys

func validRefs(refs []string) error {
	if len(refs) > MaxRefs {
		return &FieldError{"refs", fmt.Sprintf("more than %d refs", MaxRefs)}
	}
	for i, r := range refs {
		if err := names.RefOrDomain(r); err != nil {
			return &FieldError{fmt.Sprintf("refs[%d]", i), err.Error()}
		}
	}
	return nil
}

// ParseMessage decodes and validates a channel message.
func ParseMessage(data []byte) (*Message, error) { return parse(data, decodeMessage[[]byte]) }

// ParseMessageString is ParseMessage of a string (a pub/sub payload as
// go-redis returns it), without copying it to bytes first.
func ParseMessageString(data string) (*Message, error) { return parse(data, decodeMessage[string]) }

// validator is a pointer to a T that can check itself.
type validator[T any] interface {
	*T
	Validate() error
}

// parse decodes strictly, then validates.
func parse[T any, P validator[T], D text](data D, decode func(D) (P, error)) (P, error) {
	v, err := decode(data)
	if err != nil {
		return nil, err
	}
	if err := v.Validate(); err != nil {
		return nil, err
	}
	return v, nil
}

// MessageBody is the JSON of a message without its epoch and version, which
// the publish script assigns inside Redis. It starts with ',' (or is empty)
// so the script can write `{"epoch":"…","version":N` + body + `}`.
func MessageBody(m *Message) []byte { return messageBody(m) }
