package breaker

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// A dependency that fails opens the breaker after DefaultFailures: calls
// are refused without being made, one line says so, the state gauge says
// 2; the first call let through after OpenFor that succeeds closes it, with
// one line more.
func TestBreakerOpensRefusesAndCloses(t *testing.T) {
	var logs syncBuf
	reg := prometheus.NewRegistry()
	changes := make(chan bool, 4)
	b := New(Options{Dependency: "cache", Metric: "x_breaker_state", Logger: slog.New(slog.NewTextHandler(&logs, nil)), Registerer: reg,
		OnChange: func(open bool) { changes <- open }})
	down := errors.New("connection refused")
	calls := 0
	fail := func() error { calls++; return down }
	for range 10 {
		_ = b.Do(fail)
	}
	if calls != DefaultFailures {
		t.Errorf("%d calls made, want %d (the rest refused)", calls, DefaultFailures)
	}
	if err := b.Do(fail); !errors.Is(err, ErrOpen) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("open breaker: %v, want ErrOpen naming the last error", err)
	}
	if failing, err := b.Failing(); !failing || err != down {
		t.Errorf("Failing = %v, %v", failing, err)
	}
	if got := gauge(t, reg, "x_breaker_state"); got != 2 {
		t.Errorf("state gauge %v, want 2 (open)", got)
	}
	if !<-changes {
		t.Error("OnChange(open) not called")
	}
	deadline := time.Now().Add(10 * time.Second)
	for b.State() == gobreaker.StateOpen && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // the open period is the library's clock
	}
	_ = b.Do(fail) // the probe fails: open again, no new line
	for b.State() == gobreaker.StateOpen && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := b.Do(func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if b.State() != gobreaker.StateClosed || <-changes {
		t.Errorf("state %v after a probe that succeeded", b.State())
	}
	if n := strings.Count(logs.String(), "dependency failing"); n != 1 {
		t.Errorf("%d failing lines, want 1:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "dependency back"); n != 1 {
		t.Errorf("%d back lines, want 1:\n%s", n, logs.String())
	}
}

// Redis answers (WRONGTYPE, NOPERM, redis.Nil) are not failures of the
// server; no answer, and LOADING, are.
func TestRedisFailure(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false}, {redis.Nil, false}, {context.Canceled, false},
		{errors.New("dial tcp: connection refused"), true},
		{context.DeadlineExceeded, true},
	} {
		if got := RedisFailure(tc.err); got != tc.want {
			t.Errorf("RedisFailure(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// A probe that hangs counts as a failure after its timeout and makes the
// dependency silent; one that answers again makes it heard at once.
func TestProbeCountsAHangingPing(t *testing.T) {
	b := New(Options{Dependency: "x", Failures: 1})
	p := NewProbe()
	var mu sync.Mutex
	hang := make(chan struct{})
	hung := true
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx, 20*time.Millisecond, 50*time.Millisecond, b, func(ctx context.Context) error {
			return b.Do(func() error { // as the Redis hook does
				mu.Lock()
				h := hung
				mu.Unlock()
				if h {
					<-hang // a client that does not honour the deadline
				}
				return nil
			})
		})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for b.State() == gobreaker.StateClosed && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if b.State() == gobreaker.StateClosed {
		t.Fatal("a hanging probe did not open the breaker")
	}
	mu.Lock()
	hung = false
	mu.Unlock()
	close(hang)
	for (b.State() != gobreaker.StateClosed || p.Silent() > time.Second) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if b.State() != gobreaker.StateClosed {
		t.Errorf("state %v after the dependency answered", b.State())
	}
	cancel()
	<-done
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s", name)
	return 0
}

// A call that hangs is seen by Waiting while it hangs, and no longer once
// it returns; a call that fails fast leaves nothing waiting.
func TestWaitingSeesACallThatHangs(t *testing.T) {
	b := New(Options{Dependency: "test"})
	if w := b.Waiting(); w != 0 {
		t.Fatalf("Waiting with nothing in flight = %v, want 0", w)
	}
	release, returned := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(returned)
		_ = b.Do(func() error { <-release; return nil })
	}()
	deadline := time.Now().Add(10 * time.Second)
	for b.Waiting() < 50*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatal("Waiting never grew while a call hung")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	<-returned
	if w := b.Waiting(); w != 0 {
		t.Fatalf("Waiting after the call returned = %v, want 0", w)
	}
	_ = b.Do(func() error { return errors.New("refused") })
	if w := b.Waiting(); w != 0 {
		t.Fatalf("Waiting after a failed call = %v, want 0", w)
	}
}
