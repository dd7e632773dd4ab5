package lua_test

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/lua"
	"github.com/routerd/routerd/names"
)

// Every script, as composed, compiles in Redis.
func TestScriptsLoad(t *testing.T) {
	c := redistest.Start(t).Client(t)
	for name, src := range lua.Sources() {
		if err := c.ScriptLoad(context.Background(), src).Err(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// The limits Go and Lua share come from Go (MAX_UNPACK): no script spells
// MaxUnpack, or a number derived from it, by hand.
func TestScriptsTakeLimitsFromGo(t *testing.T) {
	limits := []int{lua.MaxUnpack, lua.MaxUnpack - 1, lua.MaxUnpack / 2, lua.MaxUnpack/2 - 1}
	var alts []string
	for _, n := range limits {
		alts = append(alts, strconv.Itoa(n))
	}
	literal := regexp.MustCompile(`\b(` + strings.Join(alts, "|") + `)\b`)
	comment := regexp.MustCompile(`--.*`)
	for name, src := range lua.Sources() {
		src = strings.TrimPrefix(src, "#!lua flags=allow-oom,allow-cross-slot-keys\n")
		for i, line := range strings.Split(src, "\n") {
			if strings.HasPrefix(line, "local MAX_UNPACK = ") {
				continue // the prelude, written from lua.MaxUnpack
			}
			if m := literal.FindString(comment.ReplaceAllString(line, "")); m != "" {
				t.Errorf("%s:%d: the limit %s is written by hand (use MAX_UNPACK): %s", name, i+1, m, line)
			}
		}
		if !strings.HasPrefix(src, "local MAX_UNPACK = "+strconv.Itoa(lua.MaxUnpack)+"\n") {
			t.Errorf("%s does not start with the prelude", name)
		}
	}
}

// After the script cache is emptied (a restart, a failover), RunPipeline
// loads the scripts and runs the pipeline again; a call that had succeeded
// keeps its first reply.
func TestRunPipelineReloadsScripts(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	incr := redis.NewScript("return redis.call('INCR', KEYS[1])")
	other := redis.NewScript("return redis.call('INCRBY', KEYS[1], 10)")
	if err := lua.Load(ctx, c, incr); err != nil {
		t.Fatal(err)
	}
	var extra *redis.StringCmd
	cmds, err := lua.RunPipeline(ctx, c, []*redis.Script{incr, other}, func(pipe redis.Pipeliner) []*redis.Cmd {
		extra = pipe.Get(ctx, "a")
		return []*redis.Cmd{incr.EvalSha(ctx, pipe, []string{"a"}), other.EvalSha(ctx, pipe, []string{"b"})}
	})
	if err != nil {
		t.Fatalf("RunPipeline: %v", err)
	}
	if got, err := cmds[0].Int64(); err != nil || got != 1 {
		t.Errorf("the call that ran first: %d, %v; want its first reply 1", got, err)
	}
	if got, err := cmds[1].Int64(); err != nil || got != 10 {
		t.Errorf("the call that found no script: %d, %v; want 10", got, err)
	}
	if got := c.Get(ctx, "a").Val(); got != "2" {
		t.Errorf("a = %s: the pipeline was not run again", got)
	}
	if extra.Val() != "1" {
		t.Errorf("another call of the pipeline: %q, want the second run's", extra.Val())
	}
	// Nothing missing: one run.
	cmds, err = lua.RunPipeline(ctx, c, nil, func(pipe redis.Pipeliner) []*redis.Cmd {
		return []*redis.Cmd{incr.EvalSha(ctx, pipe, []string{"a"})}
	})
	if err != nil || cmds[0].Val() != int64(3) {
		t.Errorf("second pipeline: %v %v", cmds[0].Val(), err)
	}
	// A failure of another kind is returned as it is.
	must(t, c.Set(ctx, "s", "x", 0).Err())
	cmds, err = lua.RunPipeline(ctx, c, nil, func(pipe redis.Pipeliner) []*redis.Cmd {
		return []*redis.Cmd{incr.EvalSha(ctx, pipe, []string{"a"}), incr.EvalSha(ctx, pipe, []string{"s"})}
	})
	if err == nil || cmds[1].Err() == nil || cmds[0].Val() != int64(4) {
		t.Errorf("a failing call: %v, %v, %v", cmds[0].Val(), cmds[1].Err(), err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// set.lua checks the lease name its caller passes, without the Go prelude
// (clients in other languages send it as it is): with names.LeaseKey's
// segment.
func TestSetNamesLeasesAsNamesDoes(t *testing.T) {
	if want := "':" + names.LeaseSegment + ":'"; !strings.Contains(lua.Sources()["set.lua"], want) {
		t.Errorf("set.lua does not build lease names with %s", want)
	}
}

// A caller of set.lua's contract from before KEYS[2] was the lease passes a
// tag set there: refused with the rule, and the set is neither deleted nor
// the value stored unregistered.
func TestSetRefusesAKeyNotItsLease(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	full, set := "{tenant:acme}:k", names.TagSetKey("acme", "t")
	must(t, c.SAdd(ctx, set, "{tenant:acme}:other").Err())
	raw := redis.NewScript(lua.Sources()["set.lua"]) // as a client of another language sends it
	err := raw.Run(ctx, c, []string{full, set}, "v", 0).Err()
	if err == nil || !strings.Contains(err.Error(), "KEYS[2] must be the lease of KEYS[1]") {
		t.Fatalf("set.lua with a tag set as KEYS[2]: %v", err)
	}
	if n, err := c.Exists(ctx, set, full).Result(); err != nil || n != 1 {
		t.Errorf("after the refusal %d of the set and the value exist (%v), want the set alone", n, err)
	}
	if err := raw.Run(ctx, c, []string{full, names.LeaseKey("acme", full), set}, "v", 0).Err(); err != nil {
		t.Errorf("set.lua with the lease: %v", err)
	}
}

// A server whose script cache was emptied (a restart, a failover, SCRIPT
// FLUSH) answers NOSCRIPT: Run loads the script and calls it by its SHA
// again, rather than send it whole with EVAL, which the router's role may
// not run (EVALSHA and SCRIPT LOAD only: security.md).
func TestRunReloadsAScriptWithoutEval(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	must(t, admin.Do(ctx, "ACL", "SETUSER", "noeval", "on", ">pw", "~*", "&*", "+@all", "-eval").Err())
	c := redis.NewClient(&redis.Options{Addr: admin.Options().Addr, Username: "noeval", Password: "pw"})
	t.Cleanup(func() { _ = c.Close() })
	must(t, admin.XAdd(ctx, &redis.XAddArgs{Stream: "s", Values: []any{"f", "v"}}).Err())
	must(t, admin.XGroupCreate(ctx, "s", "g", "0").Err())
	for round := 0; round < 2; round++ {
		must(t, admin.ScriptFlush(ctx).Err())
		if _, err := lua.Run(ctx, c, &lua.UnreadRequest{Stream: "s", Group: "g"}); err != nil {
			t.Fatalf("round %d, after SCRIPT FLUSH: %v", round, err)
		}
	}
}

// A presence (delivery.lua) expires on the cache Redis's clock: written and
// counted on TIME, whatever the caller's clock says; where the user may not
// run TIME (an ACL of an earlier routerd acl) the caller's clock is used,
// as before, rather than the write refused. A member an earlier version
// wrote ("<id>@<unix seconds>") counts until then.
func TestPresenceOnTheServersClock(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	must(t, admin.Do(ctx, "ACL", "SETUSER", "notime", "on", ">pw", "~*", "&*", "+@all", "-time").Err())
	notime := redis.NewClient(&redis.Options{Addr: admin.Options().Addr, Username: "notime", Password: "pw"})
	t.Cleanup(func() { _ = notime.Close() })
	server, err := admin.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	skewed := server.Add(-time.Hour) // the caller's clock, an hour behind
	old := fmt.Sprintf("old@%d", server.Add(time.Minute).Unix())
	must(t, admin.SAdd(ctx, names.DeliveryPlainKey("svc"), old, "gone@1", "noexpiry").Err())
	for _, c := range []*redis.Client{admin, notime} {
		member := fmt.Sprintf("a@%d", skewed.Add(30*time.Second).Unix())
		r, err := lua.Run(ctx, c, &lua.PresenceRequest{Service: "svc", ID: "a", Member: member, For: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		at, _ := strconv.ParseInt(strings.TrimPrefix(r.Member, "a@"), 10, 64)
		if c == notime && r.Member != member {
			t.Errorf("without TIME: wrote %q, want the caller's %q", r.Member, member)
		}
		if c == admin && (at < server.Unix()+30 || at > server.Unix()+300) {
			t.Errorf("wrote %q, want it to expire 30 s after the server's %d", r.Member, server.Unix())
		}
		// Counted on the server's clock (the caller's an hour ahead would
		// count nothing), or the caller's without TIME.
		now := server.Add(time.Hour)
		if c == notime {
			now = skewed
		}
		n, err := lua.Run(ctx, c, &lua.PresenceCountRequest{Service: "svc", Now: now})
		if want := 3; err != nil || n.N != want { // old, noexpiry, a@…
			members, _ := admin.SMembers(ctx, names.DeliveryPlainKey("svc")).Result()
			t.Errorf("counted %d (%v), want %d (members %q)", n.N, err, want, members)
		}
		if ok, _ := admin.SIsMember(ctx, names.DeliveryPlainKey("svc"), "gone@1").Result(); ok {
			t.Error("an expired member was not taken away")
		}
		must(t, admin.SRem(ctx, names.DeliveryPlainKey("svc"), r.Member).Err())
	}
}
