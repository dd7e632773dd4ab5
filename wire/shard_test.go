package wire

import (
	"fmt"
	"strings"
	"testing"
)

// Every tenant belongs to exactly one of the k shards, for several k, and
// the shards are about even.
func TestTenantShardsCoverEveryTenantOnce(t *testing.T) {
	const n = 20000
	for _, k := range []int{1, 2, 3, 4, 7, 16} {
		count := make([]int, k)
		for j := 0; j < n; j++ {
			tenant := fmt.Sprintf("tenant-%d", j)
			owners := 0
			for i := 0; i < k; i++ {
				if (TenantShard{I: i, K: k}).Owns(tenant) {
					owners++
					count[i]++
				}
			}
			if owners != 1 {
				t.Fatalf("k=%d: %s belongs to %d shards, want 1", k, tenant, owners)
			}
		}
		for i, c := range count {
			if even := n / k; c < even*8/10 || c > even*12/10 {
				t.Errorf("k=%d: shard %d has %d of %d tenants, want about %d", k, i, c, n, even)
			}
		}
	}
	if !(TenantShard{}).Owns("anyone") {
		t.Error("the zero shard does not take every tenant")
	}
}

func TestParseTenantShard(t *testing.T) {
	for _, s := range []string{"0/1", "0/2", "1/2", "3/4", "4095/4096"} {
		sh, err := ParseTenantShard(s)
		if err != nil || sh.String() != s {
			t.Errorf("ParseTenantShard(%q) = %v, %v", s, sh, err)
		}
	}
	for s, want := range map[string]string{
		"0/0": "k must be", "2/2": "i must be 0 to 1", "-1/2": "i must be", "a/b": "i is not a number",
		"1/b": "k is not a number", "1": "want i/k", "": "want i/k", "0/5000": "k must be 1 to 4096", "1/2/3": "k is not a number",
	} {
		if _, err := ParseTenantShard(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseTenantShard(%q) = %v, want an error saying %q", s, err, want)
		}
	}
}

func FuzzParseTenantShard(f *testing.F) {
	for _, s := range []string{"0/1", "3/4", "2/2", "a/b", "/", "-0/+3", "99999999999999999999/1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sh, err := ParseTenantShard(s)
		if err != nil {
			return
		}
		if sh.K < 1 || sh.I < 0 || sh.I >= sh.K {
			t.Fatalf("ParseTenantShard(%q) = %+v, outside 0 ≤ i < k", s, sh)
		}
		if !sh.Owns("t") && sh.K == 1 {
			t.Fatalf("%v does not own a tenant of one shard", sh)
		}
	})
}
