// Package scripts holds the tests of the shell scripts beside it.
package scripts

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
)

// built builds routerd and the demo once for the tests of this package.
var built = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "routerd-run-test-")
	if err != nil {
		return "", err
	}
	for bin, pkg := range map[string]string{"routerd": "./cmd/routerd", "routerd-demo": "./examples/demo"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, bin), pkg)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", errors.New(string(out))
		}
	}
	return dir, nil
})

func TestMain(m *testing.M) {
	code := m.Run()
	if dir, err := built(); err == nil {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

func port(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// runScript runs scripts/run.sh in its own process group with the ports
// given, and returns its output and exit error. Whatever is left of the
// group when it returns is killed.
func runScript(t *testing.T, redisAddr, routerdAddr, agentAddr string, demoArgs string) (string, error) {
	t.Helper()
	return runScriptIn(t, t.TempDir(), redisAddr, routerdAddr, agentAddr, demoArgs, nil)
}

// runScriptIn is runScript with the logs in dir, calling during (when not
// nil) with the process group's id and the output so far while it runs,
// and env added to its environment: NAME=value sets NAME, a bare NAME
// takes it out.
func runScriptIn(t *testing.T, dir, redisAddr, routerdAddr, agentAddr string, demoArgs string, during func(pgid int, out func() string), env ...string) (string, error) {
	t.Helper()
	redistest.Binary(t)
	bin, err := built()
	if err != nil {
		t.Fatalf("building: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "./run.sh")
	cmd.Env = append(os.Environ(), "REDIS_PORT="+port(redisAddr), "ROUTERD_PORT="+port(routerdAddr), "AGENT_PORT="+port(agentAddr),
		"RUN_DIR="+dir, "BIN="+bin, "DEMO_ARGS="+demoArgs)
	for _, e := range env {
		if name, _, set := strings.Cut(e, "="); !set {
			cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, name+"=") })
			continue
		}
		cmd.Env = append(cmd.Env, e)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out testbin.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if during != nil {
		during(cmd.Process.Pid, out.String)
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("run.sh did not stop:\n%s", out.String())
	}
	// Everything it started is gone with it.
	redistest.Eventually(t, 10*time.Second, "run.sh's processes gone", func() bool {
		return errors.Is(syscall.Kill(-cmd.Process.Pid, 0), syscall.ESRCH)
	})
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if c, err := net.Dial("tcp", redisAddr); err == nil {
		c.Close()
		t.Errorf("redis-server still answers on %s after run.sh stopped", redisAddr)
	}
	return out.String(), err
}

// With routerd's port taken, `make run` stops with routerd's own error on
// the terminal instead of narrating a demo that invalidates nothing.
func TestRunStopsWhenRouterdCannotListen(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	out, err := runScript(t, redistest.FreeAddr(t), taken.Addr().String(), redistest.FreeAddr(t), "--rounds 1 --interval 100ms")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Errorf("run.sh exited %v with routerd's port taken, want a failure:\n%s", err, out)
	}
	for _, want := range []string{"routerd exited (status 1) before it was ready", "address already in use", "last lines of"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "routes:") {
		t.Errorf("the demo ran anyway:\n%s", out)
	}
}

// With routerd's or the agent's port taken by a process that answers
// /readyz (another `make run`'s routerd or agent), the readiness check would
// believe it: `make run` refuses to start instead, naming the port and the
// variable that changes it, and never claims a daemon ready.
func TestRunRefusesAPortAnotherDaemonAnswers(t *testing.T) {
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ready")) }))
	defer other.Close()
	addr := other.Listener.Addr().String()
	for _, tc := range []struct{ name, routerd, agent, want string }{
		{"routerd", addr, redistest.FreeAddr(t), "make run ROUTERD_PORT=<free port>"},
		{"agent", redistest.FreeAddr(t), addr, "make run AGENT_PORT=<free port>"},
	} {
		out, err := runScript(t, redistest.FreeAddr(t), tc.routerd, tc.agent, "--rounds 1 --interval 100ms")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 {
			t.Errorf("%s's port answered by another: run.sh exited %v, want a failure:\n%s", tc.name, err, out)
		}
		if !strings.Contains(out, "already answers on 127.0.0.1:"+port(addr)) || !strings.Contains(out, tc.want) {
			t.Errorf("%s's port answered by another: output lacks the port and %q:\n%s", tc.name, tc.want, out)
		}
		if strings.Contains(out, "ready: ") || strings.Contains(out, "routes:") {
			t.Errorf("%s's port answered by another: a daemon was claimed ready, or the demo ran:\n%s", tc.name, out)
		}
		if strings.Contains(out, "stopped; logs are in") {
			t.Errorf("%s's port answered by another: nothing started, yet the output points at logs:\n%s", tc.name, out)
		}
	}
}

// A redis-server older than 7.0 (Ubuntu 22.04's is 6.0, and `make run`
// installs none when one is there) is refused before anything starts,
// naming its version and what routerd needs, rather than left to fail in
// routerd's log with an unknown command.
func TestRunRefusesARedisOlderThan7(t *testing.T) {
	real, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("no redis-server")
	}
	fake := t.TempDir()
	script := "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Redis server v=6.0.16 sha=00000000:0 malloc=jemalloc-5.2.1 bits=64 build=a3fdef44459b3ad6'; exit 0; fi\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(fake, "redis-server"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := runScriptIn(t, t.TempDir(), redistest.FreeAddr(t), redistest.FreeAddr(t), redistest.FreeAddr(t), "--rounds 1 --interval 100ms", nil,
		"PATH="+fake+string(os.PathListSeparator)+os.Getenv("PATH"))
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Errorf("run.sh exited %v with redis-server 6.0.16, want a failure:\n%s", err, out)
	}
	if !strings.Contains(out, "redis-server 6.0.16") || !strings.Contains(out, "7.0 or newer") {
		t.Errorf("output does not name the version found and the one needed:\n%s", out)
	}
	if strings.Contains(out, "redis      127.0.0.1") || strings.Contains(out, "stopped; logs are in") {
		t.Errorf("something started:\n%s", out)
	}
}

// run.sh run by hand, without the DEMO_ARGS `make run` always sets (its
// header lists it among the optional variables), starts the demo: it used
// to stop on "DEMO_ARGS: unbound variable" once both daemons were ready.
func TestRunWithoutDemoArgs(t *testing.T) {
	out, _ := runScriptIn(t, t.TempDir(), redistest.FreeAddr(t), redistest.FreeAddr(t), redistest.FreeAddr(t), "", func(pgid int, out func() string) {
		redistest.Eventually(t, 60*time.Second, "the demo started, or run.sh stopped", func() bool {
			return strings.Contains(out(), "routerd demo:") || strings.Contains(out(), "stopped; logs are in")
		})
		_ = syscall.Kill(-pgid, syscall.SIGINT)
	}, "DEMO_ARGS")
	if !strings.Contains(out, "routerd demo:") || strings.Contains(out, "unbound variable") {
		t.Errorf("run.sh without DEMO_ARGS did not start the demo:\n%s", out)
	}
}

// `make run` stopped by SIGTERM to make alone (a supervisor, an IDE's stop
// button, `kill <make's pid>`) stops everything: make passes SIGTERM to its
// child, which must be run.sh itself. The shell make ran run.sh under died
// of it instead and left run.sh, Redis, routerd, the agent and the demo
// running.
func TestMakeRunStopsOnSIGTERMToMake(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	redistest.Binary(t)
	bin, err := built()
	if err != nil {
		t.Fatalf("building: %v", err)
	}
	redisAddr := redistest.FreeAddr(t)
	// -o: bin/ and redis-server are taken as they are (BIN points at the
	// test's build).
	cmd := exec.Command("make", "-s", "-o", "build", "-o", "redis-server", "run", "REDIS_PORT="+port(redisAddr),
		"ROUTERD_PORT="+port(redistest.FreeAddr(t)), "AGENT_PORT="+port(redistest.FreeAddr(t)), "DEMO_ARGS=--interval 100ms")
	cmd.Dir = ".."
	// Not the flags of a make this test runs under (`make test`).
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "MAKEFLAGS=") || strings.HasPrefix(kv, "MFLAGS=") || strings.HasPrefix(kv, "MAKELEVEL=")
	})
	cmd.Env = append(cmd.Env, "BIN="+bin, "RUN_DIR="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A file, as a terminal would be: no pipe that a process left behind
	// could die writing to once the test stops reading it.
	log, err := os.Create(filepath.Join(t.TempDir(), "make-run.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	defer func() {
		// What is left: SIGTERM lets run.sh stop Redis, which runs in a
		// session of its own, out of the group's reach.
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end) && syscall.Kill(-pgid, 0) == nil; {
			time.Sleep(50 * time.Millisecond)
		}
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}()
	out := func() string { b, _ := os.ReadFile(log.Name()); return string(b) }
	redistest.Eventually(t, 60*time.Second, "the demo running", func() bool {
		return strings.Contains(out(), "search-svc applied")
	})
	if err := syscall.Kill(pgid, syscall.SIGTERM); err != nil { // make alone
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(15 * time.Second)
	for !errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH) {
		if time.Now().After(deadline) {
			ps, _ := exec.Command("ps", "-eo", "pgid=,pid=,args=").Output()
			var left []string
			for _, l := range strings.Split(string(ps), "\n") {
				if f := strings.Fields(l); len(f) > 2 && f[0] == strconv.Itoa(pgid) {
					left = append(left, strings.Join(f[1:], " "))
				}
			}
			t.Fatalf("SIGTERM to make left processes running:\n%s\noutput:\n%s", strings.Join(left, "\n"), out())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c, err := net.Dial("tcp", redisAddr); err == nil {
		c.Close()
		t.Errorf("redis-server still answers on %s after make run stopped", redisAddr)
	}
}

// With free ports it waits for both daemons, and every round's
// invalidations arrive.
func TestRunGoodRound(t *testing.T) {
	redisAddr := redistest.FreeAddr(t)
	out, err := runScript(t, redisAddr, redistest.FreeAddr(t), redistest.FreeAddr(t), "--rounds 6 --interval 100ms")
	if err != nil {
		t.Fatalf("run.sh: %v\n%s", err, out)
	}
	// The narration keeps its order: what search-svc applied follows the
	// change that caused it, never the previous round's table.
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "  search-svc applied") && (i == 0 ||
			!strings.HasPrefix(lines[i-1], "  routes: ") && !strings.HasPrefix(lines[i-1], "  search-svc applied")) {
			t.Errorf("line %d, %q, does not follow its change's routes:\n%s", i, l, out)
			break
		}
	}
	// It tells a newcomer how to watch an invalidation, cause one of
	// their own, and stop.
	redis := "redis://127.0.0.1:" + port(redisAddr) + "/0"
	for _, want := range []string{"routerd    ready", "agent      ready", "profile-svc  acme: user:1✗ user:2✗",
		"routerd tail --redis " + redis + " --tenant acme --tag active",
		"routerd publish --redis " + redis + " --tenant acme --domain product --keys product:1",
		"Ctrl-C stops everything"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "not invalidated within") {
		t.Errorf("invalidations did not arrive:\n%s", out)
	}
}

// Ctrl-C (SIGINT to the terminal's process group: run.sh and everything it
// started) stops routerd and the agent before Redis, so they stop cleanly:
// no error or warning in their logs (routerd used to log "marking this
// router stopped … deadline exceeded", Redis gone before it).
func TestRunCtrlCStopsCleanly(t *testing.T) {
	dir := t.TempDir()
	var interrupted time.Time
	out, err := runScriptIn(t, dir, redistest.FreeAddr(t), redistest.FreeAddr(t), redistest.FreeAddr(t), "--interval 100ms", func(pgid int, out func() string) {
		redistest.Eventually(t, 60*time.Second, "the demo running", func() bool {
			return strings.Contains(out(), "search-svc applied")
		})
		interrupted = time.Now().Add(-time.Millisecond).Truncate(time.Millisecond) // the logs' precision
		if err := syscall.Kill(-pgid, syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
	})
	var exit *exec.ExitError
	if err != nil && (!errors.As(err, &exit) || exit.ExitCode() != 130) {
		t.Errorf("run.sh exited %v on Ctrl-C, want 0 or 130:\n%s", err, out)
	}
	if l := strings.ToLower(out); strings.Contains(l, "error") || strings.Contains(l, "warn") || !strings.Contains(l, "stopped; logs are in") {
		t.Errorf("Ctrl-C printed an error or a warning, or not that it stopped:\n%s", out)
	}
	for _, name := range []string{"routerd.log", "agent.log"} {
		log, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(log), "\n") {
			// What the stop logged (a start on a bus no router marked yet
			// may warn, and that is not this test's business).
			at, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
			if when, err := time.Parse(time.RFC3339Nano, at); err != nil || when.Before(interrupted) {
				continue
			}
			if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") {
				t.Errorf("%s: %s", name, l)
			}
		}
		if !strings.Contains(string(log), "stopped") {
			t.Errorf("%s does not say it stopped:\n%s", name, log)
		}
	}
}
