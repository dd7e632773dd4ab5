package lua_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/lua"
)

// The source_version script suppresses an older event only when newer ones
// invalidated everything it names.
func TestSourceVersionScript(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	const key = "invalidate:srcver:{acme}:user/1"
	run := func(limit int, sv string, keys ...string) lua.SourceVersionStatus {
		t.Helper()
		v, err := strconv.ParseInt(sv, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		req := lua.SourceVersionRequest{Key: key, Version: v, TTL: time.Minute, MaxKeys: limit, Keys: keys}
		st, err := lua.Run(ctx, c, &req)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	steps := []struct {
		sv    string
		keys  []string
		route lua.SourceVersionStatus
	}{
		{"6", []string{"b"}, 1},
		{"5", []string{"a"}, 1},      // another key: routed
		{"5", []string{"a"}, 1},      // the same version again (a retry): routed
		{"4", []string{"a", "b"}, 0}, // both covered by newer ones
		{"4", []string{"a", "c"}, 1}, // c never invalidated
		{"4", nil, 1},                // an older whole-tag event: only keys are newer
		{"9", nil, 1},                // a newer whole-tag one
		{"8", []string{"zz"}, 0},     // covered by the whole tag
		{"8", nil, 0},
		{"9", nil, 1},
		{"9007199254740993", []string{"big"}, 1}, // above 2^53: no rounding makes it newer
		{"9007199254740992", []string{"big"}, 1},
		{"9007199254740992", []string{"big"}, 1},
	}
	for i, s := range steps {
		if got := run(1000, s.sv, s.keys...); got != s.route {
			t.Errorf("step %d (sv %s keys %v): %d, want %d", i, s.sv, s.keys, got, s.route)
		}
	}
	if v := c.HGet(ctx, key, "big").Val(); v != "9007199254740993" {
		t.Errorf("stored %s, want the version exactly as given", v)
	}
	if ttl := c.PTTL(ctx, key).Val(); ttl <= 0 {
		t.Errorf("TTL %v", ttl)
	}
	// At the key bound nothing new is recorded, so nothing more is suppressed.
	c.Del(ctx, key)
	for i := 0; i < 5; i++ {
		run(3, "10", fmt.Sprint("k", i))
	}
	if n := c.HLen(ctx, key).Val(); n != 3 {
		t.Errorf("%d keys remembered, want 3", n)
	}
	if got := run(3, "2", "k4"); got != 1 {
		t.Error("an event naming a key never recorded was suppressed")
	}
}
