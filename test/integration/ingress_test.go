package integration

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

// Malformed, unknown and unvalidated events land in the dead-letter stream
// with a reason, are acknowledged, and do not hold up the valid ones.
func TestBadEventsDeadLettered(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	reg := prometheus.NewRegistry()
	e.router(router.Options{Registerer: reg})
	stream := names.IngressStream("invalidate", 0)
	bad := []struct {
		values []any
		reason string
		error  string
	}{
		{[]any{"payload", "x"}, router.ReasonMalformed, `no "event" field`},
		{[]any{"event", "{not json"}, router.ReasonMalformed, "json"},
		{[]any{"event", `{"tenant":"acme","domain":"order"}`}, router.ReasonUnknownDomain, `domain "order" is not in the matrix`},
		{[]any{"event", `{"tenant":"ac:me","domain":"user"}`}, router.ReasonMalformed, "tenant"},
		{[]any{"event", `{"tenant":"acme","domain":"user","keys":["a b"]}`}, router.ReasonMalformed, "keys[0]"},
		{[]any{"event", `{"tenant":"acme","domain":"user","colour":"red"}`}, router.ReasonMalformed, "colour"},
		{[]any{"event", `{"domain":"user"}`}, router.ReasonMalformed, "tenant: is required"},
	}
	for _, b := range bad {
		must(t, e.busC.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: b.values}).Err())
	}
	e.publish(wire.Event{Tenant: "acme", Domain: "user", WholeTag: true}) // a good one after them
	e.waitVersion("invalidate:acme:active", 1)

	var entries []redis.XMessage
	redistest.Eventually(t, 10*time.Second, "dead letters written", func() bool {
		entries = allDeadLetters(t, e.busC)
		return len(entries) == len(bad)
	})
	for i, en := range entries {
		if en.Values["reason"] != bad[i].reason || !strings.Contains(en.Values["error"].(string), bad[i].error) {
			t.Errorf("dead letter %d: reason %v error %v, want %s containing %q", i, en.Values["reason"], en.Values["error"], bad[i].reason, bad[i].error)
		}
		if en.Values["stream"] != stream || en.Values["entry"] == "" {
			t.Errorf("dead letter %d does not keep the original entry: %v", i, en.Values)
		}
	}
	if !strings.Contains(entries[1].Values["entry"].(string), "{not json") {
		t.Errorf("the original event is lost: %v", entries[1].Values["entry"])
	}
	redistest.Eventually(t, 10*time.Second, "all acknowledged", func() bool {
		s, _ := e.busC.XPending(ctx, stream, "routerd").Result()
		return s != nil && s.Count == 0
	})
	if got := metric(t, reg, "routerd_events_dead_lettered_total"); got != float64(len(bad)) {
		t.Errorf("dead-lettered metric = %v", got)
	}
}

// An event written by another language with a plain XADD (here redis-cli),
// without id, ts or origin, is routed; its stream name and entry id serve as
// event id.
func TestRawXAddFromAnotherLanguageIsRouted(t *testing.T) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal("redis-cli is not installed: apt-get install -y redis-tools")
	}
	e := newEnv(t, "")
	e.router(router.Options{})
	e.subscriber("search-svc", subscriber.Options{})
	e.seed("search-svc", "acme", "user:1042", "active")
	e.seed("search-svc", "acme", "user:7", "active")

	stream := names.IngressStream("invalidate", wire.Partition("acme", e.mtx.Partitions))
	host, port, _ := strings.Cut(e.bus.Addr, ":")
	out, err := exec.Command(cli, "-h", host, "-p", port, "XADD", stream, "*", "event",
		`{"tenant":"acme","domain":"user","entity":"1042","keys":["user:1042"]}`).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli: %v: %s", err, out)
	}
	entryID := strings.TrimSpace(string(out))
	e.waitGone("search-svc", "acme", "user:1042")
	if !e.cached("search-svc", "acme", "user:7") {
		t.Error("a key the event did not name was deleted")
	}
	hist, err := e.busC.XRange(context.Background(), "{invalidate:acme:active}:history", "-", "+").Result()
	if err != nil || len(hist) != 1 {
		t.Fatalf("history %v %v", hist, err)
	}
	m, err := wire.ParseMessage([]byte(hist[0].Values[names.HistoryField].(string)))
	if want := stream + ":" + entryID; err != nil || m.Event != want {
		t.Errorf("message %+v, %v: want event id %q", m, err, want)
	}
}
