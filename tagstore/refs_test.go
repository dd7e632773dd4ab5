package tagstore_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/tagstore"
)

// An entity-level invalidation drops exactly the values registered under
// the entity's reference, drops them from the tag's ref-registered set
// (SetRefs keeps them out of the plain tag set), and empties the reference
// set; the values of other entities of the same tag stay.
func TestRefsDropOnlyTheirValues(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	set := func(key string, refs ...tagstore.Ref) {
		t.Helper()
		if _, err := s.SetRefs(ctx, "acme", key, []byte("v"), time.Minute, []string{"users"}, refs); err != nil {
			t.Fatal(err)
		}
	}
	set("q1", tagstore.Ref{Domain: "user", Entity: "1042"})
	set("q2", tagstore.Ref{Domain: "user", Entity: "7"})
	set("q4", tagstore.Ref{Domain: "user", Entity: "1042"}, tagstore.Ref{Domain: "user", Entity: "7"})
	res, err := s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "users", Refs: []string{"user/1042"}, Service: "svc",
		Position: tagstore.Position{Epoch: "e", Version: 1}, Strict: true})
	if err != nil || res.Status != tagstore.Success || res.Deleted != 2 {
		t.Fatalf("Apply = %+v, %v; want SUCCESS deleting 2", res, err)
	}
	if exists(t, c, "{tenant:acme}:q1", "{tenant:acme}:q4") != 0 || exists(t, c, "{tenant:acme}:q2") != 1 {
		t.Error("the entity-level invalidation did not drop exactly the values of user 1042")
	}
	if members := c.SMembers(ctx, "{tenant:acme}:tag:users#refs").Val(); len(members) != 1 || members[0] != "{tenant:acme}:q2" {
		t.Errorf("ref-registered set = %v, want only q2", members)
	}
	if exists(t, c, "{tenant:acme}:tag:users") != 0 {
		t.Error("SetRefs registered values among the tag's plain values")
	}
	if exists(t, c, "{tenant:acme}:ref:user/1042") != 0 {
		t.Error("the reference set survived its invalidation")
	}
	if pos, _, _ := s.ReadPosition(ctx, "acme", "svc", "users"); pos.String() != "e:1" {
		t.Errorf("position = %v, want e:1 (written by the same script)", pos)
	}
	// The same version again is a duplicate, and does nothing.
	set("q1", tagstore.Ref{Domain: "user", Entity: "1042"})
	res, err = s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "users", Refs: []string{"user/1042"}, Service: "svc",
		Position: tagstore.Position{Epoch: "e", Version: 1}, Strict: true})
	if err != nil || res.Status != tagstore.Duplicate || exists(t, c, "{tenant:acme}:q1") != 1 {
		t.Errorf("repeated version: %+v, %v", res, err)
	}
	// A whole-tag invalidation reaches values registered by ref through
	// their tags.
	if _, err := s.InvalidateTag(ctx, "acme", "users"); err != nil {
		t.Fatal(err)
	}
	if exists(t, c, "{tenant:acme}:q1", "{tenant:acme}:q2") != 0 {
		t.Error("a whole-tag invalidation left values registered by ref")
	}
}

// Above the guard, a value is registered under the type-level reference of
// its domains, which every entity-level invalidation of the domain drops.
func TestRefGuardRegistersAtTypeLevel(t *testing.T) {
	ctx := context.Background()
	var guarded []int
	s, c := newStore(t, tagstore.Options{RefGuard: 3, Guarded: func(n int) { guarded = append(guarded, n) }})
	var refs []tagstore.Ref
	for i := range 4 {
		refs = append(refs, tagstore.Ref{Domain: "product", Entity: fmt.Sprint(i)})
	}
	res, err := s.SetRefs(ctx, "acme", "big", []byte("v"), 0, []string{"products"}, refs)
	if err != nil || !res.TypeLevel || len(guarded) != 1 || guarded[0] != 4 {
		t.Fatalf("SetRefs = %+v, %v, guarded %v; want type level, counted", res, err, guarded)
	}
	if exists(t, c, "{tenant:acme}:ref:product/0") != 0 || !c.SIsMember(ctx, "{tenant:acme}:ref:product", "{tenant:acme}:big").Val() {
		t.Error("the value was not registered at type level only")
	}
	res, err = s.SetRefs(ctx, "acme", "small", []byte("v"), 0, []string{"products"}, refs[:3])
	if err != nil || res.TypeLevel {
		t.Fatalf("SetRefs at the guard = %+v, %v; want entity level", res, err)
	}
	// An entity the big value never touched drops it all the same.
	if _, err := s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "products", Refs: []string{"product/999"}}); err != nil {
		t.Fatal(err)
	}
	if exists(t, c, "{tenant:acme}:big") != 0 || exists(t, c, "{tenant:acme}:small") != 1 {
		t.Error("an entity-level invalidation of the domain did not drop exactly the type-level value")
	}
}

// Refs without tags, bad refs and repairs with refs are refused, naming
// the rule.
func TestRefsRefused(t *testing.T) {
	ctx := context.Background()
	s, _ := newStore(t, tagstore.Options{})
	if _, err := s.SetRefs(ctx, "acme", "k", nil, 0, nil, []tagstore.Ref{{Domain: "user", Entity: "1"}}); err == nil || !strings.Contains(err.Error(), "tags") {
		t.Errorf("refs without tags: %v", err)
	}
	if _, err := s.SetRefs(ctx, "acme", "k", nil, 0, []string{"t"}, []tagstore.Ref{{Domain: "us/er", Entity: "1"}}); err == nil || !strings.Contains(err.Error(), "<domain>/<entity>") {
		t.Errorf("bad ref: %v", err)
	}
	if _, err := s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "t", Refs: []string{"us er"}}); err == nil || !strings.Contains(err.Error(), "<domain>/<entity>") {
		t.Errorf("bad ref in an invalidation: %v", err)
	}
	if _, err := s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "t", Keys: []string{"k"}, Plain: true}); err == nil || !strings.Contains(err.Error(), "Plain needs Refs") {
		t.Errorf("plain without refs: %v", err)
	}
	if _, err := s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "t", Refs: []string{"user/1"}, Service: "s", Position: tagstore.Position{Epoch: "e", Version: 1}, Repair: true}); err == nil {
		t.Error("a repair with refs was accepted")
	}
}

// Reference sets above the cardinality guard are taken down in chunks; the
// later invalidations of the channel in the same batch wait for it, and the
// position ends at the last.
func TestRefsAboveGuardChunked(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{CardinalityGuard: 10, ChunkSize: 4})
	for i := range 25 {
		if _, err := s.SetRefs(ctx, "acme", fmt.Sprint("q", i), []byte("v"), 0, []string{"users"}, []tagstore.Ref{{Domain: "user", Entity: "1"}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Set(ctx, "acme", "other", []byte("v"), 0, "users"); err != nil {
		t.Fatal(err)
	}
	at := func(v int64) tagstore.Position { return tagstore.Position{Epoch: "e", Version: v} }
	results, errs := s.ApplyMany(ctx, []tagstore.Invalidation{
		{Tenant: "acme", Tag: "users", Refs: []string{"user/1"}, Service: "svc", Position: at(1), Strict: true},
		{Tenant: "acme", Tag: "users", Keys: []string{"other"}, Service: "svc", Position: at(2), Strict: true},
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("invalidation %d: %v", i, err)
		}
	}
	if !results[0].Chunked || results[0].Deleted != 25 || results[1].Status != tagstore.Success {
		t.Errorf("results = %+v", results)
	}
	if n := c.DBSize(ctx).Val(); n != 3 { // the tag set (chunks leave their members there), the position, the tenant index
		keys := c.Keys(ctx, "*").Val()
		t.Errorf("keys left: %v", keys)
	}
	if pos, _, _ := s.ReadPosition(ctx, "acme", "svc", "users"); pos.String() != "e:2" {
		t.Errorf("position = %v, want e:2", pos)
	}
}

// A ref without an entity is the type level of its domain.
func TestTypeLevelRef(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	if _, err := s.SetRefs(ctx, "acme", "k", []byte("v"), 0, []string{"users"}, []tagstore.Ref{{Domain: "user"}}); err != nil {
		t.Fatal(err)
	}
	if !c.SIsMember(ctx, "{tenant:acme}:ref:user", "{tenant:acme}:k").Val() {
		t.Error("not registered at the type level")
	}
	if _, err := s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "users", Refs: []string{"user/1"}}); err != nil {
		t.Fatal(err)
	}
	if exists(t, c, "{tenant:acme}:k") != 0 {
		t.Error("an entity-level invalidation of the domain left a type-level value")
	}
}

// A reference set lives as long as the longest-lived value registered in
// it, and for ever once one has no time to live; tag sets (plain and
// #refs) do not expire.
func TestRefSetsExpireWithTheirValues(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	ref := []tagstore.Ref{{Domain: "user", Entity: "1"}}
	const set = "{tenant:acme}:ref:user/1"
	pttl := func() time.Duration { return c.PTTL(ctx, set).Val() }
	setRefs := func(key string, ttl time.Duration) {
		t.Helper()
		if _, err := s.SetRefs(ctx, "acme", key, []byte("v"), ttl, []string{"users"}, ref); err != nil {
			t.Fatal(err)
		}
	}
	setRefs("a", time.Minute)
	if d := pttl(); d <= 50*time.Second || d > time.Minute {
		t.Errorf("after a value of 1m the set expires in %v", d)
	}
	// The tag's ref-registered set never expires, as the plain tag set:
	// under a volatile-* policy Redis could evict a set with a time to live
	// and leave its values out of reach of a whole-tag invalidation.
	if d := c.PTTL(ctx, "{tenant:acme}:tag:users#refs").Val(); d != -1 {
		t.Errorf("the tag's ref-registered set expires in %v", d)
	}
	setRefs("b", 30*time.Second)
	if d := pttl(); d <= 50*time.Second {
		t.Errorf("a shorter-lived value shortened the set to %v", d)
	}
	setRefs("c", time.Hour)
	if d := pttl(); d <= 59*time.Minute {
		t.Errorf("a longer-lived value left the set at %v", d)
	}
	setRefs("d", 0)
	if d := pttl(); d != -1 {
		t.Errorf("a value without a time to live left the set expiring in %v", d)
	}
	setRefs("e", time.Minute)
	if d := pttl(); d != -1 {
		t.Errorf("a value with a time to live made a set expire that holds one without: %v", d)
	}
	if d := c.PTTL(ctx, "{tenant:acme}:tag:users#refs").Val(); d != -1 {
		t.Errorf("the tag's ref-registered set (holding a value without a time to live) expires in %v", d)
	}
	if err := s.Set(ctx, "acme", "plain", []byte("v"), time.Minute, "users"); err != nil {
		t.Fatal(err)
	}
	if d := c.PTTL(ctx, "{tenant:acme}:tag:users").Val(); d != -1 {
		t.Errorf("the tag set expires in %v", d)
	}
}

// An entity-level invalidation that names no keys (Plain) drops the tag's
// plain values (Set) whole, and by ref only the values registered under
// refs. Naming keys, it drops those keys and the refs' values, and leaves
// the other plain values. A domain alone drops its type level only. A
// whole tag drops both kinds.
func TestRefsAndPlainValues(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	seed := func() {
		t.Helper()
		for _, k := range []string{"user:1042", "user:7"} {
			if err := s.Set(ctx, "acme", k, []byte("v"), 0, "users"); err != nil {
				t.Fatal(err)
			}
		}
		for k, r := range map[string]tagstore.Ref{"q1": {Domain: "user", Entity: "1042"}, "q2": {Domain: "user", Entity: "7"}, "list": {Domain: "user"}} {
			if _, err := s.SetRefs(ctx, "acme", k, []byte("v"), 0, []string{"users"}, []tagstore.Ref{r}); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(what string, gone, kept []string) {
		t.Helper()
		for _, k := range gone {
			if exists(t, c, "{tenant:acme}:"+k) != 0 {
				t.Errorf("%s left %s", what, k)
			}
		}
		for _, k := range kept {
			if exists(t, c, "{tenant:acme}:"+k) != 1 {
				t.Errorf("%s dropped %s", what, k)
			}
		}
	}
	apply := func(inv tagstore.Invalidation) {
		t.Helper()
		inv.Tenant, inv.Tag = "acme", "users"
		if res, err := s.Apply(ctx, inv); err != nil || res.Status != tagstore.Success {
			t.Fatalf("Apply(%+v) = %+v, %v", inv, res, err)
		}
	}
	seed()
	apply(tagstore.Invalidation{Refs: []string{"user/1042"}, Plain: true})
	check("an entity-level invalidation", []string{"q1", "list", "user:1042", "user:7"}, []string{"q2"})
	seed()
	apply(tagstore.Invalidation{Keys: []string{"user:1042"}, Refs: []string{"user/1042"}})
	check("keys and a ref", []string{"q1", "list", "user:1042"}, []string{"q2", "user:7"})
	seed()
	apply(tagstore.Invalidation{Keys: []string{"user:7"}, Refs: []string{"user"}})
	check("keys and the type level", []string{"list", "user:7"}, []string{"q1", "q2", "user:1042"})
	seed()
	apply(tagstore.Invalidation{})
	check("a whole tag", []string{"q1", "q2", "list", "user:1042", "user:7"}, nil)
	if exists(t, c, "{tenant:acme}:tag:users", "{tenant:acme}:tag:users#refs") != 0 {
		t.Error("a whole tag left one of the tag's sets")
	}
}

// A whole tag whose two sets are together above the guard, and an
// entity-level invalidation whose plain values are, go the chunked path
// and drop everything they must.
func TestPlainAndRefsAboveGuardChunked(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{CardinalityGuard: 10, ChunkSize: 4})
	seed := func() {
		t.Helper()
		for i := range 8 {
			if err := s.Set(ctx, "acme", fmt.Sprint("p", i), []byte("v"), 0, "users"); err != nil {
				t.Fatal(err)
			}
			if _, err := s.SetRefs(ctx, "acme", fmt.Sprint("q", i), []byte("v"), 0, []string{"users"}, []tagstore.Ref{{Domain: "user", Entity: fmt.Sprint(i % 2)}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	left := func() int64 {
		var n int64
		for i := range 8 {
			n += exists(t, c, fmt.Sprint("{tenant:acme}:p", i), fmt.Sprint("{tenant:acme}:q", i))
		}
		return n
	}
	seed()
	res, err := s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "users", Service: "svc", Position: tagstore.Position{Epoch: "e", Version: 1}})
	if err != nil || !res.Chunked || res.Deleted != 16 || left() != 0 {
		t.Errorf("whole tag: %+v, %v, %d values left", res, err, left())
	}
	seed()
	res, err = s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "users", Refs: []string{"user/0"}, Plain: true, Service: "svc", Position: tagstore.Position{Epoch: "e", Version: 2}})
	if err != nil || !res.Chunked || res.Deleted != 12 || left() != 4 {
		t.Errorf("entity-level: %+v, %v, %d values left, want the 4 of user 1", res, err, left())
	}
	if pos, _, _ := s.ReadPosition(ctx, "acme", "svc", "users"); pos.String() != "e:2" {
		t.Errorf("position = %v, want e:2", pos)
	}
}

// An invalidation naming keys and refs above the guard is deferred to the
// chunked path like an entity-level one: the channel's later invalidations
// in the same batch wait for it, and none is lost to a position moved past it.
func TestKeysAndRefsAboveGuardOrdered(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{CardinalityGuard: 10, ChunkSize: 4})
	for i := range 25 {
		if _, err := s.SetRefs(ctx, "acme", fmt.Sprint("q", i), []byte("v"), 0, []string{"users"}, []tagstore.Ref{{Domain: "user", Entity: "1"}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"a", "b"} {
		if err := s.Set(ctx, "acme", k, []byte("v"), 0, "users"); err != nil {
			t.Fatal(err)
		}
	}
	at := func(v int64) tagstore.Position { return tagstore.Position{Epoch: "e", Version: v} }
	results, errs := s.ApplyMany(ctx, []tagstore.Invalidation{
		{Tenant: "acme", Tag: "users", Keys: []string{"a"}, Refs: []string{"user/1"}, Service: "svc", Position: at(1), Strict: true},
		{Tenant: "acme", Tag: "users", Keys: []string{"b"}, Service: "svc", Position: at(2), Strict: true},
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("invalidation %d: %v (results %+v)", i, err, results)
		}
	}
	if !results[0].Chunked || results[0].Deleted != 26 || results[1].Status != tagstore.Success {
		t.Errorf("results = %+v", results)
	}
	if n := exists(t, c, "{tenant:acme}:a", "{tenant:acme}:b", "{tenant:acme}:q0", "{tenant:acme}:q24"); n != 0 {
		t.Errorf("%d values left", n)
	}
	if pos, _, _ := s.ReadPosition(ctx, "acme", "svc", "users"); pos.String() != "e:2" {
		t.Errorf("position = %v, want e:2", pos)
	}
}
