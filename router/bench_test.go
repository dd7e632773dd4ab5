package router

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/routerd/routerd/lua"
)

// The publish path's encoding of one script call of 100 messages on three
// channels and the decoding of its reply (no Redis: the pipeline is not
// run).
func BenchmarkPublishCall(b *testing.B) {
	ctx := context.Background()
	var out []*outgoing
	for i := range 100 {
		out = append(out, message(fmt.Sprintf("invalidate:acme:t%d", i%3), "t", fmt.Sprint(i)))
	}
	idx := make([]int, len(out))
	for i := range idx {
		idx[i] = i
	}
	calls, _ := publishCalls(out, idx, false)
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer client.Close()
	pipe := client.Pipeline()
	reply := make([]any, 0, 2*len(out))
	for i := range out {
		reply = append(reply, int64(i+1), int64(0))
	}
	cmd := redis.NewCmd(ctx)
	cmd.SetVal(reply)
	b.ReportAllocs()
	for b.Loop() {
		req := publishRequest(out, calls[0], "e0", "PUBLISH")
		lua.Queue(ctx, pipe, &req)
		if _, err := req.Reply(cmd); err != nil {
			b.Fatal(err)
		}
		pipe.Discard()
	}
}
