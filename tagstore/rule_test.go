package tagstore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/routerd/routerd/internal/recovery"
	"github.com/routerd/routerd/tagstore"
)

// The scripts' position rule and internal/recovery's are one rule in two
// languages: for every stored position and every strict apply, the answer of
// invalidate.lua (whole tag) and of invalidate_keys.lua (key-level, through
// ApplyMany) is what recovery.Follows says.
func TestScriptsFollowTheRecoveryRule(t *testing.T) {
	ctx := context.Background()
	s, c := newStore(t, tagstore.Options{})
	stored := []recovery.Position{{}, {Epoch: "e", Version: 0}, {Epoch: "e", Version: 2}, {Epoch: "e", Version: 3},
		{Epoch: "f", Version: 2}, {Epoch: recovery.LostEpoch, Version: 1764000000000}}
	for _, st := range stored {
		for v := int64(1); v <= 5; v++ {
			msg := recovery.Position{Epoch: "e", Version: v}
			want := tagstore.Success
			switch {
			case st.Epoch == msg.Epoch && st.Version >= msg.Version:
				want = tagstore.Duplicate
			case !recovery.Follows(st, msg):
				want = tagstore.Gap
			}
			for _, keyLevel := range []bool{false, true} {
				t.Run(fmt.Sprintf("stored %v, version %d, keys %v", st, v, keyLevel), func(t *testing.T) {
					must(t, c.FlushAll(ctx).Err())
					if st.Known() {
						must(t, c.Set(ctx, "{tenant:acme}:pos:svc:t", st.Epoch+":"+fmt.Sprint(st.Version), 0).Err())
					}
					inv := tagstore.Invalidation{Tenant: "acme", Tag: "t", Service: "svc", Strict: true,
						Position: tagstore.Position{Epoch: msg.Epoch, Version: msg.Version}}
					if keyLevel {
						inv.Keys = []string{"k"}
					}
					res, errs := s.ApplyMany(ctx, []tagstore.Invalidation{inv})
					if errs[0] != nil || res[0].Status != want && !(want == tagstore.Success && res[0].Status == tagstore.EmptyTagSet) {
						t.Errorf("got %s, %v; want %s", res[0].Status, errs[0], want)
					}
				})
			}
		}
	}
}
