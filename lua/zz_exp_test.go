package lua

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/routerd/routerd/internal/redistest"
)

func TestZZExpPublishCost(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	c.Do(ctx, "SUBSCRIBE") // no-op
	const channels, msgsPer, ids = 100, 50, 20
	c.ConfigResetStat(ctx)
	for round := 0; round < msgsPer; round++ {
		req := PublishRequest{Command: "PUBLISH", Epoch: "e1"}
		for ch := 0; ch < channels; ch++ {
			m := PublishMessage{}
			var keys []string
			for i := 0; i < ids; i++ {
				m.IDs = append(m.IDs, fmt.Sprintf("%d:%03d-%d", ch%8, round, i))
				keys = append(keys, fmt.Sprintf(`"user:%d:%d"`, round, i))
			}
			m.Body = []byte(`,"tenant":"t` + fmt.Sprint(ch) + `","tag":"g","keys":[` + strings.Join(keys, ",") + `]`)
			req.Channels = append(req.Channels, PublishChannel{Channel: fmt.Sprintf("invalidate:t%d:g", ch), History: 1000, Rate: 1e6, Burst: 1e6, Messages: []PublishMessage{m}})
		}
		if _, err := Run(ctx, c, &req); err != nil {
			t.Fatal(err)
		}
	}
	info := c.Info(ctx, "commandstats").Val()
	ev := float64(channels * msgsPer * ids)
	for _, l := range strings.Split(info, "\n") {
		if strings.HasPrefix(l, "cmdstat_") {
			var calls, usec int64
			name := l[:strings.Index(l, ":")]
			fmt.Sscanf(l[strings.Index(l, ":")+1:], "calls=%d,usec=%d", &calls, &usec)
			if usec > 0 {
				t.Logf("%-28s calls %7d  %.3f us/event", name, calls, float64(usec)/ev)
			}
		}
	}
}
