package gqlcache

import (
	"context"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/tagstore"
)

// Bad options are refused at construction, naming what is wrong.
func TestNewRefusesBadOptions(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	store, err := tagstore.New(c, tagstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := matrix.Parse("m.yaml", []byte("version: 1\ntags: {users: {services: [s]}}\ndomains: {user: {tags: [users], entity_refs: true}, plain: {tags: [users]}}\nservices: {s: {tenants: all}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	tenant := func(context.Context) (string, error) { return "acme", nil }
	good := Options{Store: store, Matrix: m, Types: map[string]string{"User": "user"}, Tenant: tenant}
	if _, err := New(good); err != nil {
		t.Fatalf("good options refused: %v", err)
	}
	for want, mutate := range map[string]func(*Options){
		"Store is required":                func(o *Options) { o.Store = nil },
		"Matrix is required":               func(o *Options) { o.Matrix = nil },
		"Tenant is required":               func(o *Options) { o.Tenant = nil },
		"at least one GraphQL type":        func(o *Options) { o.Types = nil },
		`domain "order", which the matrix`: func(o *Options) { o.Types = map[string]string{"Order": "order"} },
		"negative TTL":                     func(o *Options) { o.TTL = -1 },
		// Its key-level events carry keys only: they would never reach a
		// cached response.
		`domain "plain", which has no entity_refs`: func(o *Options) { o.Types = map[string]string{"Plain": "plain"} },
		"KeyPrefix": func(o *Options) { o.KeyPrefix = "tag:" },
	} {
		opt := good
		mutate(&opt)
		if _, err := New(opt); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New = %v, want an error saying %q", err, want)
		}
	}
}
