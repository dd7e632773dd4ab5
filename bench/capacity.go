package main

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/router"
	"github.com/routerd/routerd/subscriber"
)

// publishRate runs redis-benchmark -c 50 PUBLISH (unpipelined) to channel
// against the server at addr and returns requests per second.
func publishRate(addr, channel string, n int) (float64, error) {
	_, port, _ := strings.Cut(addr, ":")
	outp, err := exec.Command("redis-benchmark", "-p", port, "-c", "50", "-n", strconv.Itoa(n), "-q", "publish", channel, "x").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("redis-benchmark: %v: %s", err, outp)
	}
	m := regexp.MustCompile(`([0-9.]+) requests per second`).FindSubmatch(outp)
	if m == nil {
		return 0, fmt.Errorf("redis-benchmark output: %s", outp)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// pubsubCost: ten services of every tenant over 100 tags, subscribed on a
// standalone bus with 100 tenants in the registry (10,000 exact channels
// each), against the same bus with no subscriber: the unpipelined PUBLISH
// rate of redis-benchmark, in one run. For contrast, the same number of
// pattern subscriptions (1,000) held by a bare client, as a subscriber of
// every tenant made them before it subscribed channel by channel.
func pubsubCost(dir string) ([]Row, error) {
	const name = "6 pub/sub cost"
	ctx := context.Background()
	bus, err := redistest.Launch(dir)
	if err != nil {
		return nil, err
	}
	defer bus.Stop()
	cache, err := redistest.Launch(dir)
	if err != nil {
		return nil, err
	}
	defer cache.Stop()
	busC := redis.NewClient(&redis.Options{Addr: bus.Addr})
	defer busC.Close()

	var tags, services, svcNames []string
	for i := 0; i < 10; i++ {
		svcNames = append(svcNames, fmt.Sprintf("svc%d", i))
		services = append(services, fmt.Sprintf("  svc%d: {tenants: all}", i))
	}
	for i := 0; i < 100; i++ {
		tags = append(tags, fmt.Sprintf("  tag%d: {services: [%s]}", i, strings.Join(svcNames, ", ")))
	}
	mtx, err := matrix.Parse("pubsub.yaml", []byte(fmt.Sprintf("version: 1\ntags:\n%s\ndomains:\n  d: {tags: [tag0]}\nservices:\n%s\n",
		strings.Join(tags, "\n"), strings.Join(services, "\n"))))
	if err != nil {
		return nil, err
	}
	// The registry as the router leaves it once it has routed an event of
	// each of 100 tenants.
	for i := 0; i < 100; i++ {
		if err := busC.SAdd(ctx, names.TenantsKey(mtx.Prefix), fmt.Sprintf("t%d", i)).Err(); err != nil {
			return nil, err
		}
	}
	n := scale(100000)
	// Two channels: redis-benchmark's own, and one shaped like routerd's
	// that no subscription covers (a pattern invalidate:*:<tag> reads
	// further into it before it fails).
	chans := []string{"ch", "invalidate:t1:other"}
	rates := func(n int) ([]float64, error) {
		var out []float64
		for _, ch := range chans {
			r, err := publishRate(bus.Addr, ch, n)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
		return out, nil
	}
	base, err := rates(n)
	if err != nil {
		return nil, err
	}

	subCtx, cancel := context.WithCancel(ctx)
	var done []chan struct{}
	stopSubs := func() {
		cancel()
		for _, d := range done {
			<-d
		}
		done = nil
	}
	defer stopSubs()
	if err := markBus(ctx, busC, mtx.Prefix); err != nil {
		return nil, err
	}
	for i, svc := range svcNames {
		cacheC := redis.NewClient(&redis.Options{Addr: cache.Addr, DB: i})
		defer cacheC.Close()
		sub, err := subscriber.New(busC, subscriber.Options{Service: svc, Matrix: mtx, Cache: cacheC, Registerer: prometheus.NewRegistry(), CheckInterval: time.Minute})
		if err != nil {
			return nil, err
		}
		d := make(chan struct{})
		done = append(done, d)
		go func() { defer close(d); _ = sub.Run(subCtx) }()
		if !waitFor(time.Minute, sub.Ready) {
			return nil, fmt.Errorf("subscriber %s not ready", svc)
		}
	}
	last := "invalidate:t99:tag99"
	if !waitFor(time.Minute, func() bool { return busC.PubSubNumSub(ctx, last).Val()[last] == 10 }) {
		return nil, fmt.Errorf("%s has %d subscribers, want 10", last, busC.PubSubNumSub(ctx, last).Val()[last])
	}
	channels := subscribedChannels(busC)
	numpat := busC.PubSubNumPat(ctx).Val()
	withSubs, err := rates(n)
	if err != nil {
		return nil, err
	}
	stopSubs()

	// The contrast: 1,000 pattern subscriptions, 100 per client, all
	// distinct (PUBSUB NUMPAT counts distinct patterns, and Redis matches
	// each distinct pattern once per PUBLISH).
	base2, err := rates(n)
	if err != nil {
		return nil, err
	}
	for c := 0; c < 10; c++ {
		var patterns []string
		for i := 0; i < 100; i++ {
			patterns = append(patterns, fmt.Sprintf("invalidate:*:tag%d", c*100+i))
		}
		ps := busC.PSubscribe(ctx, patterns...)
		defer ps.Close()
	}
	if !waitFor(time.Minute, func() bool { return busC.PubSubNumPat(ctx).Val() == 1000 }) {
		return nil, fmt.Errorf("PUBSUB NUMPAT %d, want 1000", busC.PubSubNumPat(ctx).Val())
	}
	withPatterns, err := rates(max(1, n/2))
	if err != nil {
		return nil, err
	}
	// The reference of the subscribed rate is the mean of the no-subscriber
	// rates measured just before and just after it (the subscribers gone):
	// on shared cores one redis-benchmark run differs from the next by
	// about a tenth.
	var rows []Row
	for i, ch := range chans {
		ref := (base[i] + base2[i]) / 2
		rows = append(rows,
			Row{Scenario: name, Metric: fmt.Sprintf("PUBLISH %s, 10 every-tenant services × 100 tags × 100 tenants subscribed (%d channels, %d patterns)", ch, channels, numpat), Value: withSubs[i], Unit: "/s",
				Reference: "the same, no subscriber (before and after)", RefValue: ref, Ratio: withSubs[i] / ref},
			Row{Scenario: name, Metric: fmt.Sprintf("PUBLISH %s, 1,000 pattern subscriptions of a bare client (what was removed)", ch), Value: withPatterns[i], Unit: "/s",
				Reference: "the same, no subscriber (just before)", RefValue: base2[i], Ratio: withPatterns[i] / base2[i]})
	}
	return rows, nil
}

// usedMemory is the server's used_memory in bytes.
func usedMemory(ctx context.Context, c *redis.Client) (int64, error) {
	info, err := c.InfoMap(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(info["Memory"]["used_memory"], 10, 64)
}

// delAll deletes keys in pipelines and returns how much used_memory fell.
func delAll(ctx context.Context, c *redis.Client, keys []string) (int64, error) {
	before, err := usedMemory(ctx, c)
	if err != nil {
		return 0, err
	}
	for len(keys) > 0 {
		chunk := keys[:min(len(keys), 1000)]
		keys = keys[len(chunk):]
		if err := c.Del(ctx, chunk...).Err(); err != nil {
			return 0, err
		}
	}
	after, err := usedMemory(ctx, c)
	return before - after, err
}

// capacity: the figures docs/capacity.md rests on, at the largest scale
// that fits a small machine. Channels are made by the router from real
// events (one key each), so metas, histories and event ids are what the
// publish script writes.
//
//   - bus memory per channel: with one message, and its meta alone;
//   - bus memory per channel with a full history, at the default length
//     (1000) and a configured one (100);
//   - the tenant registry's memory per tenant and the time to read it;
//   - a subscriber of every tenant over 10 tags as the registry grows:
//     subscribed and checked, the time of one position check once caught
//     up, its Go heap.
func capacity(dir string) ([]Row, error) {
	const name = "7 capacity"
	ctx := context.Background()
	var tags []string
	for i := 0; i < 10; i++ {
		tags = append(tags, fmt.Sprintf("tag%d", i))
	}
	var tagLines []string
	for _, t := range tags {
		tagLines = append(tagLines, fmt.Sprintf("  %s: {services: [svc]}", t))
	}
	yaml := fmt.Sprintf("version: 1\n%s\ntags:\n%s\n  short: {services: [other], history: 100}\ndomains:\n  d: {tags: [%s]}\n  s: {tags: [short]}\nservices:\n  svc: {tenants: all}\n  other: {tenants: all}\n",
		throughputLimits, strings.Join(tagLines, "\n"), strings.Join(tags, ", "))
	mtx, err := matrix.Parse("capacity.yaml", []byte(yaml))
	if err != nil {
		return nil, err
	}
	bus, err := redistest.Launch(dir)
	if err != nil {
		return nil, err
	}
	defer bus.Stop()
	cache, err := redistest.Launch(dir)
	if err != nil {
		return nil, err
	}
	defer cache.Stop()
	busC := redis.NewClient(&redis.Options{Addr: bus.Addr, PoolSize: 64})
	defer busC.Close()
	cacheC := redis.NewClient(&redis.Options{Addr: cache.Addr})
	defer cacheC.Close()
	pub, err := publisher.New(busC, publisher.Options{Prefix: mtx.Prefix, Origin: "bench"})
	if err != nil {
		return nil, err
	}
	routerReg := prometheus.NewRegistry()
	r, err := router.New(busC, mtx, router.Options{Registerer: routerReg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	rctx, rcancel := context.WithCancel(ctx)
	rdone := make(chan struct{})
	go func() { defer close(rdone); _ = r.Run(rctx) }()
	defer func() { rcancel(); <-rdone }()
	if !waitFor(10*time.Second, r.Ready) {
		return nil, fmt.Errorf("router not ready")
	}
	routed := func() float64 { return metricSum(routerReg, "routerd_events_routed_total") }
	sent := 0
	// publish sends events (one key each) and waits until they are routed.
	publishEvents := func(events []publisher.Event) error {
		for len(events) > 0 {
			chunk := events[:min(len(events), 1000)]
			events = events[len(chunk):]
			if _, err := pub.PublishBatch(ctx, chunk); err != nil {
				return err
			}
			sent += len(chunk)
		}
		if !waitFor(5*time.Minute, func() bool { return routed() >= float64(sent) }) {
			return fmt.Errorf("only %v of %d events routed", routed(), sent)
		}
		return nil
	}
	eventsOf := func(domain string, tenants []string, key string) []publisher.Event {
		events := make([]publisher.Event, len(tenants))
		for i, t := range tenants {
			events[i] = publisher.Event{Tenant: t, Domain: domain, Keys: []string{key}}
		}
		return events
	}
	tenantNames := func(prefix string, from, to int) []string {
		var out []string
		for i := from; i < to; i++ {
			out = append(out, fmt.Sprintf("%s%d", prefix, i))
		}
		return out
	}
	channelKeys := func(tenants []string, tags []string, keyOf func(string) string) []string {
		var out []string
		for _, t := range tenants {
			for _, tag := range tags {
				out = append(out, keyOf(names.Channel(mtx.Prefix, t, tag)))
			}
		}
		return out
	}
	var rows []Row

	// Subscribers of every tenant as the registry grows; the channels they
	// subscribe to carry one message each.
	prev := 0
	for _, tenants := range []int{scale(1000), scale(10000), scale(40000)} {
		if err := publishEvents(eventsOf("d", tenantNames("t", prev, tenants), "user:1")); err != nil {
			return nil, err
		}
		prev = tenants
		channels := tenants * len(tags)
		regBytes, err := busC.MemoryUsage(ctx, names.TenantsKey(mtx.Prefix), 0).Result()
		if err != nil {
			return nil, err
		}
		start := time.Now()
		if err := busC.SMembers(ctx, names.TenantsKey(mtx.Prefix)).Err(); err != nil {
			return nil, err
		}
		regRead := time.Since(start)
		if err := cacheC.FlushAll(ctx).Err(); err != nil {
			return nil, err
		}
		// A subscriber subscribes to every channel, then checks every
		// position (the check counter counts a check when it starts; Ready
		// turns true when the first one ends). Twice: with no position
		// stored (a new service: the check records every channel's
		// position), then restarted with them stored (caught up).
		type run struct {
			subscribe, check time.Duration
			heap, busMem     int64
		}
		start1 := func() (run, error) {
			heapBefore := liveHeap()
			busBefore, err := usedMemory(ctx, busC)
			if err != nil {
				return run{}, err
			}
			reg := prometheus.NewRegistry()
			sub, err := subscriber.New(busC, subscriber.Options{Service: "svc", Matrix: mtx, Cache: cacheC, Registerer: reg, CheckInterval: time.Hour})
			if err != nil {
				return run{}, err
			}
			sctx, scancel := context.WithCancel(ctx)
			sdone := make(chan struct{})
			defer func() { scancel(); <-sdone }()
			start := time.Now()
			go func() { defer close(sdone); _ = sub.Run(sctx) }()
			var checkStart time.Time
			ok := waitFor(5*time.Minute, func() bool {
				if checkStart.IsZero() && metricSum(reg, "subscriber_position_checks_total") > 0 {
					checkStart = time.Now()
				}
				return sub.Ready()
			})
			end := time.Now()
			if !ok || checkStart.IsZero() {
				return run{}, fmt.Errorf("%d tenants: not ready, %d of %d channels subscribed", tenants, subscribedChannels(busC), channels)
			}
			if n := subscribedChannels(busC); n < int64(channels) {
				return run{}, fmt.Errorf("%d tenants: ready with %d of %d channels subscribed", tenants, n, channels)
			}
			busAfter, err := usedMemory(ctx, busC)
			if err != nil {
				return run{}, err
			}
			return run{checkStart.Sub(start), end.Sub(checkStart), liveHeap() - heapBefore, busAfter - busBefore}, nil
		}
		cold, err := start1()
		if err != nil {
			return nil, err
		}
		warm, err := start1()
		if err != nil {
			return nil, err
		}
		rows = append(rows,
			Row{Scenario: name, Metric: fmt.Sprintf("%d tenants: registry memory per tenant", tenants), Value: float64(regBytes) / float64(tenants), Unit: "B"},
			Row{Scenario: name, Metric: fmt.Sprintf("%d tenants: registry read (SMEMBERS)", tenants), Value: ms(regRead), Unit: "ms"},
			Row{Scenario: name, Metric: fmt.Sprintf("%d channels (every tenant × 10 tags, one message each): subscribed", channels), Value: ms(cold.subscribe), Unit: "ms"},
			Row{Scenario: name, Metric: fmt.Sprintf("%d channels: first position check, no position stored", channels), Value: ms(cold.check), Unit: "ms"},
			Row{Scenario: name, Metric: fmt.Sprintf("%d channels: restarted: subscribed", channels), Value: ms(warm.subscribe), Unit: "ms"},
			Row{Scenario: name, Metric: fmt.Sprintf("%d channels: restarted: position check, caught up", channels), Value: ms(warm.check), Unit: "ms"},
			Row{Scenario: name, Metric: fmt.Sprintf("%d channels: Go heap the subscriber holds", channels), Value: float64(warm.heap) / (1 << 20), Unit: "MB"},
			Row{Scenario: name, Metric: fmt.Sprintf("%d channels: bus memory per subscribed channel (pub/sub tables)", channels), Value: float64(warm.busMem) / float64(channels), Unit: "B"},
		)
	}

	// Bus memory per channel, measured by deleting what the channels hold:
	// first their histories and event ids, then their metas.
	all := tenantNames("t", 0, prev)
	hist := append(channelKeys(all, tags, names.HistoryKey), channelKeys(all, tags, names.EventsKey)...)
	freedHist, err := delAll(ctx, busC, hist)
	if err != nil {
		return nil, err
	}
	freedMeta, err := delAll(ctx, busC, channelKeys(all, tags, names.MetaKey))
	if err != nil {
		return nil, err
	}
	nch := float64(len(all) * len(tags))
	rows = append(rows,
		Row{Scenario: name, Metric: fmt.Sprintf("bus memory per channel, meta only (%d channels)", int(nch)), Value: float64(freedMeta) / nch, Unit: "B"},
		Row{Scenario: name, Metric: "bus memory per channel, history of 1 message and its event id", Value: float64(freedHist) / nch, Unit: "B"},
	)

	// A stream's first node is allocated at stream-node-max-bytes (4096 by
	// default) in Redis 7.0: the same one-message channels with it lowered.
	if err := busC.ConfigSet(ctx, "stream-node-max-bytes", "512").Err(); err != nil {
		return nil, err
	}
	small := tenantNames("u", 0, scale(10000))
	if err := publishEvents(eventsOf("d", small, "user:1")); err != nil {
		return nil, err
	}
	freedSmall, err := delAll(ctx, busC, append(channelKeys(small, tags, names.HistoryKey), channelKeys(small, tags, names.EventsKey)...))
	if err != nil {
		return nil, err
	}
	if err := busC.ConfigSet(ctx, "stream-node-max-bytes", "4096").Err(); err != nil {
		return nil, err
	}
	rows = append(rows, Row{Scenario: name, Metric: "bus memory per channel, history of 1 message and its event id, stream-node-max-bytes 512", Value: float64(freedSmall) / float64(len(small)*len(tags)), Unit: "B"})

	// Full histories: 100 channels at the default length (1000, 10 tenants
	// × 10 tags) and 100 at a configured 100 (100 tenants × short), one
	// event per channel per round, each its own message.
	deep, short := tenantNames("h", 0, 10), tenantNames("s", 0, 100)
	rounds := 1100
	if *quick {
		rounds = 120
	}
	cpu0, err := serverStats(ctx, busC)
	if err != nil {
		return nil, err
	}
	published0 := metricSum(routerReg, "routerd_messages_published_total")
	for i := 0; i < rounds; i++ {
		key := "user:" + strconv.Itoa(i)
		if err := publishEvents(append(eventsOf("d", deep, key), eventsOf("s", short, key)...)); err != nil {
			return nil, err
		}
	}
	cpu1, err := serverStats(ctx, busC)
	if err != nil {
		return nil, err
	}
	published := metricSum(routerReg, "routerd_messages_published_total") - published0
	rows = append(rows, Row{Scenario: name, Metric: fmt.Sprintf("bus Redis CPU per channel message, one event each (%.0f messages, ingress to publish; no subscriber)", published),
		Value: (cpu1.cpu - cpu0.cpu) / published * 1e6, Unit: "µs"})
	var msgBytes, msgs int64
	for _, ch := range []string{names.Channel(mtx.Prefix, "h0", "tag0"), names.Channel(mtx.Prefix, "s0", "short")} {
		entries, err := busC.XRevRangeN(ctx, names.HistoryKey(ch), "+", "-", 10).Result()
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			for _, v := range e.Values {
				msgBytes += int64(len(fmt.Sprint(v)))
				msgs++
			}
		}
	}
	xlen := func(ch string) int64 { return busC.XLen(ctx, names.HistoryKey(ch)).Val() }
	deepLen, shortLen := xlen(names.Channel(mtx.Prefix, "h0", "tag0")), xlen(names.Channel(mtx.Prefix, "s0", "short"))
	freedDeep, err := delAll(ctx, busC, append(channelKeys(deep, tags, names.HistoryKey), channelKeys(deep, tags, names.EventsKey)...))
	if err != nil {
		return nil, err
	}
	freedShort, err := delAll(ctx, busC, append(channelKeys(short, []string{"short"}, names.HistoryKey), channelKeys(short, []string{"short"}, names.EventsKey)...))
	if err != nil {
		return nil, err
	}
	if msgs > 0 {
		rows = append(rows, Row{Scenario: name, Metric: "history message (one key, one event id, origin, trace-free)", Value: float64(msgBytes) / float64(msgs), Unit: "B"})
	}
	rows = append(rows,
		Row{Scenario: name, Metric: fmt.Sprintf("bus memory per channel, history length 1000 (%d entries kept, trimmed with ~) and event ids", deepLen), Value: float64(freedDeep) / float64(len(deep)*len(tags)), Unit: "B"},
		Row{Scenario: name, Metric: fmt.Sprintf("bus memory per channel, history length 100 (%d entries kept) and event ids", shortLen), Value: float64(freedShort) / float64(len(short)), Unit: "B"},
	)
	return rows, nil
}

// markBus sets the bus's generation as a router does when it starts: a
// subscriber is not ready on a bus no router has marked.
func markBus(ctx context.Context, busC redis.UniversalClient, prefix string) error {
	if err := busC.SetNX(ctx, names.GenerationKey(prefix), "bench", 0).Err(); err != nil {
		return fmt.Errorf("marking the bus: %w", err)
	}
	return nil
}
