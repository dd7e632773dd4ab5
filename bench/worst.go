package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/wire"
)

// worstHistory: the bus memory of a channel whose history holds the
// largest messages the limits allow, made by the router from real events.
// Each round publishes, in one PublishBatch (one packed entry, one read),
// 10 events naming 50 keys each of names.MaxKeyLen bytes with ids of
// wire.MaxIDLen bytes: the router merges them into one message of 500 keys
// (the default max_keys) that records 10 event ids, so after `history`
// rounds the history holds `history` such messages and the event-id set
// lua.IDsPerVersion × history ids, both bounds reached at once. Then the
// bus memory each frees when deleted, per message and per id.
func worstHistory(dir string) ([]Row, error) {
	const (
		history  = 100
		events   = lua.IDsPerVersion // events merged into each message
		keysEach = 50                // keys of each event: events × keysEach = max_keys 500
	)
	yaml := fmt.Sprintf("version: 1\ndefaults: {rate: 1000000, burst: 1000000, coalesce: 0s, history: %d}\ntags:\n  active: {services: [svc]}\ndomains:\n  user: {tags: [active]}\nservices:\n  svc: {tenants: [t0, t1]}\n", history)
	s, err := startSystem(dir, yaml, "svc")
	if err != nil {
		return nil, err
	}
	defer s.stop()
	if mk := s.mtx.Defaults.MaxKeys; mk != events*keysEach {
		return nil, fmt.Errorf("the matrix's default max_keys is %d, not the %d this scenario fills", mk, events*keysEach)
	}
	ctx := context.Background()
	worst, err := fillHistory(ctx, s, "t0", history, func(r, e int) wire.Event {
		keys := make([]string, keysEach)
		for k := range keys {
			prefix := fmt.Sprintf("k:%d:%d:%d:", r, e, k)
			keys[k] = prefix + strings.Repeat("x", names.MaxKeyLen-len(prefix))
		}
		id := fmt.Sprintf("w%d.%d.", r, e)
		return wire.Event{ID: id + strings.Repeat("i", wire.MaxIDLen-len(id)), Tenant: "t0", Domain: "user", Keys: keys}
	})
	if err != nil {
		return nil, err
	}
	if worst.keys != events*keysEach {
		return nil, fmt.Errorf("the last message carries %d keys, not %d", worst.keys, events*keysEach)
	}
	// For contrast, batched but typical: 10 events of one short key each,
	// ids made by the publisher.
	typical, err := fillHistory(ctx, s, "t1", history, func(r, e int) wire.Event {
		return wire.Event{Tenant: "t1", Domain: "user", Keys: []string{fmt.Sprintf("user:%d", r*events+e)}}
	})
	if err != nil {
		return nil, err
	}
	name := "7 worst history"
	perID := func(f filled) float64 { return float64(f.freedIDs) / float64(f.ids) }
	perMsg := func(f filled) float64 { return float64(f.freedHist) / float64(f.kept) }
	return []Row{
		{Scenario: name, Metric: fmt.Sprintf("message of %d keys of %d B and %d ids of %d B: its JSON", worst.keys, names.MaxKeyLen, events, wire.MaxIDLen), Value: float64(worst.body), Unit: "B"},
		{Scenario: name, Metric: fmt.Sprintf("history: bus memory per message (%d kept)", worst.kept), Value: perMsg(worst), Unit: "B"},
		{Scenario: name, Metric: fmt.Sprintf("event-id set: bus memory per id (%d ids)", worst.ids), Value: perID(worst), Unit: "B"},
		{Scenario: name, Metric: fmt.Sprintf("a channel at history 1000 (1000 such messages, %d ids)", lua.IDsPerVersion*1000), Value: (1000*perMsg(worst) + float64(lua.IDsPerVersion)*1000*perID(worst)) / (1 << 20), Unit: "MiB"},
		{Scenario: name, Metric: fmt.Sprintf("typical batched: message of %d short keys and %d publisher ids (%d B of JSON): history per message", typical.keys, events, typical.body), Value: perMsg(typical), Unit: "B"},
		{Scenario: name, Metric: fmt.Sprintf("typical batched: event-id set per id (%d ids)", typical.ids), Value: perID(typical), Unit: "B"},
		{Scenario: name, Metric: fmt.Sprintf("typical batched: a channel at history 1000 (%d ids)", lua.IDsPerVersion*1000), Value: (1000*perMsg(typical) + float64(lua.IDsPerVersion)*1000*perID(typical)) / (1 << 20), Unit: "MiB"},
	}, nil
}

// filled is what fillHistory measured of a channel's history.
type filled struct {
	keys, body          int   // keys and JSON bytes of the last message
	kept, ids           int64 // history entries, event ids
	freedHist, freedIDs int64 // bus memory each freed when deleted
}

// fillHistory publishes history+1 rounds of lua.IDsPerVersion events of the
// tenant (event(round, i)), each round in one PublishBatch and routed before
// the next, so each is one message recording lua.IDsPerVersion ids; checks
// that it was, then deletes the channel's event-id set and history and
// measures what each freed.
func fillHistory(ctx context.Context, s *system, tenant string, history int, event func(r, e int) wire.Event) (filled, error) {
	var f filled
	routed0 := metricSum(s.routerReg, "routerd_events_routed_total")
	msgs0 := metricSum(s.routerReg, "routerd_messages_published_total")
	rounds := history + 1 // one more than the history keeps: the trim has run
	for r := 0; r < rounds; r++ {
		batch := make([]wire.Event, lua.IDsPerVersion)
		for e := range batch {
			batch[e] = event(r, e)
		}
		if _, err := s.pub.PublishBatch(ctx, batch); err != nil {
			return f, err
		}
		if !waitFor(time.Minute, func() bool {
			return metricSum(s.routerReg, "routerd_events_routed_total")-routed0 >= float64((r+1)*lua.IDsPerVersion)
		}) {
			return f, fmt.Errorf("%s: round %d not routed", tenant, r)
		}
	}
	if msgs := metricSum(s.routerReg, "routerd_messages_published_total") - msgs0; msgs != float64(rounds) {
		return f, fmt.Errorf("%s: %v messages published for %d rounds: the events of a round were not merged into one", tenant, msgs, rounds)
	}
	if w := metricSum(s.routerReg, "routerd_whole_tag_messages_total"); w != 0 {
		return f, fmt.Errorf("%v whole-tag messages", w)
	}
	busC := s.busC.(*redis.Client)
	ch := names.Channel(s.mtx.Prefix, tenant, "active")
	historyKey, eventsKey := "{"+ch+"}:history", "{"+ch+"}:events"
	last, err := busC.XRevRangeN(ctx, historyKey, "+", "-", 1).Result()
	if err != nil || len(last) != 1 {
		return f, fmt.Errorf("history %s: %v %v", historyKey, last, err)
	}
	body, _ := last[0].Values[names.HistoryField].(string)
	m, err := wire.ParseMessage([]byte(body))
	if err != nil {
		return f, err
	}
	f.keys, f.body = len(m.Keys), len(body)
	if f.kept, err = busC.XLen(ctx, historyKey).Result(); err != nil {
		return f, err
	}
	if f.ids, err = busC.ZCard(ctx, eventsKey).Result(); err != nil {
		return f, err
	}
	if f.ids != int64(lua.IDsPerVersion*history) {
		return f, fmt.Errorf("%s: the event-id set holds %d ids, not IDS_PER_VERSION × history = %d", tenant, f.ids, lua.IDsPerVersion*history)
	}
	if f.freedIDs, err = delAll(ctx, busC, []string{eventsKey}); err != nil {
		return f, err
	}
	f.freedHist, err = delAll(ctx, busC, []string{historyKey})
	return f, err
}
