package cli

import (
	"context"
	"strings"
	"testing"
)

// runCLIEnv runs a command in-process with an environment and returns its
// exit code and stdout and stderr together.
func runCLIEnv(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	var out, errb syncBuffer
	code := Main(context.Background(), args, Env{Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }})
	return code, out.String() + errb.String()
}

// A password in a URL, given on the command line or in the environment,
// appears nowhere in what a command prints: not in the usage text (where a
// flag's default from the environment used to be printed), not in the
// error of a URL that does not parse (where net/url quotes the whole URL).
func TestPasswordsNeverPrinted(t *testing.T) {
	const secret = "s3cretPW"
	withEnv := map[string]string{
		"ROUTERD_REDIS_URL":       "redis://u:" + secret + "@127.0.0.1:1",
		"ROUTERD_CACHE_REDIS_URL": "redis://u:" + secret + "@127.0.0.1:2",
		"ROUTERD_MATRIX":          "../../matrix.yaml",
	}
	badEnv := map[string]string{
		"ROUTERD_REDIS_URL":       "redis://u:" + secret + "@127.0.0.1:bad",
		"ROUTERD_CACHE_REDIS_URL": "redis://:" + secret + "@127.0.0.1:bad",
		"ROUTERD_MATRIX":          "../../matrix.yaml",
	}
	bad := []string{
		"redis://u:" + secret + "@h:bad",
		"redis://:" + secret + "@h:bad",
		"redis://u:" + secret + "@h:1/x",
		"u:" + secret + "@h:1",
		"redis://u:" + secret + "@[::1",
		"redis://u:" + secret + "@h:1?no_such_option=1",
		"rediss://u:" + secret + "@h:1,redis://u:other@h:2",
	}
	args := map[string][]string{
		"serve":      {"--listen", "127.0.0.1:0"},
		"agent":      {"--service", "search-svc", "--listen", "127.0.0.1:0"},
		"publish":    {"--tenant", "acme", "--domain", "user"},
		"tail":       {"--tenant", "acme", "--tag", "active"},
		"invalidate": {"--tenant", "acme", "--tag", "active"},
		"compact":    {"--tenant", "acme", "--tag", "active"},
		"doctor":     {},
	}
	check := func(what, out string) {
		t.Helper()
		if strings.Contains(out, secret) {
			t.Errorf("%s printed the password:\n%s", what, out)
		}
	}
	_, out := runCLIEnv(t, withEnv, "-h")
	check("routerd -h", out)
	for cmd, extra := range args {
		// Usage text, asked for and after a usage error, with the URLs in
		// the environment.
		code, out := runCLIEnv(t, withEnv, cmd, "-h")
		check(cmd+" -h", out)
		if code != 2 || !strings.Contains(out, "ROUTERD_REDIS_URL") && !strings.Contains(out, "ROUTERD_CACHE_REDIS_URL") {
			t.Errorf("%s -h: exit %d\n%s", cmd, code, out)
		}
		_, out = runCLIEnv(t, withEnv, cmd, "--no-such-flag")
		check(cmd+" --no-such-flag", out)
		_, out = runCLIEnv(t, withEnv, cmd, "extra-argument")
		check(cmd+" extra-argument", out)

		// URLs that do not parse, in the environment and on the command line.
		code, out = runCLIEnv(t, badEnv, append([]string{cmd}, extra...)...)
		check(cmd+" with a bad URL in the environment", out)
		if code != 1 || !strings.Contains(out, "port") {
			t.Errorf("%s with a bad URL in the environment: exit %d, want the port named\n%s", cmd, code, out)
		}
		for _, u := range bad {
			a := append([]string{cmd, "--redis", u}, extra...)
			if cmd == "agent" {
				a = append(a, "--cache-redis", u, "--matrix", "../../matrix.yaml")
			}
			if cmd == "serve" {
				a = append(a, "--matrix", "../../matrix.yaml")
			}
			code, out := runCLIEnv(t, nil, a...)
			check(cmd+" --redis "+u, out)
			if code != 1 || !strings.Contains(out, "redis URL") {
				t.Errorf("%s --redis %s: exit %d\n%s", cmd, u, code, out)
			}
		}
	}
}
