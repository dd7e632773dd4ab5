package publisher_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/names"
	"github.com/routerd/routerd/publisher"
	"github.com/routerd/routerd/wire"
)

// A write the bus does not answer in time (a pause, a long script, a
// network that stalls) may have been appended all the same: the error says
// publishing again with the same ids is safe, so Publish and PublishBatch
// return the ids with it — a caller that leaves ids to the publisher has
// no other way to know them —, and publishing again with them names no
// other event (the router routes each id once).
func TestAnUnansweredWriteReturnsItsIDs(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 100 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	p, err := publisher.New(c, publisher.Options{Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	stream := names.IngressStream(names.DefaultPrefix, 0)

	if err := admin.Do(ctx, "CLIENT", "PAUSE", 1000, "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	id, err := p.Publish(ctx, wire.Event{Tenant: "acme", Domain: "user", Keys: []string{"user:1"}})
	if err == nil || !strings.Contains(err.Error(), "same ids is safe") {
		t.Fatalf("Publish to a paused bus: %v, want the timeout and that publishing again is safe", err)
	}
	if id == "" {
		t.Fatalf("Publish returned no id with %v: the caller cannot publish again with the same id", err)
	}
	ids, err := p.PublishBatch(ctx, []wire.Event{{Tenant: "acme", Domain: "user", Keys: []string{"user:2"}}, {Tenant: "acme", Domain: "user", Keys: []string{"user:3"}}})
	if err == nil || len(ids) != 2 || ids[0] == "" || ids[1] == "" {
		t.Fatalf("PublishBatch to a paused bus: ids %q, error %v; want both ids with the error", ids, err)
	}
	// Published again with the same ids (once the pause is over), the
	// entries hold those events only: whether the unanswered writes were
	// appended or not (go-redis closed their connection: Redis drops a
	// paused command of a closed client), nothing new is named.
	redistest.Eventually(t, 5*time.Second, "publishing again with the same ids", func() bool {
		_, err := p.PublishBatch(ctx, []wire.Event{{ID: id, Tenant: "acme", Domain: "user", Keys: []string{"user:1"}},
			{ID: ids[0], Tenant: "acme", Domain: "user", Keys: []string{"user:2"}}, {ID: ids[1], Tenant: "acme", Domain: "user", Keys: []string{"user:3"}}})
		return err == nil
	})
	seen := map[string]bool{}
	for _, ev := range entries(t, admin, stream) {
		seen[ev.ID] = true
	}
	if len(seen) != 3 || !seen[id] || !seen[ids[0]] || !seen[ids[1]] {
		t.Errorf("the ingress holds events %v, want exactly the ids returned with the errors: %s, %v", seen, id, ids)
	}
}
