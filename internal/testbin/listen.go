package testbin

import (
	"regexp"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
)

// AnyPort is a --listen address on which routerd serve or agent listens on
// a port the kernel picks as it binds; ListenAddr reads the port back from
// the daemon's log. A port found free beforehand (redistest.FreeAddr) can
// be taken by any other process before the daemon binds it, and then the
// daemon fails with "bind: address already in use" while the test talks
// to whatever took it.
const AnyPort = "127.0.0.1:0"

// listeningRE matches the line the HTTP server logs once it holds its
// listener, in the text and in the JSON log format.
var listeningRE = regexp.MustCompile(`"?msg"?[=:]"Listening on".*?"?address"?[=:]"?([0-9.]+:[0-9]+)`)

// ListenAddrIn returns the address named by the first "Listening on" line
// in log, or "" when there is none yet.
func ListenAddrIn(log string) string {
	if m := listeningRE.FindStringSubmatch(log); m != nil {
		return m[1]
	}
	return ""
}

// ListenAddr waits until the log of a daemon started with --listen AnyPort
// (read by log, which must be safe to call while the daemon writes) names
// the address it listens on, and returns it.
func ListenAddr(tb testing.TB, log func() string) string {
	tb.Helper()
	var addr string
	redistest.Eventually(tb, 20*time.Second, "the daemon to log the address it listens on", func() bool {
		addr = ListenAddrIn(log())
		return addr != ""
	})
	return addr
}
