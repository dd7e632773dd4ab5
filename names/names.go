// Package names validates the names that reach Redis — tenants, tags, domains,
// services and cache keys — and builds and parses channel names.
//
// Every name that becomes part of a channel, a key or a Lua argument passes
// through this package first; the rules are those of DESIGN.md.
package names

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// DefaultPrefix is the channel and key prefix used when none is configured.
const DefaultPrefix = "invalidate"

// MaxKeyLen bounds the length of a cache key named in an event or message.
const MaxKeyLen = 512

// ErrInvalid is wrapped by every validation error of this package.
var ErrInvalid = errors.New("names: invalid name")

// Error says which field broke which rule.
type Error struct {
	Field string // "tenant", "tag", "domain", "service", "key", "prefix", "channel"
	Value string
	Rule  string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %q is invalid: %s", e.Field, truncate(e.Value, 80), e.Rule)
}

// Unwrap lets errors.Is(err, ErrInvalid) match.
func (e *Error) Unwrap() error { return ErrInvalid }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

const (
	tenantRule = "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
	tagRule    = "must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
	keyRule    = "must be 1 to 512 bytes of printable ASCII without spaces"
)

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// match reports whether s is one alphanumeric followed by at most max-1 bytes
// that are alphanumeric or in extra.
func match(s string, max int, extra string) bool {
	if len(s) == 0 || len(s) > max || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !alnum(c) && strings.IndexByte(extra, c) < 0 {
			return false
		}
	}
	return true
}

// ValidTenant reports whether s is a valid tenant name.
func ValidTenant(s string) bool { return match(s, 64, "._-") }

// ValidTag reports whether s is a valid tag, domain or service name.
func ValidTag(s string) bool { return match(s, 128, "._:-") }

// Tenant returns an error naming the rule when s is not a valid tenant.
func Tenant(s string) error {
	if ValidTenant(s) {
		return nil
	}
	return &Error{Field: "tenant", Value: s, Rule: tenantRule}
}

// Tag returns an error when s is not a valid tag.
func Tag(s string) error { return named("tag", s) }

// Domain returns an error when s is not a valid domain.
func Domain(s string) error { return named("domain", s) }

// Service returns an error when s is not a valid service name.
func Service(s string) error { return named("service", s) }

// Prefix returns an error when s is not a valid channel prefix. A prefix
// follows the tag rule: it may contain ':' because it is always followed by
// the tenant, which cannot.
func Prefix(s string) error { return named("prefix", s) }

func named(field, s string) error {
	if ValidTag(s) {
		return nil
	}
	return &Error{Field: field, Value: s, Rule: tagRule}
}

// Key returns an error when s cannot be used as a cache key name: empty, longer
// than MaxKeyLen, or holding spaces, control or non-ASCII bytes.
func Key(s string) error {
	if len(s) == 0 || len(s) > MaxKeyLen {
		return &Error{Field: "key", Value: s, Rule: keyRule}
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return &Error{Field: "key", Value: s, Rule: keyRule}
		}
	}
	return nil
}

// Channel returns "<prefix>:<tenant>:<tag>". The parts must already be valid.
func Channel(prefix, tenant, tag string) string {
	return prefix + ":" + tenant + ":" + tag
}

// ParseChannel splits a channel name built by Channel with the given prefix.
// It parses unambiguously because a tenant never contains ':'.
func ParseChannel(prefix, channel string) (tenant, tag string, err error) {
	rest, ok := strings.CutPrefix(channel, prefix+":")
	if !ok {
		return "", "", &Error{Field: "channel", Value: channel, Rule: "must start with " + prefix + ":"}
	}
	tenant, tag, ok = strings.Cut(rest, ":")
	if !ok {
		return "", "", &Error{Field: "channel", Value: channel, Rule: "must be <prefix>:<tenant>:<tag>"}
	}
	if err := Tenant(tenant); err != nil {
		return "", "", err
	}
	if err := Tag(tag); err != nil {
		return "", "", err
	}
	return tenant, tag, nil
}

// MetaKey is the channel's version hash, "{<channel>}:meta". The braces make it
// hash to the same cluster slot as the channel name itself.
func MetaKey(channel string) string { return "{" + channel + "}:meta" }

// HistoryKey is the channel's capped history stream.
func HistoryKey(channel string) string { return "{" + channel + "}:history" }

// EventsKey is the channel's sorted set of recently published event ids
// (score = version), which makes channel publishing idempotent per event.
func EventsKey(channel string) string { return "{" + channel + "}:events" }

// TenantTag is the cluster hash tag shared by every cache key of a tenant.
func TenantTag(tenant string) string { return "{tenant:" + tenant + "}" }

// TagSetKey is the Redis set holding the cache keys registered under a tag.
func TagSetKey(tenant, tag string) string { return "{tenant:" + tenant + "}:tag:" + tag }

// PositionKey is where a service's subscriber records how far it has applied
// a channel, as "epoch:version".
func PositionKey(tenant, service, tag string) string {
	return "{tenant:" + tenant + "}:pos:" + service + ":" + tag
}

// PositionIndexKey is the set, in a service's cache Redis, of the tenants
// whose channels the service holds positions for: a subscriber of every
// tenant finds its channels there when the bus has lost its tenant registry.
func PositionIndexKey(service string) string { return "routerd:positions:" + service }

// HistoryField is the field of a channel history entry that holds the
// message (publish.lua writes it under the same name).
const HistoryField = "m"

// SourceVersionKey is where the router keeps, for one entity of a tenant's
// domain, the newest source_version that invalidated each key (and the whole
// tag): "<prefix>:srcver:{<tenant>}:<domain>/<entity>". A domain never
// contains '/', so no two (domain, entity) pairs share a key, whatever the
// entity holds; {<tenant>} puts it in the tenant's slot.
func SourceVersionKey(prefix, tenant, domain, entity string) string {
	return prefix + ":srcver:{" + tenant + "}:" + domain + "/" + entity
}

// PublisherStream is publisher's own ingress stream of partition p,
// "<prefix>:ingress:<publisher>:{<p>}", used when the matrix grants
// publishers: a Redis ACL key pattern binds a Redis user to these streams.
// The parts must already be valid; a publisher name follows the service rule.
func PublisherStream(prefix, publisher string, p int) string {
	return prefix + ":ingress:" + publisher + ":{" + strconv.Itoa(p) + "}"
}

// PublisherStreams is the key pattern of every stream of a publisher, for a
// Redis ACL: "<prefix>:ingress:<publisher>:{*}". Names hold no glob
// characters, so only the partition is a wildcard.
func PublisherStreams(prefix, publisher string) string {
	return prefix + ":ingress:" + publisher + ":{*}"
}

// StreamPublisher returns the publisher whose stream (built by
// PublisherStream) this is, or "" for a shared ingress stream
// "<prefix>:ingress:{<p>}" and anything else.
func StreamPublisher(prefix, stream string) string {
	rest, ok := strings.CutPrefix(stream, prefix+":ingress:")
	if !ok || strings.HasPrefix(rest, "{") {
		return ""
	}
	i := strings.LastIndex(rest, ":{")
	if i <= 0 || !strings.HasSuffix(rest, "}") || !ValidTag(rest[:i]) {
		return ""
	}
	if _, err := strconv.ParseUint(rest[i+2:len(rest)-1], 10, 16); err != nil {
		return ""
	}
	return rest[:i]
}
