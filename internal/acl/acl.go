// Package acl derives, from the routing matrix, the least-privilege Redis ACL
// of each part of routerd: the commands, key patterns and channel patterns
// its role runs, and nothing else. It is pure: no Redis, no I/O; the
// `routerd acl` command prints its answer.
package acl

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
)

// Role is what a Redis user is for.
type Role string

// The roles. Router, Publisher and Subscriber users live on the bus Redis;
// Cache users on a service's cache Redis.
const (
	Router     Role = "router"     // routerd serve
	Publisher  Role = "publisher"  // the publisher library, routerd publish
	Subscriber Role = "subscriber" // the subscriber library, routerd agent: its bus side
	Cache      Role = "cache"      // the subscriber and the tag store on the service's cache Redis
)

// Roles lists every role.
var Roles = []Role{Router, Publisher, Subscriber, Cache}

// Spec says which user to describe.
type Spec struct {
	Role Role
	// Service is the matrix service of a Subscriber or Cache user (required
	// for those roles, refused for the others).
	Service string
	// Publisher, for a Publisher user, is its name in the matrix's
	// publishers section: the user may append only to that publisher's own
	// streams. Empty: the shared ingress streams.
	Publisher string
	// KeyTemplate is the cache key template of a Cache user
	// (tagstore.DefaultKeyTemplate when empty).
	KeyTemplate string
	// Cluster adds what a Redis Cluster client needs (CLUSTER SLOTS and
	// COMMAND; for a subscriber CLUSTER KEYSLOT) and, on the bus, sharded pub/sub
	// (SSUBSCRIBE, SPUBLISH) instead of PUBLISH, SUBSCRIBE and PSUBSCRIBE.
	Cluster bool
	// Durable, for a Publisher user, adds INFO and WAIT: the publisher's
	// Durable option waits for a replica.
	Durable bool
}

// Rules is what a user may do, in Redis ACL syntax: commands ("+xadd",
// "+xinfo|groups"), key patterns ("~p" read and write, "%R~p" read only,
// "%W~p" write only) and channel patterns ("&p").
type Rules struct {
	Commands []string
	Keys     []string
	Channels []string
	// Warnings are things the operator should know about these rules (a
	// pattern that also covers another tag's channels); they are not part
	// of the ACL.
	Warnings []string
}

// ErrSpec matches (errors.Is) every error about a Spec or a user name.
var ErrSpec = errors.New("acl: bad request")

// specError says what is wrong with a request, naming the flag.
type specError struct{ msg string }

func (e *specError) Error() string        { return e.msg }
func (e *specError) Is(target error) bool { return target == ErrSpec }

func specErr(format string, args ...any) error {
	return &specError{fmt.Sprintf(format, args...)}
}

// For returns the rules of the role in spec on matrix m.
func For(m *matrix.Matrix, spec Spec) (Rules, error) {
	needsService := spec.Role == Subscriber || spec.Role == Cache
	switch {
	case !slices.Contains(Roles, spec.Role):
		return Rules{}, specErr("role %q is not one of router, publisher, subscriber, cache", spec.Role)
	case needsService && spec.Service == "":
		return Rules{}, specErr("the %s role needs a service (--service)", spec.Role)
	case !needsService && spec.Service != "":
		return Rules{}, specErr("a service (--service) is only for the subscriber and cache roles, not %s", spec.Role)
	case spec.Role != Publisher && spec.Publisher != "":
		return Rules{}, specErr("a publisher (--publisher) is only for the publisher role, not %s", spec.Role)
	case spec.Role != Publisher && spec.Durable:
		return Rules{}, specErr("durable (--durable) is only for the publisher role, not %s", spec.Role)
	case spec.Role != Cache && spec.KeyTemplate != "":
		return Rules{}, specErr("a key template (--key-template) is only for the cache role, not %s", spec.Role)
	}
	if needsService {
		if _, ok := m.Services[spec.Service]; !ok {
			return Rules{}, specErr("service %q is not in the matrix (services: %s)", spec.Service, strings.Join(m.ServiceNames(), ", "))
		}
	}
	if spec.Publisher != "" {
		if _, ok := m.Publishers[spec.Publisher]; !ok {
			return Rules{}, specErr("publisher %q is not in the matrix's publishers section (publishers: %s)", spec.Publisher, orNone(m.PublisherNames()))
		}
	}
	var r Rules
	switch spec.Role {
	case Router:
		r = router(m, spec)
	case Publisher:
		r = publisher(m, spec)
	case Subscriber:
		r = subscriber(m, spec)
	case Cache:
		var err error
		if r, err = cache(m, spec); err != nil {
			return Rules{}, err
		}
	}
	if spec.Cluster {
		// A cluster client reads the slot map, and the command table to
		// find each command's keys; it follows an ASK redirect (a slot
		// being migrated) with ASKING.
		r.Commands = append(r.Commands, "cluster|slots", "command", "asking")
	}
	r.Commands = dedupe(r.Commands)
	for i, c := range r.Commands {
		r.Commands[i] = "+" + c
	}
	r.Keys, r.Channels = dedupe(r.Keys), dedupe(r.Channels)
	return r, nil
}

func orNone(list []string) string {
	if len(list) == 0 {
		return "none"
	}
	return strings.Join(list, ", ")
}

// router is what routerd serve runs on the bus: read the ingress (shared and
// every publisher's) through its consumer group, trim it, dead-letter,
// register tenants, suppress by source_version, and publish through the
// publish script, which keeps each channel's meta, history and event ids.
func router(m *matrix.Matrix, spec Spec) Rules {
	p := m.Prefix
	r := Rules{
		Commands: []string{
			// The ingress: the partition count, the streams and their group.
			"set", "exists", "scan",
			"xgroup|create", "xgroup|delconsumer", "xgroup|setid", "xreadgroup", "xack", "xautoclaim", "xclaim",
			"xinfo|groups", "xinfo|consumers", "xinfo|stream", "xpending", "xtrim",
			// Dead letters, the tenant registry (SREM: an announcement
			// that failed takes its entry back).
			"xadd", "sadd", "srem",
			// Re-driving dead letters (routerd deadletter replay too).
			"xrange", "xdel",
			// The live routers and their matrices (HSET and HDEL below).
			"hgetall", "hdel",
			// The publish, source_version and budget scripts, and what
			// they run (TIME: the clock of the shared token buckets;
			// XRANGE: a channel's chain caught up over its history).
			"evalsha", "script|load", "time",
			"hmget", "hget", "hset", "hlen", "del", "pexpire", "zadd", "zscore", "zmscore", "zcard", "zremrangebyrank", "zremrangebyscore", "xrange",
			// Durable publishing: the master's replication id, WAIT 1.
			"info", "wait",
			// Readiness: a ping of the bus every 500 ms.
			"ping",
		},
		Keys: []string{
			"~" + p + ":ingress:*", // the partition count, the shared and the publishers' streams
			"~" + names.DeadLetterStream(p),
			"~" + names.InvalidDeadLetterStream(p),
			// What each holds dead letters of (lua/deadletter.lua).
			"~" + names.DeadLetterWrittenKey(names.DeadLetterStream(p)),
			"~" + names.DeadLetterWrittenKey(names.InvalidDeadLetterStream(p)),
			"~" + names.RedriveStream(p),
			"~" + names.TenantsKey(p),
			"~" + names.RoutersKey(p),
			"~" + names.SourceVersionKey(p, "*", "*", "*", "*"),
			"~" + names.MetaKey(p+":*"),
			"~" + names.HistoryKey(p+":*"),
			"~" + names.EventsKey(p+":*"),
			"~" + names.GenerationKey(p), // set when missing (SET NX)
			"~" + names.TenantBudgetKey(p, "*"),
			"~" + names.GlobalBudgetKey(p),
		},
		// Every channel of the prefix, and the tenant announcements
		// (<prefix>:tenants), whatever tags a reload adds.
		Channels: []string{"&" + p + ":*"},
	}
	if spec.Cluster {
		r.Commands = append(r.Commands, "spublish")
	} else {
		r.Commands = append(r.Commands, "publish")
	}
	return r
}

// publisher may append to its ingress streams and read the partition count:
// no PUBLISH, no trimming, deleting or group commands.
func publisher(m *matrix.Matrix, spec Spec) Rules {
	p := m.Prefix
	streams := p + ":ingress:{*}"
	if spec.Publisher != "" {
		streams = names.PublisherStreams(p, spec.Publisher)
	}
	r := Rules{
		Commands: []string{"xadd", "get"},
		Keys:     []string{"%R~" + names.PartitionsKey(p), "%W~" + streams},
	}
	if spec.Durable {
		r.Commands = append(r.Commands, "info", "wait")
	}
	if spec.Publisher == "" && len(m.Publishers) > 0 {
		r.Warnings = append(r.Warnings, "the matrix grants publishers, but this user may append to the shared ingress, "+
			"whose events the router routes without a grant check: give each publisher a user with --publisher")
	}
	return r
}

// subscriber may listen to its service's channels and read their meta and
// history (and, for a service of every tenant, the tenant registry and
// announcements); it writes nothing on the bus.
func subscriber(m *matrix.Matrix, spec Spec) Rules {
	p := m.Prefix
	sub, _ := m.SubscriptionFor(spec.Service)
	r := Rules{Commands: []string{"hmget", "xrange", "ping", "get", "info"}, // info: the bus servers' run_ids
		Keys: []string{"%R~" + names.GenerationKey(p)}} // the bus generation, against data loss
	if spec.Cluster {
		r.Commands = append(r.Commands, "ssubscribe", "sunsubscribe", "cluster|keyslot")
	} else {
		r.Commands = append(r.Commands, "subscribe", "unsubscribe")
	}
	var channels []string
	if sub.AllTenants {
		for _, tag := range sub.Tags {
			channels = append(channels, names.Channel(p, "*", tag))
			for _, other := range m.TagNames() {
				if other != tag && strings.HasSuffix(other, ":"+tag) {
					r.Warnings = append(r.Warnings, fmt.Sprintf("the pattern %s also matches the channels of tag %q (a tenant has no ':', but a glob cannot say so)", names.Channel(p, "*", tag), other))
				}
			}
		}
		// No patterns (Redis matches each against every PUBLISH): the
		// router announces new tenants, and the subscriber subscribes to
		// their channels, which the channel globs above allow.
		r.Commands = append(r.Commands, "sscan")
		r.Keys = append(r.Keys, "%R~"+names.TenantsKey(p))
		r.Channels = append(r.Channels, "&"+names.TenantsChannel(p))
	} else {
		for _, tenant := range sub.Tenants {
			for _, tag := range sub.Tags {
				channels = append(channels, names.Channel(p, tenant, tag))
			}
		}
	}
	for _, ch := range channels {
		r.Channels = append(r.Channels, "&"+ch)
		r.Keys = append(r.Keys, "%R~"+names.MetaKey(ch), "%R~"+names.HistoryKey(ch))
	}
	if len(channels) == 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("service %q owns no tag: it has no channel to subscribe to", spec.Service))
	}
	return r
}

// cache may run the invalidation and tag-store scripts on the service's
// tenants' keys and keep its positions and position index.
func cache(m *matrix.Matrix, spec Spec) (Rules, error) {
	svc := m.Services[spec.Service]
	tmpl := spec.KeyTemplate
	if tmpl == "" {
		tmpl = tagstore.DefaultKeyTemplate
	}
	if !strings.Contains(tmpl, "${key}") {
		return Rules{}, specErr("key template %q must contain ${key}", tmpl)
	}
	if err := tenantSeparated(tmpl); err != nil {
		return Rules{}, err
	}
	tenants := svc.Tenants
	if svc.AllTenants {
		tenants = []string{"*"}
	}
	r := Rules{Commands: []string{
		// Scripts (go-redis runs EVALSHA, EVAL when the cache lost them).
		"evalsha", "eval", "script|load",
		// Positions and the position index; the tag store's reads and
		// writes, and what its scripts run.
		"get", "set", "sadd", "smembers", "srem", "scard", "spop", "unlink",
		// A position of another type deleted; a batch's order marks
		// (SISMEMBER, PEXPIRE); the expiry of reference sets (PTTL,
		// PEXPIRE, PERSIST).
		"del", "sismember", "pexpire", "pttl", "persist",
		// The delivery mark of an agent with --deliver; the presences
		// beside it expire on the cache Redis's clock (delivery.lua).
		"getdel", "time",
		// routerd compact.
		"sscan", "exists",
		// The subscriber's health: a ping every half second, and the
		// eviction policy (INFO memory: maxmemory_policy) at each check;
		// the cache's identity once a second (INFO, and INCR of its
		// identity counter).
		"ping", "info", "incr",
	}}
	for _, t := range tenants {
		tagPattern := names.TenantTag(t) // a tenant holds no glob character
		keys := templatePattern(tmpl, t)
		r.Keys = append(r.Keys, "~"+keys)
		if keys != tagPattern+":*" {
			r.Keys = append(r.Keys, "~"+tagPattern+":tag:*", "~"+tagPattern+":ref:*", "~"+tagPattern+":"+names.LeaseSegment+":*", "~"+tagPattern+":pos:"+spec.Service+":*")
		}
	}
	// The tenants it holds positions for (every subscriber with a cache
	// records them), the tenants with tagged values (the tag store records
	// them), the bus generation its last check saw, the tags and tenants
	// it last ran with, the channels whose leaving failed, and its
	// identity counters (one per cluster master: IdentityKey's hash tags).
	r.Keys = append(r.Keys, "~"+names.PositionIndexKey(spec.Service), "~"+names.CacheTenantsKey(),
		"~"+names.GenerationSeenKey(spec.Service), "~"+names.DeliveryKey(spec.Service), "~"+names.DeliveryPlainKey(spec.Service), "~"+names.InterestKey(spec.Service), "~"+names.LeavingKey(spec.Service),
		"~"+names.IdentityKey(spec.Service, ""), "~"+names.IdentityKey(spec.Service, "*"))
	return r, nil
}

// tenantSeparated refuses a key template in which a ${tenant} is not
// followed by a character that no tenant name contains: the pattern of
// tenant acme would then grant the keys of tenant acmecorp too
// ("x:${tenant}${key}" gives ~x:acme*).
func tenantSeparated(tmpl string) error {
	const tenant = "${tenant}"
	for rest := tmpl; ; {
		i := strings.Index(rest, tenant)
		if i < 0 {
			return nil
		}
		rest = rest[i+len(tenant):]
		// A tenant is letters, digits, '.', '_' and '-' (names.ValidTenant):
		// "a"+c is a tenant exactly when c may be part of one.
		if rest == "" || strings.HasPrefix(rest, "${") || names.ValidTenant("a"+rest[:1]) {
			return specErr("key template %q: ${tenant} must be followed by a character no tenant name contains "+
				"(not a letter, digit, '.', '_' or '-'; ':' or '}', say), or the keys of tenant acme would include those of tenant acmecorp", tmpl)
		}
	}
}

// templatePattern turns a key template into the glob of the keys it names
// for a tenant ("*" for any): literal parts escaped, ${key} a wildcard.
func templatePattern(tmpl, tenant string) string {
	var b strings.Builder
	for rest := tmpl; rest != ""; {
		i := strings.Index(rest, "${")
		if i < 0 {
			b.WriteString(globEscape(rest))
			break
		}
		b.WriteString(globEscape(rest[:i]))
		rest = rest[i:]
		switch {
		case strings.HasPrefix(rest, "${tenant}"):
			b.WriteString(tenant)
			rest = rest[len("${tenant}"):]
		case strings.HasPrefix(rest, "${key}"):
			b.WriteString("*")
			rest = rest[len("${key}"):]
		default:
			b.WriteString(globEscape("${"))
			rest = rest[2:]
		}
	}
	return b.String()
}

// globEscape escapes the characters Redis glob patterns treat specially.
func globEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(`*?[]\`, s[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func dedupe(list []string) []string {
	out := list[:0:0]
	seen := map[string]bool{}
	for _, s := range list {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// ValidUser reports whether name can be an ACL user name on one line:
// 1 to 128 bytes of printable ASCII without spaces.
func ValidUser(name string) error {
	if name == "" || len(name) > 128 {
		return specErr("user name must be 1 to 128 bytes, not %d", len(name))
	}
	for i := 0; i < len(name); i++ {
		if name[i] <= ' ' || name[i] > '~' {
			return specErr("user name %q must be printable ASCII without spaces", name)
		}
	}
	return nil
}

// rules returns the ACL rules, starting from nothing: reset (no password,
// off, no commands, keys or channels) and resetchannels (whatever the
// server's acl-pubsub-default).
func (r Rules) rules() []string {
	out := []string{"reset", "resetchannels"}
	out = append(out, r.Commands...)
	out = append(out, r.Keys...)
	return append(out, r.Channels...)
}

// SetUser is the ACL SETUSER command that creates or resets user with these
// rules. It sets no password and leaves the user off: the operator appends
// "on >secret".
func (r Rules) SetUser(user string) string {
	return "ACL SETUSER " + user + " " + strings.Join(r.rules(), " ")
}

// FileLine is the same user as a line of an ACL file (aclfile); the operator
// adds "on >secret" or "on #<sha256>".
func (r Rules) FileLine(user string) string {
	return "user " + user + " " + strings.Join(r.rules(), " ")
}

// Args are the arguments of ACL SETUSER after the user name, for a client
// that sends them as a command; add "on" and ">secret".
func (r Rules) Args() []string { return r.rules() }
