package integration

import (
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"
)

// An operator (or a script gone wrong) runs redis-cli CLIENT KILL TYPE
// pubsub and CLIENT KILL TYPE normal in a loop for a few seconds while
// events are published: every connection of the publisher, the router and
// the subscriber is cut again and again, mid-command. Every event a
// publisher was told was accepted reaches the subscriber, each key once in
// the channel's history; nothing is left pending, and the router and the
// subscriber are ready again without a restart.
func TestAttack8BusClientKillLoopLosesNothing(t *testing.T) {
	const n = 400
	e, r, s, keys := faultEnv(t, n)
	wait := e.publishSteadily(keys, 5*time.Millisecond)
	host, port, _ := net.SplitHostPort(e.bus.Addr)
	kills := 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		for _, typ := range []string{"pubsub", "normal"} {
			out, err := exec.Command("redis-cli", "-h", host, "-p", port, "CLIENT", "KILL", "TYPE", typ).CombinedOutput()
			if err != nil {
				t.Fatalf("redis-cli CLIENT KILL TYPE %s: %v: %s", typ, err, out)
			}
			kills++
		}
		time.Sleep(20 * time.Millisecond)
	}
	accepted, _ := wait()
	t.Logf("%d of %d events accepted, %d kills", len(accepted), n, kills)
	e.settled(r, s, "invalidate:acme:active", accepted, keys, fmt.Sprintf("%d kill rounds", kills/2))
}
