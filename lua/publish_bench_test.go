package lua

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/routerd/routerd/internal/redistest"
)

// The publish script's cost inside Redis, which is where a bus spends most
// of its CPU per event: each iteration is one call publishing a message of
// 20 event ids on each of 100 channels (a read batch's shape with 100
// tenants). Redis's own accounting (INFO commandstats) gives the figures:
// redis-µs/event for the whole script, zadd-µs/event for its idempotency
// records, trim-µs/event for dropping the oldest of them. Go's ns/op is the round trip, not the cost. The channels'
// histories and id records are filled to their caps first, so the figures
// are those of a steady state, trimming included, whatever the number of
// iterations.
func BenchmarkPublishScript(b *testing.B) {
	ctx := context.Background()
	c := redistest.Start(b).Client(b)
	const channels, ids, history = 100, 20, 1000
	round := 0
	usec := func(cmd string) float64 {
		for _, l := range strings.Split(c.Info(ctx, "commandstats").Val(), "\n") {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "cmdstat_"+cmd+":"); ok {
				var calls, us int64
				if _, err := fmt.Sscanf(rest, "calls=%d,usec=%d", &calls, &us); err == nil {
					return float64(us)
				}
			}
		}
		return 0
	}
	publish := func() {
		req := PublishRequest{Command: "PUBLISH", Epoch: "e1"}
		for ch := range channels {
			m := PublishMessage{}
			var keys []string
			for i := range ids {
				m.IDs = append(m.IDs, fmt.Sprintf("routerd:ingress:{%d}:%d-%d", ch%8, 1765000000000+round, i))
				keys = append(keys, fmt.Sprintf(`"user:%d:%d"`, round, i))
			}
			m.Body = []byte(`,"tenant":"t` + fmt.Sprint(ch) + `","tag":"g","keys":[` + strings.Join(keys, ",") + `]`)
			req.Channels = append(req.Channels, PublishChannel{Channel: fmt.Sprintf("invalidate:t%d:g", ch), History: history, Rate: 1e6, Burst: 1e6, Messages: []PublishMessage{m}})
		}
		round++
		if _, err := Run(ctx, c, &req); err != nil {
			b.Fatal(err)
		}
	}
	// The id records reach their cap (IDsPerVersion ids a version of the
	// history) after IDsPerVersion × history / ids versions.
	for range IDsPerVersion * history / ids {
		publish()
	}
	if err := c.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		publish()
	}
	events := float64(b.N * channels * ids)
	b.ReportMetric(usec("evalsha")/events, "redis-µs/event")
	b.ReportMetric(usec("zadd")/events, "zadd-µs/event")
	b.ReportMetric((usec("zremrangebyrank")+usec("zremrangebyscore"))/events, "trim-µs/event")
}
