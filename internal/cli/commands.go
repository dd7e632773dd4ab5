package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/doctor"
	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/internal/telemetry"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/tagstore"
)

func validate(_ context.Context, env *Env, args []string) error {
	f := newFlags(env, "validate", "F")
	if err := f.Parse(args); err != nil {
		return err
	}
	if f.NArg() != 1 {
		return f.fail("want one matrix file, got %s", argList(f.Args()))
	}
	m, err := matrix.Load(f.Arg(0))
	if err != nil {
		var errs matrix.Errors
		if errors.As(err, &errs) {
			fmt.Fprintln(env.Stderr, errs.Error())
			return errFailed
		}
		return err
	}
	grants := ""
	if m.Publishers != nil {
		grants = ", " + plural(int64(len(m.Publishers)), "publisher", "publishers")
	}
	fmt.Fprintf(env.Stdout, "%s: ok: %s, %s, %s%s, %s, prefix %q, sha256 %s\n",
		f.Arg(0), plural(int64(len(m.Domains)), "domain", "domains"), plural(int64(len(m.Tags)), "tag", "tags"),
		plural(int64(len(m.Services)), "service", "services"), grants, plural(int64(m.Partitions), "ingress partition", "ingress partitions"), m.Prefix, m.Hash[:12])
	return nil
}

// argList names the arguments a command got, for a message saying they are
// not what it wants.
func argList(args []string) string {
	if len(args) == 0 {
		return "none"
	}
	return fmt.Sprintf("%d: %q", len(args), args)
}

func loadMatrix(env *Env, path string) (*matrix.Matrix, error) {
	m, err := matrix.Load(path)
	return m, matrixErr(env, err)
}

// matrixErr prints a matrix's errors, one file:line:col a line, and
// returns errFailed for them; any other error it returns as it is.
func matrixErr(env *Env, err error) error {
	var errs matrix.Errors
	if errors.As(err, &errs) {
		fmt.Fprintln(env.Stderr, errs.Error())
		return errFailed
	}
	return err
}

func route(_ context.Context, env *Env, args []string) error {
	f := newFlags(env, "route", routeUsage)
	path := f.stringEnv("matrix", "ROUTERD_MATRIX", "", "routing matrix file")
	tenant := f.String("tenant", "", "tenant of the event")
	domain := f.String("domain", "", "domain of the event")
	var shape eventShape
	f.StringVar(&shape.entity, "entity", "", "the entity the event names, as publish --entity: the answer says what it drops")
	keys := f.String("keys", "", "the keys the event names, as publish --keys")
	f.BoolVar(&shape.wholeTag, "whole-tag", false, "the event is whole-tag, as publish --whole-tag")
	asJSON := f.Bool("json", false, "print JSON")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := f.required("matrix", "tenant", "domain"); err != nil {
		return err
	}
	shape.keys = splitList(*keys)
	if err := names.Tenant(*tenant); err != nil {
		return err
	}
	m, err := loadMatrix(env, *path)
	if err != nil {
		return err
	}
	routes, known := m.Routes(*tenant, *domain)
	if !known {
		return fmt.Errorf("domain %q is not in %s (domains: %s)", *domain, *path, strings.Join(m.DomainNames(), ", "))
	}
	if *asJSON {
		out := struct {
			Tenant       string         `json:"tenant"`
			Domain       string         `json:"domain"`
			Routes       []matrix.Route `json:"routes"`
			TenantBudget *matrix.Budget `json:"tenant_budget"`
			GlobalBudget *matrix.Budget `json:"global_budget"`
			// Publishers granted the event, when the matrix has a
			// publishers section.
			Publishers *[]string `json:"publishers,omitempty"`
			// Drops says, by channel, what the event makes its services drop.
			Drops map[string]string `json:"drops"`
		}{Tenant: *tenant, Domain: *domain, Routes: routes, TenantBudget: m.TenantBudget, GlobalBudget: m.GlobalBudget, Drops: map[string]string{}}
		for _, r := range routes {
			out.Drops[r.Channel] = drops(m, *domain, r, shape)
		}
		if m.Publishers != nil {
			granted := m.PublishersOf(*domain, *tenant)
			if granted == nil {
				granted = []string{}
			}
			out.Publishers = &granted
		}
		if out.Routes == nil {
			out.Routes = []matrix.Route{}
		}
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	if m.Publishers != nil {
		granted := m.PublishersOf(*domain, *tenant)
		if len(granted) == 0 {
			fmt.Fprintf(env.Stdout, "publishers granted: none (only the shared ingress routes it)\n")
		} else {
			fmt.Fprintf(env.Stdout, "publishers granted: %s\n", strings.Join(granted, ", "))
		}
	}
	if len(routes) == 0 {
		fmt.Fprintf(env.Stdout, "an event of %s/%s reaches no channel: no service of its tags serves tenant %q\n", *tenant, *domain, *tenant)
		return nil
	}
	w := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CHANNEL\tSERVICES\tRATE/s\tBURST\tCOALESCE\tMAX_KEYS\tHISTORY")
	for _, r := range routes {
		l := r.Limits
		fmt.Fprintf(w, "%s\t%s\t%g\t%d\t%v\t%d\t%d\n", r.Channel, strings.Join(r.Services, ","), l.Rate, l.Burst, l.Coalesce, l.MaxKeys, l.History)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "%s of %s drops:\n", shape.describe(), *domain)
	for _, r := range routes {
		fmt.Fprintf(env.Stdout, "  in %s: %s\n", r.Channel, drops(m, *domain, r, shape))
	}
	for _, b := range []struct {
		name   string
		budget *matrix.Budget
	}{{"tenant " + *tenant, m.TenantBudget}, {"all tenants (every routerd together)", m.GlobalBudget}} {
		if b.budget != nil {
			fmt.Fprintf(env.Stdout, "shared budget of %s: %g/s, burst %d\n", b.name, b.budget.Rate, b.budget.Burst)
		}
	}
	return nil
}

const routeUsage = "--matrix F --tenant T --domain D [--entity E] [--keys a,b] [--whole-tag] [--json]"

const publishUsage = "--redis URL --tenant T --domain D [--entity E] [--keys a,b] [--whole-tag] [--id ID] [--durable] [--publisher P] [--matrix F]"

func publish(ctx context.Context, env *Env, args []string) error {
	f := newFlags(env, "publish", publishUsage)
	rf := f.redis("redis", "ROUTERD_REDIS_URL", "bus Redis")
	prefix := f.String("prefix", names.DefaultPrefix, "channel and stream prefix (the matrix's prefix)")
	pubName := f.String("publisher", "", "publish as this publisher of the matrix's publishers section, to its own streams")
	var ev publisher.Event
	f.StringVar(&ev.Tenant, "tenant", "", "tenant")
	f.StringVar(&ev.Domain, "domain", "", "domain that changed")
	f.StringVar(&ev.Entity, "entity", "", "entity that changed; without --keys (and --whole-tag) an entity-level event: with entity_refs on the domain, only the values registered under the entity's reference")
	f.StringVar(&ev.ID, "id", "", "event id (generated when empty)")
	f.Int64Var(&ev.SourceVersion, "source-version", 0, "the change's own ordering number (a row version)")
	f.StringVar(&ev.Origin, "origin", "routerd-cli", "who publishes")
	keys := f.String("keys", "", "comma-separated keys to invalidate; without --keys (and --entity) the domain's tags are invalidated whole")
	wholeTag := f.Bool("whole-tag", false, "invalidate the domain's tags whole, also for an event that names its entity")
	durable := f.Bool("durable", false, "return only once a replica of the partition's master has the event (WAIT 1)")
	path := f.stringEnv("matrix", "ROUTERD_MATRIX", "", "routing matrix: refuse, before sending, an event it would not route (an unknown domain, a tenant none of the domain's services serves, with --publisher one outside that publisher's grant); its prefix is the default")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := f.required("redis", "tenant", "domain"); err != nil {
		return err
	}
	// Without --keys the event is a whole-tag one, or entity-level when it
	// names its entity (unless --whole-tag says otherwise); --keys that names
	// no key is a mistake, not a request to flush the tags.
	keysGiven := false
	f.Visit(func(fl *flag.Flag) { keysGiven = keysGiven || fl.Name == "keys" })
	ev.Keys = splitList(*keys)
	ev.WholeTag = !keysGiven && (ev.Entity == "" || *wholeTag)
	if keysGiven && len(ev.Keys) == 0 {
		return fmt.Errorf("invalid event: --keys names no key; omit --keys to invalidate whole tags")
	}
	if keysGiven && *wholeTag {
		return usagef("--whole-tag with --keys: a whole-tag event names no keys")
	}
	if err := ev.Validate(); err != nil {
		return fmt.Errorf("invalid event: %w", err)
	}
	entityLevel := ev.Entity != "" && !keysGiven && !*wholeTag
	if *path != "" {
		routes, err := routable(env, f, *path, ev.Tenant, ev.Domain, *pubName, prefix)
		if err != nil {
			return err
		}
		if entityLevel && !routes[0].EntityRefs {
			tags := make([]string, len(routes))
			for i, r := range routes {
				tags[i] = r.Tag
			}
			return fmt.Errorf("nothing sent: domain %q has no entity_refs in %s, so --entity %s without --keys would invalidate its tags (%s) whole; "+
				"name the keys with --keys, set `entity_refs: true` on the domain (and cache its values by reference: docs/protocol.md §3.1), or pass --whole-tag if whole tags are meant",
				ev.Domain, *path, ev.Entity, strings.Join(tags, ", "))
		}
	} else if entityLevel {
		fmt.Fprintf(env.Stderr, "warning: --entity %s without --keys is entity-level only where the matrix sets entity_refs on domain %q; "+
			"where it does not, the router invalidates the domain's tags whole (pass --matrix to check before sending)\n", ev.Entity, ev.Domain)
	}
	c, err := rf.open(nil)
	if err != nil {
		return err
	}
	defer c.Close()
	tp, stopTracing, err := telemetry.Setup(ctx, env.Getenv, env.Stdout, "routerd-publish")
	if err != nil {
		return err
	}
	defer func() { _ = stopTracing(context.WithoutCancel(ctx)) }()
	p, err := publisher.New(c, publisher.Options{Prefix: *prefix, Publisher: *pubName, TracerProvider: tp, Durable: *durable})
	if err != nil {
		return err
	}
	id, err := p.Publish(ctx, ev)
	if *durable && redis.IsPermissionError(err) {
		return fmt.Errorf("%w\n  --durable reads INFO replication and sends WAIT, which the publisher user printed by `routerd acl --role publisher` may not run: "+
			"give the user the rules of `routerd acl --role publisher --durable` (docs/security.md)", err)
	}
	if err != nil && id != "" && redisconn.Unsent(err) {
		// No connection was made: no XADD left.
		return fmt.Errorf("%w\n  nothing was appended (the bus was not reached): publish it again, with --id %s to keep its id", err, id)
	}
	if err != nil && id != "" {
		// The event may be on the bus all the same (a lost reply): a
		// retry without its id would be a second event.
		return fmt.Errorf("%w\n  the event may be on the bus all the same: publish it again with --id %s, not without", err, id)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(env.Stdout, id)
	return nil
}

// routable refuses an event the matrix at path would not route (from the
// streams of pub, when not empty), and takes the matrix's prefix unless
// --prefix was given (and then they must agree).
func routable(env *Env, f *flags, path, tenant, domain, pub string, prefix *string) ([]matrix.Route, error) {
	m, err := loadMatrix(env, path)
	if err != nil {
		return nil, err
	}
	routes, known := m.Routes(tenant, domain)
	if !known {
		return nil, fmt.Errorf("nothing sent: domain %q is not in %s (domains: %s)", domain, path, strings.Join(m.DomainNames(), ", "))
	}
	if len(routes) == 0 {
		return nil, fmt.Errorf("nothing sent: no service of domain %q's tags serves tenant %q in %s, so the event would reach no channel", domain, tenant, path)
	}
	if pub != "" {
		if _, ok := m.Publishers[pub]; !ok {
			have := "it has none"
			if len(m.Publishers) > 0 {
				have = "publishers: " + strings.Join(m.PublisherNames(), ", ")
			}
			return nil, fmt.Errorf("nothing sent: publisher %q is not in the publishers section of %s (%s): no router reads its streams", pub, path, have)
		}
		if !m.Granted(pub, domain, tenant) {
			return nil, fmt.Errorf("nothing sent: publisher %q is not granted domain %q for tenant %q in %s, so the router would dead-letter the event (not_granted)", pub, domain, tenant, path)
		}
	}
	prefixGiven := isFlagSet(f, "prefix")
	if !prefixGiven {
		*prefix = m.Prefix
	} else if *prefix != m.Prefix {
		return nil, fmt.Errorf("nothing sent: --prefix %q differs from the prefix %q of %s", *prefix, m.Prefix, path)
	}
	return routes, nil
}

func invalidate(ctx context.Context, env *Env, args []string) error {
	return onTag(ctx, env, args, "invalidate", "tag to invalidate", true, func(s *tagstore.Store, tenant, tag string, keys []string) error {
		res, err := s.Apply(ctx, tagstore.Invalidation{Tenant: tenant, Tag: tag, Keys: keys})
		if err != nil {
			return err
		}
		how := ""
		if res.Chunked {
			how = ", in chunks (the tag is above the cardinality guard)"
		}
		fmt.Fprintf(env.Stdout, "%s: %s deleted%s\n", res.Status, plural(res.Deleted, "key", "keys"), how)
		return nil
	})
}

func compact(ctx context.Context, env *Env, args []string) error {
	return onTag(ctx, env, args, "compact", "tag whose set to compact", false, func(s *tagstore.Store, tenant, tag string, _ []string) error {
		n, err := s.Compact(ctx, tenant, tag)
		if err != nil {
			return err
		}
		if n == 1 {
			fmt.Fprintln(env.Stdout, "1 member whose key no longer exists removed from the tag set")
		} else {
			fmt.Fprintf(env.Stdout, "%d members whose keys no longer exist removed from the tag set\n", n)
		}
		return nil
	})
}

// onTag is a command on one tenant's tag in a cache Redis.
func onTag(ctx context.Context, env *Env, args []string, name, tagHelp string, withKeys bool,
	run func(s *tagstore.Store, tenant, tag string, keys []string) error) error {
	usage := "--redis URL --tenant T --tag X"
	if withKeys {
		usage += " [--keys a,b]"
	}
	f := newFlags(env, name, usage)
	rf := f.redis("redis", "ROUTERD_CACHE_REDIS_URL", "cache Redis holding the tag sets")
	tenant := f.String("tenant", "", "tenant")
	tag := f.String("tag", "", tagHelp)
	keys := new(string)
	if withKeys {
		keys = f.String("keys", "", "comma-separated keys; without --keys the whole tag")
	}
	sf := f.store()
	if err := f.parse(args); err != nil {
		return err
	}
	if err := f.required("redis", "tenant", "tag"); err != nil {
		return err
	}
	list := splitList(*keys)
	keysGiven := false
	f.Visit(func(fl *flag.Flag) { keysGiven = keysGiven || fl.Name == "keys" })
	if keysGiven && len(list) == 0 {
		// An empty --keys (an empty variable) is a mistake, never a request
		// to flush the whole tag.
		return fmt.Errorf("--keys names no key; omit --keys to invalidate the whole tag")
	}
	s, closeStore, err := sf.open(rf)
	if err != nil {
		return err
	}
	defer closeStore()
	return run(s, *tenant, *tag, list)
}

func doctorCmd(ctx context.Context, env *Env, args []string) error {
	f := newFlags(env, "doctor", "--redis URL [--growth-file F]")
	rf := f.redis("redis", "ROUTERD_REDIS_URL", "the Redis to check (bus or cache)")
	prefix := f.String("prefix", names.DefaultPrefix, "routerd's prefix, for the ingress checks")
	guard := f.Int("cardinality-guard", tagstore.DefaultCardinalityGuard, "the subscribers' cardinality guard")
	maxLag := f.Int64("max-lag", 10000, "unrouted ingress entries above which routerd is behind")
	growthFile := f.String("growth-file", "", "keep the largest tag sets' sizes in this file: each run reports how they grew since the last one, and warns of a set that reaches the guard within a day")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := f.required("redis"); err != nil {
		return err
	}
	if err := names.Prefix(*prefix); err != nil {
		return err
	}
	c, err := rf.open(nil)
	if err != nil {
		return err
	}
	defer c.Close()
	findings, err := doctor.Run(ctx, c, doctor.Options{Prefix: *prefix, CardinalityGuard: *guard, MaxLag: *maxLag, GrowthFile: *growthFile})
	failed := false
	for _, fd := range findings {
		fmt.Fprintf(env.Stdout, "%-4s  %-11s %-20s %s\n", fd.Level, fd.Check, fd.Node, fd.Message)
		failed = failed || fd.Level == doctor.Fail
	}
	if err != nil {
		return err
	}
	if failed {
		fmt.Fprintln(env.Stderr, "routerd doctor: problems found (FAIL lines above)")
		return errFailed
	}
	return nil
}

func matrixCmd(_ context.Context, env *Env, args []string) error {
	const usage = "Usage: routerd matrix diff OLD NEW\n\nSubcommands:\n  diff  which channels, services, routes and limits a matrix change adds or removes"
	if err := subcommand(env, "matrix", usage, args, "diff"); err != nil {
		return err
	}
	f := newFlags(env, "matrix diff", "OLD NEW")
	if err := f.Parse(args[1:]); err != nil {
		return err
	}
	if f.NArg() != 2 {
		return f.fail("want two matrix files, the old and the new, got %s", argList(f.Args()))
	}
	old, err := loadMatrix(env, f.Arg(0))
	if err != nil {
		return err
	}
	m, err := loadMatrix(env, f.Arg(1))
	if err != nil {
		return err
	}
	changes := matrix.Diff(old, m)
	if len(changes) == 0 {
		fmt.Fprintln(env.Stdout, "no change to channels, services, routes or limits")
	}
	for _, c := range changes {
		fmt.Fprintln(env.Stdout, c)
	}
	return nil
}

// storeFlags are the cache-side flags shared by agent, invalidate and compact.
type storeFlags struct {
	template *string
	guard    *int
}

func (f *flags) store() storeFlags {
	return storeFlags{
		template: f.String("key-template", tagstore.DefaultKeyTemplate, "cache key name template"),
		guard:    f.Int("cardinality-guard", tagstore.DefaultCardinalityGuard, "tags larger than this are deleted in chunks of 1000"),
	}
}

func (sf storeFlags) options() tagstore.Options {
	return tagstore.Options{KeyTemplate: *sf.template, CardinalityGuard: *sf.guard}
}

// open connects to the cache Redis and returns a store on it and its closer.
func (sf storeFlags) open(rf *redisFlags) (*tagstore.Store, func(), error) {
	c, err := rf.open(nil)
	if err != nil {
		return nil, nil, err
	}
	s, err := tagstore.New(c, sf.options())
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return s, func() { c.Close() }, nil
}

// subcommand checks the first argument of a command that has subcommands
// (`routerd deadletter replay`, `routerd matrix diff`): missing or unknown,
// it prints the usage and fails as a usage error; help prints it and
// returns flag.ErrHelp. The commands have one subcommand each today.
func subcommand(env *Env, cmd, usage string, args []string, sub string) error {
	switch {
	case len(args) == 0:
		fmt.Fprintln(env.Stderr, usage)
		return errUsage
	case isHelp(args[0]) || args[0] == "help":
		fmt.Fprintln(env.Stdout, usage)
		return flag.ErrHelp
	case args[0] != sub:
		fmt.Fprintf(env.Stderr, "routerd %s: unknown subcommand %q (subcommands: %s)\n\n%s\n", cmd, args[0], sub, usage)
		return errUsage
	}
	return nil
}
