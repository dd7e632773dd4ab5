package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/routerd/routerd/internal/acl"
)

const aclArgs = "--matrix F --role router|publisher|subscriber|cache --user NAME [--service S] [--publisher P] [--durable] [--format setuser|aclfile]"

// aclCmd prints the least-privilege ACL of one role, derived from the matrix.
func aclCmd(_ context.Context, env *Env, args []string) error {
	f := newFlags(env, "acl", aclArgs)
	path := f.stringEnv("matrix", "ROUTERD_MATRIX", "", "routing matrix file")
	role := f.String("role", "", "router, publisher, subscriber or cache")
	user := f.String("user", "", "the Redis user name")
	var spec acl.Spec
	f.StringVar(&spec.Service, "service", "", "the service (subscriber and cache roles)")
	f.StringVar(&spec.Publisher, "publisher", "", "the publisher of the matrix's publishers section (publisher role): only its own streams")
	f.StringVar(&spec.KeyTemplate, "key-template", "", "the cache key template, when not the default (cache role)")
	f.BoolVar(&spec.Cluster, "cluster", false, "the Redis is a cluster: CLUSTER SLOTS, sharded pub/sub")
	f.BoolVar(&spec.Durable, "durable", false, "the publisher publishes with --durable (INFO, WAIT)")
	format := f.String("format", "setuser", "setuser (an ACL SETUSER command) or aclfile (a line of an ACL file)")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := f.required("matrix", "role", "user"); err != nil {
		return err
	}
	if *format != "setuser" && *format != "aclfile" {
		return usagef("--format %q: must be setuser or aclfile", *format)
	}
	if err := acl.ValidUser(*user); err != nil {
		return &usageError{err}
	}
	m, err := loadMatrix(env, *path)
	if err != nil {
		return err
	}
	spec.Role = acl.Role(*role)
	rules, err := acl.For(m, spec)
	if errors.Is(err, acl.ErrSpec) { // a role, service or publisher the flags got wrong
		return &usageError{err}
	}
	if err != nil {
		return err
	}
	for _, w := range rules.Warnings {
		fmt.Fprintln(env.Stderr, "warning:", w)
	}
	if *format == "aclfile" {
		fmt.Fprintln(env.Stdout, rules.FileLine(*user))
	} else {
		fmt.Fprintln(env.Stdout, rules.SetUser(*user))
	}
	return nil
}
