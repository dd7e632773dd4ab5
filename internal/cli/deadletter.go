package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
)

const deadletterArgs = "replay --redis URL [--reason R] [--domain D] [--since T]"

// deadletterReasons are the reasons a dead letter can have.
var deadletterReasons = []string{router.ReasonMalformed, router.ReasonUnknownDomain, router.ReasonTooLarge, router.ReasonNotGranted, router.ReasonPoison}

// deadletterCmd re-drives dead letters: `routerd deadletter replay`.
func deadletterCmd(ctx context.Context, env *Env, args []string) error {
	const usage = "Usage: routerd deadletter " + deadletterArgs + "\n\nSubcommands:\n  replay  send the dead letters that match back to the routers, each once"
	if err := subcommand(env, "deadletter", usage, args, "replay"); err != nil {
		return err
	}
	f := newFlags(env, "deadletter replay", "--redis URL [--reason R] [--domain D] [--since T]")
	rf := f.redis("redis", "ROUTERD_REDIS_URL", "the bus Redis (as the router's user)")
	prefix := f.String("prefix", names.DefaultPrefix, "routerd's prefix")
	reason := f.String("reason", "", "only dead letters of this reason: "+strings.Join(deadletterReasons, ", "))
	domain := f.String("domain", "", "only dead letters with an event of this domain")
	since := f.String("since", "", "only dead letters written since this time: RFC 3339 (2026-12-06T10:00:00Z) or a duration ago (90m)")
	if err := f.parse(args[1:]); err != nil {
		return err
	}
	if err := f.required("redis"); err != nil {
		return err
	}
	if err := names.Prefix(*prefix); err != nil {
		return err
	}
	filter := router.RedriveFilter{Reason: *reason, Domain: *domain}
	if *reason != "" && !slices.Contains(deadletterReasons, *reason) {
		return f.fail("--reason %q: must be one of %s", *reason, strings.Join(deadletterReasons, ", "))
	}
	if *domain != "" {
		if err := names.Domain(*domain); err != nil {
			return f.fail("--domain: %v", err)
		}
	}
	if *since != "" {
		t, err := parseSince(*since, time.Now())
		if err != nil {
			return f.fail("%v", err)
		}
		filter.Since = t
	}
	c, err := rf.open(nil)
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := router.Redrive(ctx, c, *prefix, filter)
	fmt.Fprintf(env.Stdout, "%d re-driven", res.Redriven)
	if res.Invalid > 0 {
		fmt.Fprintf(env.Stdout, ", %d of them malformed or too large (from %s): the routers refuse those again unless they accept them now",
			res.Invalid, names.InvalidDeadLetterStream(*prefix))
	}
	if res.Skipped > 0 {
		fmt.Fprintf(env.Stdout, ", %d left: their copy of the entry was cut at the dead letters' size limit (or holds no event)", res.Skipped)
	}
	fmt.Fprintln(env.Stdout)
	return err
}

// parseSince reads --since: an RFC 3339 time, or a duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("--since %q: give an RFC 3339 time (2026-12-06T10:00:00Z) or a positive duration ago (90m, 24h)", s)
	}
	return now.Add(-d), nil
}
