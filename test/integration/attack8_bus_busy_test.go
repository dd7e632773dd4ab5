package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// busyScript keeps the server busy for ARGV[1] milliseconds: past
// busy-reply-threshold every other client's command is answered BUSY.
const busyScript = `
local t = redis.call('TIME')
local start = t[1] * 1000 + t[2] / 1000
while true do
  t = redis.call('TIME')
  if t[1] * 1000 + t[2] / 1000 - start > tonumber(ARGV[1]) then return 1 end
end`

// Another client runs long scripts on the bus (busy-reply-threshold 100ms)
// while events are published, routed and received: every command of the
// router, the publisher and the subscriber (its pub/sub PING included) is
// answered BUSY meanwhile. Every event a publisher was told was accepted
// reaches the subscriber, each published once; a publisher refused is told
// BUSY; the router and the subscriber are ready again afterwards, without a
// restart, and nothing is left pending.
func TestAttack8BusBusyScriptsLoseNothing(t *testing.T) {
	ctx := context.Background()
	e, r, s, keys := faultEnv(t, 400, "--busy-reply-threshold", "100")
	wait := e.publishSteadily(keys, 5*time.Millisecond)
	busy := redis.NewClient(&redis.Options{Addr: e.bus.Addr, ReadTimeout: 30 * time.Second})
	defer busy.Close()
	for i := 0; i < 3; i++ {
		must(t, busy.Eval(ctx, busyScript, nil, 1500).Err())
		time.Sleep(200 * time.Millisecond)
	}
	accepted, refused := wait()
	for _, err := range refused {
		if !strings.Contains(err.Error(), "BUSY") {
			t.Errorf("a publish refused during a busy script: %v, want the BUSY refusal", err)
		}
	}
	e.settled(r, s, "invalidate:acme:active", accepted, keys, fmt.Sprintf("%d refused", len(refused)))
}

// The bus stops answering for 4 s at a time (DEBUG SLEEP: longer than
// go-redis's 3 s read timeout) while events are published, routed and
// received: calls time out, among them publish scripts that the bus runs
// once it wakes. Every event a publisher was told was accepted reaches
// the subscriber, each published once (a retried script finds its event
// ids and sends nothing again); the router and the subscriber are ready
// again afterwards, and nothing is left pending.
func TestAttack8BusDebugSleepLosesNothing(t *testing.T) {
	// Parallel: it waits out the bus's sleeps, on a bus of its own.
	t.Parallel()
	ctx := context.Background()
	e, r, s, keys := faultEnv(t, 300, "--enable-debug-command", "yes")
	wait := e.publishSteadily(keys, 10*time.Millisecond)
	sleeper := redis.NewClient(&redis.Options{Addr: e.bus.Addr, ReadTimeout: 30 * time.Second})
	defer sleeper.Close()
	for i := 0; i < 2; i++ {
		must(t, sleeper.Do(ctx, "DEBUG", "SLEEP", "4").Err())
		time.Sleep(300 * time.Millisecond)
	}
	accepted, _ := wait()
	e.settled(r, s, "invalidate:acme:active", accepted, keys, "two sleeps of 4 s")
}
