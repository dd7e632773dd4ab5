package router

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/wire"
)

// A stream's own read client holds one connection to the stream's master,
// whether its reads are plain or a backlog's (the unread check and the read
// in one pipeline): go-redis's pipelines take a pool of their own by
// default, which doubled the router's connections to the bus.
func TestStreamReaderHoldsOneConnection(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	var dials atomic.Int64
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}})
	t.Cleanup(func() { c.Close() })
	r, stream := busLossRouter(t, c, newLockedLog(), Options{})
	if err := c.XGroupCreateMkStream(ctx, stream, r.opt.Group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{wire.EventField, `{"tenant":"acme","domain":"user","keys":["k"]}`}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	before := dials.Load()
	s := &streamReader{r: r, stream: stream, size: r.readSize(stream)}
	defer s.close()
	for i, backlog := range []bool{true, false, true} {
		s.backlog = backlog
		msgs, out, err := s.read(ctx, 1, -1)
		if err != nil || out != readDone || len(msgs) != 1 {
			t.Fatalf("read %d (backlog %v): %d entries, outcome %d, %v", i, backlog, len(msgs), out, err)
		}
	}
	if n := dials.Load() - before; n != 1 {
		t.Errorf("the stream's reader dialled %d connections, want 1", n)
	}
}
