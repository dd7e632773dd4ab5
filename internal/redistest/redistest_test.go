package redistest

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Stop ends the server's forked children too (a BGSAVE, an AOF rewrite):
// killing only redis-server left a child writing into the test's directory
// after the test ended, and the temporary directory's removal then failed
// with "directory not empty".
func TestStopEndsForkedChildren(t *testing.T) {
	s := Start(t)
	c := s.Client(t)
	ctx := context.Background()
	// Enough data that the child is still writing when Stop is called,
	// written in short scripts: one script of 300,000 SETs outlived the
	// client's read timeout on a loaded machine, and go-redis's retry of it
	// met BUSY.
	fill := `for i = ARGV[1], ARGV[1] + 29999 do redis.call('SET', 'k' .. i, string.rep('x', 200)) end return 1`
	for from := 1; from <= 300000; from += 30000 {
		if err := c.Eval(ctx, fill, nil, from).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.BgSave(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 5*time.Second, "a forked child running", func() bool {
		return len(processesNaming(s.Addr)) > 1
	})
	s.Stop()
	if left := processesNaming(s.Addr); len(left) > 0 {
		t.Fatalf("after Stop, processes of %s still run: %v", s.Addr, left)
	}
}

// processesNaming lists the live processes whose command line names addr
// (redis titles its children "redis-rdb-bgsave 127.0.0.1:port").
func processesNaming(addr string) []string {
	var found []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		stat, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			continue
		}
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && strings.HasPrefix(string(stat[i:]), ") Z") {
			continue // a zombie writes nothing
		}
		cmdline, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err == nil && strings.Contains(string(cmdline), addr) {
			found = append(found, filepath.Base(d)+": "+strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " ")))
		}
	}
	return found
}

// A server whose port another server took between the pick and the bind is
// not ready: the other one answering PING on that port is not it. Before,
// the start "succeeded" and the test went on against the other test's
// server while its own had exited with "Address already in use".
func TestStartOnATakenPortFails(t *testing.T) {
	other := Start(t)
	s := &Server{Addr: other.Addr, Dir: t.TempDir()}
	err := s.start()
	s.Stop()
	if err == nil {
		t.Fatalf("a server started on %s, the port of another server", other.Addr)
	}
	if !strings.Contains(err.Error(), "exited") {
		t.Errorf("start on a taken port: %v, want it to say the server exited", err)
	}
}

// RefusedAddr refuses connections, and a server cannot take its port while
// the test runs.
func TestRefusedAddrStaysRefused(t *testing.T) {
	addr := RefusedAddr(t)
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("a connection to %s was accepted", addr)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: %v, want connection refused", addr, err)
	}
	s := &Server{Addr: addr, Dir: t.TempDir()}
	err := s.start()
	s.Stop()
	if err == nil {
		t.Fatalf("a server started on %s, the refused address", addr)
	}
}
