// Package names validates the names that reach Redis — tenants, tags, domains,
// services and cache keys — and builds and parses channel names.
//
// Every name that becomes part of a channel, a key or a Lua argument passes
// through this package first; the rules are those of docs/protocol.md.
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

	keyPrefixRule = "must not carry the tenant's hash tag: give the key without the {tenant:…}: prefix, which the key template adds"
	reservedRule  = "its first segment %q is reserved for routerd's own keys (tag sets, positions, entity references, leases, …); the first segments tag, pos, ref, lease and routerd are reserved"
)

// tenantHashTag starts every key of a tenant under the default key template,
// tag sets and positions included.
const tenantHashTag = "{tenant:"

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
// than MaxKeyLen, holding spaces, control or non-ASCII bytes, carrying the
// {tenant:…}: prefix (which the key template adds), or starting with a
// segment reserved for routerd's own keys (ReservedSegments), so that no key
// a publisher names can ever be a tag set, a position or any other key
// routerd keeps.
func Key(s string) error {
	if len(s) == 0 || len(s) > MaxKeyLen {
		return &Error{Field: "key", Value: s, Rule: keyRule}
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return &Error{Field: "key", Value: s, Rule: keyRule}
		}
	}
	if strings.HasPrefix(s, tenantHashTag) {
		return &Error{Field: "key", Value: s, Rule: keyPrefixRule}
	}
	first, _, _ := strings.Cut(s, ":")
	for _, r := range ReservedSegments {
		if first == r {
			return &Error{Field: "key", Value: s, Rule: fmt.Sprintf(reservedRule, r)}
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
func TenantTag(tenant string) string { return tenantHashTag + tenant + "}" }

// TagSetKey is the Redis set holding the cache keys registered under a tag
// without entity references (tagstore.Set): its plain values.
func TagSetKey(tenant, tag string) string { return TenantTag(tenant) + ":tag:" + tag }

// TagRefsSuffix ends the name of a tag's ref-registered set (TagRefsKey).
const TagRefsSuffix = "#refs"

// TagRefsKey is the Redis set holding the cache keys registered under a tag
// and under entity references (tagstore.SetRefs):
// "{tenant:<t>}:tag:<tag>#refs". A whole-tag invalidation empties it with
// the tag set; an entity-level one drops its values by ref, and the tag
// set's plain values whole. No tag holds '#', so it never names a tag set.
func TagRefsKey(tenant, tag string) string { return TagSetKey(tenant, tag) + TagRefsSuffix }

// PositionKey is where a service's subscriber records how far it has applied
// a channel, as "epoch:version".
func PositionKey(tenant, service, tag string) string {
	return TenantTag(tenant) + ":pos:" + PositionName(service, tag)
}

// PositionName is the part of a position key that names the service and the
// tag. Both may hold ':', so two pairs can share one (service a on tag b:c,
// service a:b on tag c): a matrix refuses that.
func PositionName(service, tag string) string { return service + ":" + tag }

// ReservedSegments are the first ':'-separated segments a cache key may not
// have: under the tenant's hash tag, "tag", "pos", "ref" and "lease" start
// tag sets, positions, entity reference sets (RefKey) and leases
// (LeaseKey); "routerd" starts the keys routerd keeps outside any tenant
// (PositionIndexKey). Key refuses them, so that with the default key template
// no key can name one of these keys, and with a template of "${key}" alone
// neither.
var ReservedSegments = []string{"tag", "pos", "ref", LeaseSegment, "routerd"}

// LeaseSegment is the segment after a tenant's hash tag that starts its
// leases (LeaseKey); lua/set.lua checks it too.
const LeaseSegment = "lease"

// LeaseKey is the lease of a cache key, given by its full name as the key
// template renders it: "{tenant:<t>}:lease:<cache key>", a string holding
// the token of the one Fetch that may fill the key, with a time to live
// (docs/protocol.md). It lives in the tenant's slot whatever the template,
// and lua/set.lua checks that its KEYS[2] is named so from KEYS[1]. No
// cache key can be named so (Key refuses the first segment "lease", CacheKey
// a rendered "{tenant:…}:lease:…").
func LeaseKey(tenant, cacheKey string) string {
	return TenantTag(tenant) + ":" + LeaseSegment + ":" + cacheKey
}

// PositionIndexKey is a Redis set, in a service's cache Redis, of the tenants
// for which that service holds positions: "routerd:positions:<service>". It
// lives outside every tenant's hash tag; no cache key can be named so,
// because Key refuses the first segment "routerd" and CacheKey refuses any
// rendered key starting with "routerd:". The service must already be valid.
func PositionIndexKey(service string) string { return "routerd:positions:" + service }

// CacheKey returns an error when full, a cache key name as a key template
// rendered it, is or could be a key routerd keeps in a cache Redis: a tag set,
// a position, a reference set or a lease of any tenant ({tenant:<t>}:tag:…,
// {tenant:<t>}:pos:…, {tenant:<t>}:ref:…, {tenant:<t>}:lease:…) or a
// key starting with "routerd:". Key already rules these out for the default
// template; a custom template (say "{tenant:${tenant}}:t${key}") needs this
// check of what it renders.
func CacheKey(full string) error {
	if internal(full) {
		return &Error{Field: "key", Value: full, Rule: "the key template renders it as a key routerd keeps for itself (a tag set, a position, an entity reference set, a lease or routerd:…)"}
	}
	return nil
}

// internal reports whether full has the shape of a key routerd keeps in a
// cache Redis, whatever the tenant, tag or service in it.
func internal(full string) bool {
	if strings.HasPrefix(full, "routerd:") {
		return true
	}
	rest, ok := strings.CutPrefix(full, tenantHashTag)
	if !ok {
		return false
	}
	i := strings.IndexByte(rest, '}')
	if i < 0 {
		return false
	}
	rest = rest[i+1:]
	return strings.HasPrefix(rest, ":tag:") || strings.HasPrefix(rest, ":pos:") || strings.HasPrefix(rest, ":ref:") ||
		strings.HasPrefix(rest, ":"+LeaseSegment+":")
}

// BatchMarkKey is where an invalidation script marks a channel of a service
// for the rest of one pipeline when it defers a whole tag above the
// cardinality guard, so that the channel's later invalidations in that
// pipeline wait for it: "{tenant:<t>}:pos:<service>:<tag>#batch", a set of
// pipeline tokens that expires a minute after it is written. It shares the
// position's slot and namespace; no position key ends in "#batch", as no tag
// holds '#'.
func BatchMarkKey(tenant, service, tag string) string {
	return PositionKey(tenant, service, tag) + "#batch"
}

// DeliveryKey is the string, in a service's cache Redis, that an agent
// delivering to the service's process (routerd agent --deliver) sets to
// "clean" when it stops with every invalidation it applied delivered, and
// to a token of its run while it runs (which any other subscriber starting
// on the cache Redis takes away: the agent's stop then leaves no mark). A
// start that does not find "clean" there delivers a reset first: the
// cache's positions may be ahead of what the process was given.
func DeliveryKey(service string) string { return "routerd:delivery:" + service }

// DeliveryPlainKey is the set, in a service's cache Redis, of the
// subscribers that apply to it other than an agent with --deliver (agents
// without it, services embedding the subscriber with a Cache), each member
// "<id>@<unix seconds it expires>", renewed while the subscriber runs: such
// a subscriber moves the cache's positions without telling the process, so
// an agent with --deliver that stops while one is there leaves no clean
// mark (DeliveryKey), and one that starts while one is there delivers a
// reset although it found the mark.
func DeliveryPlainKey(service string) string { return "routerd:delivery-plain:" + service }

// TenantBudgetKey is the hash, on the bus, of a tenant's shared token
// bucket (the matrix's budgets.tenant), which every router draws on.
func TenantBudgetKey(prefix, tenant string) string { return prefix + ":budget:tenant:" + tenant }

// GlobalBudgetKey is the hash, on the bus, of the global shared token
// bucket (the matrix's budgets.global), which every router draws on.
func GlobalBudgetKey(prefix string) string { return prefix + ":budget:global" }

// HistoryField is the field of a channel history entry that holds the
// message (publish.lua writes it under the same name).
const HistoryField = "m"

// SourceVersionKey is where the router keeps, for one entity of a tenant's
// domain, the newest source_version that invalidated each key (and the whole
// tag): "<prefix>:srcver:{<tenant>}:<domain>/<publisher>/<entity>", where
// publisher is the granted publisher whose own streams the events came on,
// and empty for the shared ingress ("…:user//42"). Neither a domain nor a
// publisher contains '/' and a publisher is never empty, so the key parses
// back to one (domain, publisher, entity): whatever an entity on the shared
// ingress spells ("profile-svc/42"), its key starts "<domain>//", never
// "<domain>/<publisher>/", and no publisher's events share another's or the
// shared ingress's suppression. {<tenant>} puts it in the tenant's slot.
func SourceVersionKey(prefix, tenant, domain, publisher, entity string) string {
	return prefix + ":srcver:{" + tenant + "}:" + domain + "/" + publisher + "/" + entity
}

// MaxPartitions bounds the number of ingress partitions: partition numbers
// are 0 to MaxPartitions-1.
const MaxPartitions = 1024

// IngressStream is the ingress stream of partition p:
// "<prefix>:ingress:{<p>}". The braces are the cluster hash tag, which
// spreads the partitions over the slots.
func IngressStream(prefix string, p int) string {
	return prefix + ":ingress:{" + strconv.Itoa(p) + "}"
}

// PartitionsKey holds the number of ingress partitions the router reads.
func PartitionsKey(prefix string) string { return prefix + ":ingress:partitions" }

// DeadLetterStream holds the events the router refused that can be
// re-driven after a fix (unknown_domain, not_granted, poison), with the
// reason.
func DeadLetterStream(prefix string) string { return prefix + ":deadletter" }

// InvalidDeadLetterStream, "<prefix>:deadletter:invalid", holds the entries
// the router refused that can never be re-driven (malformed, too_large),
// capped apart: a flood of junk from one client cannot trim another's
// dead letters out of DeadLetterStream.
func InvalidDeadLetterStream(prefix string) string { return prefix + ":deadletter:invalid" }

// DeadLetterWrittenKey, "{<dead-letter stream>}:written", records which
// entries (and events of packed entries) have a dead letter in the
// dead-letter stream deadLetters (DeadLetterStream or
// InvalidDeadLetterStream): a sorted set of "<stream> <entry id> <index>"
// by the dead letter's time, kept while the stream holds the letter
// (trimmed by time, not by count: MAXLEN ~ keeps whole nodes past its
// cap), so that a batch routed again (its router killed before it
// acknowledged the batch, a lost reply) writes no second dead letter. Its hash tag is the whole name
// of the stream, so both are in one slot.
func DeadLetterWrittenKey(deadLetters string) string { return "{" + deadLetters + "}:written" }

// RedriveStream holds dead-lettered events sent back to the routers (routerd
// deadletter replay, or a router that knows the domain an older matrix did
// not): "<prefix>:redrive", read by every router like an ingress partition.
// Only routers write it: it is outside the ingress a publisher may append to.
func RedriveStream(prefix string) string { return prefix + ":redrive" }

// RoutersKey is the hash of the live routers, "<prefix>:routers": one
// field per router (its consumer name), whose value is the digest of the
// router's matrix and when the entry expires. A router whose matrix differs
// from another live router's hands every event it reads to it too (see
// router/handover.go). Only routers write it; its two segments name no
// channel, no stream of the ingress and no key of a tenant.
func RoutersKey(prefix string) string { return prefix + ":routers" }

// TenantsKey is the set of tenants the router has routed events for.
func TenantsKey(prefix string) string { return prefix + ":tenants" }

// TenantsChannel is where the router announces a tenant it routes for the
// first time, for subscribers of every tenant, which subscribe to exact
// channels (a pattern taxes every PUBLISH; sharded pub/sub has none). It
// has the registry's name, so on a cluster both are in one slot.
func TenantsChannel(prefix string) string { return prefix + ":tenants" }

// IngressPattern is the SCAN pattern of every key under the prefix's
// ingress: the partition streams, and whatever else a publisher wrote there.
func IngressPattern(prefix string) string { return prefix + ":ingress:*" }

// ParseIngressStream returns the partition of a stream named by
// IngressStream with the given prefix. Any other name — no braces
// ("invalidate:ingress:7"), a partition with leading zeros or out of range,
// anything else after the prefix — is an error naming the rule: routers read
// no such stream.
func ParseIngressStream(prefix, stream string) (int, error) {
	rest, ok := strings.CutPrefix(stream, prefix+":ingress:")
	if !ok {
		return 0, &Error{Field: "stream", Value: stream, Rule: "must start with " + prefix + ":ingress:"}
	}
	rule := fmt.Sprintf("must be %s:ingress:{<p>}, p a partition number from 0 to %d in braces, without leading zeros", prefix, MaxPartitions-1)
	digits, ok := strings.CutPrefix(rest, "{")
	if ok {
		digits, ok = strings.CutSuffix(digits, "}")
	}
	p, err := strconv.Atoi(digits)
	if !ok || err != nil || p < 0 || p >= MaxPartitions || strconv.Itoa(p) != digits {
		return 0, &Error{Field: "stream", Value: stream, Rule: rule}
	}
	return p, nil
}

// GenerationKey is the bus's generation, "<prefix>:generation": a random id
// the router sets when it is missing. It is gone with the bus's data, so a
// subscriber that finds another one (or none) than it last saw knows the bus
// lost its data since, even on channels it never held a position on.
func GenerationKey(prefix string) string { return prefix + ":generation" }

// IdentityKey is a counter in a service's cache Redis that its
// subscribers increment at every read of the cache's identity
// (subscriber/identity.go): "routerd:identity:<service>" on one server,
// and on a cluster one per master, "routerd:identity:<service>:{<tag>}"
// with a hash tag that puts it on that master's slots. A count that does
// not grow from one read to the next tells that the server's data went
// back while the server stayed the same (a FLUSHALL after CONFIG
// RESETSTAT, a DEBUG RELOAD of an older dump), which its run_id and flush
// counts do not.
func IdentityKey(service, tag string) string {
	if tag == "" {
		return "routerd:identity:" + service
	}
	return "routerd:identity:" + service + ":{" + tag + "}"
}

// GenerationSeenKey is where a service's subscriber keeps, in its cache
// Redis, the bus generation its last complete check saw:
// "routerd:generation:<service>" (the routerd: namespace no cache key can
// name).
func GenerationSeenKey(service string) string { return "routerd:generation:" + service }

// InterestKey is where a service's subscriber keeps, in its cache Redis, the
// tags and tenants of the matrix it last ran with:
// "routerd:interest:<service>" (the routerd: namespace no cache key can
// name). A subscriber started on a matrix that takes channels from the
// service drops their tags, as a running one does on a reload.
func InterestKey(service string) string { return "routerd:interest:" + service }

// LeavingKey is the set, in a service's cache Redis, of the channels a
// matrix took from the service whose leaving (dropping the whole tag,
// position lost) failed: "routerd:leaving:<service>". Whichever instance
// owns the channel's tenant leaves it again — after a restart too, on any
// matrix — and takes it out.
func LeavingKey(service string) string { return "routerd:leaving:" + service }

// CacheTenantsKey is the set, in a cache Redis, of the tenants that have
// tagged values there: "routerd:tenants". The tag store adds a tenant before
// its first value; a subscriber of every tenant reads it.
func CacheTenantsKey() string { return "routerd:tenants" }

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
	rest, ok := strings.CutPrefix(stream, prefix)
	if ok {
		rest, ok = strings.CutPrefix(rest, ":ingress:") // not prefix+":ingress:": no string made per call
	}
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

// MaxEntityLen bounds an entity id (as wire.MaxIDLen bounds ids).
const MaxEntityLen = 256

// refRule is the rule an entity reference breaks.
const refRule = "must be <domain>/<entity>: a valid domain, '/', and an entity of 1 to 256 bytes of printable ASCII"

// Ref names what a cached value was derived from, for entity-level
// invalidation: "<domain>/<entity>" ("user/1042"), the entity of a domain.
// A domain never holds '/', so the ref splits back at its first '/' into
// exactly one (domain, entity) pair, whatever the entity holds (it may hold
// ':' or '/'). The domain and entity must already be valid (RefError).
func Ref(domain, entity string) string { return domain + "/" + entity }

// ParseRef splits a ref made by Ref, checking both parts: the domain by the
// domain rule, the entity as 1 to MaxEntityLen bytes of printable ASCII.
func ParseRef(ref string) (domain, entity string, err error) {
	domain, entity, ok := strings.Cut(ref, "/")
	if !ok || !ValidTag(domain) || len(entity) == 0 || len(entity) > MaxEntityLen {
		return "", "", &Error{Field: "ref", Value: ref, Rule: refRule}
	}
	for i := 0; i < len(entity); i++ {
		if entity[i] < ' ' || entity[i] > '~' {
			return "", "", &Error{Field: "ref", Value: ref, Rule: refRule}
		}
	}
	return domain, entity, nil
}

// RefOrDomain checks what a message may name as a ref: an entity reference
// (ParseRef), or a domain alone, the domain's type-level reference.
func RefOrDomain(ref string) error {
	if !strings.Contains(ref, "/") {
		if !ValidTag(ref) {
			return &Error{Field: "ref", Value: ref, Rule: refRule + ", or a domain alone (its type level)"}
		}
		return nil
	}
	_, _, err := ParseRef(ref)
	return err
}

// RefKey is the Redis set, in a tenant's slot, of the full names of the
// cache keys registered under an entity reference:
// "{tenant:<t>}:ref:<domain>/<entity>" for a ref made by Ref. Given a
// domain alone it is the domain's type-level reference set,
// "{tenant:<t>}:ref:<domain>": where a value is registered that touched more
// entities of the domain than the guard allows, and which every
// entity-level invalidation of the domain empties too. The two never
// collide, as only the first holds '/'. The parts must already be valid; no
// cache key can be named so (Key refuses the first segment "ref").
func RefKey(tenant, ref string) string { return TenantTag(tenant) + ":ref:" + ref }
