package soak

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/routerd/routerd/internal/testbin"
)

// proc is one routerd process (serve or agent) that can be killed with
// SIGKILL and started again with the same flags. Its output goes to a log
// file, kept when the soak fails.
type proc struct {
	name string
	bin  string
	log  string
	args func(p *proc) []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	gen  int // a router's consumer name changes with it
	// Each run listens on testbin.AnyPort, a port picked as it binds: a
	// port kept across a kill could be taken by another process while
	// the proc is down. addr is read from the run's log, which starts at
	// offset logFrom of the file.
	addr    string
	logFrom int64
}

var httpClient = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	args := p.args(p)
	fmt.Fprintf(f, "---- %s: routerd %v\n", time.Now().Format(time.RFC3339Nano), args)
	from, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		f.Close()
		return err
	}
	p.addr, p.logFrom = "", from
	cmd := exec.Command(p.bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	p.cmd, p.done = cmd, done
	return nil
}

// kill sends SIGKILL and waits for the process to end. Safe to call twice.
func (p *proc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// listenAddr returns the address the current run listens on, once its log
// names it, or "".
func (p *proc) listenAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.addr != "" {
		return p.addr
	}
	f, err := os.Open(p.log)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, p.logFrom, 1<<30))
	if err != nil {
		return ""
	}
	p.addr = testbin.ListenAddrIn(string(b))
	return p.addr
}

func (p *proc) ready() bool {
	addr := p.listenAddr()
	if addr == "" {
		return false
	}
	resp, err := httpClient.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitReady polls /readyz until it answers 200 or the timeout passes.
func (p *proc) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !p.ready() {
		if !p.running() {
			return fmt.Errorf("%s exited before it was ready (log: %s)", p.name, p.log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %v (log: %s)", p.name, timeout, p.log)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
