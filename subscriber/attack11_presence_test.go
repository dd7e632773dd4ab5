package subscriber

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
)

// Members of the presence set that no subscriber wrote (a client's SADD,
// garbage): each counts as a subscriber without --deliver, forever (the
// agent with --deliver then delivers a reset at each start: the safe
// side), and none panics the count; only a well-formed expired one is
// taken away.
func TestAttack11ForgedPresenceMembers(t *testing.T) {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer c.Close()
	ctx := context.Background()
	key := names.DeliveryPlainKey("profile-svc")
	expired := fmt.Sprintf("x@%d", time.Now().Add(-time.Hour).Unix())
	forged := []string{"x", "@", "x@", "x@abc", "x@99999999999999999999999", "x@-1e9", "@@"}
	must(t, c.SAdd(ctx, key, expired).Err())
	for _, m := range forged {
		must(t, c.SAdd(ctx, key, m).Err())
	}
	n, err := Undelivering(ctx, c, "profile-svc")
	if err != nil || n != len(forged) {
		t.Errorf("Undelivering = %d, %v; want the %d forged members counted", n, err, len(forged))
	}
	if ok, _ := c.SIsMember(ctx, key, expired).Result(); ok {
		t.Error("the expired member was not taken away")
	}
}
