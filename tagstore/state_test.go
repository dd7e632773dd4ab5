package tagstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/tagstore"
)

// The store owns a service's state in the cache Redis: positions, the
// generation it last saw, its position index. ReadState answers the first
// two in one call, also for no channel at all.
func TestReadStateOwnsTheServiceState(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	st, err := s.ReadState(ctx, "svc", nil)
	if err != nil || st.GenerationSeen != "" || len(st.Positions) != 0 {
		t.Fatalf("empty cache: %+v %v", st, err)
	}
	must(t, s.RecordGeneration(ctx, "svc", "g1"))
	if got := c.Get(ctx, names.GenerationSeenKey("svc")).Val(); got != "g1" {
		t.Fatalf("recorded generation %q, want g1", got)
	}
	var chans []tagstore.TenantTag
	for i := 0; i < 1500; i++ { // more than one pipeline
		chans = append(chans, tagstore.TenantTag{Tenant: "acme", Tag: fmt.Sprintf("t%d", i)})
	}
	must(t, c.Set(ctx, names.PositionKey("acme", "svc", "t1200"), "e:7", 0).Err())
	must(t, c.Set(ctx, names.PositionKey("acme", "svc", "t3"), "bad", 0).Err())
	st, err = s.ReadState(ctx, "svc", chans)
	if err != nil {
		t.Fatal(err)
	}
	if st.GenerationSeen != "g1" {
		t.Errorf("generation seen %q, want g1", st.GenerationSeen)
	}
	if !st.Found[1200] || st.Positions[1200] != (tagstore.Position{Epoch: "e", Version: 7}) || st.Found[0] || st.Errs[3] == nil {
		t.Errorf("positions: %+v %v, %v, %v", st.Positions[1200], st.Found[1200], st.Found[0], st.Errs[3])
	}
	// A generation-seen key of another type is an error of the read.
	must(t, c.Del(ctx, names.GenerationSeenKey("svc")).Err())
	must(t, c.SAdd(ctx, names.GenerationSeenKey("svc"), "x").Err())
	if _, err := s.ReadState(ctx, "svc", chans[:1]); err == nil {
		t.Error("a generation-seen key of another type read as none")
	}
	must(t, s.IndexTenants(ctx, "svc", "acme", "beta"))
	must(t, s.IndexTenants(ctx, "svc"))
	if got, err := s.IndexedTenants(ctx, "svc"); err != nil || len(got) != 2 {
		t.Errorf("position index holds %v (%v), want acme and beta", got, err)
	}
	for _, err := range []error{s.RecordGeneration(ctx, "s v c", "g"), s.IndexTenants(ctx, "s v c", "acme")} {
		if err == nil {
			t.Error("an invalid service accepted")
		}
	}
	if _, err := s.ReadState(ctx, "s v c", nil); err == nil {
		t.Error("an invalid service accepted")
	}
}

// A bus identity is the generation with every server's run_id, in any
// order; a restarted server, a new generation, or what a version before
// run_ids recorded (the generation alone) is another identity.
func TestBusIdentity(t *testing.T) {
	id := tagstore.BusIdentity("g1", []string{"r2", "r1"})
	if id != tagstore.BusIdentity("g1", []string{"r1", "r2"}) {
		t.Errorf("the order of the run_ids changed the identity %q", id)
	}
	for _, other := range []string{"g1", tagstore.BusIdentity("g1", []string{"r1", "r3"}), tagstore.BusIdentity("g2", []string{"r1", "r2"})} {
		if other == id {
			t.Errorf("%q taken for %q", other, id)
		}
	}
	if got := tagstore.BusIdentity("", []string{"r1"}); got != "" {
		t.Errorf("a bus without a generation has identity %q, want none", got)
	}
}

// Only WRONGTYPE (a user key of another type where a position belongs) is
// an error of its own channel: any other error a position read answers
// (NOPERM here; LOADING, BUSY, TRYAGAIN, CLUSTERDOWN on a cluster master
// that is loading or failing over) fails the read, which is retried, so
// that a check does not pass without those channels.
func TestReadStateFailsOnReplyErrorsOtherThanWrongType(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	must(t, admin.Do(ctx, "ACL", "SETUSER", "part", "on", ">pw", "+@all",
		"~routerd:*", "~"+names.PositionKey("acme", "svc", "t0"), "~"+names.PositionKey("acme", "svc", "t2")).Err())
	must(t, admin.SAdd(ctx, names.PositionKey("acme", "svc", "t2"), "x").Err())
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "part", Password: "pw"})
	t.Cleanup(func() { _ = c.Close() })
	s, err := tagstore.New(c, tagstore.Options{})
	must(t, err)
	st, err := s.ReadState(ctx, "svc", []tagstore.TenantTag{{Tenant: "acme", Tag: "t0"}, {Tenant: "acme", Tag: "t2"}})
	if err != nil || !errors.Is(st.Errs[1], tagstore.ErrBadPosition) {
		t.Fatalf("a position of another type: %+v, %v; want an error of its channel alone", st.Errs, err)
	}
	_, err = s.ReadState(ctx, "svc", []tagstore.TenantTag{{Tenant: "acme", Tag: "t0"}, {Tenant: "acme", Tag: "t1"}, {Tenant: "acme", Tag: "t2"}})
	if err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("a position read answered NOPERM: %v, want the read to fail", err)
	}
}
