package redisurl_test

import (
	"context"
	"log"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/redisurl"
	"github.com/routerd/routerd/subscriber"
)

// Open reads the URL forms routerd's commands take, with the options of
// their flags: one server, cluster seeds (comma-separated, or one with
// Cluster), a Sentinel URL; the password file and the TLS files reach the
// client; a password never shows in an error.
func TestOpen(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(urls string, o redisurl.Options) redis.UniversalClient {
		t.Helper()
		c, err := redisurl.Open(urls, o)
		if err != nil {
			t.Fatalf("Open(%q): %v", urls, err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}

	one := open("rediss://127.0.0.1:1/3", redisurl.Options{PasswordFile: pw, TLS: redisurl.TLSFiles{ServerName: "redis.internal"}})
	if o := one.(*redis.Client).Options(); o.DB != 3 || o.Password != "s3cret" || o.TLSConfig == nil || o.TLSConfig.ServerName != "redis.internal" {
		t.Errorf("one server: db %d, password %q, TLS %+v", o.DB, o.Password, o.TLSConfig)
	}
	for _, tc := range []struct {
		urls    string
		cluster bool
	}{{"redis://127.0.0.1:1,redis://127.0.0.1:2", false}, {"redis://127.0.0.1:1", true}} {
		if _, ok := open(tc.urls, redisurl.Options{Cluster: tc.cluster}).(*redis.ClusterClient); !ok {
			t.Errorf("Open(%q, Cluster %v) is no cluster client", tc.urls, tc.cluster)
		}
	}
	if addr := open("redis://127.0.0.1:1?master_name=bus&addr=127.0.0.1:2", redisurl.Options{}).(*redis.Client).Options().Addr; addr != "sentinel:bus" {
		t.Errorf("a Sentinel URL gives a client of %q, want the failover client of master bus", addr)
	}

	for _, tc := range []struct {
		urls string
		o    redisurl.Options
		want string
	}{
		{"redis://127.0.0.1:1?master_name=bus&password=secret", redisurl.Options{Cluster: true}, "drop --cluster"},
		{"redis://:secret@127.0.0.1:1", redisurl.Options{PasswordFile: pw}, "password file"},
		{"redis://:secret@127.0.0.1:1", redisurl.Options{TLS: redisurl.TLSFiles{CA: "ca.pem"}}, "not rediss://"},
		{"redis://:secret@127.0.0.1:1?no_such=1", redisurl.Options{}, "no_such"},
	} {
		c, err := redisurl.Open(tc.urls, tc.o)
		if err == nil {
			_ = c.Close()
			t.Errorf("Open(%q) succeeded", tc.urls)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q): %v, want it to say %q without the password", tc.urls, err, tc.want)
		}
	}
}

// An embedded subscriber on a bus that Redis Sentinel fails over, its
// client opened as routerd agent opens its own.
func ExampleOpen() {
	bus, err := redisurl.Open("redis://sentinel-1:26379?master_name=bus&addr=sentinel-2:26379&username=search-svc",
		redisurl.Options{PasswordFile: "/run/secrets/bus-password"})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	m, err := matrix.Load("matrix.yaml")
	if err != nil {
		log.Fatal(err)
	}
	sub, err := subscriber.New(bus, subscriber.Options{Service: "search-svc", Matrix: m,
		Handler: func(ctx context.Context, inv subscriber.Invalidation) error {
			log.Printf("drop %s/%s keys %v (none: the whole tag)", inv.Tenant, inv.Tag, inv.Keys)
			return nil
		}})
	if err != nil {
		log.Fatal(err)
	}
	// After a failover, even one without a crash, the subscriber's pub/sub
	// connections are on the new master within a second or two.
	if err := sub.Run(context.Background()); err != nil {
		log.Fatal(err)
	}
}
