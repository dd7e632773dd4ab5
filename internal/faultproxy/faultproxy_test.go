package faultproxy

import (
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// A proxy stopped while its link is blackholed leaves no goroutine behind:
// a blackhole's toxic holds its link until the toxic is removed, whatever
// happens to the connection (the leak checks of internal/cli found one).
func TestStopWhileBlackholedLeaksNothing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	p, err := Launch(up.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("echo through the proxy: %v", err)
	}
	if err := p.Blackhole(); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("lost"))
	p.Stop()
	c.Close()
	up.Close()
}
