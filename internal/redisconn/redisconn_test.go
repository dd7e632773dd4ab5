package redisconn

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func cluster(t *testing.T, urls string) *redis.ClusterOptions {
	t.Helper()
	c, err := Open(urls, true)
	if err != nil {
		t.Fatalf("Open(%q): %v", urls, err)
	}
	t.Cleanup(func() { c.Close() })
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		t.Fatalf("Open(%q, true) = %T", urls, c)
	}
	return cc.Options()
}

// Every option go-redis reads from a cluster URL reaches the client; none is
// dropped on the way.
func TestClusterURLKeepsOptions(t *testing.T) {
	o := cluster(t, "rediss://user:secret@127.0.0.1:7000?dial_timeout=3s&read_timeout=4s&write_timeout=5&pool_size=7&max_redirects=2&client_name=r1&addr=127.0.0.1:7003")
	if o.DialTimeout != 3*time.Second || o.ReadTimeout != 4*time.Second || o.WriteTimeout != 5*time.Second {
		t.Errorf("timeouts dial %v read %v write %v", o.DialTimeout, o.ReadTimeout, o.WriteTimeout)
	}
	if o.PoolSize != 7 || o.MaxRedirects != 2 || o.ClientName != "r1" {
		t.Errorf("pool_size %d, max_redirects %d, client_name %q", o.PoolSize, o.MaxRedirects, o.ClientName)
	}
	if o.Username != "user" || o.Password != "secret" || o.TLSConfig == nil {
		t.Errorf("user %q password %q TLS %v", o.Username, o.Password, o.TLSConfig != nil)
	}
	if strings.Join(o.Addrs, ",") != "127.0.0.1:7000,127.0.0.1:7003" {
		t.Errorf("addrs %v", o.Addrs)
	}
	if o.ClusterStateReloadInterval != 2*time.Second {
		t.Errorf("ClusterStateReloadInterval %v", o.ClusterStateReloadInterval)
	}
}

// Comma-separated seeds share the first URL's options and credentials.
func TestClusterSeeds(t *testing.T) {
	o := cluster(t, "redis://:pw@127.0.0.1:7000?pool_size=3, redis://:pw@127.0.0.1:7001,redis://127.0.0.1:7002")
	if strings.Join(o.Addrs, ",") != "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002" || o.Password != "pw" || o.PoolSize != 3 {
		t.Errorf("addrs %v password %q pool_size %d", o.Addrs, o.Password, o.PoolSize)
	}
}

func TestStandaloneURLKeepsOptions(t *testing.T) {
	c, err := Open("redis://127.0.0.1:6379/3?pool_size=5&dial_timeout=2s", false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o := c.(*redis.Client).Options()
	if o.DB != 3 || o.PoolSize != 5 || o.DialTimeout != 2*time.Second {
		t.Errorf("db %d pool_size %d dial_timeout %v", o.DB, o.PoolSize, o.DialTimeout)
	}
}

// Bad URLs are refused with the rule they break, and never show a password.
func TestBadURLs(t *testing.T) {
	for _, tc := range []struct {
		urls    string
		cluster bool
		want    string
	}{
		{"", false, "no Redis URL"},
		{"redis://:secret@127.0.0.1:1/2", true, "only db 0"},
		{"redis://:secret@127.0.0.1:1,redis://127.0.0.1:2/1", false, "only db 0"},
		{"redis://:secret@127.0.0.1:1?pool_size=x", true, "pool_size"},
		{"redis://:secret@127.0.0.1:1?no_such_option=1", true, "no_such_option"},
		{"redis://:secret@127.0.0.1:1,redis://:other@127.0.0.1:2", false, "credentials"},
		{"redis://:secret@127.0.0.1:1,redis://127.0.0.1:2?pool_size=3", false, "first URL"},
		{"http://:secret@127.0.0.1:1", true, "scheme"},
		{"redis://:secret@127.0.0.1:x", false, "port"},
		{"redis://:secret@127.0.0.1:x", true, "port"},
	} {
		c, err := Open(tc.urls, tc.cluster)
		if err == nil {
			c.Close()
			t.Errorf("Open(%q, %v) succeeded", tc.urls, tc.cluster)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q, %v): %v, want it to say %q without the password", tc.urls, tc.cluster, err, tc.want)
		}
	}
}
