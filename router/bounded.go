package router

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/lua"
)

// New entries are read with a plain XREADGROUP, bounded on the way in.
//
// lua/read.lua bounds a read in bytes on the server, but a script converts
// every entry into Lua and back: that doubled the bus's cost of a read (2.7
// against 1.0 µs an entry, issue 21). So each stream's read loop has a
// connection of its own to the stream's master, wrapped in a filter that
// follows the RESP reply as it arrives and cuts the connection before
// go-redis sees a value above MaxEventBytes or a reply above the read's
// budget (ReadBytes, plus the reply's framing). The entries of a cut reply
// were delivered to this consumer all the same: they are pending for it,
// and the read loop takes them next through claim.lua (bounded on the
// server, values cut there), as it takes its pending entries after a
// restart. Memory stays bounded; only the bytes of the cut reply that were
// already sent cross the network.

// errReadCut is the error a bounded connection returns once a reply went
// above its bounds. go-redis then drops the connection.
var errReadCut = errors.New("router: read cut: the reply is above the read's bounds; its entries are read from the pending list")

// replyBounds are what one reply may hold: a value (bulk string) of at most
// maxValue bytes, and at most total bytes in all. Set by the read loop before
// each read; armed only around a read of new entries.
type replyBounds struct {
	armed    bool
	maxValue int64
	total    int64
	// sent is set once the read's command was written: before that (a
	// connection that could not be made or set up), nothing was delivered.
	sent bool
}

// framingPerEntry is what a bound reply allows per entry beyond the read
// budget (ReadBytes counts field names and values): the entry's id and the
// RESP framing of it and of a few fields.
const framingPerEntry = 128

// boundedConn passes a connection's bytes to go-redis while following the
// RESP reply: every command written starts a new reply.
type boundedConn struct {
	net.Conn
	bounds *replyBounds
	err    error // set once a reply went above its bounds: every read fails

	seen    int64  // bytes of the reply passed on
	skip    int64  // bytes of a bulk payload (with its CRLF) still to pass
	line    []byte // the header line read so far (its first bytes)
	inLine  bool
	lineLen int64 // bytes of the header line so far
}

// NetConn lets go-redis's health check reach the socket.
func (c *boundedConn) NetConn() net.Conn { return c.Conn }

func (c *boundedConn) Write(p []byte) (int, error) {
	c.seen, c.skip, c.line, c.inLine, c.lineLen = 0, 0, c.line[:0], false, 0
	if c.bounds.armed && (bytes.Contains(p, []byte("xreadgroup")) || bytes.Contains(p, []byte("XREADGROUP"))) {
		c.bounds.sent = true
	}
	return c.Conn.Write(p)
}

func (c *boundedConn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	if n > 0 && c.bounds.armed {
		if keep, ok := c.scan(p[:n]); !ok {
			c.err = errReadCut
			if keep == 0 {
				return 0, c.err
			}
			return keep, nil
		}
	}
	return n, err
}

// scan follows the reply over b. It returns ok false, with the bytes of b
// that may still be passed on, when the reply goes above its bounds: a bulk
// header announcing a value above maxValue (none of its line is passed on
// from b, so go-redis never reads the length and allocates it), or the
// total above total.
func (c *boundedConn) scan(b []byte) (keep int, ok bool) {
	start := 0 // where the current header line starts in b
	for i := 0; i < len(b); {
		if c.seen+int64(i) > c.bounds.total {
			return int(c.bounds.total - c.seen), false
		}
		if c.skip > 0 {
			step := min(c.skip, int64(len(b)-i))
			c.skip -= step
			i += int(step)
			continue
		}
		if !c.inLine {
			c.inLine, c.line, c.lineLen, start = true, c.line[:0], 0, i
		}
		// The rest of the header line, or of b.
		end := bytes.IndexByte(b[i:], '\n')
		complete := end >= 0
		if complete {
			end += i + 1
		} else {
			end = len(b)
		}
		c.line = append(c.line, b[i:min(end, i+maxHeaderLine-len(c.line))]...)
		c.lineLen += int64(end - i)
		i = end
		if !complete {
			continue
		}
		c.inLine = false
		if isBulk(c.line[0]) {
			n, ok := bulkLength(c.line)
			if c.lineLen > maxHeaderLine || !ok || n > c.bounds.maxValue {
				// Hold back the header line (what of it is in b): a
				// value too large, or a length no server sends.
				return start, false
			}
			if n >= 0 {
				c.skip = n + 2
			}
		}
	}
	c.seen += int64(len(b))
	if c.seen > c.bounds.total {
		return len(b) - int(c.seen-c.bounds.total), false
	}
	return len(b), true
}

// maxHeaderLine is the longest RESP header line of a bulk string a server
// sends: "$", 20 digits and CRLF, and one byte more.
const maxHeaderLine = 24

// isBulk reports whether a RESP header line of type t is followed by a
// payload: a bulk string, verbatim string or bulk error ($, =, !).
func isBulk(t byte) bool { return t == '$' || t == '=' || t == '!' }

// bulkLength reads the length of a bulk header line ("$<n>\r\n"); -1 (a
// null bulk) has no payload: 0 bytes and no CRLF to pass.
func bulkLength(line []byte) (int64, bool) {
	if len(line) < 4 || line[len(line)-2] != '\r' {
		return 0, false
	}
	n, err := strconv.ParseInt(string(line[1:len(line)-2]), 10, 64)
	if err != nil || n < -1 {
		return 0, false
	}
	return n, true
}

// streamReader is a read loop's own client for new entries of its stream:
// one connection to the stream's master, bounded as above.
type streamReader struct {
	r      *Router
	stream string
	bounds replyBounds
	c      *redis.Client
	// off until then: the reader failed with an error reply (a slot that
	// moved, a refused command), so reads go through read.lua meanwhile.
	off  time.Time
	said string // the last such error logged
	// failed counts the reads in a row that failed after they were sent.
	failed int
	// size is what one read or claim of the stream takes now, shared with
	// the claim loop (Router.readSize).
	size *readSize
	// backlog is set by the read loop while the reads before came back
	// full: the next read is checked for entries deleted unread
	// (readChecked).
	backlog bool
}

// readSize divides what one read or claim of a stream takes (entries and
// bytes) by 4 for each read or claim whose connection was lost after it
// was sent (Router.readLost): a bus closes a connection whose reply passes
// its client-output-buffer-limit normal, and the same read would be closed
// again and again. Every smallFor reads that brought entries take it back
// one step. The stream's read loop and the claim loop share it; a nil one
// is whole.
type readSize struct {
	mu           sync.Mutex
	shrunk, good int
}

// The most shrinking of reads (by 4^maxShrunk: 8 KiB of the default
// ReadBytes, one entry of BatchSize), and how many reads must bring
// entries before they take 4 times more again.
const (
	maxShrunk = 5
	smallFor  = 8
)

// readSize returns the stream's readSize.
func (r *Router) readSize(stream string) *readSize {
	v, _ := r.sizes.LoadOrStore(stream, &readSize{})
	return v.(*readSize)
}

// readLost is told that a read or claim of stream lost its connection
// after it was sent: what the next ones take is divided by 4 (again).
func (r *Router) readLost(stream string, err error) {
	z := r.readSize(stream)
	z.mu.Lock()
	z.good = 0
	more := z.shrunk < maxShrunk
	if more {
		z.shrunk++
	}
	z.mu.Unlock()
	if more {
		r.log.Warn("a read of the ingress lost its connection after it was sent (the bus closes a connection whose reply passes client-output-buffer-limit normal): the next reads take a quarter as much",
			"stream", stream, "read_bytes", z.scale(r.opt.ReadBytes), "err", err)
	}
}

// lostAfterSent reports whether err, a read's or claim's, may be its
// connection closed after the command was sent (readLost): not an error
// reply, nor a connection that could not be made or taken from the pool
// (nothing was sent, and no reply was too large).
func lostAfterSent(err error) bool {
	var reply redis.Error
	return err != nil && !errors.As(err, &reply) && !redisconn.Unsent(err)
}

// worked is told that a read or claim of the stream brought entries.
func (z *readSize) worked() {
	if z == nil {
		return
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.shrunk == 0 {
		return
	}
	if z.good++; z.good >= smallFor {
		z.shrunk--
		z.good = 0
	}
}

// scale is n (entries or bytes of one read) as reads take it now: divided
// by 4 for each step shrunk, at least 1.
func (z *readSize) scale(n int) int {
	if z == nil {
		return n
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	return max(n>>(2*z.shrunk), 1)
}

// onceOnly is a client on c's server or cluster that does not send a
// command again after its connection failed (a lost reply: the command may
// have run); c itself when it is of another kind. Close it apart from c.
// On a server that is MaxRetries -1. A cluster client retries such a
// command itself, as it follows a MOVED or ASK, up to MaxRedirects times
// whatever MaxRetries says, unless the command says NoRetry: every command
// of this one does (noRetryHook), so it follows redirects — a MOVED or ASK
// reply means the command did not run, so sending it where the reply says
// is safe — and sends nothing again after a lost connection. It carries the
// hooks redisconn gives a client of c's options (the certificate hint),
// which go-redis does not copy.
func onceOnly(c redis.UniversalClient) redis.UniversalClient {
	var once redis.UniversalClient
	switch c := c.(type) {
	case *redis.Client:
		o := *c.Options()
		o.MaxRetries = -1
		once = redis.NewClient(&o)
	case *redis.ClusterClient:
		o := *c.Options()
		o.MaxRetries, o.MaxRedirects = -1, followRedirects
		cc := redis.NewClusterClient(&o)
		cc.AddHook(noRetryHook{})
		once = cc
	default:
		return nopClose{c}
	}
	redisconn.AddHooks(once)
	return once
}

// followRedirects is how many MOVED or ASK replies in a row onceOnly's
// cluster client follows for one command (go-redis's default): a slot
// moving while the claim is sent, then moving on.
const followRedirects = 3

// noRetry is a command go-redis sends only once (Cmder.NoRetry): its
// replies still land in the command it wraps.
type noRetry struct{ redis.Cmder }

func (noRetry) NoRetry() bool { return true }

// noRetryHook makes every command of a client, alone or in a pipeline,
// noRetry.
type noRetryHook struct{}

func (noRetryHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (noRetryHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { return next(ctx, noRetry{cmd}) }
}

func (noRetryHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		once := make([]redis.Cmder, len(cmds))
		for i, cmd := range cmds {
			once[i] = noRetry{cmd}
		}
		return next(ctx, once)
	}
}

// nopClose is a client whose Close does nothing: another owns it.
type nopClose struct{ redis.UniversalClient }

func (nopClose) Close() error { return nil }

// client returns the reader's client, made for the stream's master when
// there is none. It is nil when the shared client is of a kind the reader
// does not know (reads go through read.lua).
func (s *streamReader) client(ctx context.Context) *redis.Client {
	if s.c != nil || time.Now().Before(s.off) {
		return s.c
	}
	var base *redis.Options
	switch c := s.r.c.(type) {
	case *redis.Client:
		base = c.Options()
	case *redis.ClusterClient:
		node, err := c.MasterForKey(ctx, s.stream)
		if err != nil {
			s.pause()
			return nil
		}
		base = node.Options()
	default:
		s.off = time.Now().Add(24 * 365 * time.Hour)
		return nil
	}
	o := *base
	dial := base.Dialer
	o.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &boundedConn{Conn: conn, bounds: &s.bounds}, nil
	}
	o.PoolSize, o.MinIdleConns, o.MaxIdleConns, o.MaxActiveConns = 1, 0, 1, 1
	// A backlog's pipeline (readChecked) on that connection too: go-redis
	// gives pipelines a pool of their own unless told not to.
	o.PipelinePoolSize = -1
	o.MaxRetries = -1 // a read retried would deliver more entries
	s.c = redis.NewClient(&o)
	redisconn.AddHooks(s.c) // the certificate hint, which go-redis does not copy
	return s.c
}

// maxScriptReadBatches bounds how many BatchSize a read through read.lua
// takes (1,024 entries at the default), where reads on the stream's own
// connection take up to maxReadBatches: the script runs on the shared
// client, which go-redis retries when a connection fails (its MaxRetries),
// and what a run whose reply was lost delivered waits pending for
// DeadAfter (claimForgotten).
const maxScriptReadBatches = 4

// bound is count, or less when the reader's reads go through read.lua for
// now (maxScriptReadBatches).
func (s *streamReader) bound(count int) int {
	if s.c == nil && time.Now().Before(s.off) {
		count = min(count, maxScriptReadBatches*s.r.opt.BatchSize)
	}
	return s.size.scale(count)
}

// pause sends reads through read.lua for a while and drops the client, so
// the next one is made for the stream's master then.
func (s *streamReader) pause() {
	s.close()
	s.off = time.Now().Add(10 * time.Second)
}

func (s *streamReader) close() {
	if s.c != nil {
		_ = s.c.Close()
		s.c = nil
	}
}

// readOutcome says how a bounded read went.
type readOutcome int

const (
	readDone     readOutcome = iota // the entries, or none within block
	readPending                     // entries may have been delivered and not returned: read the pending list
	readFallback                    // nothing was delivered; read through read.lua
)

// read reads the group's new entries, at most count, waiting up to block
// for one. An error reply of Redis other than NOGROUP (which the read loop
// repairs), or a connection that could not be made, sends reads through
// read.lua for a while; a cut reply, a failed connection or an error reply
// leaves what may have been delivered pending.
func (s *streamReader) read(ctx context.Context, count int, block time.Duration) ([]redis.XMessage, readOutcome, error) {
	c := s.client(ctx)
	if c == nil {
		return nil, readFallback, nil
	}
	o := s.r.opt
	s.bounds = replyBounds{armed: true, maxValue: int64(o.MaxEventBytes), total: int64(s.size.scale(o.ReadBytes)) + int64(count)*framingPerEntry + 1024}
	var res []redis.XStream
	var err error
	if s.backlog {
		res, err = s.readChecked(ctx, c, count)
	} else {
		res, err = c.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: o.Group, Consumer: o.Consumer, Streams: []string{s.stream, ">"}, Count: int64(count), Block: block,
		}).Result()
	}
	s.bounds.armed = false
	if err == nil {
		s.failed = 0
	}
	var rerr redis.Error
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, readDone, err // stopping
	case err == nil:
		if len(res) == 0 {
			return nil, readDone, nil
		}
		return res[0].Messages, readDone, nil
	case errors.Is(err, redis.Nil):
		return nil, readDone, nil
	case redis.HasErrorPrefix(err, "NOGROUP"):
		return nil, readDone, err
	case errors.Is(err, errReadCut):
		// The entries delivered are pending: the next read takes them.
		s.failed = 0
		s.close()
		return nil, readPending, nil
	case !s.bounds.sent:
		// A connection that could not be made or set up (maxclients
		// reached, a network down): nothing was delivered.
		s.fallBack(err)
		return nil, readFallback, nil
	case errors.As(err, &rerr):
		// An error reply (a slot that moved, a refused command): reads go
		// through the script for a while. Entries may have been delivered
		// all the same: Redis 7.0 answers a read held by CLIENT PAUSE and
		// released by CLIENT UNBLOCK … ERROR with the error, then runs it
		// once the pause ends (the connection is closed, its reply lost).
		s.fallBack(err)
		return nil, readPending, nil
	default:
		// The connection failed after the read was sent, maybe after
		// Redis delivered entries: the next read takes this consumer's
		// pending ones. Three in a row (a connection killed again and
		// again) send reads through the script for a while.
		s.failed++
		s.r.readLost(s.stream, err)
		if s.failed >= 3 {
			s.fallBack(err)
		} else {
			s.close()
		}
		return nil, readPending, nil
	}
}

// readChecked is a read of a backlog (the read before came back full):
// in the same pipeline, just before it, the head check of lua/unread.lua
// counts the entries a trim deleted before the group read them, which only
// a check between the trim and the group's next read can tell while a
// backlog lasts (the trim deleted every entry the group had read: the
// stream's first entry is after its last delivered one, until that read).
// A server runs the commands of one pipeline from one client back to
// back. The check counts no entry: O(1) per read, not per entry (its XINFO
// STREAM copies the stream's first and last entries). The read
// does not block (a backlog has entries; one that drained gets none, and
// the next read, short, blocks again), since a pipeline's wait for its
// replies is the connection's read timeout, not the read's block.
func (s *streamReader) readChecked(ctx context.Context, c *redis.Client, count int) ([]redis.XStream, error) {
	o := s.r.opt
	check := lua.UnreadRequest{Stream: s.stream, Group: o.Group}
	pipe := c.Pipeline()
	unread := lua.Queue(ctx, pipe, &check)
	read := pipe.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: o.Group, Consumer: o.Consumer, Streams: []string{s.stream, ">"}, Count: int64(count), Block: -1,
	})
	_, _ = pipe.Exec(ctx)
	got, err := check.Reply(unread)
	switch {
	case err == nil:
		s.r.lostUnread(s.stream, got.Lost, "", got.Last)
	case redis.HasErrorPrefix(err, "NOSCRIPT"):
		// The bus lost its script cache: loaded for the next read.
		if err := lua.Load(ctx, c, lua.RouterScripts()...); err != nil {
			s.r.log.Debug("loading the scripts for the check of entries deleted unread", "stream", s.stream, "err", err)
		}
	default:
		s.r.log.Debug("checking for entries deleted unread before a read", "stream", s.stream, "err", err)
	}
	return read.Result()
}

// fallBack sends reads through read.lua for 10 s, saying so once per error
// (a slot moving says it once).
func (s *streamReader) fallBack(err error) {
	if msg := err.Error(); msg != s.said {
		s.said = msg
		s.r.log.Info("reading new entries through the read script for 10s: the stream's own connection failed", "stream", s.stream, "err", err)
	}
	s.failed = 0
	s.pause()
}
