package main

import (
	"context"
	"fmt"
	"strconv"
	"syscall"
	"time"

	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// failoverEvents is the backlog of the failover scenario.
const failoverEvents = 20000

// failover: two routerd serve processes share the group; a backlog of
// raw single-key events is appended, and the first router is killed
// (SIGKILL) while entries are pending for it. The figure is the time from
// the kill until every event of the backlog is applied (the tag set in the
// cache empty): what a killed router held is what waits. The reference is
// the same run with --dead-after at --claim-idle (30s), where its entries
// wait for the claim of entries pending that long, as every router did
// before --dead-after.
func failover(dir string) ([]Row, error) {
	const name = "9 failover, kill -9 of one of two routers mid-backlog (binaries)"
	quickly, err := failoverOnce(dir)
	if err != nil {
		return nil, err
	}
	before, err := failoverOnce(dir, "--dead-after", "30s")
	if err != nil {
		return nil, err
	}
	return []Row{
		{Scenario: name, Metric: "from the kill until every event applied (default --dead-after 5s)", Value: quickly.took.Seconds() * 1e3, Unit: "ms",
			Reference: "the same with --dead-after 30s (= --claim-idle)", RefValue: before.took.Seconds() * 1e3, Ratio: quickly.took.Seconds() / before.took.Seconds()},
		{Scenario: name, Metric: "entries pending for the killed router (the reference's in brackets)", Value: float64(quickly.held), Unit: fmt.Sprintf("entries (%d)", before.held)},
	}, nil
}

type failoverRun struct {
	took time.Duration
	held int64
}

// failoverOnce runs the scenario once, both routers with serveArgs.
func failoverOnce(dir string, serveArgs ...string) (failoverRun, error) {
	yaml := "version: 1\n" + rawLimits + "\ntags:\n  active: {services: [svc]}\ndomains:\n  user: {tags: [active]}\nservices:\n  svc: {tenants: all}\n"
	s, err := startBinaries(dir, yaml, "svc", append([]string{"--consumer", "doomed"}, serveArgs...)...)
	if err != nil {
		return failoverRun{}, err
	}
	defer s.stop()
	doomed := s.procs[0]
	if _, err := s.serve(append([]string{"--consumer", "heir"}, serveArgs...)...); err != nil {
		return failoverRun{}, err
	}
	ctx := context.Background()
	targets := []target{{"acme", "active"}}
	if err := s.warm(ctx, targets, func(string) string { return "user" }); err != nil {
		return failoverRun{}, err
	}
	keyOf := func(i int) string { return "user:" + strconv.Itoa(i) }
	if err := fill(ctx, failoverEvents, func(i int) error { return s.store.Set(ctx, "acme", keyOf(i), []byte("v"), 0, "active") }); err != nil {
		return failoverRun{}, err
	}
	events := make([]rawEvent, failoverEvents)
	for i := range events {
		events[i] = rawEvent{"acme", "user", keyOf(i)}
	}
	stream := names.IngressStream(s.mtx.Prefix, wire.Partition("acme", s.mtx.Partitions))
	appended := make(chan error, 1)
	go func() {
		_, err := pipe(s.bus.Addr, pipeFile(s.mtx, events).Bytes(), failoverEvents)
		appended <- err
	}()
	// Killed once it holds a whole batch (BatchSize), so that what it held
	// is a read's worth, not the first entry of its first read.
	pending := func() int64 {
		cs, err := s.busC.XInfoConsumers(ctx, stream, "routerd").Result()
		for _, c := range cs {
			if err == nil && c.Name == "doomed" {
				return c.Pending
			}
		}
		return 0
	}
	if !waitEvery(time.Minute, time.Millisecond, func() bool { return pending() >= 256 }) {
		return failoverRun{}, fmt.Errorf("the router to kill never held a batch")
	}
	if err := doomed.Process.Signal(syscall.SIGKILL); err != nil {
		return failoverRun{}, err
	}
	killed := time.Now()
	_ = doomed.Wait()
	held := pending()
	if held == 0 {
		return failoverRun{}, fmt.Errorf("the killed router held nothing: it acknowledged its batch before the kill")
	}
	if err := <-appended; err != nil {
		return failoverRun{}, err
	}
	tag := names.TagSetKey("acme", "active")
	if !waitEvery(2*time.Minute, 5*time.Millisecond, func() bool {
		n, err := s.cacheC.SCard(ctx, tag).Result()
		return err == nil && n == 0
	}) {
		return failoverRun{}, fmt.Errorf("the tag set still holds keys two minutes after the kill")
	}
	return failoverRun{took: time.Since(killed), held: held}, nil
}
