package redisconn

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// masterWatch makes every connection of a failover client follow the
// master: when the sentinels name another master, the connections still
// open to the one before are closed, so that their clients connect again,
// to the new master.
//
// go-redis's failover client closes its pooled connections to a demoted
// master when a sentinel announces the switch, but not its pub/sub
// connections, and clients made from its Options (the router's own read
// connections) are not its to close. A master the sentinels demote without
// a crash (SENTINEL FAILOVER, a partition that heals) goes on answering as
// a master until they reconfigure it, 8 s or more after they see it again,
// and only then closes its clients' connections: meanwhile a subscriber
// listened there and a router read the ingress there while publishers
// wrote to the new master.
//
// The watch wraps the client's Dialer, which every connection of the
// client, its pub/sub connections and the clients copied from its Options
// dial through. A connection dialled to another master than the others
// closes the others; while connections are open, the sentinels are asked
// for the master every second, and when one names another, a connection
// is dialled through go-redis's own failover dialer, which closes the
// others if go-redis agrees.
type masterWatch struct {
	name      string
	sentinels []string
	sentinel  func(addr string) *redis.Options
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)

	mu    sync.Mutex
	conns map[*watchedConn]struct{}
	done  chan struct{} // closed when the last connection closes: the watch ends
}

// watchEvery is how often the sentinels are asked for the master while
// connections are open.
const watchEvery = time.Second

// follow wraps c's Dialer (c a failover client made from opt) with a watch.
// It must run before c dials anything (no MinIdleConns).
func follow(c *redis.Client, opt *redis.FailoverOptions) {
	w := &masterWatch{
		name:      opt.MasterName,
		sentinels: append([]string(nil), opt.SentinelAddrs...),
		sentinel: func(addr string) *redis.Options {
			// opt.Dialer, as go-redis's own sentinel clients: the CA
			// file's dialer (apply) when there is one, else nil.
			return &redis.Options{Addr: addr, Username: opt.SentinelUsername, Password: opt.SentinelPassword,
				TLSConfig: opt.TLSConfig, Dialer: opt.Dialer, DialTimeout: opt.DialTimeout, MaxRetries: -1, DisableIdentity: true}
		},
		dial:  c.Options().Dialer,
		conns: map[*watchedConn]struct{}{},
	}
	c.Options().Dialer = w.Dial
}

// Dial dials the master through go-redis's failover dialer and closes the
// connections open to another master. A dial that found no master because
// no sentinel knows its name fails with a noMasterError.
func (w *masterWatch) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := w.dial(ctx, network, addr)
	if err != nil {
		if errors.Is(err, redis.Nil) {
			err = &noMasterError{name: w.name, err: err}
		}
		return nil, err
	}
	wc := &watchedConn{Conn: c, w: w, master: c.RemoteAddr().String()}
	w.mu.Lock()
	w.conns[wc] = struct{}{}
	stale := w.staleLocked(wc.master)
	if w.done == nil {
		w.done = make(chan struct{})
		go w.watch(w.done)
	}
	w.mu.Unlock()
	closeAll(stale)
	if _, ok := c.(syscall.Conn); ok {
		return watchedSocket{wc}, nil
	}
	return wc, nil
}

// staleLocked returns the open connections to another master than master.
func (w *masterWatch) staleLocked(master string) []*watchedConn {
	var stale []*watchedConn
	for c := range w.conns {
		if c.master != master {
			stale = append(stale, c)
		}
	}
	return stale
}

func closeAll(conns []*watchedConn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

// watch asks the sentinels for the master every watchEvery until done is
// closed; when one names a master some connection is not on, it dials one
// through go-redis's failover dialer (which asks its own sentinel), and
// Dial closes the others if that one is on another master.
func (w *masterWatch) watch(done <-chan struct{}) {
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	var sc *redis.SentinelClient
	defer func() {
		if sc != nil {
			_ = sc.Close()
		}
	}()
	next := 0
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if sc == nil {
			sc = redis.NewSentinelClient(w.sentinel(w.sentinels[next%len(w.sentinels)]))
		}
		ctx, cancel := context.WithTimeout(context.Background(), watchEvery)
		addr, err := sc.GetMasterAddrByName(ctx, w.name).Result()
		cancel()
		if err != nil || len(addr) != 2 {
			// Another sentinel next time.
			_ = sc.Close()
			sc = nil
			next++
			continue
		}
		if !w.moved(addr[0], addr[1]) {
			continue
		}
		ctx, cancel = context.WithTimeout(context.Background(), 2*watchEvery)
		if c, err := w.Dial(ctx, "tcp", ""); err == nil {
			_ = c.Close()
		}
		cancel()
	}
}

// moved reports whether some open connection is on another master than
// host:port, as a sentinel names it: an IP, or a host name (sentinel
// announce-hostnames) whose addresses are looked up.
func (w *masterWatch) moved(host, port string) bool {
	ips := []string{host}
	if net.ParseIP(host) == nil {
		ctx, cancel := context.WithTimeout(context.Background(), watchEvery)
		found, err := net.DefaultResolver.LookupHost(ctx, host)
		cancel()
		if err != nil {
			return false
		}
		ips = found
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for c := range w.conns {
		on := false
		for _, ip := range ips {
			on = on || c.master == net.JoinHostPort(ip, port)
		}
		if !on {
			return true
		}
	}
	return false
}

// watchedConn is a connection the watch knows, to master.
type watchedConn struct {
	net.Conn
	w      *masterWatch
	master string
	once   sync.Once
}

func (c *watchedConn) Close() error {
	c.once.Do(func() {
		c.w.mu.Lock()
		delete(c.w.conns, c)
		if len(c.w.conns) == 0 && c.w.done != nil {
			close(c.w.done)
			c.w.done = nil
		}
		c.w.mu.Unlock()
	})
	return c.Conn.Close()
}

// NetConn returns the connection watched, for go-redis to reach the socket
// through (as tls.Conn's own NetConn does).
func (c *watchedConn) NetConn() net.Conn { return c.Conn }

// watchedSocket is a watched connection that is a socket itself (plain
// TCP): it is a syscall.Conn too, so go-redis's pool checks it before
// handing it out after it sat idle, and drops it when the server closed it
// meanwhile, as it does a client's of one server; without that, a command
// of a client that sends once (the router's claims) failed on it.
type watchedSocket struct{ *watchedConn }

func (c watchedSocket) SyscallConn() (syscall.RawConn, error) {
	return c.Conn.(syscall.Conn).SyscallConn()
}
