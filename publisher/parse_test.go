package publisher

import (
	"strconv"
	"testing"

	"github.com/routerd/routerd/matrix"
)

// FuzzParsePartitions: the partition count key's value is a count from 1 to
// matrix.MaxPartitions written in decimal, or an error that quotes it.
func FuzzParsePartitions(f *testing.F) {
	for _, s := range []string{"4", "8", "0", "-1", "four", "", " 4", "1e3", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parsePartitions(s)
		if err != nil {
			if n != 0 {
				t.Errorf("%q: error %v with count %d", s, err, n)
			}
			return
		}
		if n < 1 || n > matrix.MaxPartitions {
			t.Errorf("%q parsed to %d, out of range", s, n)
		}
		if want, _ := strconv.Atoi(s); want != n {
			t.Errorf("%q parsed to %d, not %d", s, n, want)
		}
	})
}
