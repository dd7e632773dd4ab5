package subscriber

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
)

// replyError is an error a Redis server answered, as go-redis gives it.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// Only WRONGTYPE is an error of one channel, skipped while the others
// settle: every other answer (the server loading, busy, failing over, or
// refusing) fails the check, which is retried and keeps the service not
// ready.
func TestChannelErrorIsWrongTypeAlone(t *testing.T) {
	for _, tc := range []struct {
		err     error
		channel bool
	}{
		{replyError("WRONGTYPE Operation against a key holding the wrong kind of value"), true},
		{fmt.Errorf("{c}:meta: %w", replyError("WRONGTYPE Operation against a key")), true},
		{replyError("LOADING Redis is loading the dataset in memory"), false},
		{replyError("BUSY Redis is busy running a script"), false},
		{replyError("TRYAGAIN Multiple keys request during rehashing of slot"), false},
		{replyError("CLUSTERDOWN The cluster is down"), false},
		{replyError("MASTERDOWN Link with MASTER is down"), false},
		{replyError("MOVED 3999 127.0.0.1:6381"), false},
		{replyError("NOPERM this user has no permissions to access one of the keys"), false},
		{errors.New("dial tcp: connection refused"), false},
		{redis.Nil, false},
	} {
		if got := isChannelError(tc.err); got != tc.channel {
			t.Errorf("isChannelError(%q) = %v, want %v", tc.err, got, tc.channel)
		}
	}
}

// A meta the bus refuses to read (NOPERM here, as a cluster master that is
// loading answers LOADING for its slots alone) fails the check; a meta of
// another type is its channel's error alone.
func TestCheckFailsOnAMetaTheBusRefuses(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	const ch = "invalidate:acme:active"
	must(t, admin.Set(ctx, names.GenerationKey("invalidate"), "g1", 0).Err())
	must(t, admin.Do(ctx, "ACL", "SETUSER", "sub", "on", ">pw", "+@all", "~invalidate:*", "~"+names.HistoryKey(ch)).Err())
	bus := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "sub", Password: "pw"})
	t.Cleanup(func() { _ = bus.Close() })
	s, err := New(bus, Options{Service: "profile-svc", Matrix: testMatrixParsed(t),
		Handler: func(context.Context, Invalidation) error { return nil }})
	must(t, err)
	if err := s.check(ctx); err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("check = %v, want it failing on NOPERM", err)
	}
	must(t, admin.Do(ctx, "ACL", "SETUSER", "sub", "allkeys").Err())
	must(t, admin.Set(ctx, names.MetaKey(ch), "not a hash", 0).Err())
	if err := s.check(ctx); err != nil {
		t.Fatalf("check with a meta of another type = %v, want that channel skipped", err)
	}
	if n := count(t, s.m.positionErrors); n != 1 {
		t.Errorf("position errors counted %v, want 1", n)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
