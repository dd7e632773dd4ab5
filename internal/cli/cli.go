// Package cli implements the routerd command line. cmd/routerd only parses
// the process's arguments and signals and calls Main, so every command runs
// in-process in tests.
package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redisconn"
)

// Env is what a command may touch of its process.
type Env struct {
	Stdout, Stderr io.Writer
	// Getenv reads environment variables; os.Getenv by default.
	Getenv func(string) string
	// Reload receives a value for each SIGHUP.
	Reload <-chan struct{}
}

type command struct {
	name, args, summary string
	run                 func(ctx context.Context, env *Env, args []string) error
}

var commands []command

func init() {
	commands = []command{
		{"serve", "--matrix F --redis URL [--listen ADDR]", "run the router daemon", serve},
		{"validate", "F", "check a matrix file", validate},
		{"route", routeUsage, "show the channels and services an event reaches, and what it makes them drop", route},
		{"matrix", "diff OLD NEW", "tell which channels, services, routes and limits a matrix change adds or removes", matrixCmd},
		{"publish", publishUsage, "emit one event (with --matrix, only one the matrix routes)", publish},
		{"tail", tailUsage, "print each message on channels as JSON lines", tail},
		{"agent", agentUsage, "run the subscriber as a sidecar: apply invalidations to a cache Redis and/or deliver them to a process", agent},
		{"invalidate", "--redis URL --tenant T --tag X [--keys a,b]", "run tag invalidation on a cache Redis directly", invalidate},
		{"compact", "--redis URL --tenant T --tag X", "drop tag set members whose keys have expired", compact},
		{"doctor", "--redis URL [--growth-file F]", "check a Redis for what breaks invalidation; exit 1 on a problem; with --growth-file, how its largest tag sets grew since the last run", doctorCmd},
		{"acl", aclArgs, "print the least-privilege Redis ACL user of a role (no password)", aclCmd},
		{"probe", "URL", "exit 0 when URL (a /readyz) answers 2xx, 1 otherwise: a health check for images without curl", probe},
		{"deadletter", deadletterArgs, "re-drive dead-lettered events (after a fix or a matrix reload), each once", deadletterCmd},
	}
}

// errUsage means the command line was wrong; the usage was printed.
var errUsage = errors.New("usage")

// usageError is a command line a command refused after parsing it: a flag
// value outside its set, flags that conflict. Main prints it after the
// command's name with a pointer to -h, and exits 2, for every command.
// (flags.fail is the same with the command's usage printed in full.)
type usageError struct{ err error }

func (e *usageError) Error() string   { return e.err.Error() }
func (e *usageError) Unwrap() []error { return []error{e.err, errUsage} }

// usagef is a usageError.
func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

func isHelp(arg string) bool { return arg == "-h" || arg == "-help" || arg == "--help" }

// Main runs the command in args (without the program name) and returns the
// process's exit code: 0 on success, 1 on failure, 2 on bad usage.
func Main(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	if env.Stdout == nil {
		env.Stdout = os.Stdout
	}
	if env.Stderr == nil {
		env.Stderr = os.Stderr
	}
	// go-redis logs through the command's logger (at debug) once it has
	// one; until then its lines are dropped rather than printed raw.
	routeRedisLogs(slog.New(slog.NewTextHandler(env.Stderr, nil)))
	switch {
	case len(args) == 0:
		usage(env.Stderr)
		return 2
	case isHelp(args[0]):
		usage(env.Stdout) // asked for: `routerd -h | less` shows it
		return 0
	case args[0] == "help" && len(args) > 1 && !strings.HasPrefix(args[1], "-"):
		args = []string{args[1], "-h"} // `routerd help serve` is `routerd serve -h`
	case args[0] == "help":
		usage(env.Stdout)
		return 0
	case args[0] == "--version" || args[0] == "-version" || args[0] == "version":
		fmt.Fprintln(env.Stdout, version(debug.ReadBuildInfo()))
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(ctx, &env, args[1:])
			var bad *usageError
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp): // -h: the usage was asked for
				return 0
			case errors.As(err, &bad):
				fmt.Fprintf(env.Stderr, "routerd %s: %v\nRun 'routerd %s -h' for its flags.\n", c.name, bad.err, c.name)
				return 2
			case errors.Is(err, errUsage):
				return 2
			case errors.Is(err, errFailed):
				return 1
			default:
				fmt.Fprintf(env.Stderr, "routerd %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	fmt.Fprintf(env.Stderr, "routerd: unknown command %q\n\n", args[0])
	usage(env.Stderr)
	return 2
}

// errFailed means the command already reported its failure.
var errFailed = errors.New("failed")

func usage(w io.Writer) {
	fmt.Fprintln(w, "routerd: tag-based cache invalidation across services on Redis\n\nUsage:")
	for _, c := range commands {
		fmt.Fprintf(w, "  routerd %-10s %s\n      %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'routerd COMMAND -h' (or 'routerd help COMMAND') for a command's flags, 'routerd --version' for the build.\n"+
		"URL flags also read ROUTERD_REDIS_URL, ROUTERD_CACHE_REDIS_URL; TLS and password-file flags read ROUTERD_TLS_CA,\n"+
		"ROUTERD_TLS_CERT, ROUTERD_TLS_KEY, ROUTERD_REDIS_PASSWORD_FILE (ROUTERD_CACHE_… for the cache).")
}

// flags is a command's flag set with the shared flags.
type flags struct {
	*flag.FlagSet
	env  *Env
	name string
	// late are environment variables read after parsing, for flags whose
	// value must not be shown as a default in the usage text.
	late []func()
}

func newFlags(env *Env, name, args string) *flags {
	fs := flag.NewFlagSet("routerd "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: routerd %s %s\n", name, args)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintf(fs.Output(), "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return &flags{FlagSet: fs, env: env, name: name}
}

// fail reports bad usage found after parsing: "routerd NAME: message" and
// the command's usage on stderr; Main exits 2.
func (f *flags) fail(format string, args ...any) error {
	fmt.Fprintf(f.env.Stderr, "routerd %s: %s\n\n", f.name, fmt.Sprintf(format, args...))
	f.Usage()
	return errUsage
}

// stringEnv is a string flag whose default comes from an environment variable.
func (f *flags) stringEnv(name, envVar, def, help string) *string {
	if v := f.env.Getenv(envVar); v != "" {
		def = v
	}
	return f.String(name, def, help+" (env "+envVar+")")
}

// secretEnv is a string flag that falls back on an environment variable
// whose value may hold a secret (a URL with a password): unlike stringEnv,
// the value is not the flag's default, so the usage text never prints it.
func (f *flags) secretEnv(name, envVar, help string) *string {
	p := f.String(name, "", help+" (env "+envVar+")")
	f.late = append(f.late, func() {
		set := false
		f.Visit(func(fl *flag.Flag) { set = set || fl.Name == name })
		if !set {
			*p = f.env.Getenv(envVar)
		}
	})
	return p
}

// Parse parses the flags in args. -h writes the usage to stdout (it was
// asked for). A flag the command does not have, or a value its flag cannot
// take, is bad usage (exit 2): the flag package's message and the usage go
// to stderr.
func (f *flags) Parse(args []string) error {
	var msg bytes.Buffer
	f.SetOutput(&msg)
	err := f.FlagSet.Parse(args)
	f.SetOutput(f.env.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		f.SetOutput(f.env.Stdout)
		f.Usage()
		f.SetOutput(f.env.Stderr)
		return err
	case err != nil:
		_, _ = io.Copy(f.env.Stderr, &msg)
		return errUsage
	}
	return nil
}

func (f *flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		return err
	}
	for _, read := range f.late {
		read()
	}
	if f.NArg() > 0 {
		return f.fail("unexpected argument %q", f.Arg(0))
	}
	return nil
}

// required fails with the usage when a flag is empty.
func (f *flags) required(names ...string) error {
	for _, n := range names {
		if f.Lookup(n).Value.String() == "" {
			return f.fail("--%s is required", n)
		}
	}
	return nil
}

// redisFlags are a connection's flags: --redis, --cluster, the TLS files
// and the password file (--cache-redis, --cache-cluster, --cache-tls-… for
// the cache). Their environment variables follow the URL's:
// ROUTERD_REDIS_URL goes with ROUTERD_TLS_CA, ROUTERD_CACHE_REDIS_URL with
// ROUTERD_CACHE_TLS_CA.
type redisFlags struct {
	name              string
	url, passwordFile *string
	cluster           *bool
	tls               [4]*string // CA, cert, key, server name
	// inherit is the connection whose TLS files this one takes when it has
	// none of its own and its URL is rediss:// (the cache takes the bus's).
	inherit *redisFlags
	stderr  io.Writer
}

func (f *flags) redis(name, envVar, help string) *redisFlags {
	flagPrefix := strings.TrimSuffix(name, "redis")      // "" or "cache-"
	envPrefix := strings.TrimSuffix(envVar, "REDIS_URL") // ROUTERD_ or ROUTERD_CACHE_
	r := &redisFlags{
		name:         name,
		url:          f.secretEnv(name, envVar, help+"; one URL, comma-separated cluster seeds, or a Sentinel URL (?master_name=NAME); rediss:// for TLS"),
		cluster:      f.Bool(flagPrefix+"cluster", false, "the --"+name+" URL is a Redis Cluster seed"),
		passwordFile: f.stringEnv(name+"-password-file", envPrefix+"REDIS_PASSWORD_FILE", "", "file holding the --"+name+" password, instead of the URL (a container secret)"),
		stderr:       f.env.Stderr,
	}
	for i, file := range []struct{ flag, help string }{
		{"tls-ca", "PEM file of the CA that signed the --" + name + " server's certificate (system roots when empty)"},
		{"tls-cert", "PEM client certificate for --" + name + " (servers with tls-auth-clients)"},
		{"tls-key", "PEM key of --" + flagPrefix + "tls-cert"},
		{"tls-server-name", "verify every --" + name + " server's certificate under this name instead of its own address"},
	} {
		if flagPrefix != "" && i < 3 {
			file.help += "; the bus's when none of --" + flagPrefix + "tls-ca/cert/key is given and the URL is rediss://"
		}
		r.tls[i] = f.stringEnv(flagPrefix+file.flag, envPrefix+strings.ToUpper(strings.ReplaceAll(file.flag, "-", "_")), "", file.help)
	}
	return r
}

// open connects; log receives the warning about skip_verify (stderr when nil).
func (r *redisFlags) open(log *slog.Logger) (redis.UniversalClient, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(r.stderr, nil))
	}
	files := redisconn.TLSFiles{CA: *r.tls[0], Cert: *r.tls[1], Key: *r.tls[2], ServerName: *r.tls[3]}
	if own := (redisconn.TLSFiles{CA: files.CA, Cert: files.Cert, Key: files.Key}); own == (redisconn.TLSFiles{}) &&
		r.inherit != nil && strings.HasPrefix(strings.TrimSpace(*r.url), "rediss://") {
		files.CA, files.Cert, files.Key = *r.inherit.tls[0], *r.inherit.tls[1], *r.inherit.tls[2]
	}
	c, err := redisconn.OpenWith(*r.url, redisconn.Options{Cluster: *r.cluster, TLS: files, PasswordFile: *r.passwordFile, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", r.name, err)
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: %w", level, err)
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
	routeRedisLogs(log)
	return log, nil
}
