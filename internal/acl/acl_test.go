package acl

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/matrix"
)

const testMatrix = `
version: 1
prefix: inv
tags:
  active:      {services: [web, search]}
  electronics: {services: [search]}
  "x:active":  {services: [web]}
domains:
  user:    {tags: [active]}
  product: {tags: [electronics, active]}
services:
  web:    {tenants: all}
  search: {tenants: [acme, globex]}
publishers:
  shop: {domains: [product], tenants: [acme]}
`

func parse(t testing.TB) *matrix.Matrix {
	t.Helper()
	m, err := matrix.Parse("m", []byte(testMatrix))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Each role gets exactly these rules.
func TestRoles(t *testing.T) {
	m := parse(t)
	routerCmds := "+set +exists +scan +xgroup|create +xgroup|delconsumer +xgroup|setid +xreadgroup +xack +xautoclaim +xclaim +xinfo|groups +xinfo|consumers +xinfo|stream +xpending +xtrim +xadd +sadd +srem +xrange +xdel +hgetall +hdel +evalsha +script|load +time +hmget +hget +hset +hlen +del +pexpire +zadd +zscore +zmscore +zcard +zremrangebyrank +zremrangebyscore +info +wait +ping"
	routerKeys := "~inv:ingress:* ~inv:deadletter ~inv:deadletter:invalid ~{inv:deadletter}:written ~{inv:deadletter:invalid}:written ~inv:redrive ~inv:tenants ~inv:routers ~inv:srcver:{*}:*/*/* ~{inv:*}:meta ~{inv:*}:history ~{inv:*}:events ~inv:generation ~inv:budget:tenant:* ~inv:budget:global"
	cacheCmds := "+evalsha +eval +script|load +get +set +sadd +smembers +srem +scard +spop +unlink +del +sismember +pexpire +pttl +persist +getdel +time +sscan +exists +ping +info +incr"
	for _, tc := range []struct {
		name string
		spec Spec
		want string // commands, keys, channels
		warn int
	}{
		{"router", Spec{Role: Router}, routerCmds + " +publish " + routerKeys + " &inv:*", 0},
		{"router on a cluster", Spec{Role: Router, Cluster: true}, routerCmds + " +spublish +cluster|slots +command +asking " + routerKeys + " &inv:*", 0},
		{"publisher of the shared ingress", Spec{Role: Publisher}, "+xadd +get %R~inv:ingress:partitions %W~inv:ingress:{*}", 1},
		{"granted publisher", Spec{Role: Publisher, Publisher: "shop"}, "+xadd +get %R~inv:ingress:partitions %W~inv:ingress:shop:{*}", 0},
		{"durable publisher", Spec{Role: Publisher, Publisher: "shop", Durable: true}, "+xadd +get +info +wait %R~inv:ingress:partitions %W~inv:ingress:shop:{*}", 0},
		{"subscriber of tenants", Spec{Role: Subscriber, Service: "search"},
			"+hmget +xrange +ping +get +info +subscribe +unsubscribe " +
				"%R~inv:generation %R~{inv:acme:active}:meta %R~{inv:acme:active}:history %R~{inv:acme:electronics}:meta %R~{inv:acme:electronics}:history " +
				"%R~{inv:globex:active}:meta %R~{inv:globex:active}:history %R~{inv:globex:electronics}:meta %R~{inv:globex:electronics}:history " +
				"&inv:acme:active &inv:acme:electronics &inv:globex:active &inv:globex:electronics", 0},
		{"subscriber of every tenant", Spec{Role: Subscriber, Service: "web"},
			"+hmget +xrange +ping +get +info +subscribe +unsubscribe +sscan " +
				"%R~inv:generation %R~inv:tenants %R~{inv:*:active}:meta %R~{inv:*:active}:history %R~{inv:*:x:active}:meta %R~{inv:*:x:active}:history " +
				"&inv:tenants &inv:*:active &inv:*:x:active", 1},
		{"sharded subscriber of every tenant", Spec{Role: Subscriber, Service: "web", Cluster: true},
			"+hmget +xrange +ping +get +info +ssubscribe +sunsubscribe +cluster|keyslot +sscan +cluster|slots +command +asking " +
				"%R~inv:generation %R~inv:tenants %R~{inv:*:active}:meta %R~{inv:*:active}:history %R~{inv:*:x:active}:meta %R~{inv:*:x:active}:history " +
				"&inv:tenants &inv:*:active &inv:*:x:active", 1},
		{"cache of tenants", Spec{Role: Cache, Service: "search"}, cacheCmds + " ~{tenant:acme}:* ~{tenant:globex}:* ~routerd:positions:search ~routerd:tenants ~routerd:generation:search ~routerd:delivery:search ~routerd:delivery-plain:search ~routerd:interest:search ~routerd:leaving:search ~routerd:identity:search ~routerd:identity:search:{*}", 0},
		{"cache of every tenant", Spec{Role: Cache, Service: "web"}, cacheCmds + " ~{tenant:*}:* ~routerd:positions:web ~routerd:tenants ~routerd:generation:web ~routerd:delivery:web ~routerd:delivery-plain:web ~routerd:interest:web ~routerd:leaving:web ~routerd:identity:web ~routerd:identity:web:{*}", 0},
		{"cache with a key template", Spec{Role: Cache, Service: "search", KeyTemplate: "c[${tenant}]*${key}"}, cacheCmds +
			` ~c\[acme\]\**` + " ~{tenant:acme}:tag:* ~{tenant:acme}:ref:* ~{tenant:acme}:lease:* ~{tenant:acme}:pos:search:*" +
			` ~c\[globex\]\**` + " ~{tenant:globex}:tag:* ~{tenant:globex}:ref:* ~{tenant:globex}:lease:* ~{tenant:globex}:pos:search:* ~routerd:positions:search ~routerd:tenants ~routerd:generation:search ~routerd:delivery:search ~routerd:delivery-plain:search ~routerd:interest:search ~routerd:leaving:search ~routerd:identity:search ~routerd:identity:search:{*}", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := For(m, tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(append(append(append([]string{}, r.Commands...), r.Keys...), r.Channels...), " ")
			if got != tc.want {
				t.Errorf("rules\n%s\nwant\n%s", got, tc.want)
			}
			if len(r.Warnings) != tc.warn {
				t.Errorf("warnings %q, want %d", r.Warnings, tc.warn)
			}
			if line := r.SetUser("u"); line != "ACL SETUSER u reset resetchannels "+got {
				t.Errorf("SetUser = %q", line)
			}
			if line := r.FileLine("u"); line != "user u reset resetchannels "+got {
				t.Errorf("FileLine = %q", line)
			}
		})
	}
}

func TestBadSpecs(t *testing.T) {
	m := parse(t)
	for _, tc := range []struct {
		spec Spec
		msg  string
	}{
		{Spec{Role: "admin"}, `role "admin" is not one of`},
		{Spec{Role: Subscriber}, "needs a service"},
		{Spec{Role: Cache, Service: "ghost"}, `service "ghost" is not in the matrix (services: search, web)`},
		{Spec{Role: Router, Service: "web"}, "only for the subscriber and cache roles"},
		{Spec{Role: Subscriber, Service: "web", Publisher: "shop"}, "only for the publisher role"},
		{Spec{Role: Publisher, Publisher: "ghost"}, `publisher "ghost" is not in the matrix's publishers section (publishers: shop)`},
		{Spec{Role: Router, Durable: true}, "durable (--durable) is only for the publisher role"},
		{Spec{Role: Router, KeyTemplate: "${key}"}, "only for the cache role"},
		{Spec{Role: Cache, Service: "web", KeyTemplate: "k:${tenant}"}, "must contain ${key}"},
		// ~x:acme* would grant tenant acme the keys of acmecorp too.
		{Spec{Role: Cache, Service: "web", KeyTemplate: "x:${tenant}${key}"}, `key template "x:${tenant}${key}": ${tenant} must be followed by a character no tenant name contains`},
		{Spec{Role: Cache, Service: "web", KeyTemplate: "x:${tenant}.${key}"}, "no tenant name contains"},
		{Spec{Role: Cache, Service: "web", KeyTemplate: "${key}:${tenant}"}, "no tenant name contains"},
	} {
		_, err := For(m, tc.spec)
		if err == nil || !errors.Is(err, ErrSpec) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: %v, want %q", tc.spec, err, tc.msg)
		}
	}
	for _, u := range []string{"", "a b", "é", strings.Repeat("u", 129)} {
		if err := ValidUser(u); !errors.Is(err, ErrSpec) {
			t.Errorf("ValidUser(%q) = %v", u, err)
		}
	}
}

// Redis takes every role's rules, as ACL SETUSER arguments and as aclfile
// lines.
func TestRedisAcceptsTheRules(t *testing.T) {
	m := parse(t)
	var lines []string
	c := redistest.Start(t).Client(t)
	for i, spec := range []Spec{
		{Role: Router}, {Role: Router, Cluster: true}, {Role: Publisher, Publisher: "shop", Durable: true},
		{Role: Subscriber, Service: "web"}, {Role: Subscriber, Service: "search", Cluster: true}, {Role: Cache, Service: "search", KeyTemplate: "c[${tenant}]*${key}"},
	} {
		r, err := For(m, spec)
		if err != nil {
			t.Fatal(err)
		}
		user := "u" + string(rune('a'+i))
		args := []any{"acl", "setuser", user}
		for _, a := range r.Args() {
			args = append(args, a)
		}
		if err := c.Do(context.Background(), args...).Err(); err != nil {
			t.Errorf("%+v: ACL SETUSER: %v", spec, err)
		}
		lines = append(lines, r.FileLine(user)+" on >secret")
	}
	file := filepath.Join(t.TempDir(), "users.acl")
	if err := os.WriteFile(file, []byte(strings.Join(append(lines, "user default on nopass ~* &* +@all"), "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := redistest.Start(t, "--aclfile", file)
	users, err := srv.Client(t).Do(context.Background(), "acl", "users").StringSlice()
	if err != nil || len(users) != len(lines)+1 {
		t.Errorf("ACL USERS from the file: %v %v", users, err)
	}
}

func TestTemplatePattern(t *testing.T) {
	for _, tc := range []struct{ tmpl, tenant, want string }{
		{"{tenant:${tenant}}:${key}", "acme", "{tenant:acme}:*"},
		{"{tenant:${tenant}}:${key}", "*", "{tenant:*}:*"},
		{"cache:${key}", "acme", "cache:*"},
		{`a?b[c]\${x}${key}`, "t", `a\?b\[c\]\\${x}*`},
		{"${tenant}:${tenant}:${key}", "t", "t:t:*"},
	} {
		if got := templatePattern(tc.tmpl, tc.tenant); got != tc.want {
			t.Errorf("templatePattern(%q, %q) = %q, want %q", tc.tmpl, tc.tenant, got, tc.want)
		}
	}
}

// A template's literal text never becomes a wildcard: the only unescaped
// glob characters of the pattern are the stars of ${key}.
func FuzzTemplatePattern(f *testing.F) {
	f.Add("{tenant:${tenant}}:${key}")
	f.Add(`*?[]\${key}${`)
	f.Fuzz(func(t *testing.T, tmpl string) {
		p := templatePattern(tmpl, "acme")
		stars := 0
		for i := 0; i < len(p); i++ {
			switch p[i] {
			case '\\':
				i++ // the escaped character
			case '*':
				stars++
			case '?', '[', ']':
				t.Fatalf("templatePattern(%q) = %q has an unescaped %q", tmpl, p, p[i])
			}
		}
		if want := strings.Count(tmpl, "${key}"); stars != want {
			t.Fatalf("templatePattern(%q) = %q has %d wildcards, want %d", tmpl, p, stars, want)
		}
	})
}

func TestRulesAreCopies(t *testing.T) {
	m := parse(t)
	a, _ := For(m, Spec{Role: Router})
	a.Commands[0] = "+flushall"
	b, _ := For(m, Spec{Role: Router})
	if reflect.DeepEqual(a.Commands, b.Commands) {
		t.Errorf("rules share memory between calls")
	}
}

// Every command a script calls is one its role may run: inside a script a
// refused command fails the whole call ("The user executing the script
// can't run this command"), as the cache role's missing DEL, SISMEMBER,
// PEXPIRE, PTTL and PERSIST did (a position of the wrong type was never
// repaired, bursts on entity_refs channels failed, SetRefs failed).
func TestRolesRunEveryCommandOfTheirScripts(t *testing.T) {
	m := parse(t)
	call := regexp.MustCompile(`redis\.p?call\('([A-Za-z]+)'(?:, '([A-Za-z]+)')?`)
	for spec, scripts := range map[Spec][]string{
		{Role: Router}:                {"publish.lua", "srcver.lua", "budget.lua", "tenants.lua", "read.lua", "claim.lua", "unread.lua", "deadletter.lua", "forget.lua"},
		{Role: Cache, Service: "web"}: {"invalidate.lua", "invalidate_keys.lua", "chunk.lua", "set.lua", "compact.lua", "lease.lua", "release.lua", "index.lua", "generation.lua", "delivery.lua"},
	} {
		role := spec.Role
		r, err := For(m, spec)
		if err != nil {
			t.Fatal(err)
		}
		may := map[string]bool{}
		for _, c := range r.Commands {
			may[strings.TrimPrefix(c, "+")] = true
		}
		for _, name := range scripts {
			src, ok := lua.Sources()[name]
			if !ok {
				t.Fatalf("no script %s", name)
			}
			for _, m := range call.FindAllStringSubmatch(src, -1) {
				cmd, sub := strings.ToLower(m[1]), strings.ToLower(m[2])
				if !may[cmd] && (sub == "" || !may[cmd+"|"+sub]) {
					t.Errorf("%s runs %s, which the %s role may not", name, m[1], role)
				}
			}
		}
	}
}

// A key template accepted for the cache role never lets one tenant's
// pattern match another tenant's keys, even a tenant whose name starts
// with the first one's.
func FuzzTenantSeparated(f *testing.F) {
	f.Add("{tenant:${tenant}}:${key}", "user:1")
	f.Add("x:${tenant}${key}", "corp:1")
	f.Add("${key}:${tenant}", "a")
	f.Add("c[${tenant}]*${key}", "*")
	f.Fuzz(func(t *testing.T, tmpl, key string) {
		if !utf8.ValidString(tmpl+key) || !strings.Contains(tmpl, "${key}") || !strings.Contains(tmpl, "${tenant}") || tenantSeparated(tmpl) != nil {
			return
		}
		glob := globRegexp(templatePattern(tmpl, "acme"))
		for _, other := range []string{"acmecorp", "acme.eu", "acme-2", "xacme", "acm"} {
			full := strings.ReplaceAll(strings.ReplaceAll(tmpl, "${tenant}", other), "${key}", key)
			if glob.MatchString(full) {
				t.Fatalf("template %q: the pattern of tenant acme matches %q, a key of tenant %q", tmpl, full, other)
			}
		}
	})
}

// globRegexp is a Redis glob of only escapes and stars (templatePattern's)
// as a regular expression.
func globRegexp(glob string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString(`(?s)^`)
	for i := 0; i < len(glob); i++ {
		switch {
		case glob[i] == '\\' && i+1 < len(glob):
			i++
			b.WriteString(regexp.QuoteMeta(glob[i : i+1]))
		case glob[i] == '*':
			b.WriteString(`.*`)
		default:
			b.WriteString(regexp.QuoteMeta(glob[i : i+1]))
		}
	}
	b.WriteString(`$`)
	return regexp.MustCompile(b.String())
}
