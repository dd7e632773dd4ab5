// Package redisconn opens Redis clients from the command line's URLs: one
// URL for a standalone server, a comma-separated list of seed nodes (or
// --cluster) for Redis Cluster, or one URL with ?master_name= for a server
// that Redis Sentinel fails over. URLs follow go-redis (redis://, rediss://,
// user and password, db, options in the query; redis.ParseFailoverURL's
// form for Sentinel).
//
// It is the one place where a connection's TLS configuration is built (CA,
// client certificate, the name each server is verified under) and where a
// password from a file replaces the URL's.
package redisconn

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Options say how to connect beyond what the URL says.
type Options struct {
	// Cluster forces Redis Cluster even with one seed.
	Cluster bool
	// TLS applies to rediss:// URLs only.
	TLS TLSFiles
	// PasswordFile holds the password (its trailing newline is dropped),
	// so that it appears neither in argv nor in the environment. A URL
	// that has a password as well is refused. It is read again for each
	// new connection, so a rotated password is taken up without a restart.
	PasswordFile string
	// Logger receives the warning about ?skip_verify=true and those about
	// a CA file that cannot be read again; nil discards them.
	Logger *slog.Logger
}

// TLSFiles are the PEM files of a rediss:// connection.
type TLSFiles struct {
	// CA holds the certificates the server's chain must lead to; the
	// system roots when empty. It is read again for each new connection,
	// so a CA added to it (before servers move to certificates it signed)
	// is trusted without a restart.
	CA string
	// Cert and Key are the client's certificate and key, for servers that
	// ask for one (tls-auth-clients yes). Both or neither. They are read
	// again for each new connection, so a renewed pair is taken up without
	// a restart.
	Cert, Key string
	// ServerName, when set, is the name every server's certificate is
	// verified under. Empty means each server's own address: the URL's host
	// for a standalone server, and for a cluster each node's address as
	// the cluster announces it.
	ServerName string
}

func (f TLSFiles) empty() bool { return f == TLSFiles{} }

// Open returns a client for urls. cluster forces Redis Cluster even with one seed.
func Open(urls string, cluster bool) (redis.UniversalClient, error) {
	return OpenWith(urls, Options{Cluster: cluster})
}

// OpenWith returns a client for urls with o.
//
// A standalone URL is read by redis.ParseURL, a cluster's by
// redis.ParseClusterURL, a Sentinel URL (one with master_name in its query)
// by redis.ParseFailoverURL, so every option go-redis knows in a URL's query
// reaches the client and an unknown one is an error. Comma-separated seeds
// take the first URL's options and credentials.
func OpenWith(urls string, o Options) (redis.UniversalClient, error) {
	var list []string
	for _, u := range strings.Split(urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			list = append(list, u)
		}
	}
	if len(list) == 0 {
		return nil, errors.New("no Redis URL given")
	}
	for _, u := range list {
		if !isSentinel(u) {
			continue
		}
		switch {
		case len(list) > 1:
			return nil, fmt.Errorf("redis URL %q names a Sentinel master (master_name): give one URL, with each further sentinel as &addr=host:port, not a comma-separated list", redact(u))
		case o.Cluster:
			return nil, fmt.Errorf("redis URL %q names a Sentinel master (master_name): Sentinel and Redis Cluster exclude each other, drop --cluster", redact(u))
		}
		return openSentinel(u, o)
	}
	if !o.Cluster && len(list) == 1 {
		opt, err := redis.ParseURL(list[0])
		if err != nil {
			return nil, urlError(list[0], err)
		}
		if err := o.apply(list[0], false, opt.Username, &opt.Password, &opt.CredentialsProviderContext, &opt.TLSConfig, &opt.Dialer); err != nil {
			return nil, err
		}
		c := redis.NewClient(opt)
		AddHooks(c)
		return c, nil
	}
	opt, err := clusterOptions(list)
	if err != nil {
		return nil, err
	}
	if err := o.apply(list[0], true, opt.Username, &opt.Password, &opt.CredentialsProviderContext, &opt.TLSConfig, &opt.Dialer); err != nil {
		return nil, err
	}
	// Notice a failover in seconds, not the default minute.
	opt.ClusterStateReloadInterval = 2 * time.Second
	if opt.TLSConfig != nil && opt.TLSConfig.GetClientCertificate == nil {
		// Each node dials with its own client's hooks, never the
		// cluster client's; a client made from a copy of these options
		// (onceOnly's) keeps them.
		opt.NewClient = func(o *redis.Options) *redis.Client {
			n := redis.NewClient(o)
			AddHooks(n)
			return n
		}
	}
	return redis.NewClusterClient(opt), nil
}

// AddHooks adds to c the hooks OpenWith adds to a client of c's options: a
// TLS client with no certificate of its own gets certHint. A client made
// from another's options (go-redis copies none of its hooks) calls it to
// report its errors as the client it derives from does. A cluster client
// needs none: OpenWith gives its nodes the hint through the options'
// NewClient, which a copy of the options keeps. Hooks a caller added
// itself cannot be carried so: go-redis does not tell them (OnNode sends
// the calls routerd makes on one master through the cluster client
// instead, so that its hooks see them).
func AddHooks(c redis.UniversalClient) {
	if c, ok := c.(*redis.Client); ok {
		if tc := c.Options().TLSConfig; tc != nil && tc.GetClientCertificate == nil {
			c.AddHook(certHint{})
		}
	}
}

// isSentinel reports whether u names a master that Redis Sentinel watches:
// a query with master_name, as redis.ParseFailoverURL reads it.
func isSentinel(u string) bool {
	pu, err := url.Parse(u)
	return err == nil && pu.Query().Has("master_name")
}

// openSentinel returns a failover client (a *redis.Client that asks the
// sentinels for the master on each new connection) for a Sentinel URL:
// redis.ParseFailoverURL's form, the URL's host and every addr= a sentinel,
// the user information the sentinels' credentials, username= and
// password= (or o.PasswordFile) the data nodes'. The TLS of rediss:// and
// o.TLS apply to the sentinels and the data nodes alike: go-redis dials
// both with one tls.Config.
func openSentinel(u string, o Options) (*redis.Client, error) {
	opt, err := sentinelOptions(u, o)
	if err != nil {
		return nil, err
	}
	c := redis.NewFailoverClient(opt)
	// go-redis names every failover client's server "FailoverClient" (its
	// dialer ignores the address): name the master, for the messages that
	// name a server by Options().Addr (doctor's findings, "no replica of
	// …"). Nothing has dialled yet.
	c.Options().Addr = "sentinel:" + opt.MasterName
	follow(c, opt)
	AddHooks(c)
	return c, nil
}

// noMasterError is the error of a dial that found no master because every
// sentinel answered nil (none knows the name: a wrong master_name,
// sentinels started without their configuration). go-redis joins those
// answers into its error, which then is redis.Nil to errors.Is: a GET whose
// connection could not be made would read as a missing key. This one says
// what is wrong and unwraps to every other cause (masterWatch.Dial makes
// it).
type noMasterError struct {
	name string
	err  error
}

func (e *noMasterError) Error() string {
	return fmt.Sprintf("no sentinel knows a master named %q (SENTINEL GET-MASTER-ADDR-BY-NAME answered nil): check master_name and the sentinels' configuration (%v)", e.name, e.err)
}

// Unwrap returns the causes but redis.Nil.
func (e *noMasterError) Unwrap() []error { return withoutNil(e.err) }

// withoutNil returns err's tree without redis.Nil: err itself when it does
// not hold redis.Nil, else what its wrapped errors give.
func withoutNil(err error) []error {
	switch {
	case err == nil || err == redis.Nil:
		return nil
	case !errors.Is(err, redis.Nil):
		return []error{err}
	}
	var out []error
	switch w := err.(type) {
	case interface{ Unwrap() []error }:
		for _, e := range w.Unwrap() {
			out = append(out, withoutNil(e)...)
		}
	case interface{ Unwrap() error }:
		out = withoutNil(w.Unwrap())
	}
	return out
}

// sentinelOptions reads a Sentinel URL and applies o to it.
func sentinelOptions(u string, o Options) (*redis.FailoverOptions, error) {
	opt, err := redis.ParseFailoverURL(u)
	if err != nil {
		return nil, urlError(u, err)
	}
	switch {
	case opt.MasterName == "":
		return nil, fmt.Errorf("redis URL %q: master_name is empty: name the master as the sentinels know it (sentinel monitor <name> …)", redact(u))
	case opt.MinIdleConns > 0:
		// Connections made as the client is built would be dialled before
		// the client's dialer is wrapped to follow the master (follow).
		return nil, fmt.Errorf("redis URL %q: min_idle_conns is not supported with Sentinel: drop it", redact(u))
	case opt.ReplicaOnly, opt.RouteByLatency, opt.RouteRandomly:
		// routerd writes: a client of the replicas would fail every write,
		// and go-redis's failover client panics on the routing options.
		return nil, fmt.Errorf("redis URL %q: replica_only, route_by_latency and route_randomly send commands to replicas, and routerd writes: drop them", redact(u))
	}
	// perNode: ParseFailoverURL verifies every server under the first
	// sentinel's host; each sentinel, and the master a sentinel names, is
	// verified under its own address.
	if err := o.apply(u, true, opt.Username, &opt.Password, &opt.CredentialsProviderContext, &opt.TLSConfig, &opt.Dialer); err != nil {
		return nil, err
	}
	return opt, nil
}

// clusterOptions reads cluster seed URLs: the first one's options and
// credentials, every seed's address. A later seed may repeat the
// credentials but not change them, and carries no options of its own.
func clusterOptions(list []string) (*redis.ClusterOptions, error) {
	var opt *redis.ClusterOptions
	for i, u := range list {
		o, query, err := parseSeed(u)
		if err != nil {
			return nil, urlError(u, err)
		}
		if i == 0 {
			opt = o
			continue
		}
		switch {
		case query != "":
			return nil, fmt.Errorf("redis URL %q: options go on the first URL only", redact(u))
		case (o.Username != "" || o.Password != "") && (o.Username != opt.Username || o.Password != opt.Password),
			(o.TLSConfig != nil) != (opt.TLSConfig != nil):
			return nil, fmt.Errorf("redis URL %q: the credentials and scheme of every seed must be the first URL's", redact(u))
		}
		opt.Addrs = append(opt.Addrs, o.Addrs...)
	}
	return opt, nil
}

// parseSeed reads one cluster seed URL with redis.ParseClusterURL, which
// ignores the path (so a db other than 0, which a cluster does not have, is
// refused here) and does not know skip_verify (read here, as redis.ParseURL
// reads it). query is the URL's raw query.
func parseSeed(u string) (o *redis.ClusterOptions, query string, err error) {
	pu, err := url.Parse(u)
	if err != nil {
		return nil, "", err
	}
	if db := strings.Trim(pu.Path, "/"); db != "" && db != "0" {
		return nil, "", errors.New("a Redis Cluster has only db 0")
	}
	q := pu.Query()
	skip := q.Get("skip_verify")
	if q.Has("skip_verify") {
		q.Del("skip_verify")
		pu.RawQuery = q.Encode()
	}
	o, err = redis.ParseClusterURL(pu.String())
	if err != nil {
		return nil, "", err
	}
	if skip != "" && o.TLSConfig != nil {
		switch skip {
		case "true", "1":
			o.TLSConfig.InsecureSkipVerify = true
		case "false", "0":
		default:
			return nil, "", fmt.Errorf("redis: invalid skip_verify boolean: expected true/false/1/0, got %q", skip)
		}
	}
	o.TLSConfig = withMinVersion(o.TLSConfig)
	return o, pu.RawQuery, nil
}

// withMinVersion raises a cluster's TLS to 1.2 at least, as redis.ParseURL
// does for a standalone server.
func withMinVersion(c *tls.Config) *tls.Config {
	if c != nil && c.MinVersion < tls.VersionTLS12 {
		c.MinVersion = tls.VersionTLS12
	}
	return c
}

// apply puts the password file and the TLS files into the options parsed
// from rawURL (its first URL for a cluster), whose user is user (perNode:
// a cluster's or Sentinel's, whose servers are each verified under their
// own address): the files are read now, and the password file again by provider and the CA file
// again by dialer for each new connection.
func (o Options) apply(rawURL string, perNode bool, user string, password *string, provider *func(context.Context) (string, string, error),
	tc **tls.Config, dialer *func(context.Context, string, string) (net.Conn, error)) error {
	if o.PasswordFile != "" {
		if *password != "" {
			return fmt.Errorf("redis URL %q has a password and a password file is given: keep the password in one place", redact(rawURL))
		}
		pf := &passwordFile{path: o.PasswordFile, user: user}
		_, pw, err := pf.credentials(context.Background())
		if err != nil {
			return err
		}
		*password = pw
		*provider = pf.credentials
	}
	if *tc == nil {
		if !o.TLS.empty() {
			return fmt.Errorf("redis URL %q is not rediss://: TLS files are given but the connection would be plain TCP", redact(rawURL))
		}
		return nil
	}
	if (*tc).InsecureSkipVerify && o.Logger != nil {
		o.Logger.Warn("skip_verify=true: the Redis server's certificate is not verified; anyone on the network path can read and change this connection",
			"url", redact(rawURL))
	}
	c, err := o.TLS.config(*tc, perNode)
	if err != nil {
		return err
	}
	*tc = c
	if o.TLS.CA != "" {
		log := o.Logger
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		ca, err := newCAFile(o.TLS.CA, log)
		if err != nil {
			return err
		}
		c.RootCAs = ca.pool
		*dialer = ca.dialer(c)
	}
	return nil
}

// config returns base (what the URL gave: its host as ServerName, the
// minimum version, skip_verify) with the client certificate and the server
// name applied. The CA file is apply's.
func (f TLSFiles) config(base *tls.Config, perNode bool) (*tls.Config, error) {
	c := base.Clone()
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("TLS client certificate and key go together: give both files or neither")
	}
	if f.Cert != "" {
		kp, err := newKeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, err
		}
		c.GetClientCertificate = kp.get
	}
	switch {
	case f.ServerName != "":
		c.ServerName = f.ServerName
	case perNode:
		// Each node is verified under the address it is dialled at: go-redis
		// gives every cluster node (and every sentinel and data node of a
		// failover client) the same tls.Config, whose ServerName is the
		// first seed's (sentinel's) host, so a node with a certificate for its own
		// address only would fail verification (and a certificate for the
		// first seed's name would pass on any node). crypto/tls takes the
		// name from the dialled address when ServerName is empty.
		c.ServerName = ""
	}
	return c, nil
}

// caFile reads the CA file again for each new connection, so that a CA
// added to it is trusted without a restart, and keeps the last good
// certificates while the file is unreadable or half-written (in the middle
// of a renewal), saying so once in the log.
type caFile struct {
	path    string
	log     *slog.Logger
	mu      sync.Mutex
	pem     []byte         // the file's content last read whole
	pool    *x509.CertPool // its certificates
	failing bool           // the last read failed, and the log says so
}

func newCAFile(path string, log *slog.Logger) (*caFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("TLS CA file: %w", err)
	}
	pool, err := parseCA(path, b)
	if err != nil {
		return nil, err
	}
	return &caFile{path: path, log: log, pem: b, pool: pool}, nil
}

// roots returns the CA file's certificates as the file is now, or the last
// good ones while it cannot be read whole. The file is small and new
// connections are few: it is read each time, and parsed when it changed.
func (f *caFile) roots() *x509.CertPool {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := os.ReadFile(f.path)
	if err == nil && bytes.Equal(b, f.pem) {
		f.failing = false
		return f.pool
	}
	var pool *x509.CertPool
	if err != nil {
		err = fmt.Errorf("TLS CA file: %w", err)
	} else {
		pool, err = parseCA(f.path, b)
	}
	if err != nil {
		if !f.failing {
			f.log.Warn("new Redis connections verify servers against the CA certificates last read", "err", err)
			f.failing = true
		}
		return f.pool
	}
	f.pem, f.pool, f.failing = b, pool, false
	f.log.Info("TLS CA file changed: new Redis connections verify servers against its certificates", "file", f.path)
	return pool
}

// dialer is go-redis's own dialer with base's configuration, but with the
// CA file's certificates as they are at each dial: crypto/tls verifies the
// server (its chain, and its name as base says) exactly as it would with
// base, against the CAs of the moment.
func (f *caFile) dialer(base *tls.Config) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c := base.Clone()
		c.RootCAs = f.roots()
		o := &redis.Options{TLSConfig: c}
		// go-redis's pool bounds each attempt with the context (its
		// DialTimeout); its dialer takes the bound as DialTimeout.
		if deadline, ok := ctx.Deadline(); ok {
			o.DialTimeout = max(time.Until(deadline), time.Nanosecond)
		}
		return redis.NewDialer(o)(ctx, network, addr)
	}
}

// parseCA reads the certificates of a CA file whose content is b. A file
// caught half-written, its last PEM block cut short, is refused rather than
// taken without the certificates it is about to hold.
func parseCA(path string, b []byte) (*x509.CertPool, error) {
	rest := b
	for {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
	}
	if bytes.Contains(rest, []byte("-----BEGIN")) {
		return nil, fmt.Errorf("TLS CA file %s: a PEM block in it is cut short or malformed", path)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("TLS CA file %s: no PEM certificate in it", path)
	}
	return pool, nil
}

// certHint adds to a connection's errors, when the server refused it for
// want of a client certificate, that none is configured. The refusal
// reaches the client in several forms (TLS 1.3: an alert on the first read,
// or a reset on the first write, then the alert), always before the server
// has answered anything on the connection: a client with no certificate to
// give gets a hook that wraps each connection it dials, and names the cause
// in the connection's errors until the server first answers. A reset after
// that (a load balancer, a firewall, a proxy dropping the connection) says
// nothing about certificates and keeps its bare error.
type certHint struct{}

func (certHint) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil {
			return nil, withCertHint(err)
		}
		return &unanswered{Conn: c}, nil
	}
}

func (certHint) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (certHint) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// unanswered is a connection whose read and write errors carry the hint
// until the server has sent something on it.
type unanswered struct {
	net.Conn
	answered atomic.Bool
}

func (c *unanswered) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.answered.Store(true)
	} else if err != nil && !c.answered.Load() {
		err = withCertHint(err)
	}
	return n, err
}

func (c *unanswered) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil && !c.answered.Load() {
		err = withCertHint(err)
	}
	return n, err
}

// NetConn returns the connection wrapped (a *tls.Conn), as tls.Conn's own
// NetConn does, for go-redis to reach the socket through.
func (c *unanswered) NetConn() net.Conn { return c.Conn }

// withCertHint wraps err, an error of a connection the server has not
// answered yet, when it is the server's TLS alert that it wants a client
// certificate, or the connection closed under the client (the alert lost
// to a reset when the server closes the connection before the client's
// first write, TLS 1.3: the client finishes its handshake before the
// server checks it; a broken pipe when that reset was taken first). crypto/tls
// exports no type for an alert received over TCP, so the alert is told by
// its text.
func withCertHint(err error) error {
	if err == nil || errors.Is(err, errCertHint) || errors.Is(err, errResetHint) {
		return err
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "tls: certificate required"), strings.Contains(msg, "tls: bad certificate"):
		return fmt.Errorf("%w (%w)", err, errCertHint)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("%w (%w)", err, errResetHint)
	}
	return err
}

var (
	errCertHint  = errors.New("the server asks for a TLS client certificate and none is configured: give a certificate and key, --tls-cert and --tls-key")
	errResetHint = errors.New("the server closed the connection; if it asks for a TLS client certificate, none is configured: give a certificate and key, --tls-cert and --tls-key")
)

// keyPair reads a client certificate and key again for each handshake and
// keeps the last good pair when the files are momentarily unreadable (in
// the middle of a renewal).
type keyPair struct {
	cert, key string
	mu        sync.Mutex
	last      *tls.Certificate
}

func newKeyPair(cert, key string) (*keyPair, error) {
	kp := &keyPair{cert: cert, key: key}
	if _, err := kp.get(nil); err != nil {
		return nil, err
	}
	return kp, nil
}

func (kp *keyPair) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(kp.cert, kp.key)
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if err != nil {
		if kp.last != nil {
			return kp.last, nil
		}
		return nil, fmt.Errorf("TLS client certificate %s and key %s: %w", kp.cert, kp.key, err)
	}
	kp.last = &c
	return &c, nil
}

// Unsent reports whether err, a command's, says the command was never sent:
// its connection could not be made (dial, or no sentinel named a master to
// dial) or taken from the pool. Any other failure of the connection may
// have come after Redis ran it, or closed it for its reply
// (client-output-buffer-limit normal).
func Unsent(err error) bool {
	var op *net.OpError
	var noMaster *noMasterError
	return errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrPoolExhausted) ||
		errors.As(err, &op) && op.Op == "dial" || errors.As(err, &noMaster)
}

// passwordFile reads a password file again for each new connection, so that
// a rotated secret is taken up without a restart, and keeps the last good
// password while the file is momentarily unreadable or empty (in the middle
// of a renewal). Connections already open stay as they are: Redis keeps
// them authenticated.
type passwordFile struct {
	path, user string
	mu         sync.Mutex
	last       string
}

func (p *passwordFile) credentials(context.Context) (user, password string, err error) {
	pw, err := readPassword(p.path)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if p.last != "" {
			return p.user, p.last, nil
		}
		return "", "", err
	}
	p.last = pw
	return p.user, pw, nil
}

// readPassword reads a password file: one line, its newline dropped.
func readPassword(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("password file %s is empty", path)
	}
	if strings.ContainsAny(pw, "\r\n") {
		return "", fmt.Errorf("password file %s has more than one line", path)
	}
	return pw, nil
}

// IsCluster reports whether the client is a Redis Cluster client. It is the
// one place that tells a cluster from one server: sharded pub/sub, calls
// grouped by slot and per-master work all follow from it.
func IsCluster(c redis.UniversalClient) bool { return Cluster(c) != nil }

// Cluster returns the Redis Cluster client behind c, or nil when c talks to
// one server.
func Cluster(c redis.UniversalClient) *redis.ClusterClient {
	cc, _ := c.(*redis.ClusterClient)
	return cc
}

// Masters returns the servers that hold the data behind c: every master of a
// cluster (as the client knows them now), or the one server. Send to one
// with OnNode(ctx, c, master), so that c's hooks see the call.
func Masters(ctx context.Context, c redis.UniversalClient) ([]*redis.Client, error) {
	switch c := c.(type) {
	case *redis.Client:
		return []*redis.Client{c}, nil
	case *redis.ClusterClient:
		var mu sync.Mutex // ForEachMaster calls back concurrently
		var nodes []*redis.Client
		err := c.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
			mu.Lock()
			nodes = append(nodes, n)
			mu.Unlock()
			return nil
		})
		if err != nil {
			return nil, err
		}
		sort.Slice(nodes, func(i, j int) bool { return nodes[i].Options().Addr < nodes[j].Options().Addr })
		return nodes, nil
	default:
		return nil, fmt.Errorf("redisconn: unsupported Redis client %T", c)
	}
}

// ScanStreams returns the names of the streams matching pattern (a SCAN
// MATCH pattern) on every master behind c, sorted and each once. It walks
// the whole keyspace with SCAN: for discovery now and then, not per event.
func ScanStreams(ctx context.Context, c redis.UniversalClient, pattern string) ([]string, error) {
	masters, err := Masters(ctx, c)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, m := range masters {
		mctx, mc := OnNode(ctx, c, m)
		iter := mc.ScanType(mctx, 0, pattern, 1000, "stream").Iterator()
		for iter.Next(mctx) {
			seen[iter.Val()] = true
		}
		if err := iter.Err(); err != nil {
			return nil, fmt.Errorf("%s: SCAN: %w", m.Options().Addr, err)
		}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

// urlError names the URL, without its password, in err. net/url's own
// errors quote the whole URL, so only their cause is kept, and anything of
// the URL's user information left in the message is hidden too.
func urlError(u string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	msg := err.Error()
	var secrets []string
	if ui := userinfo(u); ui != "" {
		// The password is what follows the first colon, or the last one
		// when the URL is too broken to tell; hide every reading of it.
		_, afterFirst, _ := strings.Cut(ui, ":")
		afterLast := ui[strings.LastIndex(ui, ":")+1:]
		secrets = append(secrets, ui, afterFirst, afterLast)
	}
	for _, p := range secretParams(u) {
		secrets = append(secrets, u[p[0]:p[1]])
	}
	if len(secrets) > 0 {
		for _, secret := range secrets {
			if secret == "" {
				continue
			}
			msg = strings.ReplaceAll(msg, secret, "***")
			for _, unescape := range []func(string) (string, error){url.PathUnescape, url.QueryUnescape} {
				if dec, derr := unescape(secret); derr == nil && dec != "" {
					msg = strings.ReplaceAll(msg, dec, "***")
				}
			}
		}
	}
	return fmt.Errorf("redis URL %q: %s", redact(u), msg)
}

// userinfo returns what stands between the scheme and the last @ of u,
// whether or not u parses.
func userinfo(u string) string {
	at := strings.LastIndex(u, "@")
	if at < 0 {
		return ""
	}
	start := 0
	if s := strings.Index(u, "://"); s >= 0 && s < at {
		start = s + 3
	}
	return u[start:at]
}

// redact returns u with its password (everything after the user name in
// its user information) replaced by ***, whether or not u parses; a URL
// whose user information has no colon loses it whole. The value of a
// password= query parameter (a Sentinel URL's data nodes' password) is
// replaced too.
func redact(u string) string {
	if ps := secretParams(u); len(ps) > 0 {
		var b strings.Builder
		last := 0
		for _, p := range ps {
			b.WriteString(u[last:p[0]])
			b.WriteString("***")
			last = p[1]
		}
		b.WriteString(u[last:])
		u = b.String()
	}
	ui := userinfo(u)
	if ui == "" {
		return u
	}
	start := strings.LastIndex(u, "@") - len(ui)
	hidden := "***"
	if user, _, ok := strings.Cut(ui, ":"); ok {
		hidden = user + ":***"
	}
	return u[:start] + hidden + u[start+len(ui):]
}

// secretParams returns where the values of u's password query parameters
// stand ([start, end) in u, in order), whether or not u parses: after each
// ? or &, a name that decodes to password or sentinel_password (in any
// case) up to its =, and the value up to the next & or #.
func secretParams(u string) [][2]int {
	var out [][2]int
	for i := 0; i < len(u); i++ {
		if u[i] != '?' && u[i] != '&' {
			continue
		}
		eq := strings.IndexAny(u[i+1:], "=&?#")
		if eq < 0 || u[i+1+eq] != '=' {
			continue
		}
		name, err := url.QueryUnescape(u[i+1 : i+1+eq])
		if err != nil {
			name = u[i+1 : i+1+eq]
		}
		if n := strings.ToLower(name); n != "password" && n != "sentinel_password" {
			continue
		}
		start := i + 1 + eq + 1
		end := strings.IndexAny(u[start:], "&#")
		if end < 0 {
			end = len(u) - start
		}
		if end > 0 {
			out = append(out, [2]int{start, start + end})
		}
		i = start + end - 1
	}
	return out
}
