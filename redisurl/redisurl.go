// Package redisurl opens a go-redis client from the Redis URLs that
// routerd's commands take (--redis, --cache-redis), for a service that
// embeds the libraries (publisher, subscriber, tagstore) and wants the
// client the commands build:
//
//   - one URL, redis:// or rediss:// (redis.ParseURL's form): one server;
//   - comma-separated seed URLs, or one with Options.Cluster: Redis Cluster
//     (the first URL's options and credentials);
//   - one URL with master_name in its query (redis.ParseFailoverURL's form,
//     redis://SENTINEL:26379?master_name=NAME&addr=SENTINEL2:26379): the
//     master that Redis Sentinel fails over, as a failover client whose
//     every connection, pub/sub ones included, follows the master
//     (docs/sentinel.md).
//
// A client built with redis.NewFailoverClient alone keeps its pub/sub
// connections on a master demoted without a crash (SENTINEL FAILOVER, a
// partition that heals) until the sentinels reconfigure it, 8 s or more:
// an embedded subscriber hears nothing meanwhile. The client Open returns
// asks the sentinels for the master every second while it has connections
// open and closes those left on another one.
//
// Errors never show a password of the URL.
package redisurl

import (
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/routerd/routerd/internal/redisconn"
)

// Options say how to connect beyond what the URL says: what routerd's
// --cluster, --redis-password-file and --tls-… flags say.
type Options struct {
	// Cluster takes a single URL for a Redis Cluster seed.
	Cluster bool
	// TLS applies to rediss:// URLs only; with a Sentinel URL, to the
	// sentinels and the data servers alike.
	TLS TLSFiles
	// PasswordFile holds the password of the data servers (its trailing
	// newline dropped), instead of the URL. It is read again for each new
	// connection, so a rotated password is taken up without a restart. A
	// URL with a password as well is refused.
	PasswordFile string
	// Logger receives the warnings about skip_verify=true and about a CA
	// file that cannot be read again; nil discards them.
	Logger *slog.Logger
}

// TLSFiles are the PEM files of a rediss:// connection.
type TLSFiles struct {
	// CA holds the certificates a server's chain must lead to; the system
	// roots when empty. It is read again for each new connection, so a CA
	// added to it is trusted without a restart.
	CA string
	// Cert and Key are the client's certificate and key, for servers that
	// ask for one (tls-auth-clients yes): both or neither. They are read
	// again for each new connection.
	Cert, Key string
	// ServerName is the name every server's certificate is verified under;
	// empty, each server's own address.
	ServerName string
}

// Open returns a client for urls with o: a *redis.Client for one server or
// a Sentinel URL, a *redis.ClusterClient for Redis Cluster. Every option
// go-redis knows in a URL's query reaches the client, and an unknown one
// is an error. Close the client when done.
func Open(urls string, o Options) (redis.UniversalClient, error) {
	return redisconn.OpenWith(urls, redisconn.Options{
		Cluster:      o.Cluster,
		TLS:          redisconn.TLSFiles{CA: o.TLS.CA, Cert: o.TLS.Cert, Key: o.TLS.Key, ServerName: o.TLS.ServerName},
		PasswordFile: o.PasswordFile,
		Logger:       o.Logger,
	})
}
