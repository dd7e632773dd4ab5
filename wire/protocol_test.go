package wire_test

import (
	"math"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/routerd/routerd/wire"
)

// The FNV-1a-32 test vectors of docs/protocol.md, which other languages
// implement the partition function from, are what wire.Partition computes.
// They are read from the document itself, so the two cannot drift apart.
func TestProtocolDocPartitionVectors(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "<!-- fnv-vectors:begin -->")
	block, _, ok2 := strings.Cut(rest, "<!-- fnv-vectors:end -->")
	if !ok || !ok2 {
		t.Fatal("docs/protocol.md: no <!-- fnv-vectors:begin --> … <!-- fnv-vectors:end --> block")
	}
	lines := strings.Split(strings.TrimSpace(block), "\n")
	if len(lines) < 3 {
		t.Fatal("docs/protocol.md: the vector table has no rows")
	}
	// Header: | tenant | FNV-1a-32 | p, N = 8 | p, N = 16 | …
	header := cells(lines[0])
	var ns []int
	for _, h := range header[2:] {
		n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(h, "p, N =")))
		if err != nil || !strings.HasPrefix(h, "p, N =") {
			t.Fatalf("docs/protocol.md: vector table column %q is not \"p, N = <n>\"", h)
		}
		ns = append(ns, n)
	}
	rows := 0
	for _, line := range lines[2:] {
		c := cells(line)
		if len(c) != len(header) {
			t.Fatalf("docs/protocol.md: vector row %q has %d cells, the header %d", line, len(c), len(header))
		}
		tenant := strings.Trim(c[0], "`")
		hash, err := strconv.ParseUint(strings.TrimPrefix(strings.Trim(c[1], "`"), "0x"), 16, 32)
		if err != nil {
			t.Fatalf("docs/protocol.md: vector row %q: hash: %v", line, err)
		}
		// The documented hash is FNV-1a-32 itself: mod 2^32-1, the largest
		// partition count a uint32 holds, the partition is the hash.
		if got := wire.Partition(tenant, math.MaxUint32); uint64(got) != hash%math.MaxUint32 {
			t.Errorf("%q: the doc says FNV-1a-32 = %#08x, wire.Partition gives %#08x", tenant, hash, got)
		}
		for i, n := range ns {
			want, err := strconv.Atoi(c[2+i])
			if err != nil {
				t.Fatalf("docs/protocol.md: vector row %q: partition %q: %v", line, c[2+i], err)
			}
			if uint64(want) != hash%uint64(n) {
				t.Errorf("%q: the doc's partition of %d is %d, but its hash %#08x mod %d is %d", tenant, n, want, hash, n, hash%uint64(n))
			}
			if got := wire.Partition(tenant, n); got != want {
				t.Errorf("%q: the doc says partition %d of %d, wire.Partition says %d", tenant, want, n, got)
			}
		}
		rows++
	}
	if rows < 5 {
		t.Errorf("docs/protocol.md: only %d vectors", rows)
	}
}

func cells(line string) []string {
	parts := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}
