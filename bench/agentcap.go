package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/tagstore"
	"github.com/routerd/routerd/wire"
)

var (
	agentChannels = flag.String("agent-channels", "200000,500000,1000000,2000000", "capacity-agent: the channels of one every-tenant agent, one run each")
	agentSharded  = flag.String("agent-sharded", "1000000/4", "capacity-agent: channels/k, one run of k agents with --tenant-shard i/k (empty: none)")
)

// agentCapacity measures issue 24's targets from outside, as a user runs
// it: N tenants in the registry, one tag, a real `routerd agent` of every
// tenant (and `routerd serve` for a live invalidation), on a bus with
// Redis's default configuration (client-output-buffer-limit pubsub 32mb
// 8mb 60). Per run: the time from the agent's start to /readyz 200, its
// RSS then, the bus memory the subscriptions take, the subscriptions held
// (subscriber_subscriptions), the connections the bus closed for their
// output buffer, and the time a live invalidation to the last tenant takes
// to be applied.
func agentCapacity(dir string) ([]Row, error) {
	var rows []Row
	var steps []string
	if *agentChannels != "" {
		steps = strings.Split(*agentChannels, ",")
	}
	if *quick {
		steps = []string{"20000"}
	}
	for _, s := range steps {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("-agent-channels: %q: %v", s, err)
		}
		r, err := agentCapacityRun(dir, n, 1)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r...)
	}
	if *agentSharded != "" && !*quick {
		ns, ks, _ := strings.Cut(*agentSharded, "/")
		n, err1 := strconv.Atoi(ns)
		k, err2 := strconv.Atoi(ks)
		if err1 != nil || err2 != nil || k < 1 {
			return nil, fmt.Errorf("-agent-sharded: want channels/k, not %q", *agentSharded)
		}
		r, err := agentCapacityRun(dir, n, k)
		if err != nil {
			return nil, err
		}
		rows = append(rows, r...)
	}
	return rows, nil
}

func agentCapacityRun(dir string, n, k int) ([]Row, error) {
	ctx := context.Background()
	name := fmt.Sprintf("capacity-agent %d channels", n)
	if k > 1 {
		name = fmt.Sprintf("capacity-agent %d channels over %d shards", n, k)
	}
	fmt.Fprintf(os.Stderr, "  %s…\n", name)
	bin, err := routerdBinary(dir)
	if err != nil {
		return nil, err
	}
	const yaml = "version: 1\ntags:\n  active: {services: [svc]}\ndomains:\n  user: {tags: [active]}\nservices:\n  svc: {tenants: all}\n"
	mtx, err := matrix.Parse("agentcap.yaml", []byte(yaml))
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "agentcap-matrix.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		return nil, err
	}
	bus, err := redistest.Launch(dir)
	if err != nil {
		return nil, err
	}
	defer bus.Stop()
	cache, err := redistest.Launch(dir)
	if err != nil {
		return nil, err
	}
	defer cache.Stop()
	busC := redis.NewClient(&redis.Options{Addr: bus.Addr})
	defer busC.Close()
	cacheC := redis.NewClient(&redis.Options{Addr: cache.Addr})
	defer cacheC.Close()

	// The registry: n tenants (one tag, so n channels, the announcement
	// channel besides).
	tenant := func(i int) string { return fmt.Sprintf("t%07d", i) }
	for i := 0; i < n; i += 10000 {
		args := make([]any, 0, 10000)
		for j := i; j < min(i+10000, n); j++ {
			args = append(args, tenant(j))
		}
		if err := busC.SAdd(ctx, names.TenantsKey(mtx.Prefix), args...).Err(); err != nil {
			return nil, err
		}
	}
	before, err := usedMemory(ctx, busC)
	if err != nil {
		return nil, err
	}

	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}()
	launch := func(args ...string) (*exec.Cmd, *logBuffer, error) {
		cmd := exec.Command(bin, append(args, "--listen", testbin.AnyPort)...)
		log := &logBuffer{}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		procs = append(procs, cmd)
		return cmd, log, nil
	}
	listening := func(log *logBuffer) (string, error) {
		var addr string
		if !waitFor(20*time.Second, func() bool { addr = testbin.ListenAddrIn(log.String()); return addr != "" }) {
			return "", fmt.Errorf("routerd did not listen: %s", log.String())
		}
		return addr, nil
	}
	if _, log, err := launch("serve", "--matrix", path, "--redis", bus.URL); err != nil {
		return nil, err
	} else if addr, err := listening(log); err != nil {
		return nil, err
	} else if !waitFor(20*time.Second, func() bool { return ready(addr) }) {
		return nil, fmt.Errorf("routerd serve not ready: %s", log.String())
	}

	start := time.Now()
	type agentProc struct {
		cmd  *exec.Cmd
		log  *logBuffer
		addr string
	}
	agents := make([]agentProc, k)
	for i := range agents {
		args := []string{"agent", "--matrix", path, "--redis", bus.URL, "--cache-redis", cache.URL, "--service", "svc", "--check-interval", "5m", "--tag-sample-interval", "0"}
		if k > 1 {
			args = append(args, "--tenant-shard", fmt.Sprintf("%d/%d", i, k))
		}
		cmd, log, err := launch(args...)
		if err != nil {
			return nil, err
		}
		agents[i] = agentProc{cmd: cmd, log: log}
	}
	var readyAfter []time.Duration
	for i := range agents {
		a := &agents[i]
		if a.addr, err = listening(a.log); err != nil {
			return nil, err
		}
		if !waitFor(10*time.Minute, func() bool { return ready(a.addr) }) {
			return nil, fmt.Errorf("agent %d not ready within 10m: %s", i, a.log.String())
		}
		readyAfter = append(readyAfter, time.Since(start))
	}
	var rss, hwm, held, expected float64
	for _, a := range agents {
		rss = max(rss, float64(procStatus(a.cmd.Process.Pid, "VmRSS")))
		hwm = max(hwm, float64(procStatus(a.cmd.Process.Pid, "VmHWM")))
		held += scrape(a.addr, "subscriber_subscriptions", `state="held"`)
		expected += scrape(a.addr, "subscriber_subscriptions", `state="expected"`)
	}
	after, err := usedMemory(ctx, busC)
	if err != nil {
		return nil, err
	}
	// Settled: the Go runtime gives the start's garbage back to the system
	// over the next seconds (its scavenger); idle agents, no check due.
	time.Sleep(settle)
	var settled float64
	for _, a := range agents {
		settled = max(settled, float64(procStatus(a.cmd.Process.Pid, "VmRSS")))
	}

	// A live invalidation to the last tenant.
	last := tenant(n - 1)
	store, err := tagstore.New(cacheC, tagstore.Options{})
	if err != nil {
		return nil, err
	}
	if err := store.Set(ctx, last, "user:1", []byte("v"), 0, "active"); err != nil {
		return nil, err
	}
	pub, err := publisher.New(busC, publisher.Options{Prefix: mtx.Prefix, Origin: "bench"})
	if err != nil {
		return nil, err
	}
	sent := time.Now()
	if _, err := pub.Publish(ctx, wire.Event{Tenant: last, Domain: "user", Keys: []string{"user:1"}}); err != nil {
		return nil, err
	}
	gone := waitFor(30*time.Second, func() bool {
		_, err := store.Get(ctx, last, "user:1")
		return err == redis.Nil
	})
	live := time.Since(sent)
	if !gone {
		return nil, fmt.Errorf("the live invalidation to %s was not applied within 30s", last)
	}
	closed := outputBufferClosures(bus)
	var slowest time.Duration
	for _, d := range readyAfter {
		slowest = max(slowest, d)
	}
	return []Row{
		{Scenario: name, Metric: "ready after (slowest agent)", Value: slowest.Seconds(), Unit: "s"},
		{Scenario: name, Metric: "agent RSS when ready (largest)", Value: rss / (1 << 20), Unit: "MiB"},
		{Scenario: name, Metric: "agent RSS a channel", Value: rss * float64(k) / float64(n), Unit: "B"},
		{Scenario: name, Metric: "agent peak RSS (VmHWM, largest)", Value: hwm / (1 << 20), Unit: "MiB"},
		{Scenario: name, Metric: "agent RSS settled, " + settle.String() + " after ready (largest)", Value: settled / (1 << 20), Unit: "MiB"},
		{Scenario: name, Metric: "agent RSS settled a channel", Value: settled * float64(k) / float64(n), Unit: "B"},
		{Scenario: name, Metric: "bus memory of the subscriptions", Value: float64(after-before) / (1 << 20), Unit: "MiB"},
		{Scenario: name, Metric: "subscriptions held", Value: held, Unit: "subs"},
		{Scenario: name, Metric: "subscriptions expected", Value: expected, Unit: "subs"},
		{Scenario: name, Metric: "connections closed by the bus for their output buffer", Value: float64(closed), Unit: "closes"},
		{Scenario: name, Metric: "live invalidation to the last tenant applied", Value: float64(live.Milliseconds()), Unit: "ms"},
	}, nil
}

// settle is how long after ready the agents' RSS is read again.
const settle = 30 * time.Second

// procStatus reads a field of /proc/<pid>/status in bytes (VmRSS, VmHWM).
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// outputBufferClosures counts the clients a redis-server closed for
// exceeding their output buffer limit, from its log.
func outputBufferClosures(s *redistest.Server) int {
	_, port, _ := net.SplitHostPort(s.Addr)
	log, _ := os.ReadFile(filepath.Join(s.Dir, "redis-"+port+".log"))
	return strings.Count(string(log), "overcoming of output buffer limits")
}
