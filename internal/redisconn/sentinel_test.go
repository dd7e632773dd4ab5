package redisconn

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
)

// A Sentinel URL (redis.ParseFailoverURL's form: master_name in the query)
// opens a failover client; every sentinel, the master's name, the data
// nodes' and the sentinels' credentials, the db and go-redis's options
// reach it.
func TestSentinelURLKeepsOptions(t *testing.T) {
	u := "rediss://su:spw@10.0.0.1:26379/2?master_name=bus&addr=10.0.0.2:26379&addr=10.0.0.3:26380" +
		"&username=routerd&password=dpw&dial_timeout=3s&pool_size=7&client_name=r1&skip_verify=true"
	o, err := sentinelOptions(u, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if o.MasterName != "bus" || strings.Join(o.SentinelAddrs, ",") != "10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26380" {
		t.Errorf("master %q sentinels %v", o.MasterName, o.SentinelAddrs)
	}
	if o.Username != "routerd" || o.Password != "dpw" || o.SentinelUsername != "su" || o.SentinelPassword != "spw" {
		t.Errorf("data nodes %q/%q, sentinels %q/%q", o.Username, o.Password, o.SentinelUsername, o.SentinelPassword)
	}
	if o.DB != 2 || o.DialTimeout != 3*time.Second || o.PoolSize != 7 || o.ClientName != "r1" {
		t.Errorf("db %d dial_timeout %v pool_size %d client_name %q", o.DB, o.DialTimeout, o.PoolSize, o.ClientName)
	}
	// Each server (a sentinel, the master a sentinel names) is verified
	// under its own address, not the first sentinel's host.
	if o.TLSConfig == nil || o.TLSConfig.ServerName != "" || !o.TLSConfig.InsecureSkipVerify {
		t.Errorf("TLS %+v, want each server's own name and skip_verify", o.TLSConfig)
	}

	c := open(t, u, Options{})
	if fc, ok := c.(*redis.Client); !ok || IsCluster(c) || fc.Options().DB != 2 {
		t.Errorf("OpenWith(%q) = %T, want a failover *redis.Client on db 2", u, c)
	}
	// What names the server in messages (doctor's findings, "no replica of
	// …") names the master, not go-redis's placeholder "FailoverClient".
	if addr := c.(*redis.Client).Options().Addr; addr != "sentinel:bus" {
		t.Errorf("the client's Addr is %q, want sentinel:bus", addr)
	}
}

// The password file is the data nodes' password; the TLS files apply to
// every server (go-redis dials the sentinels and the data nodes with one
// tls.Config).
func TestSentinelPasswordAndTLSFiles(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := sentinelOptions("redis://:spw@127.0.0.1:1?master_name=m&username=routerd", Options{PasswordFile: pw})
	if err != nil {
		t.Fatal(err)
	}
	if o.Password != "s3cret" || o.CredentialsProviderContext == nil || o.SentinelPassword != "spw" {
		t.Errorf("data password %q (provider %v), sentinel password %q", o.Password, o.CredentialsProviderContext != nil, o.SentinelPassword)
	}
	if user, p, err := o.CredentialsProviderContext(context.Background()); user != "routerd" || p != "s3cret" || err != nil {
		t.Errorf("credentials %q %q %v", user, p, err)
	}

	pki := redistest.NewPKI(t)
	cert, key := pki.Issue(t, "routerd")
	o, err = sentinelOptions("rediss://127.0.0.1:1?master_name=m", Options{TLS: TLSFiles{CA: pki.CAFile, Cert: cert, Key: key, ServerName: "redis.internal"}})
	if err != nil {
		t.Fatal(err)
	}
	if o.TLSConfig.RootCAs == nil || o.TLSConfig.GetClientCertificate == nil || o.TLSConfig.ServerName != "redis.internal" {
		t.Errorf("TLS %+v, want the CA, the client certificate and the server name", o.TLSConfig)
	}
	if _, err := sentinelOptions("redis://127.0.0.1:1?master_name=m", Options{TLS: TLSFiles{CA: pki.CAFile}}); err == nil || !strings.Contains(err.Error(), "is not rediss://") {
		t.Errorf("TLS files on redis://: %v", err)
	}
}

// What a Sentinel URL cannot be is refused with the rule it breaks, and
// never shows a password (the user information's, the sentinels', nor
// password=, the data nodes').
func TestSentinelBadURLs(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("filepw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		urls string
		o    Options
		want string
	}{
		{"redis://:secret@127.0.0.1:1?master_name=m,redis://127.0.0.1:2", Options{}, "&addr=host:port"},
		{"redis://127.0.0.1:2,redis://127.0.0.1:1?master_name=m&password=secret", Options{}, "&addr=host:port"},
		{"redis://127.0.0.1:1?master_name=m&password=secret", Options{Cluster: true}, "drop --cluster"},
		{"redis://:secret@127.0.0.1:1?master_name=", Options{}, "master_name is empty"},
		{"redis://127.0.0.1:1?master_name=m&password=secret&replica_only=true", Options{}, "replica_only"},
		{"redis://127.0.0.1:1?master_name=m&password=secret&route_randomly=true", Options{}, "route_randomly"},
		{"redis://127.0.0.1:1?master_name=m&password=secret&route_by_latency=1", Options{}, "route_by_latency"},
		{"redis://127.0.0.1:1?master_name=m&password=secret&pool_size=x", Options{}, "pool_size"},
		{"redis://127.0.0.1:1?master_name=m&password=secret&min_idle_conns=2", Options{}, "min_idle_conns"},
		{"redis://127.0.0.1:1?master_name=m&password=secret&no_such=1", Options{}, "no_such"},
		{"redis://127.0.0.1:1?master_name=m&password=secret&addr=nohost", Options{}, "addr"},
		{"redis://127.0.0.1:1/x?master_name=m&password=secret", Options{}, "database number"},
		{"http://127.0.0.1:1?master_name=m&password=secret", Options{}, "scheme"},
		{"redis://127.0.0.1:1?master_name=m&password=secret", Options{PasswordFile: pw}, "has a password and a password file"},
		{"redis://127.0.0.1:1?master_name=m&Pass%77ord=secret&x=1", Options{}, "Pass%77ord"},
	} {
		c, err := OpenWith(tc.urls, tc.o)
		if err == nil {
			c.Close()
			t.Errorf("OpenWith(%q) succeeded", tc.urls)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("OpenWith(%q): %v, want it to say %q without the password", tc.urls, err, tc.want)
		}
	}
}

// A failover client of real sentinels follows a failover; a sentinel that
// does not answer (the URL's first) is passed over for the next (addr=).
func TestSentinelFollowsFailover(t *testing.T) {
	s := redistest.StartSentinel(t, 1, 1)
	ctx := context.Background()

	// A master no sentinel knows: every command fails, with an error that
	// says so and that is not redis.Nil (go-redis joins the sentinels'
	// nil answers into it, and a GET's error would read as a missing key).
	unknown := open(t, fmt.Sprintf("redis://%s?master_name=nosuch&dialer_retries=1", s.Sentinels[0].Addr), Options{})
	// A client made from its Options (the router's own read connections)
	// dials the same way.
	o := *unknown.(*redis.Client).Options()
	copied := redis.NewClient(&o)
	defer copied.Close()
	for _, c := range []redis.UniversalClient{unknown, copied} {
		err := c.Get(ctx, "k").Err()
		if err == nil || errors.Is(err, redis.Nil) || !strings.Contains(err.Error(), `no sentinel knows a master named "nosuch"`) {
			t.Errorf("GET through an unknown master: %v (redis.Nil: %v), want an error naming the master, not redis.Nil", err, errors.Is(err, redis.Nil))
		}
		// No connection was made: the command was never sent (a claim
		// that fails so is not a lost reply, which shrinks the reads).
		if !Unsent(err) {
			t.Errorf("GET through an unknown master: Unsent(%v) is false, want true", err)
		}
	}

	dead := redistest.RefusedAddr(t)
	u := fmt.Sprintf("redis://%s?master_name=%s&addr=%s", dead, s.Name, s.Sentinels[0].Addr)
	c := open(t, u, Options{})
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("through the second sentinel: %v", err)
	}
	masters, err := Masters(ctx, c)
	if err != nil || len(masters) != 1 || masters[0] != c {
		t.Fatalf("Masters = %v, %v; want the failover client itself", masters, err)
	}
	if err := c.Do(ctx, "WAIT", 1, 5000).Err(); err != nil {
		t.Fatal(err)
	}
	promoted := s.KillMaster(t)
	redistest.Eventually(t, 10*time.Second, "a write on the promoted replica", func() bool {
		return c.Set(ctx, "k2", "v2", 0).Err() == nil
	})
	if v, err := promoted.Client(t).Get(ctx, "k2").Result(); err != nil || v != "v2" {
		t.Errorf("k2 on the promoted replica %s: %q, %v", promoted.Addr, v, err)
	}
}

// FuzzSentinelURL: whatever a Sentinel URL holds, OpenWith neither panics
// (go-redis's failover client panics on its routing options) nor shows
// the data nodes' password (password=) in an error; a client it opens is
// a failover client.
func FuzzSentinelURL(f *testing.F) {
	f.Add("redis://u:x@h:1/0?master_name=m&", "s3cret", "&addr=h:2")
	f.Add("rediss://h:1?route_randomly=true&master_name=m&", "s3cret", "&db=x")
	f.Add("redis://[::1]:1?master_name=&", "s3cret", "#frag")
	f.Add("redis://h:1?master_name=m&pool_size=-1&", "p%41ss", ",redis://h:2")
	f.Fuzz(func(t *testing.T, head, pw, tail string) {
		if len(pw) < 6 || strings.ContainsAny(pw, "&#,@") || strings.Contains(fmt.Sprintf("%q %s", head+tail, head+tail), pw) {
			return
		}
		u := head + "password=" + pw + tail
		if !strings.Contains(head, "master_name=") || !strings.HasSuffix(head, "&") || strings.Contains(head, "#") {
			return
		}
		if strings.Contains(redact(u), pw) {
			t.Errorf("redact(%q) = %q", u, redact(u))
		}
		for _, cluster := range []bool{false, true} {
			c, err := OpenWith(u, Options{Cluster: cluster})
			if err != nil {
				if strings.Contains(err.Error(), pw) {
					t.Errorf("OpenWith(%q): %v", u, err)
				}
				continue
			}
			if fc, ok := c.(*redis.Client); isSentinel(u) && (!ok || !strings.HasPrefix(fc.Options().Addr, "sentinel:")) {
				t.Errorf("OpenWith(%q) = %T, want a failover client", u, c)
			}
			c.Close()
		}
	})
}

// A pub/sub connection of a failover client leaves a master the sentinels
// demote without a crash (SENTINEL FAILOVER) while it still runs as a
// master: messages published on the promoted replica reach it before the
// sentinels reconfigure the old master and close its clients (go-redis
// closes only its pooled connections on the switch).
func TestSentinelPubSubFollowsManualFailover(t *testing.T) {
	s := redistest.StartSentinel(t, 1, 1)
	subscriptionFollowsManualFailover(t, s, open(t, s.URL(), Options{}), "")
}

// subscriptionFollowsManualFailover subscribes through c, fails s's master
// over without a crash (SENTINEL FAILOVER), and fails the test unless a
// message published on the promoted replica reaches the subscription while
// the old master still runs as a master (before the sentinels reconfigure
// it and close its clients). hint ends the failure's message.
func subscriptionFollowsManualFailover(t *testing.T, s *redistest.Sentinel, c redis.UniversalClient, hint string) {
	t.Helper()
	ctx := context.Background()
	ps := c.Subscribe(ctx, "ch")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	old := s.Master(t)
	promoted := s.Failover(t).Client(t)
	messages := ps.Channel()
	redistest.Eventually(t, 20*time.Second, "a message published on the promoted replica", func() bool {
		if err := promoted.Publish(ctx, "ch", "m").Err(); err != nil {
			return false
		}
		select {
		case msg := <-messages:
			return msg.Payload == "m"
		case <-time.After(100 * time.Millisecond):
			return false
		}
	})
	info, err := old.Client(t).InfoMap(ctx, "replication").Result()
	if err != nil || info["Replication"]["role"] != "master" {
		t.Errorf("the subscription left the old master only once the sentinels had reconfigured it (role %q, %v)%s", info["Replication"]["role"], err, hint)
	}
}

// Over TLS (rediss://, every process asking for a client certificate) the
// TLS files reach the sentinels and the data servers, and each is verified
// under its own address: the sentinels' certificates are for 127.0.0.2
// only, the servers' for 127.0.0.1 only, so the master verified under the
// first sentinel's host (what ParseFailoverURL sets) would fail. A failover
// is followed over TLS too.
func TestSentinelTLSVerifiesEachServer(t *testing.T) {
	pki := redistest.NewPKI(t)
	s := redistest.StartSentinelTLS(t, pki, 1, 1)
	cert, key := pki.Issue(t, "routerd")
	ctx := context.Background()
	c := open(t, s.URL(), Options{TLS: TLSFiles{CA: pki.CAFile, Cert: cert, Key: key}})
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("over TLS: %v", err)
	}
	if err := c.Do(ctx, "WAIT", 1, 5000).Err(); err != nil {
		t.Fatal(err)
	}
	s.KillMaster(t)
	redistest.Eventually(t, 10*time.Second, "a write on the promoted replica over TLS", func() bool {
		return c.Set(ctx, "k2", "v2", 0).Err() == nil
	})
	// One name for every server: the sentinels' certificates do not hold it.
	err := open(t, s.URL()+"&dialer_retries=1", Options{TLS: TLSFiles{CA: pki.CAFile, Cert: cert, Key: key, ServerName: "127.0.0.1"}}).Ping(ctx).Err()
	if err == nil || !strings.Contains(err.Error(), "127.0.0.2") {
		t.Errorf("with --tls-server-name 127.0.0.1: %v, want the sentinel's certificate refused", err)
	}
}

// The watch that makes connections follow the master asks the sentinels
// with the CA file as it is now, as go-redis's own sentinel and data
// connections do (the CA-file dialer): a client started while the file
// held another CA, the sentinels' and servers' CA added since, still has
// its pub/sub connection leave a master demoted without a crash.
func TestSentinelWatchReadsTheCAFileAgain(t *testing.T) {
	pki := redistest.NewPKI(t)
	s := redistest.StartSentinelTLS(t, pki, 1, 1)
	cert, key := pki.Issue(t, "routerd")
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	replaceFile(t, caFile, caBundle(t, redistest.NewPKI(t)))
	c := open(t, s.URL(), Options{TLS: TLSFiles{CA: caFile, Cert: cert, Key: key}})
	replaceFile(t, caFile, caBundle(t, pki))
	subscriptionFollowsManualFailover(t, s, c, ": the watch did not reach a sentinel")
}

// A pooled connection the master closed while it sat idle (its timeout,
// CLIENT KILL) is dropped by go-redis's check before it is handed out, as
// for a client of one server: a client that sends a command only once (the
// router's claims, onceOnly) does not fail it on a dead connection. The
// check needs the connection's socket (syscall.Conn), which the watch's
// wrapper must expose.
func TestSentinelPoolDropsAConnectionTheMasterClosed(t *testing.T) {
	s := redistest.StartSentinel(t, 1, 1)
	ctx := context.Background()
	c := open(t, s.URL(), Options{})
	o := *c.(*redis.Client).Options()
	o.MaxRetries = -1
	once := redis.NewClient(&o)
	defer once.Close()
	id, err := once.ClientID(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	admin := s.Master(t).Client(t)
	if err := admin.ClientKillByFilter(ctx, "ID", fmt.Sprint(id)).Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 5*time.Second, "the killed connection gone from the master", func() bool {
		list, err := admin.Do(ctx, "CLIENT", "LIST", "ID", id).Text()
		return err == nil && list == ""
	})
	if err := once.Ping(ctx).Err(); err != nil {
		t.Errorf("PING on a client without retries, its idle connection closed by the master: %v", err)
	}
}
