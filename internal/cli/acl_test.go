package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

const grantsYAML = `
version: 1
ingress: {partitions: 2}
tags: {active: {services: [web]}}
domains: {user: {tags: [active]}, order: {tags: [active]}}
services: {web: {tenants: [acme]}}
publishers:
  profile-svc: {domains: [user], tenants: all}
`

func writeFile(t *testing.T, data string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "matrix.yaml")
	must(t, os.WriteFile(path, []byte(data), 0o600))
	return path
}

func TestACLCommand(t *testing.T) {
	m := writeFile(t, grantsYAML)
	code, out, errs := runCLI(t, "acl", "--matrix", m, "--role", "publisher", "--user", "pub", "--publisher", "profile-svc")
	want := "ACL SETUSER pub reset resetchannels +xadd +get %R~invalidate:ingress:partitions %W~invalidate:ingress:profile-svc:{*}\n"
	if code != 0 || out != want || errs != "" {
		t.Errorf("acl publisher: %d %q %q, want %q", code, out, errs, want)
	}
	code, out, _ = runCLI(t, "acl", "--matrix", m, "--role", "subscriber", "--user", "web-bus", "--service", "web", "--format", "aclfile")
	if code != 0 || !strings.HasPrefix(out, "user web-bus reset resetchannels ") || !strings.Contains(out, " &invalidate:acme:active") {
		t.Errorf("acl aclfile: %d %q", code, out)
	}
	// A shared-ingress publisher on a matrix with grants is allowed, with a warning.
	code, _, errs = runCLI(t, "acl", "--matrix", m, "--role", "publisher", "--user", "pub")
	if code != 0 || !strings.Contains(errs, "warning: ") {
		t.Errorf("acl shared publisher: %d %q", code, errs)
	}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--role", "subscriber", "--user", "u"}, 2, "needs a service (--service)"},
		{[]string{"--role", "cache", "--user", "u", "--service", "ghost"}, 2, `service "ghost" is not in the matrix`},
		{[]string{"--role", "publisher", "--user", "u", "--publisher", "ghost"}, 2, `publisher "ghost" is not in the matrix's publishers section`},
		{[]string{"--role", "router", "--user", "u", "--service", "web"}, 2, "only for the subscriber and cache roles"},
		{[]string{"--role", "admin", "--user", "u"}, 2, `role "admin" is not one of`},
		{[]string{"--role", "router", "--user", "a b"}, 2, "printable ASCII without spaces"},
		{[]string{"--role", "router", "--user", "u", "--format", "json"}, 2, "must be setuser or aclfile"},
		{[]string{"--role", "router"}, 2, "--user is required"},
	} {
		code, out, errs := runCLI(t, append([]string{"acl", "--matrix", m}, tc.args...)...)
		if code != tc.code || out != "" || !strings.Contains(errs, tc.msg) {
			t.Errorf("acl %v: %d %q %q, want %d and %q", tc.args, code, out, errs, tc.code, tc.msg)
		}
	}
}

func TestRouteAndValidateShowGrants(t *testing.T) {
	m := writeFile(t, grantsYAML)
	if code, out, _ := runCLI(t, "validate", m); code != 0 || !strings.Contains(out, "1 service, 1 publisher,") {
		t.Errorf("validate: %d %q", code, out)
	}
	if code, out, _ := runCLI(t, "route", "--matrix", m, "--tenant", "acme", "--domain", "user"); code != 0 || !strings.Contains(out, "publishers granted: profile-svc\n") {
		t.Errorf("route: %d %q", code, out)
	}
	if code, out, _ := runCLI(t, "route", "--matrix", m, "--tenant", "acme", "--domain", "order", "--json"); code != 0 || !strings.Contains(out, `"publishers": []`) {
		t.Errorf("route --json: %d %q", code, out)
	}
	if code, out, _ := runCLI(t, "route", "--matrix", "../../matrix.yaml", "--tenant", "acme", "--domain", "user", "--json"); code != 0 || strings.Contains(out, "publishers") {
		t.Errorf("route --json without grants: %d %q", code, out)
	}
}

func TestPublishAsPublisher(t *testing.T) {
	srv := redistest.Start(t)
	code, out, errs := runCLI(t, "publish", "--redis", srv.URL, "--tenant", "acme", "--domain", "user", "--publisher", "profile-svc")
	if code != 0 {
		t.Fatalf("publish: %d %q %q", code, out, errs)
	}
	stream := names.PublisherStream("invalidate", "profile-svc", wire.Partition("acme", wire.DefaultPartitions))
	if n := srv.Client(t).XLen(context.Background(), stream).Val(); n != 1 {
		t.Errorf("%s holds %d entries, want 1", stream, n)
	}
	if code, _, errs := runCLI(t, "publish", "--redis", srv.URL, "--tenant", "acme", "--domain", "user", "--publisher", "bad name"); code != 1 || !strings.Contains(errs, "publisher name") {
		t.Errorf("publish --publisher 'bad name': %d %q", code, errs)
	}
}

// publish --matrix with --publisher refuses, before anything is sent, an
// event the router would not route from that publisher's streams: a
// publisher the matrix does not grant has streams no router reads, and an
// event outside its grant is dead-lettered (not_granted).
func TestPublishAsPublisherChecksTheGrant(t *testing.T) {
	srv := redistest.Start(t)
	grants := writeFile(t, grantsYAML)
	for _, tc := range []struct {
		matrix, publisher, domain, want string
	}{
		{grants, "catalog-svc", "user", `nothing sent: publisher "catalog-svc" is not in the publishers section of ` + grants + " (publishers: profile-svc): no router reads its streams"},
		{grants, "profile-svc", "order", `nothing sent: publisher "profile-svc" is not granted domain "order" for tenant "acme" in ` + grants},
		{"../../matrix.yaml", "profile-svc", "user", `nothing sent: publisher "profile-svc" is not in the publishers section of ../../matrix.yaml (it has none): no router reads its streams`},
	} {
		code, out, errs := runCLI(t, "publish", "--redis", srv.URL, "--matrix", tc.matrix, "--tenant", "acme", "--domain", tc.domain, "--keys", "k:1", "--publisher", tc.publisher)
		if code != 1 || out != "" || !strings.Contains(errs, tc.want) {
			t.Errorf("publish --publisher %s --domain %s: %d %q %q, want 1 and %q", tc.publisher, tc.domain, code, out, errs, tc.want)
		}
	}
	if keys := srv.Client(t).Keys(context.Background(), "*").Val(); len(keys) != 0 {
		t.Errorf("a refused publish wrote to Redis: %v", keys)
	}
	if code, out, errs := runCLI(t, "publish", "--redis", srv.URL, "--matrix", grants, "--tenant", "acme", "--domain", "user", "--keys", "k:1", "--publisher", "profile-svc"); code != 0 {
		t.Errorf("a granted event: %d %q %q", code, out, errs)
	}
}

// publish --durable as the plain publisher user fails on INFO; the error
// says which ACL it needs, and with that ACL the publish goes through.
func TestPublishDurableNopermPointsAtACL(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	ctx := context.Background()
	setUser := func(args ...string) {
		t.Helper()
		code, out, errs := runCLI(t, append([]string{"acl", "--matrix", "../../matrix.yaml", "--role", "publisher", "--user", "pub"}, args...)...)
		if code != 0 {
			t.Fatalf("acl: %d %s", code, errs)
		}
		cmd := []any{}
		for _, f := range strings.Fields(out) {
			cmd = append(cmd, f)
		}
		must(t, c.Do(ctx, append(cmd, "on", ">secret")...).Err())
	}
	setUser()
	url := "redis://pub:secret@" + srv.Addr
	code, _, errs := runCLI(t, "publish", "--redis", url, "--tenant", "acme", "--domain", "user", "--keys", "user:1", "--durable")
	if code != 1 || !strings.Contains(errs, "NOPERM") || !strings.Contains(errs, "routerd acl --role publisher --durable") {
		t.Errorf("publish --durable without INFO: exit %d %q, want 1 and a pointer to routerd acl --durable", code, errs)
	}
	setUser("--durable")
	if code, _, errs := runCLI(t, "publish", "--redis", url, "--tenant", "acme", "--domain", "user", "--keys", "user:1", "--durable"); code != 0 {
		t.Errorf("publish --durable with the --durable ACL: exit %d %q", code, errs)
	}
}
