package router

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
)

// chunkConn serves a reply in reads of at most chunk bytes.
type chunkConn struct {
	net.Conn
	data  []byte
	chunk int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), c.chunk, len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func (c *chunkConn) Write(p []byte) (int, error) { return len(p), nil }

// through passes reply through a bounded connection in reads of chunk
// bytes (after a command written) and returns what was passed on and the
// error that ended it.
func through(reply []byte, chunk int, maxValue, total int64) ([]byte, error) {
	b := &boundedConn{Conn: &chunkConn{data: reply, chunk: chunk}, bounds: &replyBounds{armed: true, maxValue: maxValue, total: total}}
	_, _ = b.Write([]byte("*1\r\n$4\r\nPING\r\n"))
	var out bytes.Buffer
	buf := make([]byte, 4096)
	for {
		n, err := b.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			return out.Bytes(), err
		}
	}
}

// xreadReply is an XREADGROUP reply (RESP2) of one entry per value.
func xreadReply(values ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "*1\r\n*2\r\n$6\r\nstream\r\n*%d\r\n", len(values))
	for i, v := range values {
		id := fmt.Sprintf("%d-0", i+1)
		fmt.Fprintf(&b, "*2\r\n$%d\r\n%s\r\n*2\r\n$5\r\nevent\r\n$%d\r\n%s\r\n", len(id), id, len(v), v)
	}
	return []byte(b.String())
}

// A reply within its bounds passes whole, however it arrives.
func TestBoundedConnPassesAReplyWithinBounds(t *testing.T) {
	reply := xreadReply("a", strings.Repeat("b", 100), "", strings.Repeat("\r\n$99999\r\n", 10))
	for _, chunk := range []int{1, 2, 3, 7, 64, 4096} {
		got, err := through(reply, chunk, 100, int64(len(reply)))
		if !errors.Is(err, io.EOF) || !bytes.Equal(got, reply) {
			t.Errorf("chunks of %d: passed %d of %d bytes, %v", chunk, len(got), len(reply), err)
		}
	}
}

// A value above the largest allowed is cut before its length reaches
// go-redis, which would allocate it: no byte of its header line passes,
// whatever the reads' sizes.
func TestBoundedConnCutsBeforeALargeValue(t *testing.T) {
	reply := xreadReply("small", strings.Repeat("x", 1000), "after")
	header := []byte("$1000\r\n")
	at := bytes.Index(reply, header)
	for _, chunk := range []int{1, 2, 3, 5, 7, 64, 4096} {
		got, err := through(reply, chunk, 999, 1<<20)
		if !errors.Is(err, errReadCut) {
			t.Fatalf("chunks of %d: %v, want the read cut", chunk, err)
		}
		if len(got) > at+len(header)-1 || bytes.Contains(got, header) {
			t.Errorf("chunks of %d: passed %d bytes, the large value's header is at %d", chunk, len(got), at)
		}
		if len(got) < at-chunk {
			t.Errorf("chunks of %d: passed only %d bytes of the %d before the large value", chunk, len(got), at)
		}
	}
	if got, err := through(reply, 4096, 1000, 1<<20); !errors.Is(err, io.EOF) || !bytes.Equal(got, reply) {
		t.Errorf("a value of exactly the largest allowed: %d of %d bytes, %v", len(got), len(reply), err)
	}
}

// A reply above its total is cut at the total.
func TestBoundedConnCutsAtTheTotal(t *testing.T) {
	reply := xreadReply(strings.Repeat("a", 300), strings.Repeat("b", 300), strings.Repeat("c", 300))
	for _, chunk := range []int{1, 7, 4096} {
		got, err := through(reply, chunk, 1000, 500)
		if !errors.Is(err, errReadCut) || len(got) > 500 {
			t.Errorf("chunks of %d: passed %d bytes (%v), want at most 500 and the read cut", chunk, len(got), err)
		}
	}
}

// Every command written starts a reply: a connection's bounds are per reply.
func TestBoundedConnBoundsEachReply(t *testing.T) {
	one := xreadReply(strings.Repeat("a", 300))
	b := &boundedConn{Conn: &chunkConn{chunk: 4096}, bounds: &replyBounds{armed: true, maxValue: 1000, total: int64(len(one))}}
	buf := make([]byte, 4096)
	for i := range 3 {
		b.Conn.(*chunkConn).data = one
		_, _ = b.Write([]byte("PING\r\n"))
		if n, err := b.Read(buf); err != nil || n != len(one) {
			t.Fatalf("reply %d: %d bytes, %v", i, n, err)
		}
	}
}

// FuzzBoundedConn: whatever bytes come and however they are split, what
// passes holds no header of a value above the largest allowed and stays
// within the total.
func FuzzBoundedConn(f *testing.F) {
	f.Add(xreadReply("a", strings.Repeat("x", 50)), 3, int64(40), int64(1000))
	f.Add([]byte("$5\r\nhello\r\n$100\r\n"), 1, int64(10), int64(100))
	f.Add([]byte("=15\r\ntxt:some string\r\n!3\r\nerr\r\n$-1\r\n"), 2, int64(10), int64(100))
	f.Fuzz(func(t *testing.T, reply []byte, chunk int, maxValue, total int64) {
		if chunk < 1 || chunk > 1<<16 || maxValue < 0 || total < 0 {
			return
		}
		got, err := through(reply, chunk, maxValue, total)
		if int64(len(got)) > total {
			t.Fatalf("passed %d bytes, above the total %d", len(got), total)
		}
		if !errors.Is(err, errReadCut) && !bytes.Equal(got, reply) {
			t.Fatalf("not cut, yet passed %d of %d bytes", len(got), len(reply))
		}
		// Follow what passed as go-redis would: no complete header of a
		// value above maxValue.
		for i := 0; i < len(got); {
			end := bytes.IndexByte(got[i:], '\n')
			if end < 0 {
				break
			}
			line := got[i : i+end+1]
			i += end + 1
			if !isBulk(line[0]) {
				continue
			}
			if n, ok := bulkLength(line); ok {
				if n > maxValue {
					t.Fatalf("a header of %d bytes passed (largest %d)", n, maxValue)
				}
				if n >= 0 {
					i += int(n) + 2
				}
			}
		}
	})
}
