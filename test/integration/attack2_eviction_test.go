package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/subscriber"
)

// The cache Redis runs volatile-lru, safe for a service without entity
// references. A matrix reload turns entity_refs on for the domain of a tag
// the service owns (user → active): the reference sets now expire with
// their values, and operations.md says the subscriber is then not ready on
// a volatile-* policy, "at start and at every position check". It stays
// ready: the check decides with the matrix it was started with
// (Options.Matrix), not the one SetMatrix (SIGHUP, a file change) put in
// force.
func TestAttack2EvictionCheckIgnoresAReloadThatTurnsRefsOn(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "")
	e.running("acme")
	must(t, e.caches["profile-svc"].Client(t).ConfigSet(ctx, "maxmemory-policy", "volatile-lru").Err())
	s, _ := e.subscriber("profile-svc", subscriber.Options{CheckInterval: time.Second})
	if p := s.Problems(); len(p) > 0 {
		t.Fatalf("not ready on volatile-lru without entity references: %v", p)
	}
	refs, err := matrix.Parse("refs.yaml", []byte(strings.Replace(testMatrix,
		"user:    {tags: [active]}", "user:    {tags: [active], entity_refs: true}", 1)))
	must(t, err)
	if !refs.Domains["user"].EntityRefs {
		t.Fatal("the reloaded matrix does not turn entity_refs on for user")
	}
	must(t, s.SetMatrix(refs))
	redistest.Eventually(t, 15*time.Second, "not ready (eviction_policy) on volatile-lru once a reload turns entity_refs on", func() bool {
		return hasReason(s, subscriber.ReasonEvictionPolicy)
	})
}
