package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/names"
)

const tailUsage = "--redis URL (--tenant T[,T2…] --tag X[,Y…] | --all --matrix F --service S)"

func tail(ctx context.Context, env *Env, args []string) error {
	f := newFlags(env, "tail", tailUsage)
	rf := f.redis("redis", "ROUTERD_REDIS_URL", "bus Redis")
	prefix := f.String("prefix", names.DefaultPrefix, "channel prefix (the matrix's prefix; with --matrix, the matrix's)")
	tenants := f.String("tenant", "", "tenant, or comma-separated tenants")
	tags := f.String("tag", "", "tag, or comma-separated tags: every tenant's channel of every tag is tailed")
	all := f.Bool("all", false, "tail every channel of --service in --matrix")
	path := f.stringEnv("matrix", "ROUTERD_MATRIX", "", "routing matrix (with --all)")
	service := f.String("service", "", "the service whose channels --all tails")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := f.required("redis"); err != nil {
		return err
	}
	var channels, patterns []string
	if *all {
		if *tenants != "" || *tags != "" {
			return f.fail("--all takes the channels from the matrix: drop --tenant and --tag")
		}
		if err := f.required("matrix", "service"); err != nil {
			return err
		}
		m, err := loadMatrix(env, *path)
		if err != nil {
			return err
		}
		sub, ok := m.SubscriptionFor(*service)
		if !ok {
			return fmt.Errorf("service %q is not in %s (services: %s)", *service, *path, strings.Join(m.ServiceNames(), ", "))
		}
		if !isFlagSet(f, "prefix") {
			*prefix = m.Prefix
		}
		for _, tag := range sub.Tags {
			if sub.AllTenants {
				patterns = append(patterns, names.Channel(*prefix, "*", tag))
				continue
			}
			for _, tenant := range sub.Tenants {
				channels = append(channels, names.Channel(*prefix, tenant, tag))
			}
		}
		if len(channels)+len(patterns) == 0 {
			return fmt.Errorf("service %q owns no tag in %s: nothing to tail", *service, *path)
		}
	} else {
		if err := f.required("tenant", "tag"); err != nil {
			return err
		}
		if err := names.Prefix(*prefix); err != nil {
			return err
		}
		tl, gl := splitList(*tenants), splitList(*tags)
		if len(tl) == 0 || len(gl) == 0 {
			return f.fail("--tenant and --tag must each name at least one")
		}
		for _, t := range tl {
			if err := names.Tenant(t); err != nil {
				return err
			}
		}
		for _, g := range gl {
			if err := names.Tag(g); err != nil {
				return err
			}
		}
		for _, t := range tl {
			for _, g := range gl {
				channels = append(channels, names.Channel(*prefix, t, g))
			}
		}
	}
	c, err := rf.open(nil)
	if err != nil {
		return err
	}
	defer c.Close()
	return tailChannels(ctx, env, c, channels, patterns)
}

func isFlagSet(f *flags, name string) bool {
	set := false
	f.Visit(func(fl *flag.Flag) { set = set || fl.Name == name })
	return set
}

// tailChannels subscribes to the channels and patterns and prints each
// message as a line until ctx ends. On a cluster each channel gets its own
// sharded subscription (one SSUBSCRIBE names the channels of one slot), and
// a pattern cannot be followed.
func tailChannels(ctx context.Context, env *Env, c redis.UniversalClient, channels, patterns []string) error {
	var subs []*redis.PubSub
	if redisconn.IsCluster(c) {
		if len(patterns) > 0 {
			return errors.New("a service of every tenant has channels only per tenant on a cluster (sharded pub/sub has no patterns): name them with --tenant and --tag")
		}
		for _, ch := range channels {
			subs = append(subs, c.SSubscribe(ctx, ch))
		}
	} else {
		ps := c.Subscribe(ctx, channels...)
		if len(patterns) > 0 {
			if err := ps.PSubscribe(ctx, patterns...); err != nil {
				ps.Close()
				return err
			}
		}
		subs = append(subs, ps)
	}
	closeAll := func() {
		for _, ps := range subs {
			_ = ps.Close()
		}
	}
	defer closeAll()
	stop := context.AfterFunc(ctx, closeAll) // go-redis reads ignore ctx
	defer stop()
	var mu sync.Mutex // one line at a time
	print := func(payload string) {
		mu.Lock()
		fmt.Fprintln(env.Stdout, payload)
		mu.Unlock()
	}
	// Each subscription is confirmed before "tailing" is printed.
	want := len(channels) + len(patterns)
	if redisconn.IsCluster(c) {
		want = 1
	}
	for _, ps := range subs {
		for got := 0; got < want; {
			msg, err := ps.Receive(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("subscribe %s: %w", strings.Join(append(channels, patterns...), " "), err)
			}
			switch m := msg.(type) {
			case *redis.Subscription:
				got++
			case *redis.Message:
				print(m.Payload)
			}
		}
	}
	fmt.Fprintf(env.Stderr, "tailing %s\n", strings.Join(append(channels, patterns...), " "))
	var g errgroup.Group
	for _, ps := range subs {
		g.Go(func() error {
			for {
				msg, err := ps.ReceiveMessage(ctx)
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					closeAll() // and so stop the others
					return err
				}
				print(msg.Payload)
			}
		})
	}
	return g.Wait()
}
