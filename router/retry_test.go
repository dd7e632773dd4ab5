package router

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
)

// replyErr is an error reply as Redis sends it (go-redis's are internal).
type replyErr string

func (e replyErr) Error() string { return string(e) }
func (replyErr) RedisError()     {}

func TestPermanentErrors(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{replyErr("WRONGTYPE Operation against a key holding the wrong kind of value script: abc, on @user_script:25."), true},
		{replyErr("ERR The ID specified in XADD is equal or smaller than the target stream top item"), true},
		{replyErr("ERR Error running script (call to f_abc): @user_script:3: attempt to compare nil with number"), true},
		{fmt.Errorf("publish: %w", replyErr("WRONGTYPE Operation against a key")), true},
		{replyErr("CLUSTERDOWN The cluster is down"), false},
		{replyErr("MOVED 13047 127.0.0.1:35865"), false},
		{replyErr("ASK 13047 127.0.0.1:35865"), false},
		{replyErr("TRYAGAIN Multiple keys request during rehashing of slot"), false},
		{replyErr("LOADING Redis is loading the dataset in memory"), false},
		{replyErr("READONLY You can't write against a read only replica."), false},
		{replyErr("OOM command not allowed when used memory > 'maxmemory'. script: abc, on @user_script:25."), false},
		{replyErr("NOPERM this user has no permissions to run the 'evalsha' command"), false},
		{replyErr("ERR max number of clients reached"), false},
		{replyErr("ERR The user executing the script can't publish to the channel mentioned in the command"), false},
		{replyErr("ERR The user executing the script can't access at least one of the keys mentioned in the command"), false},
		{&net.OpError{Op: "dial", Err: errors.New("connect: connection refused")}, false},
		{context.DeadlineExceeded, false},
		{errors.New("not acknowledged by a replica of 127.0.0.1:7000 within 1s"), false},
	}
	for _, tt := range tests {
		if got := permanent(tt.err); got != tt.want {
			t.Errorf("permanent(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// A real WRONGTYPE reply, from a script as the publish script gets it, is
// taken as permanent.
func TestPermanentWrongTypeFromRedis(t *testing.T) {
	c := redistest.Start(t).Client(t)
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	err := redis.NewScript(`return redis.call('HMGET', KEYS[1], 'a')`).Run(ctx, c, []string{"k"}).Err()
	if err == nil || !permanent(err) {
		t.Errorf("WRONGTYPE from a script: %v, permanent %v", err, permanent(err))
	}
}

func TestRetryBackoffDoublesToTheCap(t *testing.T) {
	for tries := 1; tries < 70; tries++ {
		want := min(retryMin<<min(tries-1, 10), retryMax)
		for range 20 {
			if d := retryBackoff(tries); d > want || d < want*4/5 {
				t.Fatalf("try %d: backoff %v, want %v less at most a fifth", tries, d, want)
			}
		}
	}
	if d := retryBackoff(1); d > 100*time.Millisecond {
		t.Errorf("first backoff %v", d)
	}
}
