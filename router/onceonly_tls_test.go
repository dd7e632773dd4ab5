package router

import (
	"context"
	"strings"
	"testing"

	"github.com/routerd/routerd/internal/redisconn"
	"github.com/routerd/routerd/internal/redistest"
)

// onceOnly's client, made from the options of a client redisconn opened,
// carries its hooks: a TLS client without a certificate, on a server that
// requires one (tls-auth-clients yes), gets the hint that the server may
// ask for a certificate on the claims' commands too, not a bare error (a
// connection reset, when the server's alert is lost to it).
func TestOnceOnlyKeepsTheCertificateHint(t *testing.T) {
	pki := redistest.NewPKI(t)
	s := redistest.StartTLS(t, pki)
	c, err := redisconn.OpenWith(s.URL, redisconn.Options{TLS: redisconn.TLSFiles{CA: pki.CAFile}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// Whichever form the refusal takes is a race: several tries.
	for range 5 {
		once := onceOnly(c)
		err := once.Ping(context.Background()).Err()
		_ = once.Close()
		if err == nil || !strings.Contains(err.Error(), "TLS client certificate") || !strings.Contains(err.Error(), "none is configured") {
			t.Errorf("onceOnly's client without a certificate on a server that requires one: %v, want the hint that none is configured", err)
		}
	}
}
