package router

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/acl"
	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
)

func runMatrix(t *testing.T) *matrix.Matrix {
	t.Helper()
	m, err := matrix.Parse("m.yaml", []byte("version: 1\ningress: {partitions: 2}\ntags:\n  a: {services: [s]}\ndomains:\n  user: {tags: [a]}\nservices:\n  s: {tenants: all}\n"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// routerUser makes the Redis user name (password "pw") with the rules
// routerd acl --role router gives, less those in without (what an older
// routerd acl did not grant).
func routerUser(t *testing.T, c *redis.Client, m *matrix.Matrix, name string, without ...string) {
	t.Helper()
	rules, err := acl.For(m, acl.Spec{Role: acl.Router})
	if err != nil {
		t.Fatal(err)
	}
	args := []any{"acl", "setuser", name}
	for _, a := range rules.Args() {
		if !slices.Contains(without, a) {
			args = append(args, a)
		}
	}
	if err := c.Do(context.Background(), append(args, "on", ">pw")...).Err(); err != nil {
		t.Fatal(err)
	}
}

// drained reports whether the router's group on stream has read read
// entries (any number when read < 0), with none pending and no lag.
func drained(c *redis.Client, stream string, read int64) func() bool {
	return func() bool {
		g, err := c.XInfoGroups(context.Background(), stream).Result()
		return err == nil && len(g) == 1 && g[0].Pending == 0 && g[0].Lag == 0 && (read < 0 || g[0].EntriesRead == read)
	}
}

// Run returns what stops it: nil when its context ends, and the error when
// the ingress cannot be set up and no retry would change that (an ingress key
// holding a string, here) instead of logging it every second, never ready.
func TestRunReturnsSetupFailure(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	m := runMatrix(t)
	stream := names.IngressStream(m.Prefix, 1)
	if err := c.Set(context.Background(), stream, "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r, err := New(c, m, Options{Block: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var runErr error
	redistest.Eventually(t, 10*time.Second, "Run to return the setup failure", func() bool {
		select {
		case runErr = <-done:
			return true
		default:
			return false
		}
	})
	if runErr == nil || !strings.Contains(runErr.Error(), "WRONGTYPE") || !strings.Contains(runErr.Error(), stream) {
		t.Errorf("Run = %v, want WRONGTYPE on %s", runErr, stream)
	}
	if r.Ready() {
		t.Error("ready after a failed setup")
	}

	// With the key fixed, a Router runs until its context ends and returns nil.
	if err := c.Del(context.Background(), stream).Err(); err != nil {
		t.Fatal(err)
	}
	r, err = New(c, m, Options{Block: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { done <- r.Run(ctx2) }()
	redistest.Eventually(t, 10*time.Second, "router ready", r.Ready)
	cancel2()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel = %v", err)
	}
}

// runRouter runs r until stop (or the test's end), which waits for Run to
// return and fails the test on its error.
// allocatedWhile runs r until done reports true (within a deadline), and
// returns the bytes this process allocated meanwhile: TotalAlloc only
// grows, so it bounds what the router held at any moment.
func allocatedWhile(t *testing.T, r *Router, deadline time.Duration, what string, done func() bool) uint64 {
	t.Helper()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := runRouter(t, r)
	redistest.Eventually(t, deadline, what, done)
	stop()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func runRouter(t *testing.T, r *Router) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}
