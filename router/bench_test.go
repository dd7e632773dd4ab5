package router

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// The publish path's encoding of one script call of 100 messages on three
// channels and the decoding of its reply (no Redis: the pipeline is not
// run).
func BenchmarkPublishCall(b *testing.B) {
	ctx := context.Background()
	var out []*outgoing
	for i := range 100 {
		out = append(out, message(fmt.Sprintf("invalidate:acme:t%d", i%3), "t", fmt.Sprint(i)))
	}
	idx := make([]int, len(out))
	for i := range idx {
		idx[i] = i
	}
	calls, _ := publishCalls(out, idx, false)
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer client.Close()
	pipe := client.Pipeline()
	reply := make([]any, 0, 2*len(out))
	for i := range out {
		reply = append(reply, int64(i+1), int64(0))
	}
	cmd := redis.NewCmd(ctx)
	cmd.SetVal(reply)
	b.ReportAllocs()
	for b.Loop() {
		req := publishRequest(out, calls[0], "e0", "PUBLISH")
		lua.Queue(ctx, pipe, &req)
		if _, err := req.Reply(cmd); err != nil {
			b.Fatal(err)
		}
		pipe.Discard()
	}
}

// Routing one tenant's single-key events over 100 tags (one partition,
// 100 channels) against a real Redis, as issue 21's binary scenario does:
// each iteration appends 10,240 raw events and waits until the router has
// read and acknowledged them all. The router's allocations and CPU are
// this process's; Redis's CPU is not counted.
func BenchmarkRouteManyChannels(b *testing.B) {
	ctx := context.Background()
	c := redistest.Start(b).Client(b)
	m := hundredTags(b)
	r, err := New(c, m, Options{Block: 100 * time.Millisecond, ClaimInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { cancel(); <-done }()
	stream := names.IngressStream(m.Prefix, 0)
	const n = 10240
	next := 0
	b.ReportAllocs()
	cpu0 := processCPU()
	for b.Loop() {
		pipe := c.Pipeline()
		for range n {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField,
				fmt.Sprintf(`{"tenant":"t0","domain":"d%d","keys":["user:%d"]}`, next%100, next)}})
			next++
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
		for {
			groups, err := c.XInfoGroups(ctx, stream).Result()
			if err == nil && len(groups) == 1 && groups[0].Lag == 0 && groups[0].Pending == 0 {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
	// The CPU this process used per event: the router's, and the
	// appending's (the same in every run, so comparisons hold).
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N*n), "cpu-ns/event")
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Parsing, routing and merging one read of 4,096 raw single-key events
// (prepare's work without its Redis calls), then sealing its messages, as
// issue 21's binary scenarios route them: 100 tenants over 100 tags (a tag
// each), one tenant over 100 tags, one tenant and one tag. No Redis: the
// router's own CPU and allocations per event.
func BenchmarkParseMerge(b *testing.B) {
	m := hundredTags(b)
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer client.Close()
	r, err := New(client, m, Options{})
	if err != nil {
		b.Fatal(err)
	}
	stream := names.IngressStream(m.Prefix, 0)
	for _, c := range []struct {
		name          string
		tenants, tags int
	}{{"100-tenants", 100, 100}, {"one-tenant-100-tags", 1, 100}, {"one-tag", 1, 1}} {
		b.Run(c.name, func(b *testing.B) {
			const n = 4096
			msgs := make([]redis.XMessage, n)
			for i := range msgs {
				msgs[i] = redis.XMessage{ID: fmt.Sprintf("1764000000000-%d", i), Values: map[string]any{wire.EventField: fmt.Sprintf(
					`{"tenant":"t%d","domain":"d%d","keys":["user:%d"]}`, i%c.tenants, i%c.tags, 100000+i)}}
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				bt := &batch{open: map[string]*channelWork{}}
				bt.add(r, r.parseAll(stream, msgs))
				for _, ch := range bt.channels {
					for _, o := range bt.open[ch].msgs {
						o.seal()
					}
				}
			}
			runtime.ReadMemStats(&after)
			events := float64(b.N * n)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/events, "ns/event")
			// The CPU this process used, garbage collection included:
			// less moved by other processes than the time.
			b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/events, "cpu-ns/event")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/events, "allocs/event")
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/events, "B/event")
		})
	}
}

// Acknowledging a batch of 4,096 entries of one stream, each an event of
// one of 100 domains (the XACK and the routed-events count), against a
// real Redis: the process's CPU and allocations per entry.
func BenchmarkAck(b *testing.B) {
	c := redistest.Start(b).Client(b)
	m, err := matrix.Parse("m.yaml", []byte("version: 1\ningress: {partitions: 1}\ntags:\n  a: {services: [s]}\ndomains:\n  user: {tags: [a]}\nservices:\n  s: {tenants: all}\n"))
	if err != nil {
		b.Fatal(err)
	}
	r, err := New(c, m, Options{})
	if err != nil {
		b.Fatal(err)
	}
	const n = 4096
	entries := make([]*entry, n)
	for i := range entries {
		e := &entry{stream: "invalidate:ingress:{0}", id: fmt.Sprintf("1764000000000-%d", i)}
		e.events = e.one[:]
		e.events[0].ev = &wire.Event{Tenant: "t0", Domain: "d" + strconv.Itoa(i%100)}
		entries[i] = e
	}
	ctx := context.Background()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ReportAllocs()
	cpu0 := processCPU()
	for b.Loop() {
		if err := r.ack(ctx, entries); err != nil {
			b.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	events := float64(b.N * n)
	b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/events, "cpu-ns/event")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/events, "allocs/event")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/events, "B/event")
}

// Forgetting the retries of a batch of 4,096 acknowledged entries of one
// stream whose retry queue holds one entry (settle's retryDone).
func BenchmarkRetryDone(b *testing.B) {
	r := &Router{retries: map[string]*retryQueue{}}
	const stream = "invalidate:ingress:{0}"
	entries := make([]*entry, 4096)
	for i := range entries {
		entries[i] = &entry{stream: stream, id: fmt.Sprintf("1764000000000-%d", i)}
	}
	r.retryQueue(stream).items["1-0"] = &retryItem{}
	b.ReportAllocs()
	for b.Loop() {
		r.retryDone(entries)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(entries)), "ns/event")
}

// hundredTags is the matrix of issue 21's binary scenarios: one partition,
// limits lifted, 100 tags each of its own domain (d<n> to g<n>), one
// service of every tenant.
func hundredTags(b *testing.B) *matrix.Matrix {
	b.Helper()
	var y strings.Builder
	y.WriteString("version: 1\ningress: {partitions: 1}\ndefaults: {rate: 1000000, burst: 1000000, coalesce: 0s}\ntags:\n")
	for g := range 100 {
		fmt.Fprintf(&y, "  g%d: {services: [s]}\n", g)
	}
	y.WriteString("domains:\n")
	for g := range 100 {
		fmt.Fprintf(&y, "  d%d: {tags: [g%d]}\n", g, g)
	}
	y.WriteString("services:\n  s: {tenants: all}\n")
	m, err := matrix.Parse("m.yaml", []byte(y.String()))
	if err != nil {
		b.Fatal(err)
	}
	return m
}
