// Package polyglot runs the clients in other languages (examples/python,
// examples/node) end to end: each caches values under tags with lua/set.lua,
// publishes changes by raw XADD, and receives the invalidations through
// `routerd agent --deliver` in an HTTP receiver of its own, against real
// redis-server processes and the real routerd binary.
package polyglot

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
)

// exampleMatrix is the matrix of both examples, which their READMEs tell a
// reader to run routerd on: the domain user invalidates the tag active,
// which the service app caches under for every tenant.
const exampleMatrix = "../../examples/matrix.yaml"

// The examples' READMEs run routerd on the matrix this test runs them on,
// with the commands that start every process they need.
func TestExampleREADMEsNameTheirMatrix(t *testing.T) {
	if _, err := os.Stat(exampleMatrix); err != nil {
		t.Fatalf("the examples' matrix: %v", err)
	}
	for _, readme := range []string{"../../examples/python/README.md", "../../examples/node/README.md"} {
		data, err := os.ReadFile(readme)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"routerd serve --redis redis://127.0.0.1:6390 --matrix examples/matrix.yaml",
			"--service app --matrix examples/matrix.yaml", "redis-server --port 6391", "--agent-ready http://127.0.0.1:9465/readyz"} {
			if !strings.Contains(string(data), want) {
				t.Errorf("%s lacks %q", readme, want)
			}
		}
	}
}

// Python and Node examples: published from the example, routed by routerd,
// delivered by the agent to the example's HTTP receiver, whose in-process
// cache loses the keys (and the agent deletes the cache Redis copies).
func TestPythonExample(t *testing.T) {
	py := pythonWithRedis(t)
	checkVectors(t, py, "../../examples/python/tagged_cache.py")
	e := startSystem(t)
	e.runExample(t, "python", py, "../../examples/python/tagged_cache.py", "OK: python example")
}

func TestNodeExample(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not on the PATH: the Node example (examples/node) is not run")
	}
	dir, _ := filepath.Abs("../../examples/node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ioredis")); err != nil {
		npm, err := exec.LookPath("npm")
		if err != nil {
			t.Skip("node is on the PATH but npm is not, and examples/node/node_modules is missing: run `make node-deps`")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in examples/node: %v\n%s", err, out)
		}
	}
	checkVectors(t, node, filepath.Join(dir, "tagged_cache.js"))
	e := startSystem(t)
	e.runExample(t, "node", node, filepath.Join(dir, "tagged_cache.js"), "OK: node example")
}

// checkVectors runs an example's own partition function over the FNV-1a
// test vectors of docs/protocol.md (which wire's test checks against
// wire.Partition): a wrong partition would still be routed, only out of
// order, so the end-to-end run alone would not show it.
func checkVectors(t *testing.T, interpreter, script string) {
	t.Helper()
	out, err := exec.Command(interpreter, script, "--check-vectors", "../../docs/protocol.md").CombinedOutput()
	if err != nil || !bytes.HasPrefix(out, []byte("OK: ")) {
		t.Fatalf("%s --check-vectors: %v\n%s", script, err, out)
	}
}

// pythonWithRedis returns a Python interpreter that has redis-py: Debian's
// /usr/bin/python3 (where `make test` installs python3-redis) first, then
// python3 on the PATH. With ROUTERD_TEST_REQUIRE_PYTHON set (as `make test`
// does) a missing one fails the test instead of skipping it.
func pythonWithRedis(t *testing.T) string {
	t.Helper()
	candidates := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	for _, p := range candidates {
		if exec.Command(p, "-c", "import redis").Run() == nil {
			return p
		}
	}
	msg := fmt.Sprintf("no Python with redis-py (tried %s): install it with `make python3-redis` (apt-get install python3-redis)", strings.Join(candidates, ", "))
	if os.Getenv("ROUTERD_TEST_REQUIRE_PYTHON") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// system is a bus Redis, a cache Redis, `routerd serve` and, once an
// example says where it listens, `routerd agent --deliver`.
type system struct {
	bus, cache *redistest.Server
	matrix     string
	logs       *logs
}

func startSystem(t *testing.T) *system {
	t.Helper()
	e := &system{bus: redistest.Start(t), cache: redistest.Start(t), logs: &logs{}}
	e.matrix = exampleMatrix
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("routerd and agent output:\n%s", e.logs.String())
		}
	})
	exited := e.daemon(t, "serve", "serve", "--matrix", e.matrix, "--redis", e.bus.URL, "--listen", testbin.AnyPort)
	addr := testbin.ListenAddr(t, func() string { return e.logs.of("serve") })
	waitReady(t, "routerd serve", addr, exited)
	return e
}

// runExample starts the agent delivering to a free port, runs the example
// with its receiver on that port, and checks that it reports success.
func (e *system) runExample(t *testing.T, name, interpreter, script, success string) {
	t.Helper()
	// The example listens on recv itself, so that port is picked free
	// beforehand; the agent's is picked as it binds.
	recv := redistest.FreeAddr(t)
	// The agent is ready only once its first delivery, a reset, is made:
	// the example starts its receiver, then waits for the agent's /readyz.
	exited := e.daemon(t, "agent", "agent", "--redis", e.bus.URL, "--cache-redis", e.cache.URL, "--service", "app",
		"--matrix", e.matrix, "--listen", testbin.AnyPort, "--check-interval", "1s", "--deliver", "http://"+recv+"/")
	agentAddr := testbin.ListenAddr(t, func() string { return e.logs.of("agent") })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, interpreter, script, "--redis", e.bus.URL, "--cache-redis", e.cache.URL,
		"--listen", recv, "--agent-ready", "http://"+agentAddr+"/readyz",
		"--tenant", "acme", "--domain", "user", "--tag", "active", "--timeout", "30")
	out, err := cmd.CombinedOutput()
	select {
	case <-exited:
		t.Errorf("routerd agent exited while the %s example ran (its output is below)", name)
	default:
	}
	t.Logf("%s example output:\n%s", name, out)
	if ctx.Err() != nil {
		t.Fatalf("the %s example did not finish within its deadline", name)
	}
	if err != nil {
		t.Fatalf("the %s example failed: %v", name, err)
	}
	if !bytes.Contains(out, []byte(success)) {
		t.Fatalf("the %s example exited 0 without %q", name, success)
	}
	// protocol.md, section 3: before a tenant's first tagged value, the
	// tenant goes into the cache Redis's tenant index (nothing else here
	// writes it: the agent keeps its own position index).
	in, err := e.cache.Client(t).SIsMember(context.Background(), "routerd:tenants", "acme").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !in {
		t.Errorf("the %s example cached values of tenant acme without SADD routerd:tenants acme in the cache Redis (protocol.md, section 3)", name)
	}
}

// daemon starts a routerd command, stopped when the test ends. The channel
// is closed when it exits.
func (e *system) daemon(t *testing.T, name string, args ...string) <-chan struct{} {
	t.Helper()
	cmd := exec.Command(testbin.Routerd(t), args...)
	w := e.logs.writer(name)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	return exited
}

// waitReady polls a daemon's /readyz until it answers 200, and fails at once
// if the daemon exits.
func waitReady(t *testing.T, what, addr string, exited <-chan struct{}) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	redistest.Eventually(t, 30*time.Second, what+" /readyz", func() bool {
		select {
		case <-exited:
			t.Fatalf("%s exited before it was ready (its output is below)", what)
		default:
		}
		resp, err := client.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// logs collects the output of the daemons, line-prefixed with their name.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) writer(name string) *prefixWriter { return &prefixWriter{l: l, name: name} }

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// of returns the lines of one daemon, without their prefix.
func (l *logs) of(name string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(l.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, name+": "); ok {
			b.WriteString(rest)
		}
	}
	return b.String()
}

type prefixWriter struct {
	l    *logs
	name string
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	for _, line := range strings.SplitAfter(string(p), "\n") {
		if line != "" {
			w.l.buf.WriteString(w.name + ": " + line)
		}
	}
	return len(p), nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if err := testbin.Cleanup(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}
