package redistest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel is a master and its replicas, watched by sentinels
// (redis-server --sentinel) that fail it over quickly: a master that does
// not answer for 1 s is down, and a failover takes about 2 s from a kill.
// (200 ms made a master merely slow on a loaded machine down, and its
// failover, then a second one to the old master restarted empty, flaked
// tests; they fail masters explicitly, KillMaster and Failover, and a
// longer wait costs them about a second each.)
type Sentinel struct {
	// Name is the name the sentinels know the master by (master_name).
	Name string
	// Servers are the data servers: Servers[0] started as the master, the
	// others as its replicas. After a failover the master is another one
	// (Master).
	Servers []*Server
	// Sentinels are the sentinels, each watching the master with a quorum
	// of a majority of them.
	Sentinels []*Server
	// TLS is the client configuration of a set-up started by
	// StartSentinelTLS (the same for the servers and the sentinels); nil
	// for a plain one.
	TLS *tls.Config
}

// sentinelConf is what a sentinel's configuration file says besides where
// it listens: the master it monitors and how fast it fails it over.
type sentinelConf struct {
	name, master string
	quorum       int
}

// args writes the sentinel's configuration file into dir (once: a
// sentinel rewrites it as it learns its replicas and peers, and a relaunch
// starts from what it learnt) and returns the command line that starts it
// from that file, with the data server's arguments (port, bind, dir, log)
// after it. Sentinel needs a file it can write; it ignores persistence.
func (c *sentinelConf) args(dir, port string, server []string) ([]string, error) {
	path := filepath.Join(dir, "sentinel-"+port+".conf")
	if _, err := os.Stat(path); os.IsNotExist(err) {
		host, mport, _ := net.SplitHostPort(c.master)
		conf := fmt.Sprintf("sentinel monitor %[1]s %[2]s %[3]s %[4]d\n"+
			"sentinel down-after-milliseconds %[1]s 1000\n"+
			"sentinel failover-timeout %[1]s 2000\n"+
			"sentinel parallel-syncs %[1]s 1\n", c.name, host, mport, c.quorum)
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			return nil, fmt.Errorf("redistest: writing the sentinel's configuration: %w", err)
		}
	}
	return append(append([]string{path}, server...), "--sentinel"), nil
}

// StartSentinel starts a master with replicas replicas (each in sync with it
// before this returns) and sentinels sentinels watching it, each process in
// a directory of its own. Everything stops when the test ends.
func StartSentinel(tb testing.TB, replicas, sentinels int) *Sentinel {
	tb.Helper()
	return startSentinel(tb, nil, replicas, sentinels)
}

// StartSentinelTLS is StartSentinel over TLS only, every process requiring
// a client certificate signed by p: the servers (and their replication)
// on 127.0.0.1 with certificates for 127.0.0.1 only, the sentinels on
// 127.0.0.2 with certificates for 127.0.0.2 only, so a client that
// verified the master under a sentinel's address would fail. TLS (and each
// Server's) is a client configuration with a certificate of p.
func StartSentinelTLS(tb testing.TB, p *PKI, replicas, sentinels int) *Sentinel {
	tb.Helper()
	return startSentinel(tb, p, replicas, sentinels)
}

func startSentinel(tb testing.TB, p *PKI, replicas, sentinels int) *Sentinel {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		Binary(tb)
	}
	if sentinels < 1 {
		tb.Fatalf("redistest: a Sentinel set-up needs a sentinel")
	}
	root := tb.TempDir()
	s := &Sentinel{Name: "bus" + strconv.FormatInt(prefixSeq.Add(1), 10)}
	tb.Cleanup(s.Stop)
	dir := func(what string, i int) string {
		d := filepath.Join(root, what+strconv.Itoa(i))
		if err := os.Mkdir(d, 0o755); err != nil {
			tb.Fatal(err)
		}
		return d
	}
	// A replica's first sync waits repl-diskless-sync-delay (5 s by
	// default) for others to join it; a promoted replica is a master too.
	fast := []string{"--repl-diskless-sync-delay", "0"}
	launch := func(dir, host string, conf *sentinelConf, args ...string) (*Server, error) {
		if p == nil {
			return launchOn(dir, host, nil, nil, conf, args)
		}
		// Replication and the sentinels' links are TLS too; each process
		// shows its own certificate as a client.
		cert, key, err := p.issue("redis-"+host, host)
		if err != nil {
			return nil, err
		}
		return launchOn(dir, host, &tlsFiles{cert, key, p.CAFile}, s.TLS, conf, append(args, "--tls-replication", "yes"))
	}
	if p != nil {
		s.TLS = p.ClientConfig(tb)
	}
	master, err := launch(dir("server", 0), "127.0.0.1", nil, fast...)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	s.Servers = append(s.Servers, master)
	host, port, _ := net.SplitHostPort(master.Addr)
	for i := 1; i <= replicas; i++ {
		r, err := launch(dir("server", i), "127.0.0.1", nil, append(fast, "--replicaof", host, port)...)
		if err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		s.Servers = append(s.Servers, r)
	}
	ctx := context.Background()
	Eventually(tb, 30*time.Second, "every replica in sync with the master", func() bool {
		return connectedReplicas(ctx, master) == replicas
	})
	conf := &sentinelConf{name: s.Name, master: master.Addr, quorum: sentinels/2 + 1}
	sentinelHost := "127.0.0.1"
	if p != nil {
		sentinelHost = "127.0.0.2"
	}
	for i := 0; i < sentinels; i++ {
		sn, err := launch(dir("sentinel", i), sentinelHost, conf)
		if err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		s.Sentinels = append(s.Sentinels, sn)
	}
	// Ready means every sentinel knows every replica (it learns them from
	// the master's INFO) and, with more than one sentinel, every other
	// sentinel (from their hellos on the master): a sentinel that knows no
	// replica has nothing to promote, and one that knows no peer cannot be
	// elected to fail over.
	Eventually(tb, 30*time.Second, "every sentinel knows every replica and sentinel", func() bool {
		for _, sn := range s.Sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr, TLSConfig: s.TLS})
			rs, err := c.Replicas(ctx, s.Name).Result()
			peers, err2 := c.Sentinels(ctx, s.Name).Result()
			_ = c.Close()
			if err != nil || err2 != nil || len(peers) != sentinels-1 || len(usable(rs)) != replicas {
				return false
			}
		}
		return true
	})
	return s
}

// launchOn starts a server (a sentinel with conf) on a free port of host,
// with TLS files f (plain when nil) and the client configuration client,
// retrying another port when the one found free was taken before the
// server bound it.
func launchOn(dir, host string, f *tlsFiles, client *tls.Config, conf *sentinelConf, args []string) (*Server, error) {
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePortOn(host)
		if err != nil {
			return nil, err
		}
		s := &Server{Addr: net.JoinHostPort(host, strconv.Itoa(port)), Dir: dir, args: args, tlsf: f, TLS: client, sentinel: conf}
		s.URL = "redis://" + s.Addr
		if f != nil {
			s.URL = "rediss://" + s.Addr
		}
		if lastErr = s.start(); lastErr == nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("could not start redis-server on %s: %v", host, lastErr)
}

// usable returns the replicas a sentinel lists (SENTINEL REPLICAS) that it
// could promote: neither down nor disconnected.
func usable(replicas []map[string]string) []string {
	var out []string
	for _, r := range replicas {
		if f := r["flags"]; strings.Contains(f, "down") || strings.Contains(f, "disconnected") {
			continue
		}
		out = append(out, net.JoinHostPort(r["ip"], r["port"]))
	}
	return out
}

// connectedReplicas is the master's count of replicas in sync (INFO
// replication's connected_slaves whose state is online); -1 when it does
// not answer.
func connectedReplicas(ctx context.Context, s *Server) int {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: s.TLS, MaxRetries: -1})
	defer c.Close()
	info, err := c.InfoMap(ctx, "replication").Result()
	if err != nil {
		return -1
	}
	n := 0
	for k, v := range info["Replication"] {
		if strings.HasPrefix(k, "slave") && strings.Contains(v, "state=online") {
			n++
		}
	}
	return n
}

// URL is the Sentinel URL routerd's --redis flag takes
// (redis.ParseFailoverURL's form): the first sentinel in the host, every
// other one as addr=, and the master's name.
func (s *Sentinel) URL() string {
	q := url.Values{"master_name": {s.Name}}
	for _, sn := range s.Sentinels[1:] {
		q.Add("addr", sn.Addr)
	}
	scheme := "redis://"
	if s.TLS != nil {
		scheme = "rediss://"
	}
	return scheme + s.Sentinels[0].Addr + "?" + q.Encode()
}

// MasterAddr is the master's address as the first sentinel that answers
// reports it (SENTINEL GET-MASTER-ADDR-BY-NAME).
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	var lastErr error
	for _, sn := range s.Sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr, TLSConfig: s.TLS, MaxRetries: -1})
		addr, err := c.GetMasterAddrByName(ctx, s.Name).Result()
		_ = c.Close()
		if err == nil && len(addr) == 2 {
			return net.JoinHostPort(addr[0], addr[1]), nil
		}
		lastErr = err
	}
	return "", fmt.Errorf("redistest: no sentinel names the master %s: %v", s.Name, lastErr)
}

// Master returns the data server the sentinels name as the master.
func (s *Sentinel) Master(tb testing.TB) *Server {
	tb.Helper()
	addr, err := s.MasterAddr(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	for _, srv := range s.Servers {
		if srv.Addr == addr {
			return srv
		}
	}
	tb.Fatalf("redistest: the sentinels name %s as the master of %s, none of its servers", addr, s.Name)
	return nil
}

// Client returns a failover client (go-redis's NewFailoverClient) of the
// master, closed when the test ends.
func (s *Sentinel) Client(tb testing.TB) *redis.Client {
	addrs := make([]string, len(s.Sentinels))
	for i, sn := range s.Sentinels {
		addrs[i] = sn.Addr
	}
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: s.Name, SentinelAddrs: addrs, TLSConfig: s.TLS})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// KillMaster kills the master (kill -9: what it had not sent its replicas
// is lost) and waits until every sentinel names another server as the
// master and that server answers as one. It returns the new master.
func (s *Sentinel) KillMaster(tb testing.TB) *Server {
	tb.Helper()
	old := s.Master(tb)
	old.Stop()
	return s.waitPromoted(tb, old)
}

// Failover has the first sentinel fail the master over to a replica
// (SENTINEL FAILOVER: nothing is killed, the old master is made a replica
// of the promoted one) and waits until every sentinel names the promoted
// replica and it answers as master (the old master is made its replica
// by the sentinels later). It returns the new master.
func (s *Sentinel) Failover(tb testing.TB) *Server {
	tb.Helper()
	ctx := context.Background()
	old := s.Master(tb)
	c := redis.NewSentinelClient(&redis.Options{Addr: s.Sentinels[0].Addr, TLSConfig: s.TLS})
	defer c.Close()
	if err := c.Failover(ctx, s.Name).Err(); err != nil {
		tb.Fatalf("redistest: SENTINEL FAILOVER %s: %v", s.Name, err)
	}
	return s.waitPromoted(tb, old)
}

// waitPromoted waits until every sentinel names another server than old as
// the master and that server answers as one, and returns it.
func (s *Sentinel) waitPromoted(tb testing.TB, old *Server) *Server {
	tb.Helper()
	ctx := context.Background()
	var promoted *Server
	Eventually(tb, 30*time.Second, "a sentinel failover of "+old.Addr, func() bool {
		promoted = nil
		for _, sn := range s.Sentinels {
			c := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr, TLSConfig: s.TLS, MaxRetries: -1})
			addr, err := c.GetMasterAddrByName(ctx, s.Name).Result()
			_ = c.Close()
			if err != nil || len(addr) != 2 || net.JoinHostPort(addr[0], addr[1]) == old.Addr {
				return false
			}
			for _, srv := range s.Servers {
				if srv.Addr == net.JoinHostPort(addr[0], addr[1]) {
					promoted = srv
				}
			}
		}
		return promoted != nil && role(ctx, promoted) == "master"
	})
	return promoted
}

// role is a server's INFO replication role, "" when it does not answer.
func role(ctx context.Context, s *Server) string {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: s.TLS, MaxRetries: -1})
	defer c.Close()
	info, err := c.InfoMap(ctx, "replication").Result()
	if err != nil {
		return ""
	}
	return info["Replication"]["role"]
}

// Stop stops the sentinels, then the servers.
func (s *Sentinel) Stop() {
	for _, sn := range s.Sentinels {
		sn.Stop()
	}
	for _, srv := range s.Servers {
		srv.Stop()
	}
}
