package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/wire"
)

// A backlog of 9,600 single-key events appended raw (pipelines, as
// redis-cli --pipe would), with poison among them — malformed JSON, events
// above the 1 MiB limit, unknown domains — read in reads of up to 4,096
// entries by a routerd serve killed (SIGKILL) in the middle of it, then
// by an heir whose connections are killed (CLIENT KILL) while it claims
// and reads the rest: every event is published exactly once, key-level
// (no key no event named), every poison entry dead-lettered, and nothing
// is left pending. Each poison entry has one dead letter, even one written
// by the killed router before it could acknowledge the entry, or whose
// reply a killed connection lost (lua/deadletter.lua). The backlog stays within the
// channel's event-id dedupe window (10 × its history of 1,000 ids,
// docs/operations.md): beyond it, the heir, which routes the entries
// after the killed router's before it claims those (ClaimIdle), publishes
// again what the killed router published and did not acknowledge.
func TestAttack6KilledRouterMidBacklogWithPoison(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)

	const events = 9600
	huge := `{"tenant":"acme","domain":"user","keys":["` + strings.Repeat("x", 1100<<10) + `"]}`
	poison := 0
	for from := 0; from < events; from += 3200 {
		_, err := e.busC.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i := from; i < from+3200; i++ {
				b, _ := json.Marshal(map[string]any{"tenant": "acme", "domain": "user", "keys": []string{fmt.Sprint("k:", i)}})
				pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, string(b)}})
				switch {
				case i%400 == 7:
					pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":`}})
					poison++
				case i%400 == 9:
					pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"nosuch","keys":["k:0"]}`}})
					poison++
				case i%3200 == 11:
					pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, huge}})
					poison++
				}
			}
			return nil
		})
		must(t, err)
	}

	var log lockedBuffer
	e.killMidBacklog(e.serveProcess(backlogMatrix(), &log, "--consumer", "doomed"))
	const ch = "invalidate:acme:active"
	_, killedAt := e.meta(ch)
	t.Logf("killed at version %d, %d pending", killedAt, e.pending())

	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "rt", "on", ">pw", "~*", "&*", "+@all").Err())
	rc := redis.NewClient(&redis.Options{Addr: e.bus.Addr, Username: "rt", Password: "pw"})
	t.Cleanup(func() { _ = rc.Close() })
	e.routerOn(rc, router.Options{Consumer: "heir", ClaimIdle: 200 * time.Millisecond})
	for range 5 {
		_, v := e.meta(ch)
		redistest.Eventually(t, 20*time.Second, "the heir publishing", func() bool {
			_, now := e.meta(ch)
			return now > v || e.pending() == 0
		})
		must(t, e.busC.Do(ctx, "CLIENT", "KILL", "USER", "rt").Err())
	}
	redistest.Eventually(t, 60*time.Second, "nothing pending, nothing left to read", func() bool {
		g, err := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && len(g) == 1 && g[0].Pending == 0 && g[0].Lag == 0
	})

	seen := map[string]int{}
	where := map[string][]int64{}
	for _, m := range e.history(ch) {
		for _, k := range m.Keys {
			where[k] = append(where[k], m.Version)
		}
		if m.WholeTag() {
			t.Errorf("version %d is a whole-tag message", m.Version)
		}
		for _, k := range m.Keys {
			seen[k]++
		}
	}
	_, v := e.meta(ch)
	if n := len(e.history(ch)); int64(n) != v {
		t.Fatalf("the history holds %d messages of %d: cannot tell what was published", n, v)
	}
	for i := range events {
		k := fmt.Sprint("k:", i)
		if seen[k] != 1 {
			t.Errorf("%s published %d times, want once (versions %v)", k, seen[k], where[k])
		}
		delete(seen, k)
	}
	if len(seen) > 0 {
		t.Errorf("keys no event named were published: %d, e.g. %v", len(seen), seen)
	}
	dls := allDeadLetters(t, e.busC)
	byEntry := map[string]int{}
	for _, d := range dls {
		id, _ := d.Values["entry_id"].(string)
		byEntry[id]++
	}
	if len(byEntry) != poison {
		t.Errorf("dead letters of %d entries, want each of the %d poison entries", len(byEntry), poison)
	}
	for id, n := range byEntry {
		if n != 1 {
			t.Errorf("%d dead letters of entry %s, want 1", n, id)
		}
	}
	t.Logf("%d messages for %d events; %d poison entries, %d dead letters", v, events, poison, len(dls))
}

// A backlog of 9,000 raw events read 4,096 at a time by a router whose
// connections are all killed (CLIENT KILL USER) every 10ms for a while —
// mid-read, mid-publish, mid-acknowledgement: every event is published
// exactly once, key-level, and nothing is left pending.
func TestAttack6BacklogUnderKilledConnections(t *testing.T) {
	ctx := context.Background()
	e, stream := newBacklogEnv(t)
	const events = 9000
	keys := keyRange("k", 0, events)
	e.xaddPiped("acme", keys)

	must(t, e.busC.Do(ctx, "ACL", "SETUSER", "rt", "on", ">pw", "~*", "&*", "+@all").Err())
	rc := redis.NewClient(&redis.Options{Addr: e.bus.Addr, Username: "rt", Password: "pw"})
	t.Cleanup(func() { _ = rc.Close() })
	quit, done := make(chan struct{}), make(chan struct{})
	kills := 0
	go func() {
		defer close(done)
		// 40 rounds, 10ms apart, then the router is left to finish: a
		// kill every few milliseconds forever keeps a read of 4,096
		// entries from ever completing.
		for range 40 {
			select {
			case <-quit:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if n, err := e.busC.Do(ctx, "CLIENT", "KILL", "USER", "rt").Int(); err == nil {
				kills += n
			}
		}
	}()
	// A read whose reply a kill lost and that go-redis then retried (the
	// read script, through the shared client) leaves the entries of its
	// first run pending, out of the read loop's sight: they are claimed
	// after ClaimIdle (30s by default).
	e.routerOn(rc, router.Options{ClaimIdle: 2 * time.Second})
	const ch = "invalidate:acme:active"
	redistest.Eventually(t, 60*time.Second, "every event published", func() bool {
		return e.busC.ZCard(ctx, names.EventsKey(ch)).Val() == events
	})
	close(quit)
	<-done
	redistest.Eventually(t, 30*time.Second, "nothing pending, nothing left to read", func() bool {
		g, err := e.busC.XInfoGroups(ctx, stream).Result()
		return err == nil && len(g) == 1 && g[0].Pending == 0 && g[0].Lag == 0
	})
	seen := map[string]int{}
	for _, m := range e.history(ch) {
		if m.WholeTag() {
			t.Errorf("version %d is a whole-tag message", m.Version)
		}
		for _, k := range m.Keys {
			seen[k]++
		}
	}
	for _, k := range keys {
		if seen[k] != 1 {
			t.Errorf("%s published %d times, want once", k, seen[k])
		}
	}
	_, v := e.meta(ch)
	t.Logf("%d messages for %d events through %d killed connections", v, events, kills)
	if kills == 0 {
		t.Fatal("no connection was killed: the attack did not run")
	}
}

// newBacklogEnv is an env with limits no backlog reaches and acme's
// ingress stream and its group made before any router runs, so that
// entries appended now wait as a backlog; it returns the stream.
func newBacklogEnv(t *testing.T) (*env, string) {
	t.Helper()
	e := newEnv(t, backlogMatrix())
	e.running("acme")
	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	must(t, e.busC.XGroupCreateMkStream(context.Background(), stream, "routerd", "0").Err())
	return e, stream
}

// backlogMatrix is the precision tests' matrix with limits no backlog
// reaches.
func backlogMatrix() string { return precisionMatrix("rate: 1000000, burst: 1000000, max_keys: 500") }

// appendBacklog appends n raw single-key events of acme, keys k:0…k:n-1,
// in pipelines of 3,200 (xaddPiped), and returns their keys.
func (e *env) appendBacklog(n int) []string {
	e.t.Helper()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprint("k:", i)
	}
	for from := 0; from < n; from += 3200 {
		e.xaddPiped("acme", keys[from:min(from+3200, n)])
	}
	return keys
}

// serveProcess starts routerd serve as a process on the bus, on the matrix
// yaml, with args besides --matrix, --redis and --listen; its log goes to
// log, and it is killed when the test ends.
func (e *env) serveProcess(yaml string, log *lockedBuffer, args ...string) *exec.Cmd {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), "matrix.yaml")
	must(e.t, os.WriteFile(path, []byte(yaml), 0o644))
	cmd := exec.Command(testbin.Routerd(e.t), append([]string{"serve", "--matrix", path, "--redis", e.bus.URL, "--listen", testbin.AnyPort}, args...)...)
	cmd.Stderr = log
	must(e.t, cmd.Start())
	e.t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// killMidBacklog kills (SIGKILL) a routerd serve process once it has
// published on acme's channel, in the middle of a backlog.
func (e *env) killMidBacklog(cmd *exec.Cmd) {
	e.t.Helper()
	redistest.Eventually(e.t, 20*time.Second, "the backlog under way", func() bool {
		_, v := e.meta("invalidate:acme:active")
		return v >= 1
	})
	must(e.t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
}
