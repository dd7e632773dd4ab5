package cli

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/tagstore"
)

// -h is a request, not a mistake: every command exits 0 with its usage on
// stdout, so `routerd publish -h | less` shows it.
func TestHelpExitsZero(t *testing.T) {
	cases := [][]string{{"-h"}, {"--help"}, {"help"}, {"help", "serve"}, {"help", "-h"}, {"help", "--help"}, {"matrix", "-h"}, {"matrix", "diff", "-h"}}
	for _, c := range commands {
		cases = append(cases, []string{c.name, "-h"}, []string{c.name, "--help"})
	}
	for _, args := range cases {
		code, out, errs := runCLI(t, args...)
		if code != 0 || errs != "" || !strings.Contains(out, "Usage") && !strings.Contains(out, "routerd: tag-based") {
			t.Errorf("%v: exit %d, want 0 with the usage on stdout and nothing on stderr:\nstdout: %s\nstderr: %s", args, code, out, errs)
		}
	}
}

// Bad usage exits 2 in every command, says what is wrong after the
// command's name, and writes nothing to stdout.
func TestUsageErrorsExitTwo(t *testing.T) {
	m := writeFile(t, grantsYAML)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{}, "Usage:"},
		{[]string{"validate"}, "routerd validate: want one matrix file, got none"},
		{[]string{"validate", "a.yaml", "b.yaml"}, `routerd validate: want one matrix file, got 2: ["a.yaml" "b.yaml"]`},
		{[]string{"matrix", "diff", "a.yaml"}, `routerd matrix diff: want two matrix files, the old and the new, got 1: ["a.yaml"]`},
		{[]string{"route", "--matrix", m, "--domain", "user"}, "routerd route: --tenant is required"},
		{[]string{"route", "--matrix", m, "--tenant", "acme", "--domain", "user", "extra"}, `routerd route: unexpected argument "extra"`},
		{[]string{"acl", "--matrix", m, "--role", "subscriber", "--user", "u"}, "routerd acl: the subscriber role needs a service (--service)"},
		{[]string{"acl", "--matrix", m, "--role", "nope", "--user", "u"}, `routerd acl: role "nope" is not one of`},
		{[]string{"acl", "--matrix", m, "--role", "router", "--user", "u", "--service", "x"}, "only for the subscriber and cache roles"},
		{[]string{"acl", "--matrix", m, "--role", "router", "--user", "u", "--format", "json"}, `routerd acl: --format "json": must be setuser or aclfile`},
		{[]string{"agent", "--redis", "redis://127.0.0.1:1", "--service", "web", "--matrix", m}, "routerd agent: --cache-redis, --deliver or both are required"},
		{[]string{"publish", "--redis", "redis://127.0.0.1:1", "--tenant", "acme", "--domain", "user", "--keys", "k", "--whole-tag"}, "routerd publish: --whole-tag with --keys"},
		{[]string{"serve", "--redis", "redis://127.0.0.1:1", "--matrix", m, "--log-level", "loud"}, `routerd serve: --log-level "loud"`},
	} {
		code, out, errs := runCLI(t, tc.args...)
		if code != 2 || out != "" || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 2 and %q", tc.args, code, out, errs, tc.want)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, arg := range []string{"--version", "version"} {
		code, out, _ := runCLI(t, arg)
		if code != 0 || !strings.HasPrefix(out, "routerd ") || !strings.Contains(out, "go1.") {
			t.Errorf("routerd %s: exit %d %q", arg, code, out)
		}
	}
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/routerd/routerd", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.time", Value: "2026-11-25T00:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	got := version(bi, true)
	if !regexp.MustCompile(`^routerd v1\.2\.3, commit 0123456789ab \(modified\), 2026-11-25T00:00:00Z, go1\.26\.8 \w+/\w+$`).MatchString(got) {
		t.Errorf("version = %q", got)
	}
	// The image's build has no .git (.dockerignore): the reason given
	// must not be only a flag nobody passed.
	bi.Settings = nil
	if got := version(bi, true); !strings.Contains(got, "commit unknown (built outside a git checkout, or with -buildvcs=false)") {
		t.Errorf("version without VCS information = %q", got)
	}
	if got := version(nil, false); !strings.Contains(got, "no build information") {
		t.Errorf("version without build info = %q", got)
	}
}

// A flag a command does not have, or a value its flag cannot take, is bad
// usage like a missing flag: exit 2, the flag package's message once, and
// the command's usage.
func TestBadFlagIsUsageError(t *testing.T) {
	cases := [][]string{{"matrix", "diff", "--no-such-flag"}, {"deadletter", "replay", "--no-such-flag"}, {"serve", "--claim-idle", "soon"}}
	for _, c := range commands {
		if c.name != "matrix" && c.name != "deadletter" {
			cases = append(cases, []string{c.name, "--no-such-flag"})
		}
	}
	for _, args := range cases {
		code, _, errs := runCLI(t, args...)
		want := "flag provided but not defined: -no-such-flag"
		if args[len(args)-1] == "soon" {
			want = `invalid value "soon" for flag -claim-idle`
		}
		if code != 2 || strings.Count(errs, want) != 1 || !strings.Contains(errs, "Usage: routerd ") {
			t.Errorf("%v: exit %d, want 2 with %q once and the usage:\n%s", args, code, want, errs)
		}
	}
}

// A wrong command or subcommand is named, with the usage, exit 2.
func TestUnknownCommandsNamed(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"matrix", "foo"}, `routerd matrix: unknown subcommand "foo" (subcommands: diff)`},
		{[]string{"matrix"}, "Usage: routerd matrix diff OLD NEW"},
	} {
		code, _, errs := runCLI(t, tc.args...)
		if code != 2 || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d %q, want 2 and %q", tc.args, code, errs, tc.want)
		}
	}
}

const narrowMatrix = `
version: 1
prefix: inv2
tags:
  active: {services: [profile-svc]}
domains:
  user: {tags: [active]}
services:
  profile-svc: {tenants: [acme]}
`

// publish --matrix (or ROUTERD_MATRIX) refuses what the matrix would not
// route before anything reaches Redis, and publishes the rest under the
// matrix's prefix.
func TestPublishChecksTheMatrix(t *testing.T) {
	bus := redistest.Start(t)
	path := filepath.Join(t.TempDir(), "m.yaml")
	must(t, os.WriteFile(path, []byte(narrowMatrix), 0o644))
	c := bus.Client(t)
	ctx := context.Background()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tenant", "acme", "--domain", "order"}, `nothing sent: domain "order" is not in ` + path + " (domains: user)"},
		{[]string{"--tenant", "umbrella", "--domain", "user"}, `nothing sent: no service of domain "user"'s tags serves tenant "umbrella"`},
		{[]string{"--tenant", "acme", "--domain", "user", "--prefix", "other"}, `--prefix "other" differs from the prefix "inv2"`},
	} {
		args := append([]string{"publish", "--redis", bus.URL, "--matrix", path}, tc.args...)
		code, out, errs := runCLI(t, args...)
		if code != 1 || !strings.Contains(errs, tc.want) || out != "" {
			t.Errorf("%v: exit %d %q %q, want 1 and %q", tc.args, code, out, errs, tc.want)
		}
	}
	if n, _ := c.DBSize(ctx).Result(); n != 0 {
		keys, _ := c.Keys(ctx, "*").Result()
		t.Errorf("a refused publish wrote to Redis: %v", keys)
	}
	var out, errb syncBuffer
	env := Env{Stdout: &out, Stderr: &errb, Getenv: func(k string) string {
		if k == "ROUTERD_MATRIX" {
			return path
		}
		return ""
	}}
	if code := Main(ctx, []string{"publish", "--redis", bus.URL, "--tenant", "acme", "--domain", "order"}, env); code != 1 {
		t.Errorf("ROUTERD_MATRIX not used: exit %d %s", code, errb.String())
	}
	if code := Main(ctx, []string{"publish", "--redis", bus.URL, "--tenant", "acme", "--domain", "user", "--keys", "user:1"}, env); code != 0 {
		t.Fatalf("a routable event: exit %d %s", code, errb.String())
	}
	keys, _ := c.Keys(ctx, "inv2:ingress:*").Result()
	if len(keys) != 1 {
		t.Errorf("the event is not in an ingress stream of the matrix's prefix: %v", keys)
	}
}

// go-redis's own lines (a dial failing) go to the command's logger at
// debug level, not raw to the process's stderr.
func TestGoRedisLogsThroughSlog(t *testing.T) {
	var buf syncBuffer
	if _, err := newLogger(&buf, "debug"); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: redistest.RefusedAddr(t), MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	redistest.Eventually(t, 20*time.Second, "a go-redis line in the slog output", func() bool {
		_ = c.Ping(context.Background()).Err()
		return strings.Contains(buf.String(), "component=go-redis")
	})
	line := grep(buf.String(), "component=go-redis")
	if !strings.Contains(line, "level=DEBUG") {
		t.Errorf("go-redis line not at debug: %s", line)
	}
	var quiet syncBuffer
	if _, err := newLogger(&quiet, "info"); err != nil {
		t.Fatal(err)
	}
	_ = c.Ping(context.Background()).Err()
	if quiet.String() != "" {
		t.Errorf("go-redis logged above debug: %s", quiet.String())
	}
}

// One attribute name for errors in every log call: err.
func TestLogsNameErrorsErr(t *testing.T) {
	call := regexp.MustCompile(`\.(Debug|Info|Warn|Error)(Context)?\(.*"error",`)
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, l := range strings.Split(string(b), "\n") {
			if call.MatchString(l) {
				t.Errorf("%s:%d: log attribute \"error\"; name it \"err\": %s", path, i+1, strings.TrimSpace(l))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Counts in output agree with their nouns.
func TestPlurals(t *testing.T) {
	cache := redistest.Start(t)
	store, err := tagstore.New(cache.Client(t), tagstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	must(t, store.Set(context.Background(), "acme", "user:1", []byte("x"), 0, "active"))
	code, out, _ := runCLI(t, "invalidate", "--redis", cache.URL, "--tenant", "acme", "--tag", "active", "--keys", "user:1")
	if code != 0 || out != "SUCCESS: 1 key deleted\n" {
		t.Errorf("invalidate: %d %q", code, out)
	}
	path := filepath.Join(t.TempDir(), "m.yaml")
	must(t, os.WriteFile(path, []byte(narrowMatrix), 0o644))
	code, out, _ = runCLI(t, "validate", path)
	if code != 0 || !strings.Contains(out, "ok: 1 domain, 1 tag, 1 service, 8 ingress partitions") {
		t.Errorf("validate: %d %q", code, out)
	}
	if plural(0, "key", "keys") != "0 keys" || plural(2, "key", "keys") != "2 keys" {
		t.Error("plural")
	}
}

// tail follows several tenants and tags at once, or every channel of a
// service (a pattern for a service of every tenant).
func TestTailSeveralChannels(t *testing.T) {
	bus := redistest.Start(t)
	daemon(t, nil, "serve", "--matrix", "../../matrix.yaml", "--redis", bus.URL, "--listen", anyPort)
	tailOf := func(args ...string) (*syncBuffer, *syncBuffer) {
		out, errb := daemonEnv(t, nil, func(string) string { return "" }, append([]string{"tail", "--redis", bus.URL}, args...)...)
		redistest.Eventually(t, 10*time.Second, "tail subscribed", func() bool { return strings.Contains(errb.String(), "tailing ") })
		return out, errb
	}
	several, severalErr := tailOf("--tenant", "acme,globex", "--tag", "active,electronics")
	search, _ := tailOf("--all", "--matrix", "../../matrix.yaml", "--service", "search-svc")
	profile, profileErr := tailOf("--all", "--matrix", "../../matrix.yaml", "--service", "profile-svc")
	for _, want := range []string{"invalidate:acme:active", "invalidate:globex:electronics"} {
		if !strings.Contains(severalErr.String(), want) {
			t.Errorf("tail --tenant acme,globex --tag active,electronics does not tail %s: %s", want, severalErr.String())
		}
	}
	if !strings.Contains(profileErr.String(), "invalidate:*:active") {
		t.Errorf("tail --all of a service of every tenant: %s", profileErr.String())
	}
	publishKeys(t, bus.URL, "product", "product:1") // acme: electronics and active
	if code, out, errs := runCLI(t, "publish", "--redis", bus.URL, "--tenant", "umbrella", "--domain", "user", "--keys", "user:9"); code != 0 {
		t.Fatalf("publish: %d %s %s", code, out, errs)
	}
	lines := func(b *syncBuffer) int { return strings.Count(b.String(), "\n") }
	redistest.Eventually(t, 10*time.Second, "messages tailed", func() bool {
		return lines(several) == 2 && lines(search) == 2 && lines(profile) == 2
	})
	if !strings.Contains(profile.String(), `"tenant":"umbrella"`) || strings.Contains(search.String(), "umbrella") {
		t.Errorf("tail --all: profile-svc got %s; search-svc got %s", profile.String(), search.String())
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--all", "--matrix", "../../matrix.yaml", "--service", "search-svc", "--tenant", "acme"}, 2, "drop --tenant and --tag"},
		{[]string{"--all", "--matrix", "../../matrix.yaml", "--service", "ghost-svc"}, 1, `service "ghost-svc" is not in ../../matrix.yaml (services: profile-svc, search-svc)`},
		{[]string{"--all", "--service", "search-svc"}, 2, "--matrix is required"},
		{[]string{"--tenant", "acme,a:b", "--tag", "active"}, 1, "tenant"},
		{[]string{"--tenant", " , ", "--tag", "active"}, 2, "must each name at least one"},
	} {
		code, _, errs := runCLI(t, append([]string{"tail", "--redis", bus.URL}, tc.args...)...)
		if code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("tail %v: exit %d %q, want %d and %q", tc.args, code, errs, tc.code, tc.want)
		}
	}
}

// publish --entity without --keys sends an entity-level event (no whole_tag);
// --whole-tag makes it whole; an empty --keys is refused by publish and by
// invalidate, never taken for "the whole tag" (an empty shell variable).
func TestEntityLevelAndEmptyKeys(t *testing.T) {
	bus := redistest.Start(t)
	c := bus.Client(t)
	ctx := context.Background()
	sent := func(args ...string) string {
		t.Helper()
		must(t, c.FlushAll(ctx).Err())
		code, _, errs := runCLI(t, append([]string{"publish", "--redis", bus.URL, "--tenant", "acme", "--domain", "user"}, args...)...)
		if code != 0 {
			t.Fatalf("publish %v: exit %d %s", args, code, errs)
		}
		streams, _ := c.Keys(ctx, "invalidate:ingress:{*}").Result()
		if len(streams) != 1 {
			t.Fatalf("publish %v wrote %v", args, streams)
		}
		entries, _ := c.XRange(ctx, streams[0], "-", "+").Result()
		return entries[0].Values["event"].(string)
	}
	if ev := sent("--entity", "1042"); strings.Contains(ev, "whole_tag") || strings.Contains(ev, `"keys"`) {
		t.Errorf("--entity alone sent %s, want an entity-level event", ev)
	}
	// Without --matrix, publish cannot tell whether the domain has
	// entity_refs: it sends, and warns that the tags may go whole.
	code, _, errs := runCLI(t, "publish", "--redis", bus.URL, "--tenant", "acme", "--domain", "user", "--entity", "1042")
	if code != 0 || !strings.Contains(errs, "warning: --entity 1042 without --keys is entity-level only where the matrix sets entity_refs") {
		t.Errorf("publish --entity without --matrix: exit %d, stderr %q, want a warning", code, errs)
	}
	if ev := sent("--entity", "1042", "--whole-tag"); !strings.Contains(ev, `"whole_tag":true`) {
		t.Errorf("--entity --whole-tag sent %s", ev)
	}
	for _, args := range [][]string{
		{"publish", "--redis", bus.URL, "--tenant", "acme", "--domain", "user", "--keys", ""},
		{"invalidate", "--redis", bus.URL, "--tenant", "acme", "--tag", "active", "--keys", ""},
	} {
		if code, _, errs := runCLI(t, args...); code != 1 || !strings.Contains(errs, "names no key") {
			t.Errorf("%v: exit %d %q, want a refusal", args[0], code, errs)
		}
	}
}

const refsMatrix = `
version: 1
tags:
  active: {services: [web]}
  users: {services: [web]}
domains:
  user: {tags: [users, active], entity_refs: true}
  order: {tags: [active]}
services: {web: {tenants: all}}
`

// publish --entity without --keys on a domain without entity_refs would
// flush the domain's tags whole: with --matrix it is refused before
// anything is sent, saying what to set; --whole-tag says it is meant.
func TestPublishEntityWithoutRefsRefused(t *testing.T) {
	m := writeFile(t, refsMatrix)
	code, out, errs := runCLI(t, "publish", "--redis", "redis://127.0.0.1:1", "--matrix", m, "--tenant", "acme", "--domain", "order", "--entity", "42")
	for _, want := range []string{`nothing sent: domain "order" has no entity_refs in ` + m, "(active) whole", "entity_refs: true", "--keys", "--whole-tag"} {
		if code != 1 || out != "" || !strings.Contains(errs, want) {
			t.Errorf("publish --entity on a domain without entity_refs: exit %d %q %q, want 1 and %q", code, out, errs, want)
		}
	}
}

// route says what an event makes each channel's services drop; an
// entity-level event drops every plain value of each tag, also those of the
// other domains sharing it.
func TestRouteSaysWhatIsDropped(t *testing.T) {
	m := writeFile(t, refsMatrix)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--domain", "user", "--entity", "42"}, []string{
			"an entity-level event (--entity 42, no --keys) of user drops:",
			"in invalidate:acme:users: what is registered under user/42, what is registered at domain user's type level, and every plain value of tag users",
			"every plain value of tag active (values cached without references); tag active is shared with domain order"}},
		{[]string{"--domain", "order", "--entity", "42"}, []string{"in invalidate:acme:active: every value of tag active (whole tag: domain order has no entity_refs"}},
		{[]string{"--domain", "order"}, []string{"a whole-tag event (no --entity, no --keys) of order drops:", "every value of tag active (whole tag)"}},
		{[]string{"--domain", "order", "--keys", "order:1"}, []string{"in invalidate:acme:active: its keys\n"}},
		{[]string{"--domain", "user", "--keys", "user:1"}, []string{"its keys and what is registered at domain user's type level"}},
	} {
		code, out, errs := runCLI(t, append([]string{"route", "--matrix", m, "--tenant", "acme"}, tc.args...)...)
		for _, want := range tc.want {
			if code != 0 || !strings.Contains(out, want) {
				t.Errorf("route %v: exit %d %q %q, want %q", tc.args, code, out, errs, want)
			}
		}
	}
	code, out, _ := runCLI(t, "route", "--matrix", m, "--tenant", "acme", "--domain", "user", "--entity", "42", "--json")
	if code != 0 || !strings.Contains(out, `"invalidate:acme:users": "what is registered under user/42`) {
		t.Errorf("route --json: %d %s", code, out)
	}
}

// doctor --growth-file records the largest tag sets' sizes, and the next run
// reports how they grew since, warning of a set that reaches the guard
// within a day at that rate.
func TestDoctorReportsTagSetGrowth(t *testing.T) {
	cache := redistest.Start(t, "--maxmemory-policy", "noeviction")
	store, err := tagstore.New(cache.Client(t), tagstore.Options{})
	must(t, err)
	add := func(from, to int) {
		for i := from; i < to; i++ {
			must(t, store.Set(context.Background(), "acme", "k"+strconv.Itoa(i), []byte("v"), 0, "big"))
		}
	}
	add(0, 100)
	file := filepath.Join(t.TempDir(), "growth.json")
	code, out, errs := runCLI(t, "doctor", "--redis", cache.URL, "--growth-file", file)
	if code != 0 || !strings.Contains(out, "growth") || !strings.Contains(out, "no earlier run recorded in "+file) {
		t.Fatalf("first doctor --growth-file: exit %d\n%s%s", code, out, errs)
	}
	add(100, 130)
	code, out, errs = runCLI(t, "doctor", "--redis", cache.URL, "--growth-file", file, "--cardinality-guard", "1000")
	if code != 0 || !strings.Contains(out, "{tenant:acme}:tag:big +30 to 130") || !strings.Contains(out, "reach the cardinality guard 1000 within a day") {
		t.Errorf("second doctor --growth-file: exit %d\n%s%s", code, out, errs)
	}
	code, out, _ = runCLI(t, "doctor", "--redis", cache.URL, "--growth-file", file)
	if code != 0 || !strings.Contains(out, "none of the largest tag sets changed size since") {
		t.Errorf("third doctor --growth-file: exit %d\n%s", code, out)
	}
}

// One dead letter is "1 event"; the malformed and too large ones, in their
// own stream, are counted apart.
func TestDoctorCountsOneDeadLetter(t *testing.T) {
	bus := redistest.Start(t, "--maxmemory-policy", "noeviction")
	c := bus.Client(t)
	must(t, c.Set(context.Background(), "invalidate:ingress:partitions", 1, 0).Err())
	must(t, c.XGroupCreateMkStream(context.Background(), "invalidate:ingress:{0}", "routerd", "0").Err())
	must(t, c.XAdd(context.Background(), &redis.XAddArgs{Stream: "invalidate:deadletter", Values: []any{"reason", "malformed"}}).Err())
	_, out, _ := runCLI(t, "doctor", "--redis", bus.URL)
	if !strings.Contains(out, "1 event in invalidate:deadletter:") {
		t.Errorf("doctor with one dead letter:\n%s", out)
	}
	for range 2 {
		must(t, c.XAdd(context.Background(), &redis.XAddArgs{Stream: "invalidate:deadletter:invalid", Values: []any{"reason", "malformed"}}).Err())
	}
	_, out, _ = runCLI(t, "doctor", "--redis", bus.URL)
	if !strings.Contains(out, "1 event in invalidate:deadletter:") || !strings.Contains(out, "2 events in invalidate:deadletter:invalid:") {
		t.Errorf("doctor with one dead letter and two malformed:\n%s", out)
	}
	// `routerd deadletter replay` does send the malformed back (to be
	// refused again): the advice is to publish them again, fixed.
	if strings.Contains(out, "cannot be re-driven") || !strings.Contains(out, "fix the publisher and publish them again") {
		t.Errorf("doctor's advice on malformed dead letters:\n%s", out)
	}
}
