// Package redistest starts real redis-server processes on free loopback ports
// for tests, and stops them when the test ends. No test assumes a server on
// 6379 or anywhere else.
package redistest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is one redis-server process.
type Server struct {
	Addr string // 127.0.0.1:port
	URL  string // redis://127.0.0.1:port
	Dir  string
	// TLS is a client configuration (CA and client certificate) for a
	// server started by StartTLS; nil for a plain one.
	TLS  *tls.Config
	args []string
	tlsf *tlsFiles
	// sentinel is the configuration a sentinel starts from (sentinel.go);
	// nil for a data server.
	sentinel *sentinelConf
	cmd      *exec.Cmd
	done     chan struct{}
}

// Binary returns the path of redis-server, or fails the test saying how to
// install it.
func Binary(tb testing.TB) string {
	tb.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server is not installed: run `apt-get install -y redis-server` (or `make test`, which does it)")
	}
	return path
}

// Start runs a standalone redis-server with persistence off. Extra args are
// passed on the command line ("--maxmemory-policy", "allkeys-lru").
func Start(tb testing.TB, args ...string) *Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		Binary(tb)
	}
	s, err := Launch(tb.TempDir(), args...)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// StartEach starts a standalone server for each list of extra args (as
// Start), all at once: a start waits mostly for its process to listen,
// longer on a loaded machine. The servers stop when the test ends.
func StartEach(tb testing.TB, args ...[]string) []*Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		Binary(tb)
	}
	servers := make([]*Server, len(args))
	errs := make([]error, len(args))
	var wg sync.WaitGroup
	for i, a := range args {
		dir := tb.TempDir()
		wg.Add(1)
		go func() {
			defer wg.Done()
			servers[i], errs[i] = Launch(dir, a...)
		}()
	}
	wg.Wait()
	for _, s := range servers {
		if s != nil {
			tb.Cleanup(s.Stop)
		}
	}
	if err := errors.Join(errs...); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return servers
}

// Launch starts a redis-server outside a test (the benchmark harness), with
// its files in dir; the caller stops it.
func Launch(dir string, args ...string) (*Server, error) {
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), Dir: dir, args: args}
		s.URL = "redis://" + s.Addr
		if lastErr = s.start(); lastErr == nil {
			return s, nil
		}
	}
	return nil, fmt.Errorf("could not start redis-server: %v", lastErr)
}

func (s *Server) start() error {
	host, port, _ := net.SplitHostPort(s.Addr)
	listen := []string{"--port", port}
	if s.tlsf != nil {
		listen = s.tlsf.args(port)
	}
	args := append(append(listen,
		"--bind", host, "--save", "", "--appendonly", "no",
		"--dir", s.Dir, "--protected-mode", "no", "--loglevel", "warning",
		// A replica (a cluster's, or one a test makes with REPLICAOF)
		// syncs at once: by default a master waits 5 s for more replicas
		// before it starts a diskless sync, and every cluster with
		// replicas, and every failover, waited that long.
		"--repl-diskless-sync-delay", "0",
		"--logfile", filepath.Join(s.Dir, "redis-"+port+".log"),
	), s.args...)
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return fmt.Errorf("redis-server is not installed: run `apt-get install -y redis-server`")
	}
	if s.sentinel != nil {
		if args, err = s.sentinel.args(s.Dir, port, args); err != nil {
			return err
		}
	}
	cmd := exec.Command(bin, args...)
	// A process group of its own, so that Stop reaches the children redis
	// forks (BGSAVE, AOF rewrite) too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.done) }()
	if err := waitReady(s.Addr, s.TLS, cmd.Process.Pid, s.done, 10*time.Second); err != nil {
		s.Stop()
		log, _ := os.ReadFile(filepath.Join(s.Dir, "redis-"+port+".log"))
		return fmt.Errorf("%v\n%s", err, log)
	}
	return nil
}

// Stop kills the server (like a crash: nothing is saved) and any child it
// forked, and returns once none of them runs: a surviving BGSAVE or AOF
// rewrite child would go on writing into the server's directory after the
// test ended. Safe to call twice.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	pgid := s.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	_ = s.cmd.Process.Kill()
	<-s.done
	waitGroupGone(pgid)
}

// waitGroupGone waits until no process of the group runs. A killed child
// that nobody reaps stays a zombie, which writes nothing, so the wait is
// bounded and looks at the process state where /proc tells it.
func waitGroupGone(pgid int) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if syscall.Kill(-pgid, 0) == syscall.ESRCH || !groupHasLiveProcess(pgid) {
			return
		}
	}
}

// groupHasLiveProcess reports whether a process of the group other than a
// zombie exists; without /proc it assumes one does.
func groupHasLiveProcess(pgid int) bool {
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil || len(stats) == 0 {
		return true
	}
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 3 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			return true
		}
	}
	return false
}

// Restart kills the server and starts an empty one on the same port.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		tb.Fatalf("redistest: restart: %v", err)
	}
}

// Relaunch kills the server (if it runs) and starts it again on the same
// port with the same arguments and directory. Unlike Restart it reports an
// error instead of failing the test, so it may be called from any goroutine.
// A cluster node comes back with its node config and rejoins its cluster.
func (s *Server) Relaunch() error {
	s.Stop()
	return s.start()
}

// Exited reports whether the server process has ended (killed or crashed).
func (s *Server) Exited() bool {
	if s.done == nil {
		return true
	}
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Snapshot saves the dataset (SAVE) and keeps a copy of the dump; the
// returned path is for RestoreSnapshot.
func (s *Server) Snapshot(ctx context.Context) (string, error) {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: s.TLS})
	defer c.Close()
	if err := c.Save(ctx).Err(); err != nil {
		return "", fmt.Errorf("redistest: SAVE on %s: %w", s.Addr, err)
	}
	dump := filepath.Join(s.Dir, "dump.rdb")
	path := filepath.Join(s.Dir, fmt.Sprintf("snapshot-%d.rdb", prefixSeq.Add(1)))
	if err := copyFile(dump, path); err != nil {
		return "", fmt.Errorf("redistest: keeping the snapshot: %w", err)
	}
	return path, os.Remove(dump)
}

// RestoreSnapshot kills the server and starts it on the same port from a
// snapshot taken earlier, the way a cache Redis comes back from an old
// backup: everything written since the snapshot is gone, everything deleted
// since is back. The dump is removed once loaded, so a later Restart or
// Relaunch starts empty as before.
func (s *Server) RestoreSnapshot(path string) error {
	s.Stop()
	dump := filepath.Join(s.Dir, "dump.rdb")
	if err := copyFile(path, dump); err != nil {
		return fmt.Errorf("redistest: restoring the snapshot: %w", err)
	}
	if err := s.start(); err != nil {
		return err
	}
	return os.Remove(dump)
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o644)
}

// Client returns a client for the server, closed when the test ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, TLSConfig: s.TLS})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// waitReady waits until the server started as process pid answers on addr.
// The answer must come from that process: the port was free when picked,
// but another test's server may have bound it since, and then ours exits
// with "Address already in use" while the other answers PING.
func waitReady(addr string, tc *tls.Config, pid int, exited <-chan struct{}, timeout time.Duration) error {
	// One dial per try (DialerRetries 1): go-redis otherwise dials again
	// after 100 ms when refused, and a server that listens within a few
	// milliseconds of its start was found ready only then.
	c := redis.NewClient(&redis.Options{Addr: addr, TLSConfig: tc, MaxRetries: -1, DialTimeout: 200 * time.Millisecond, DialerRetries: 1})
	defer c.Close()
	deadline := time.Now().Add(timeout)
	want := "process_id:" + strconv.Itoa(pid) + "\r\n"
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		info, err := c.Info(ctx, "server").Result()
		cancel()
		if err == nil {
			if strings.Contains(info, want) {
				return nil
			}
			err = fmt.Errorf("another process answers on %s", addr)
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server on %s exited: %v", addr, err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s not ready after %v: %v", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var prefixSeq atomic.Int64

// Prefix returns a channel and key prefix unique to this test.
func Prefix(tb testing.TB) string {
	return fmt.Sprintf("t%d-%d", os.Getpid()%100000, prefixSeq.Add(1))
}

// Eventually polls cond until it returns true or the deadline passes; it
// waits for outcomes, never for a fixed time.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if err := Wait(context.Background(), timeout, what, cond); err != nil {
		tb.Fatal(err)
	}
}

// Wait polls cond until it holds and returns nil; after timeout it returns
// an error naming what it waited for, and ctx's error when ctx ends first.
// It is the one polling loop of the tests: Eventually is it for a test that
// fails then; a caller that must not fail its test (the soak, which stops
// cleanly and reports) takes the error.
func Wait(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	port, err := freePort()
	if err != nil {
		tb.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(port)
}

// RefusedAddr returns a loopback address that refuses connections for the
// rest of the test: its port is bound by a socket that does not listen, so
// a connection is refused and no server can take the port meanwhile. A
// FreeAddr taken for "nobody listens there" could be taken by a server of a
// test running beside (packages run in parallel): a claim meant to fail
// once found a Redis there.
func RefusedAddr(tb testing.TB) string {
	tb.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		tb.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		tb.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)
}

// Cluster is a Redis Cluster of real servers on loopback ports.
type Cluster struct {
	Nodes []*Server
	Addrs []string
	// TLS is the client configuration of a cluster started by
	// StartClusterTLS; nil for a plain one.
	TLS *tls.Config
}

// URL is the comma-separated seed list routerd's --redis flag takes.
func (c *Cluster) URL() string {
	urls := make([]string, len(c.Addrs))
	scheme := "redis://"
	if c.TLS != nil {
		scheme = "rediss://"
	}
	for i, a := range c.Addrs {
		urls[i] = scheme + a
	}
	return strings.Join(urls, ",")
}

// Client returns a cluster client that notices failovers within seconds,
// closed when the test ends.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs, TLSConfig: c.TLS, ClusterStateReloadInterval: 500 * time.Millisecond})
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// StartCluster starts masters × (1 + replicas) servers and joins them into a
// cluster with `redis-cli --cluster create`, then waits until every node
// reports cluster_state:ok. The servers stop when the test ends.
func StartCluster(tb testing.TB, masters, replicas int) *Cluster {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		Binary(tb)
	}
	c, err := LaunchCluster(tb.TempDir(), masters, replicas)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(c.Stop)
	return c
}

// Shape is a cluster's size for StartClusters: Masters × (1 + Replicas)
// servers.
type Shape struct{ Masters, Replicas int }

// StartClusters starts a cluster of each shape, all at once: a master
// takes writes only 2 s after its server started (Redis's cluster
// writable delay), which clusters started one after the other each wait
// in turn. The servers stop when the test ends.
func StartClusters(tb testing.TB, shapes ...Shape) []*Cluster {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		Binary(tb)
	}
	cs := make([]*Cluster, len(shapes))
	errs := make([]error, len(shapes))
	var wg sync.WaitGroup
	for i, sh := range shapes {
		dir := tb.TempDir()
		wg.Add(1)
		go func() {
			defer wg.Done()
			cs[i], errs[i] = LaunchCluster(dir, sh.Masters, sh.Replicas)
		}()
	}
	wg.Wait()
	for _, c := range cs {
		if c != nil {
			tb.Cleanup(c.Stop)
		}
	}
	if err := errors.Join(errs...); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return cs
}

// LaunchCluster starts a cluster outside a test (the benchmark harness),
// with its files in dir; the caller stops it.
func LaunchCluster(dir string, masters, replicas int) (*Cluster, error) {
	return launchCluster(func(int) (string, error) { return dir, nil }, masters, replicas)
}

// StartClusterOwnDirs is StartCluster with a directory of its own for each
// node, so a node killed and started again (Relaunch) finds only its own
// files: its cluster config, and no dump.rdb another node's replication
// wrote.
func StartClusterOwnDirs(tb testing.TB, masters, replicas int) *Cluster {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		Binary(tb)
	}
	root := tb.TempDir()
	c, err := launchCluster(func(i int) (string, error) {
		dir := filepath.Join(root, "node"+strconv.Itoa(i))
		return dir, os.Mkdir(dir, 0o755)
	}, masters, replicas)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	tb.Cleanup(c.Stop)
	return c
}

func launchCluster(dirOf func(node int) (string, error), masters, replicas int) (*Cluster, error) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("redis-cli is not installed: run `apt-get install -y redis-tools`")
	}
	n := masters * (1 + replicas)
	c := &Cluster{Nodes: make([]*Server, n), Addrs: make([]string, n)}
	// The nodes start together: each start waits mostly for its process
	// to listen, longer on a loaded machine.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		dir, err := dirOf(i)
		if err != nil {
			wg.Wait()
			c.Stop()
			return nil, err
		}
		conf := fmt.Sprintf("nodes-%d-%d.conf", os.Getpid(), prefixSeq.Add(1))
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Nodes[i], errs[i] = Launch(dir, "--cluster-enabled", "yes", "--cluster-node-timeout", "1000", "--cluster-config-file", conf)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Stop()
		return nil, err
	}
	for i, s := range c.Nodes {
		c.Addrs[i] = s.Addr
	}
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		c.Stop()
		return nil, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	// Ready means every node sees the cluster ok and every replica has
	// synced with its master: a replica that never synced cannot take over.
	deadline := time.Now().Add(60 * time.Second)
	for !c.ready(replicas) {
		if time.Now().After(deadline) {
			c.Stop()
			return nil, fmt.Errorf("redistest: no cluster_state:ok on every node and every replica in sync within 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c, nil
}

func (c *Cluster) ready(replicas int) bool {
	for _, n := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: n.Addr, TLSConfig: n.TLS})
		info, err := cl.ClusterInfo(context.Background()).Result()
		repl, err2 := cl.Info(context.Background(), "replication").Result()
		_ = cl.Close()
		if err != nil || err2 != nil || !strings.Contains(info, "cluster_state:ok") {
			return false
		}
		if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
			return false
		}
		if strings.Contains(repl, "role:master") && replicas > 0 && !strings.Contains(repl, "connected_slaves:"+strconv.Itoa(replicas)) {
			return false
		}
	}
	return true
}

// Stop stops every node.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		if n == nil {
			continue // not started: LaunchCluster failed
		}
		n.Stop()
	}
}

// MoveSlot migrates the hash slot of key, with all its keys, to the master
// at toAddr, the way `redis-cli --cluster reshard` does: SETSLOT
// IMPORTING/MIGRATING, MIGRATE of every key, then SETSLOT NODE on every master.
func (c *Cluster) MoveSlot(tb testing.TB, key string, toAddr string) {
	tb.Helper()
	ctx := context.Background()
	cc := c.Client(tb)
	from, err := cc.MasterForKey(ctx, key)
	if err != nil {
		tb.Fatalf("MoveSlot: %v", err)
	}
	slot64, err := cc.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		tb.Fatalf("MoveSlot: %v", err)
	}
	slot := int(slot64)
	to := redis.NewClient(&redis.Options{Addr: toAddr})
	defer to.Close()
	fromID, _ := from.ClusterMyID(ctx).Result()
	toID, _ := to.ClusterMyID(ctx).Result()
	must := func(err error) {
		if err != nil {
			tb.Fatalf("MoveSlot %d: %v", slot, err)
		}
	}
	must(to.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID).Err())
	must(from.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID).Err())
	host, port, _ := net.SplitHostPort(toAddr)
	for {
		keys, err := from.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		must(err)
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000, "REPLACE", "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		must(from.Do(ctx, args...).Err())
	}
	must(cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		return n.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", toID).Err()
	}))
}
