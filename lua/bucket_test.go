package lua

import (
	"context"
	"math"
	"slices"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/storm"
)

// takes takes one token at each ARGV time (microseconds, from ARGV[3]) of a
// bucket of rate ARGV[1] and burst ARGV[2], full at first, as publish.lua
// does, and returns each take's wait in milliseconds (0: granted).
var takes = prelude + bucketSrc + `
local r, b = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, at = false, false
local out = {}
for i = 3, #ARGV do
  local now = tonumber(ARGV[i])
  local t = bucket_tokens(tokens, at, now, r, b)
  if t >= 1 then
    tokens, at = t - 1, now
    out[#out + 1] = 0
  else
    out[#out + 1] = bucket_wait(t, r)
  end
end
return out`

// The token bucket is one rule in two languages: bucket.lua, shared by
// publish.lua and budget.lua on the bus, and the subscriber's in-memory
// buckets (storm.Reserve on golang.org/x/time/rate). For the same takes at
// the same times, both grant the same ones and ask the same wait (to the
// millisecond the script counts in).
func TestBucketMatchesStorm(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	src := takes
	cases := []struct {
		rate  float64
		burst int
		takes []int64 // microseconds from the start
	}{
		{10, 2, []int64{0, 0, 0, 50_000, 100_000, 100_001, 250_000, 1_000_000, 1_000_000, 1_000_000}},
		{0.5, 1, []int64{0, 1, 1_999_999, 2_000_000, 2_500_000}},
		{1000, 5, []int64{0, 0, 0, 0, 0, 0, 999, 1000, 1001, 3000, 3000, 3000}},
		{3, 3, []int64{0, 100_000, 200_000, 300_000, 333_333, 333_334, 700_000}},
	}
	start := time.Unix(1_800_000_000, 0)
	for _, tc := range cases {
		args := []any{tc.rate, tc.burst}
		for _, at := range tc.takes {
			args = append(args, start.UnixMicro()+at)
		}
		got, err := c.Eval(ctx, src, nil, args...).Int64Slice()
		if err != nil {
			t.Fatal(err)
		}
		l := rate.NewLimiter(rate.Limit(tc.rate), tc.burst)
		l.AllowN(start, 0) // a full bucket at start, as bucket_tokens' new one
		for i, at := range tc.takes {
			wait := storm.Reserve(start.Add(time.Duration(at)*time.Microsecond), l)
			goMs := int64(math.Ceil(float64(wait) / float64(time.Millisecond)))
			if (wait == 0) != (got[i] == 0) || goMs != got[i] {
				t.Errorf("rate %v burst %d, take %d at %dµs: Lua waits %d ms, Go %v", tc.rate, tc.burst, i, at, got[i], wait)
			}
		}
	}
}

// A bucket whose last take is in the future (the server's clock went back:
// an NTP step, a failover to a server behind) is full, not empty until the
// clock is back there; from the next take on it refills as before.
func TestBucketAfterTheClockWentBack(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	src := takes
	start := time.Unix(1_800_000_000, 0).UnixMicro()
	hour := time.Hour.Microseconds()
	// rate 1/s, burst 2: two takes empty it; an hour back, two more are
	// granted (full), the third waits a second, and a second later one is
	// granted again.
	got, err := c.Eval(ctx, src, nil, 1, 2, start, start, start-hour, start-hour, start-hour, start-hour+1_000_000).Int64Slice()
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{0, 0, 0, 0, 1000, 0}; !slices.Equal(got, want) {
		t.Errorf("waits %v, want %v", got, want)
	}
}
