package tagstore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/tagstore"
)

// The scripts' position rule and internal/recovery's are one rule in two
// languages: for every stored position (with a chain or, as older versions
// wrote them, without) and every strict apply, the answer of invalidate.lua
// (whole tag) and of invalidate_keys.lua (key-level, through ApplyMany) is
// the protocol's strict rule (follows), and an applied one stores its chain.
func TestScriptsFollowTheRecoveryRule(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	stored := []recovery.Position{{}, {Epoch: "e", Version: 0}, {Epoch: "e", Version: 2}, {Epoch: "e", Version: 3},
		{Epoch: "f", Version: 2}, {Epoch: recovery.LostEpoch, Version: 1764000000000},
		{Epoch: "e", Version: 2, Chain: "0123456789abcdef"}, {Epoch: "e", Version: 3, Chain: "fedcba9876543210"}}
	for _, st := range stored {
		for v := int64(1); v <= 5; v++ {
			msg := recovery.Position{Epoch: "e", Version: v}
			want := tagstore.Success
			switch {
			case st.Epoch == msg.Epoch && st.Version >= msg.Version:
				want = tagstore.Duplicate
			case !follows(st, msg):
				want = tagstore.Gap
			}
			for _, keyLevel := range []bool{false, true} {
				t.Run(fmt.Sprintf("stored %v, version %d, keys %v", st, v, keyLevel), func(t *testing.T) {
					must(t, c.FlushAll(ctx).Err())
					if st.Known() {
						must(t, c.Set(ctx, "{tenant:acme}:pos:svc:t", tagstore.Position{Epoch: st.Epoch, Version: st.Version, Chain: st.Chain}.String(), 0).Err())
					}
					inv := tagstore.Invalidation{Tenant: "acme", Tag: "t", Service: "svc", Strict: true,
						Position: tagstore.Position{Epoch: msg.Epoch, Version: msg.Version}}
					if keyLevel {
						inv.Keys = []string{"k"}
					}
					if v%2 == 0 {
						inv.Position.Chain = fmt.Sprintf("%016x", v)
					}
					res, errs := s.ApplyMany(ctx, []tagstore.Invalidation{inv})
					if errs[0] != nil || res[0].Status != want && !(want == tagstore.Success && res[0].Status == tagstore.EmptyTagSet) {
						t.Errorf("got %s, %v; want %s", res[0].Status, errs[0], want)
					}
					// An applied invalidation stores its position with its
					// chain; a refused one leaves the stored one as it was.
					at, _, err := s.ReadPosition(ctx, "acme", "svc", "t")
					must(t, err)
					if wantAt := (tagstore.Position{Epoch: st.Epoch, Version: st.Version, Chain: st.Chain}); want == tagstore.Success {
						if at != inv.Position {
							t.Errorf("stored %+v after the apply, want %+v", at, inv.Position)
						}
					} else if st.Known() && at != wantAt {
						t.Errorf("stored %+v after a refusal, want %+v", at, wantAt)
					}
				})
			}
		}
	}
}

// follows is the strict apply rule of protocol.md §5.2: msg is the next
// version of the stored position's epoch, or version 1 where none is
// stored.
func follows(stored, msg recovery.Position) bool {
	if !stored.Known() {
		return msg.Version == 1
	}
	return stored.Epoch == msg.Epoch && stored.Version == msg.Version-1
}
