package tagstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/tagstore"
)

func newStore(t *testing.T, opt tagstore.Options) (*tagstore.Store, *redis.Client) {
	t.Helper()
	c := redistest.Start(t).Client(t)
	s, err := tagstore.New(c, opt)
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

func exists(t *testing.T, c *redis.Client, keys ...string) int64 {
	t.Helper()
	n, err := c.Exists(context.Background(), keys...).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSetRegistersUnderTags(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	if err := s.Set(ctx, "acme", "user:1", []byte("v"), time.Minute, "active", "vip"); err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{"active", "vip"} {
		ok, _ := c.SIsMember(ctx, "{tenant:acme}:tag:"+tag, "{tenant:acme}:user:1").Result()
		if !ok {
			t.Errorf("key not in tag %s", tag)
		}
	}
	if ttl := c.PTTL(ctx, "{tenant:acme}:user:1").Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("ttl = %v", ttl)
	}
	if err := s.Set(ctx, "ac:me", "k", nil, 0, "t"); err == nil {
		t.Error("invalid tenant accepted")
	}
	if err := s.Set(ctx, "acme", "k", nil, 0, "bad tag"); err == nil {
		t.Error("invalid tag accepted")
	}
}

func TestInvalidateTagDeletesExactlyItsKeys(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	must(t, s.Set(ctx, "acme", "user:1", []byte("1"), 0, "active"))
	must(t, s.Set(ctx, "acme", "user:2", []byte("2"), 0, "active", "other"))
	must(t, s.Set(ctx, "acme", "user:3", []byte("3"), 0, "other"))
	must(t, s.Set(ctx, "globex", "user:1", []byte("g"), 0, "active"))

	res, err := s.InvalidateTag(ctx, "acme", "active")
	if err != nil || res.Status != tagstore.Success || res.Deleted != 2 {
		t.Fatalf("InvalidateTag = %+v, %v", res, err)
	}
	if exists(t, c, "{tenant:acme}:user:1", "{tenant:acme}:user:2", "{tenant:acme}:tag:active") != 0 {
		t.Error("tag keys survived")
	}
	if exists(t, c, "{tenant:acme}:user:3", "{tenant:globex}:user:1") != 2 {
		t.Error("keys of other tags or tenants were deleted")
	}
	res, _ = s.InvalidateTag(ctx, "acme", "active")
	if res.Status != tagstore.EmptyTagSet {
		t.Errorf("second InvalidateTag status = %s", res.Status)
	}
}

func TestInvalidateKeys(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	for i := 0; i < 2500; i++ {
		must(t, s.Set(ctx, "acme", fmt.Sprintf("k:%d", i), []byte("v"), 0, "big"))
	}
	keys := make([]string, 2400) // more than one batch of 1000
	for i := range keys {
		keys[i] = fmt.Sprintf("k:%d", i)
	}
	res, err := s.InvalidateKeys(ctx, "acme", "big", keys...)
	if err != nil || res.Deleted != 2400 {
		t.Fatalf("InvalidateKeys = %+v, %v", res, err)
	}
	if n := c.SCard(ctx, "{tenant:acme}:tag:big").Val(); n != 100 {
		t.Errorf("tag set has %d members, want 100", n)
	}
	if exists(t, c, "{tenant:acme}:k:2400") != 1 || exists(t, c, "{tenant:acme}:k:0") != 0 {
		t.Error("wrong keys deleted")
	}
}

func TestChunkedPathAboveGuard(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{CardinalityGuard: 50, ChunkSize: 100})
	for i := 0; i < 1234; i++ {
		must(t, s.Set(ctx, "acme", fmt.Sprintf("k:%d", i), []byte("v"), 0, "huge"))
	}
	res, err := s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "huge", Service: "svc", Position: tagstore.Position{Epoch: "e1", Version: 3}})
	if err != nil || !res.Chunked || res.Deleted != 1234 || res.Status != tagstore.Success {
		t.Fatalf("Apply = %+v, %v", res, err)
	}
	if n := c.DBSize(ctx).Val(); n != 2 { // only the position and the tenant index are left
		t.Errorf("%d keys left", n)
	}
	if got := c.SMembers(ctx, "routerd:tenants").Val(); len(got) != 1 || got[0] != "acme" {
		t.Errorf("tenant index = %v, want [acme]", got)
	}
	pos, ok, err := s.ReadPosition(ctx, "acme", "svc", "huge")
	if err != nil || !ok || pos != (tagstore.Position{Epoch: "e1", Version: 3}) {
		t.Errorf("position = %v %v %v", pos, ok, err)
	}
}

func TestPositionMakesApplyIdempotent(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	apply := func(key string, epoch string, v int64) tagstore.Status {
		t.Helper()
		must(t, s.Set(ctx, "acme", key, []byte("v"), 0, "active"))
		res, err := s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "active", Keys: []string{key},
			Service: "svc", Position: tagstore.Position{Epoch: epoch, Version: v}})
		if err != nil {
			t.Fatal(err)
		}
		return res.Status
	}
	if st := apply("a", "e1", 1); st != tagstore.Success {
		t.Fatalf("first apply %s", st)
	}
	if st := apply("b", "e1", 1); st != tagstore.Duplicate {
		t.Errorf("same version: %s", st)
	}
	if exists(t, c, "{tenant:acme}:b") != 1 {
		t.Error("duplicate deleted a key")
	}
	if st := apply("c", "e1", 2); st != tagstore.Success {
		t.Errorf("next version: %s", st)
	}
	if st := apply("d", "e2", 1); st != tagstore.Success {
		t.Errorf("new epoch: %s", st)
	}
}

func TestCompactDropsExpiredMembers(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	for i := 0; i < 30; i++ {
		must(t, s.Set(ctx, "acme", fmt.Sprintf("k:%d", i), []byte("v"), 0, "t"))
	}
	for i := 0; i < 10; i++ {
		c.Del(ctx, fmt.Sprintf("{tenant:acme}:k:%d", i)) // as if expired
	}
	n, err := s.Compact(ctx, "acme", "t")
	if err != nil || n != 10 {
		t.Fatalf("Compact = %d, %v", n, err)
	}
	if c.SCard(ctx, "{tenant:acme}:tag:t").Val() != 20 {
		t.Error("live members removed")
	}
}

func TestObserverSeesEveryOutcome(t *testing.T) {
	ctx := context.Background()
	var got []tagstore.Status
	s, _ := newStore(t, tagstore.Options{Observe: func(tag string, st tagstore.Status, keys int64, took time.Duration) {
		got = append(got, st)
	}})
	_, _ = s.InvalidateTag(ctx, "acme", "t")
	if len(got) != 1 || got[0] != tagstore.EmptyTagSet {
		t.Errorf("observed %v", got)
	}
}

func TestGetMissing(t *testing.T) {
	s, _ := newStore(t, tagstore.Options{})
	if _, err := s.Get(context.Background(), "acme", "nope"); !errors.Is(err, redis.Nil) {
		t.Errorf("Get = %v", err)
	}
}

func TestOptionsValidated(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for _, opt := range []tagstore.Options{{KeyTemplate: "{tenant:${tenant}}"}, {CardinalityGuard: -1}, {ChunkSize: 1001}} {
		if _, err := tagstore.New(c, opt); err == nil {
			t.Errorf("New(%+v) accepted", opt)
		}
	}
}

func TestParsePosition(t *testing.T) {
	p, err := tagstore.ParsePosition("9f2c1a:42")
	if err != nil || p.Epoch != "9f2c1a" || p.Version != 42 || p.Chain != "" || p.String() != "9f2c1a:42" {
		t.Errorf("ParsePosition = %+v, %v", p, err)
	}
	p, err = tagstore.ParsePosition("9f2c1a:42:0123456789abcdef")
	if err != nil || p.Epoch != "9f2c1a" || p.Version != 42 || p.Chain != "0123456789abcdef" || p.String() != "9f2c1a:42:0123456789abcdef" {
		t.Errorf("ParsePosition with a chain = %+v, %v", p, err)
	}
	for _, s := range []string{"", "42", ":42", "e:", "e:x", "e:-1", "e:4:", "e:4:xyz", "e:4:ABC", "e:4:a:b", "e:4x"} {
		if _, err := tagstore.ParsePosition(s); err == nil {
			t.Errorf("ParsePosition(%q) accepted", s)
		}
	}
}

func FuzzParsePosition(f *testing.F) {
	f.Add("9f2c1a:42")
	f.Add("9f2c1a:42:0123456789abcdef")
	f.Add("lost:1764000000000")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := tagstore.ParsePosition(s)
		if err != nil {
			return
		}
		if q, err := tagstore.ParsePosition(p.String()); err != nil || q != p {
			t.Fatalf("round trip %q -> %+v -> %+v %v", s, p, q, err)
		}
	})
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestApplyManyInOrderAndStrict(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{CardinalityGuard: 10})
	for i := 0; i < 20; i++ {
		must(t, s.Set(ctx, "acme", fmt.Sprintf("k:%d", i), []byte("v"), 0, "t"))
	}
	inv := func(v int64, keys ...string) tagstore.Invalidation {
		return tagstore.Invalidation{Tenant: "acme", Tag: "t", Keys: keys, Service: "svc", Position: tagstore.Position{Epoch: "e", Version: v}, Strict: true}
	}
	res, errs := s.ApplyMany(ctx, []tagstore.Invalidation{
		inv(1, "k:1"), inv(2, "k:2"), inv(2, "k:3"), inv(4, "k:4"),
	})
	want := []tagstore.Status{tagstore.Success, tagstore.Success, tagstore.Duplicate, tagstore.Gap}
	for i := range want {
		if errs[i] != nil || res[i].Status != want[i] {
			t.Errorf("item %d: %+v %v, want %s", i, res[i], errs[i], want[i])
		}
	}
	if exists(t, c, "{tenant:acme}:k:3", "{tenant:acme}:k:4") != 2 {
		t.Error("a duplicate or a gap deleted keys")
	}
	// A whole tag above the guard in a batch takes the chunked path.
	res, errs = s.ApplyMany(ctx, []tagstore.Invalidation{inv(3)})
	if errs[0] != nil || res[0].Status != tagstore.Success || !res[0].Chunked {
		t.Errorf("whole tag in a batch: %+v %v", res[0], errs[0])
	}
}

// ApplyMany batches runs of key-level invalidations into one script call; it
// must do exactly what applying them one by one does.
func TestApplyManyMatchesOneByOne(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	batchC := redis.NewClient(&redis.Options{Addr: srv.Addr, DB: 0})
	singleC := redis.NewClient(&redis.Options{Addr: srv.Addr, DB: 1})
	t.Cleanup(func() { batchC.Close(); singleC.Close() })
	// A small guard, so that whole tags often go the chunked path.
	batch, err := tagstore.New(batchC, tagstore.Options{CardinalityGuard: 40, ChunkSize: 16})
	must(t, err)
	single, err := tagstore.New(singleC, tagstore.Options{CardinalityGuard: 40, ChunkSize: 16})
	must(t, err)

	rnd := rand.New(rand.NewPCG(1, 2))
	tenants, tags := []string{"acme", "globex"}, []string{"a", "b", "c"}
	for _, s := range []*tagstore.Store{batch, single} {
		for i := 0; i < 300; i++ {
			tenant := tenants[i%2]
			must(t, s.Set(ctx, tenant, fmt.Sprintf("k:%d", i), []byte("v"), 0, tags[i%3], tags[(i/3)%3]))
		}
	}
	// 400 invalidations over six channels: mostly the next version, some
	// repeated, some skipping one, some in a new epoch, a few whole-tag, a
	// few repairs that take the position back.
	type channel struct {
		epoch   string
		version int64
	}
	state := map[string]*channel{}
	var invs []tagstore.Invalidation
	for len(invs) < 400 {
		tenant, tag := tenants[rnd.IntN(2)], tags[rnd.IntN(3)]
		ch := state[tenant+tag]
		if ch == nil {
			ch = &channel{epoch: "e1"}
			state[tenant+tag] = ch
		}
		if rnd.IntN(40) == 0 {
			ch.version = max(1, ch.version-2)
			invs = append(invs, tagstore.Invalidation{Tenant: tenant, Tag: tag, Service: "svc",
				Position: tagstore.Position{Epoch: ch.epoch, Version: ch.version}, Repair: true})
			continue
		}
		switch r := rnd.IntN(20); {
		case r == 0:
			ch.version-- // a repeat
		case r == 1:
			ch.version++ // a gap
		case r == 2:
			ch.epoch, ch.version = fmt.Sprintf("e%d", rnd.IntN(100)), 0
		}
		ch.version++
		var keys []string
		if rnd.IntN(40) > 0 {
			for range 1 + rnd.IntN(4) {
				keys = append(keys, fmt.Sprintf("k:%d", rnd.IntN(300)))
			}
		}
		invs = append(invs, tagstore.Invalidation{Tenant: tenant, Tag: tag, Keys: keys, Service: "svc",
			Position: tagstore.Position{Epoch: ch.epoch, Version: ch.version}, Strict: rnd.IntN(4) > 0})
	}
	chunked := 0
	for start := 0; start < len(invs); start += 137 {
		// Fill the tags again, the same in both.
		for range 120 {
			tenant, key := tenants[rnd.IntN(2)], fmt.Sprintf("k:%d", rnd.IntN(300))
			tag1, tag2 := tags[rnd.IntN(3)], tags[rnd.IntN(3)]
			for _, s := range []*tagstore.Store{batch, single} {
				must(t, s.Set(ctx, tenant, key, []byte("v"), 0, tag1, tag2))
			}
		}
		part := invs[start:min(start+137, len(invs))]
		res, errs := batch.ApplyMany(ctx, part)
		var batchDeleted, singleDeleted int64
		for i, inv := range part {
			want, err := single.Apply(ctx, inv)
			if errs[i] != nil || err != nil {
				t.Fatalf("invalidation %d: %v / %v", start+i, errs[i], err)
			}
			if res[i].Status != want.Status {
				for j := 0; j <= i; j++ {
					if part[j].Tenant == inv.Tenant && part[j].Tag == inv.Tag {
						t.Logf("  %d %+v batch %+v", start+j, part[j], res[j])
					}
				}
				t.Errorf("invalidation %d (%+v): status %s in a batch, %s alone", start+i, inv, res[i].Status, want.Status)
			}
			batchDeleted += res[i].Deleted
			singleDeleted += want.Deleted
			chunked += b2i(want.Chunked)
		}
		// Channels may interleave differently in a batch, so which
		// invalidation deletes a key shared by two tags may differ; the
		// total may not.
		if batchDeleted != singleDeleted {
			t.Errorf("batch from %d deleted %d keys, one by one %d", start, batchDeleted, singleDeleted)
		}
		if a, b := dump(t, batchC), dump(t, singleC); a != b {
			t.Fatalf("after the batch from %d the batched and the one-by-one cache differ:\n%s\n---\n%s", start, a, b)
		}
	}
	if chunked == 0 {
		t.Error("no whole tag went the chunked path: the test does not test it")
	}
}

// dump lists every key with its type and contents, sorted.
func dump(t *testing.T, c *redis.Client) string {
	t.Helper()
	ctx := context.Background()
	keys, err := c.Keys(ctx, "*").Result()
	must(t, err)
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		switch c.Type(ctx, k).Val() {
		case "set":
			members := c.SMembers(ctx, k).Val()
			slices.Sort(members)
			fmt.Fprintf(&b, "%s %v\n", k, members)
		default:
			fmt.Fprintf(&b, "%s %q\n", k, c.Get(ctx, k).Val())
		}
	}
	return b.String()
}

func TestKeyTemplates(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer c.Close()
	for tmpl, want := range map[string]string{
		"":                           "{tenant:acme}:user:1",
		"${key}":                     "user:1",
		"cache:${key}:v2":            "cache:user:1:v2",
		"${tenant}/${key}/${tenant}": "acme/user:1/acme",
		"{${tenant}}${key}${key}":    "{acme}user:1user:1",
	} {
		s, err := tagstore.New(c, tagstore.Options{KeyTemplate: tmpl})
		must(t, err)
		if got, err := s.Key("acme", "user:1"); err != nil || got != want {
			t.Errorf("template %q: %q, %v; want %q", tmpl, got, err, want)
		}
	}
}

// A whole tag above the guard takes the chunked path after the pipeline.
// The later invalidations of its channel in the same batch must still come
// after it: a later one that moved the position first would turn the whole
// tag into a Duplicate, and the tag would never be deleted.
func TestApplyManyKeepsOrderAroundChunkedTag(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		stored string // the position before the batch, "" for none
		epoch  string
		strict bool
		shift  int64 // added to every version: strict without a position starts at 1
	}{
		{"no position, not strict", "", "e", false, 0},
		{"no position, strict", "", "e", true, -4},
		{"same epoch, not strict", "e:4", "e", false, 0},
		{"same epoch, strict", "e:4", "e", true, 0},
		{"new epoch", "old:50", "e", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, c := newStore(t, tagstore.Options{CardinalityGuard: 10, ChunkSize: 7})
			for i := 0; i < 40; i++ {
				must(t, s.Set(ctx, "acme", fmt.Sprintf("k:%d", i), []byte("v"), 0, "big"))
				must(t, s.Set(ctx, "acme", fmt.Sprintf("j:%d", i), []byte("v"), 0, "big2"))
			}
			must(t, s.Set(ctx, "acme", "o:1", []byte("v"), 0, "other"))
			if tc.stored != "" {
				must(t, c.Set(ctx, "{tenant:acme}:pos:svc:big", tc.stored, 0).Err())
				must(t, c.Set(ctx, "{tenant:acme}:pos:svc:big2", tc.stored, 0).Err())
			}
			inv := func(tag string, v int64, keys ...string) tagstore.Invalidation {
				return tagstore.Invalidation{Tenant: "acme", Tag: tag, Keys: keys, Service: "svc",
					Position: tagstore.Position{Epoch: tc.epoch, Version: v + tc.shift}, Strict: tc.strict}
			}
			res, errs := s.ApplyMany(ctx, []tagstore.Invalidation{
				inv("big", 5),                   // whole tag, above the guard
				inv("big2", 5),                  // another channel, the same
				inv("big", 6, "k:1"),            // after it, in the same pipeline
				inv("other", 1-tc.shift, "o:1"), // another channel, not waiting
				inv("big", 7, "k:3", "x"),       // and one more
				inv("big2", 6, "j:1"),           //
				inv("big", 7, "k:4"),            // a duplicate of the previous
			})
			want := []tagstore.Status{tagstore.Success, tagstore.Success, tagstore.Success, tagstore.Success,
				tagstore.Success, tagstore.Success, tagstore.Duplicate}
			for i := range want {
				if errs[i] != nil || res[i].Status != want[i] {
					t.Errorf("invalidation %d: %+v, %v; want %s", i, res[i], errs[i], want[i])
				}
			}
			if !res[0].Chunked || res[0].Deleted != 40 || !res[1].Chunked || res[1].Deleted != 40 {
				t.Errorf("the whole tags: %+v, %+v; want each chunked with 40 keys deleted", res[0], res[1])
			}
			if n := c.Exists(ctx, "{tenant:acme}:tag:big", "{tenant:acme}:tag:big2", "{tenant:acme}:k:0", "{tenant:acme}:j:39").Val(); n != 0 {
				t.Errorf("%d of the tags' sets and keys survived", n)
			}
			for tag, v := range map[string]int64{"big": 7, "big2": 6} {
				pos, ok, err := s.ReadPosition(ctx, "acme", "svc", tag)
				if err != nil || !ok || pos != (tagstore.Position{Epoch: tc.epoch, Version: v + tc.shift}) {
					t.Errorf("position on %s: %v %v %v; want %s:%d", tag, pos, ok, err, tc.epoch, v+tc.shift)
				}
			}
		})
	}
}

// A repair deletes the whole tag and sets the position back, where the
// same invalidation without Repair is a Duplicate.
func TestRepairSetsPositionBack(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{CardinalityGuard: 10, ChunkSize: 4})
	pos := "{tenant:acme}:pos:svc:t"
	seed := func(n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			must(t, s.Set(ctx, "acme", fmt.Sprintf("k:%d", i), []byte("v"), 0, "t"))
		}
	}
	at := tagstore.Position{Epoch: "e", Version: 5}
	seed(5)
	must(t, c.Set(ctx, pos, "e:10", 0).Err()) // ahead of the channel: forged, or the bus went back
	res, err := s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "t", Service: "svc", Position: at})
	if err != nil || res.Status != tagstore.Duplicate || exists(t, c, "{tenant:acme}:k:0") != 1 {
		t.Fatalf("without Repair: %+v %v; want a Duplicate that deletes nothing", res, err)
	}
	res, err = s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "t", Service: "svc", Position: at, Repair: true})
	if err != nil || res.Status != tagstore.Success || res.Deleted != 5 || res.Chunked {
		t.Fatalf("repair: %+v %v", res, err)
	}
	if got := c.Get(ctx, pos).Val(); got != "e:5" {
		t.Errorf("position after repair %q, want e:5", got)
	}
	// Above the guard: the chunked path, then the position.
	seed(33)
	must(t, c.Set(ctx, pos, "e:10", 0).Err())
	res, err = s.Apply(ctx, tagstore.Invalidation{Tenant: "acme", Tag: "t", Service: "svc", Position: at, Repair: true})
	if err != nil || res.Status != tagstore.Success || res.Deleted != 33 || !res.Chunked {
		t.Fatalf("chunked repair: %+v %v", res, err)
	}
	if got := c.Get(ctx, pos).Val(); got != "e:5" || exists(t, c, "{tenant:acme}:tag:t") != 0 {
		t.Errorf("after the chunked repair: position %q, tag set left %d", got, exists(t, c, "{tenant:acme}:tag:t"))
	}
	// In a batch: the repair, then the next version after it.
	seed(3)
	must(t, c.Set(ctx, pos, "e:10", 0).Err())
	results, errs := s.ApplyMany(ctx, []tagstore.Invalidation{
		{Tenant: "acme", Tag: "t", Service: "svc", Position: at, Repair: true},
		{Tenant: "acme", Tag: "t", Keys: []string{"k:1"}, Service: "svc", Position: tagstore.Position{Epoch: "e", Version: 6}, Strict: true},
	})
	if errs[0] != nil || errs[1] != nil || results[0].Status != tagstore.Success || results[1].Status != tagstore.Success {
		t.Errorf("repair in a batch: %+v %v", results, errs)
	}
	if got := c.Get(ctx, pos).Val(); got != "e:6" {
		t.Errorf("position after the batch %q, want e:6", got)
	}
	for _, inv := range []tagstore.Invalidation{
		{Tenant: "acme", Tag: "t", Keys: []string{"k:1"}, Service: "svc", Position: at, Repair: true},
		{Tenant: "acme", Tag: "t", Position: at, Repair: true},
		{Tenant: "acme", Tag: "t", Service: "svc", Position: at, Repair: true, Strict: true},
	} {
		if _, err := s.Apply(ctx, inv); err == nil || !strings.Contains(err.Error(), "repair") {
			t.Errorf("Apply(%+v) = %v, want a refused repair", inv, err)
		}
	}
}

func TestReadPositions(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	var chans []tagstore.TenantTag
	for i := 0; i < 2500; i++ { // more than one pipeline
		ch := tagstore.TenantTag{Tenant: "acme", Tag: fmt.Sprintf("t%d", i)}
		chans = append(chans, ch)
		if i%3 > 0 {
			must(t, c.Set(ctx, "{tenant:acme}:pos:svc:"+ch.Tag, fmt.Sprintf("e%d:%d", i%2, i), 0).Err())
		}
	}
	pos, found, errs, err := s.ReadPositions(ctx, "svc", chans)
	if err != nil {
		t.Fatal(err)
	}
	for i := range chans {
		want := tagstore.Position{Epoch: fmt.Sprintf("e%d", i%2), Version: int64(i)}
		if errs[i] != nil || i%3 == 0 && (found[i] || pos[i] != tagstore.Position{}) || i%3 > 0 && (!found[i] || pos[i] != want) {
			t.Fatalf("channel %d: %+v %v %v", i, pos[i], found[i], errs[i])
		}
	}
	// A position that does not parse, or is not a string, is an error of its
	// own channel, not none; the others are still read.
	must(t, c.Set(ctx, "{tenant:acme}:pos:svc:t3", "garbage", 0).Err())
	must(t, c.SAdd(ctx, "{tenant:acme}:pos:svc:t6", "x").Err())
	pos, found, errs, err = s.ReadPositions(ctx, "svc", chans)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(errs[3], tagstore.ErrBadPosition) || !strings.Contains(errs[3].Error(), "{tenant:acme}:pos:svc:t3") {
		t.Errorf("unparsable position: %v", errs[3])
	}
	if !errors.Is(errs[6], tagstore.ErrBadPosition) || !strings.Contains(errs[6].Error(), "another type") {
		t.Errorf("a position of the wrong type: %v", errs[6])
	}
	if errs[4] != nil || !found[4] || pos[4].Version != 4 {
		t.Errorf("a good position beside bad ones: %+v %v %v", pos[4], found[4], errs[4])
	}
	if _, _, _, err := s.ReadPositions(ctx, "svc", []tagstore.TenantTag{{Tenant: "ac:me", Tag: "t"}}); err == nil {
		t.Error("an invalid tenant accepted")
	}
	if _, _, _, err := s.ReadPositions(ctx, "s v c", nil); err == nil {
		t.Error("an invalid service accepted")
	}
}

// The observer sees every invalidation with the status its caller gets: a
// whole tag taken down by the chunked path is a Success.
func TestObserverCountsChunkedAsSuccess(t *testing.T) {
	ctx := context.Background()
	type seen struct {
		status tagstore.Status
		keys   int64
	}
	var got []seen
	s, _ := newStore(t, tagstore.Options{CardinalityGuard: 10, ChunkSize: 4, Observe: func(tag string, st tagstore.Status, keys int64, took time.Duration) {
		if took <= 0 {
			t.Errorf("took %v", took)
		}
		got = append(got, seen{st, keys})
	}})
	for i := 0; i < 25; i++ {
		must(t, s.Set(ctx, "acme", fmt.Sprintf("k:%d", i), []byte("v"), 0, "a", "b"))
	}
	if res, err := s.InvalidateTag(ctx, "acme", "a"); err != nil || !res.Chunked {
		t.Fatalf("InvalidateTag = %+v, %v", res, err)
	}
	for i := 0; i < 25; i++ {
		must(t, s.Set(ctx, "acme", fmt.Sprintf("k:%d", i), []byte("v"), 0, "a"))
	}
	res, errs := s.ApplyMany(ctx, []tagstore.Invalidation{{Tenant: "acme", Tag: "a"}, {Tenant: "acme", Tag: "b", Keys: []string{"k:1"}}})
	if errs[0] != nil || errs[1] != nil || !res[0].Chunked {
		t.Fatalf("ApplyMany = %+v, %v", res, errs)
	}
	// The key of tag b goes in the pipeline, before the chunked path of a.
	want := []seen{{tagstore.Success, 25}, {tagstore.Success, 24}, {tagstore.Success, 1}}
	if !slices.Equal(got, want) {
		t.Errorf("observed %v, want %v", got, want)
	}
}

// A custom key template must not render a key as a tag set or a position.
func TestCustomTemplateCannotRenderInternalKeys(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{KeyTemplate: "{tenant:${tenant}}:t${key}"})
	must(t, c.Set(ctx, "{tenant:acme}:pos:svc:x", "e:1", 0).Err())
	// "t" + "ag:active" spells "tag:active"; "p" + "os:svc:x" a position.
	if err := s.Set(ctx, "acme", "ag:active", []byte("v"), 0, "other"); err == nil || !strings.Contains(err.Error(), "routerd keeps") {
		t.Errorf("Set of a key the template renders as a tag set: %v", err)
	}
	if _, err := s.InvalidateKeys(ctx, "acme", "other", "ag:active"); err == nil || !strings.Contains(err.Error(), "routerd keeps") {
		t.Errorf("InvalidateKeys of a key the template renders as a tag set: %v", err)
	}
	p, err := tagstore.New(c, tagstore.Options{KeyTemplate: "{tenant:${tenant}}:p${key}"})
	must(t, err)
	if _, err := p.InvalidateKeys(ctx, "acme", "other", "os:svc:x"); err == nil {
		t.Error("InvalidateKeys of a key the template renders as a position accepted")
	}
	if c.Get(ctx, "{tenant:acme}:pos:svc:x").Val() != "e:1" {
		t.Error("the position was touched")
	}
	if err := s.Set(ctx, "acme", "user:1", []byte("v"), 0, "other"); err != nil {
		t.Errorf("an ordinary key: %v", err)
	}
}

// A value whose tenant cannot be recorded in the cache's tenant index (a
// key of another type there, here; a missing ACL key pattern) is not kept
// cached: a subscriber of every tenant could miss it for good after a bus
// loss. The error says the index write failed and what became of the value.
func TestSetNotKeptWhenTheTenantIndexFails(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	must(t, c.Set(ctx, "routerd:tenants", "not a set", 0).Err())
	err := s.Set(ctx, "acme", "user:1", []byte("v"), 0, "active")
	if err == nil || !strings.Contains(err.Error(), "recording tenant acme in routerd:tenants") || !strings.Contains(err.Error(), "was not kept cached") {
		t.Fatalf("Set = %v, want the index failure, and the value not kept", err)
	}
	if n := c.Exists(ctx, "{tenant:acme}:user:1").Val(); n != 0 {
		t.Error("the value stays cached without its tenant indexed")
	}
}
