package router

import (
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/matrix"
	"github.com/routerd/routerd/names"
)

// The origin fields of a re-driven entry either name an ingress stream, an
// entry id and an index, or make the entry malformed with a reason naming
// the field; nothing else gets through.
func FuzzRedriven(f *testing.F) {
	m, err := matrix.Parse("m.yaml", []byte("version: 1\ntags: {t: {services: [s]}}\ndomains: {d: {tags: [t]}}\nservices: {s: {tenants: all}}\n"))
	if err != nil {
		f.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer c.Close()
	r, err := New(c, m, Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("invalidate:ingress:{3}", "1764000000123-0", "", "")
	f.Add("invalidate:ingress:shop:{0}", "1-2", "4", "router-a")
	f.Add("invalidate:deadletter", "1-2", "-1", "")
	f.Add("invalidate:ingress:{3}", "x", "01", "")
	f.Fuzz(func(t *testing.T, stream, id, index, to string) {
		values := map[string]any{redriveStream: stream, redriveEntry: id, redriveFor: to}
		if index != "" {
			values[redriveIndex] = index
		}
		e := &entry{fromIndex: -1}
		ok := r.redriven(e, values)
		if !ok {
			if e.reason != ReasonMalformed || e.detail == "" {
				t.Fatalf("refused without a reason: %+v", e)
			}
			return
		}
		_, perr := names.ParseIngressStream("invalidate", e.from)
		if perr != nil && names.StreamPublisher("invalidate", e.from) == "" {
			t.Fatalf("accepted origin %q, no ingress stream", e.from)
		}
		if !validEntryID(e.fromID) || e.handTo != to {
			t.Fatalf("accepted %+v", e)
		}
		if index != "" && strconv.Itoa(e.fromIndex) != index || index == "" && e.fromIndex != -1 {
			t.Fatalf("index %q read as %d", index, e.fromIndex)
		}
	})
}
