package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
)

// A publish whose connection was refused sent nothing: it says so, and
// still gives the id to publish again with. It used to say the event "may
// be on the bus all the same", which sends an operator looking for an
// event that cannot be there.
func TestPublishRefusedSaysNothingWasAppended(t *testing.T) {
	code, out, errs := runCLI(t, "publish", "--redis", "redis://"+redistest.RefusedAddr(t), "--tenant", "acme", "--domain", "user", "--keys", "k:1")
	if code != 1 {
		t.Fatalf("publish to a refused address: %d %q %q, want 1", code, out, errs)
	}
	if strings.Contains(errs, "may be on the bus") || !strings.Contains(errs, "nothing was appended") || !strings.Contains(errs, "--id ") {
		t.Errorf("publish to a refused address does not say that nothing was appended, with the id to retry with:\n%s", errs)
	}
}

// fakeRedis6 listens on loopback and answers as a Redis 6.0.16 would
// AUTH, INFO and PING (RESP2); every other command is unknown. It returns the
// address.
func fakeRedis6(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	info := "# Server\r\nredis_version:6.0.16\r\nredis_mode:standalone\r\nrun_id:0123456789012345678901234567890123456789\r\n"
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					cmd, err := readCommand(r)
					if err != nil {
						return
					}
					var reply string
					switch strings.ToUpper(cmd[0]) {
					case "INFO":
						reply = fmt.Sprintf("$%d\r\n%s\r\n", len(info), info)
					case "AUTH":
						reply = "+OK\r\n"
					case "PING":
						reply = "+PONG\r\n"
					default:
						reply = fmt.Sprintf("-ERR unknown command '%s'\r\n", cmd[0])
					}
					if _, err := io.WriteString(c, reply); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// readCommand reads one RESP array of bulk strings.
func readCommand(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("not a command: %q", line)
	}
	out := make([]string, n)
	for i := range out {
		if line, err = r.ReadString('\n'); err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "$")))
		if err != nil {
			return nil, fmt.Errorf("not a bulk string: %q", line)
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		out[i] = string(b[:size])
	}
	return out, nil
}

// runDaemon runs a daemon command until it returns (or the test's bound
// passes: a daemon that does not refuse runs on) and returns its exit code
// and stderr.
func runDaemon(t *testing.T, stop func(stderr *syncBuffer) bool, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out, errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, args, Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
	}()
	if stop != nil {
		redistest.Eventually(t, 10*time.Second, "the daemon's log line", func() bool { return stop(&errb) })
		cancel()
	}
	return <-done, errb.String()
}

// serve and agent refuse a Redis older than routerd needs at start, naming
// the server (bus or cache, its address), the version found and the one
// needed. They used to start and fail later on unknown commands
// (XAUTOCLAIM, XINFO … ENTRIES-READ).
func TestDaemonsRefuseARedisOlderThan7(t *testing.T) {
	dir := t.TempDir()
	m := filepath.Join(dir, "matrix.yaml")
	must(t, os.WriteFile(m, []byte(grantsYAML), 0o600))
	old := fakeRedis6(t)
	srv := redistest.Start(t)
	for _, tc := range []struct {
		name, role string
		args       []string
	}{
		{"serve", "bus", []string{"serve", "--matrix", m, "--redis", "redis://user:secret@" + old, "--listen", "127.0.0.1:0"}},
		{"agent bus", "bus", []string{"agent", "--matrix", m, "--service", "web", "--redis", "redis://" + old, "--cache-redis", srv.URL, "--listen", "127.0.0.1:0"}},
		{"agent cache", "cache", []string{"agent", "--matrix", m, "--service", "web", "--redis", srv.URL, "--cache-redis", "redis://user:secret@" + old, "--listen", "127.0.0.1:0"}},
	} {
		code, errs := runDaemon(t, nil, tc.args...)
		want := "the " + tc.role + " Redis " + old + " runs Redis 6.0.16: routerd needs 7.0 or newer"
		if code != 1 || !strings.Contains(errs, want) || strings.Contains(errs, "secret") {
			t.Errorf("%s on Redis 6.0.16: exit %d, want 1 and %q (without the password):\n%s", tc.name, code, want, errs)
		}
	}
}

// A server whose INFO the ACL refuses does not keep serve from starting:
// it warns that it could not read the version.
func TestServeStartsWhenINFOIsRefused(t *testing.T) {
	srv := redistest.Start(t)
	must(t, srv.Client(t).Do(context.Background(), "ACL", "SETUSER", "noinfo", "on", ">secret", "~*", "&*", "+@all", "-info").Err())
	m := filepath.Join(t.TempDir(), "matrix.yaml")
	must(t, os.WriteFile(m, []byte(grantsYAML), 0o600))
	code, errs := runDaemon(t, func(errb *syncBuffer) bool { return strings.Contains(errb.String(), "routerd serving") },
		"serve", "--matrix", m, "--redis", "redis://noinfo:secret@"+srv.Addr, "--listen", "127.0.0.1:0")
	if code != 0 || !strings.Contains(errs, "cannot read the Redis version") || !strings.Contains(errs, "NOPERM") {
		t.Errorf("serve with INFO refused: exit %d, want 0 and a warning that it cannot read the version:\n%s", code, errs)
	}
}
