// Package cli implements the routerd command line. cmd/routerd only parses
// the process's arguments and signals and calls Main, so every command runs
// in-process in tests.
package cli

import (
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
		{"route", "--matrix F --tenant T --domain D [--json]", "show the channels and services an event reaches", route},
		{"matrix", "diff OLD NEW", "tell which channels, services, routes and limits a matrix change adds or removes", matrixCmd},
		{"publish", "--redis URL --tenant T --domain D [--entity E] [--keys a,b] [--matrix F]", "emit one event (with --matrix, only one the matrix routes)", publish},
		{"tail", tailUsage, "print each message on channels as JSON lines", tail},
		{"agent", agentUsage, "run the subscriber as a sidecar: apply invalidations to a cache Redis and/or deliver them to a process", agent},
		{"invalidate", "--redis URL --tenant T --tag X [--keys a,b]", "run tag invalidation on a cache Redis directly", invalidate},
		{"compact", "--redis URL --tenant T --tag X", "drop tag set members whose keys have expired", compact},
		{"doctor", "--redis URL", "check a Redis for what breaks invalidation; exit 1 on a problem", doctorCmd},
	}
}

// errUsage means the command line was wrong; the usage was printed.
var errUsage = errors.New("usage")

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
	case args[0] == "-h" || args[0] == "-help" || args[0] == "--help":
		usage(env.Stderr)
		return 0
	case args[0] == "help" && len(args) > 1:
		args = []string{args[1], "-h"} // `routerd help serve` is `routerd serve -h`
	case args[0] == "help":
		usage(env.Stderr)
		return 0
	case args[0] == "--version" || args[0] == "-version" || args[0] == "version":
		fmt.Fprintln(env.Stdout, version(debug.ReadBuildInfo()))
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(ctx, &env, args[1:])
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp): // -h: the usage was asked for
				return 0
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
	fmt.Fprintln(w, "\nRun 'routerd COMMAND -h' (or 'routerd help COMMAND') for a command's flags, 'routerd --version' for the build.\nURL flags also read ROUTERD_REDIS_URL, ROUTERD_CACHE_REDIS_URL.")
}

// flags is a command's flag set with the shared flags.
type flags struct {
	*flag.FlagSet
	env *Env
}

func newFlags(env *Env, name, args string) *flags {
	fs := flag.NewFlagSet("routerd "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: routerd %s %s\n\nFlags:\n", name, args)
		fs.PrintDefaults()
	}
	return &flags{fs, env}
}

// stringEnv is a string flag whose default comes from an environment variable.
func (f *flags) stringEnv(name, envVar, def, help string) *string {
	if v := f.env.Getenv(envVar); v != "" {
		def = v
	}
	return f.String(name, def, help+" (env "+envVar+")")
}

func (f *flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		fmt.Fprintf(f.env.Stderr, "unexpected argument %q\n", f.Arg(0))
		f.Usage()
		return errUsage
	}
	return nil
}

// required fails with the usage when a flag is empty.
func (f *flags) required(names ...string) error {
	for _, n := range names {
		if f.Lookup(n).Value.String() == "" {
			fmt.Fprintf(f.env.Stderr, "--%s is required\n", n)
			f.Usage()
			return errUsage
		}
	}
	return nil
}

// redisFlags adds --redis and --cluster.
type redisFlags struct {
	url     *string
	cluster *bool
}

func (f *flags) redis(name, envVar, help string) redisFlags {
	return redisFlags{
		url:     f.stringEnv(name, envVar, "", help+"; one URL, or comma-separated cluster seeds"),
		cluster: f.Bool(strings.TrimSuffix(name, "redis")+"cluster", false, "the "+name+" URL is a Redis Cluster seed"),
	}
}

func (r redisFlags) open() (redis.UniversalClient, error) {
	return redisconn.Open(*r.url, *r.cluster)
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
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
	routeRedisLogs(log)
	return log, nil
}
