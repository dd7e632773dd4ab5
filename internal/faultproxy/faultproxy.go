// Package faultproxy runs Shopify's toxiproxy in-process for tests: a TCP
// proxy in front of a Redis (or any server) whose link a test can slow down
// (latency, bandwidth), cut silently (a blackhole: data dropped, the
// connection left open), or reset — the network faults a real deployment
// meets, which a stopped server does not reproduce.
package faultproxy

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
)

var (
	once   sync.Once
	server *toxiproxy.ApiServer
)

func api() *toxiproxy.ApiServer {
	once.Do(func() {
		// The toxics log through zerolog's global logger: keep them quiet.
		zerolog.SetGlobalLevel(zerolog.Disabled)
		server = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	})
	return server
}

// Proxy forwards a loopback port to an upstream address, with toxics.
type Proxy struct {
	p *toxiproxy.Proxy

	mu     sync.Mutex
	toxics []string
}

var seq struct {
	sync.Mutex
	n int
}

// Start starts a proxy to upstream on a free loopback port; the test's
// cleanup stops it.
func Start(tb testing.TB, upstream string) *Proxy {
	tb.Helper()
	p, err := Launch(upstream)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Stop)
	return p
}

// Launch starts a proxy to upstream on a free loopback port.
func Launch(upstream string) (*Proxy, error) {
	seq.Lock()
	seq.n++
	name := fmt.Sprintf("proxy%d", seq.n)
	seq.Unlock()
	p := toxiproxy.NewProxy(api(), name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("faultproxy: starting a proxy to %s: %w", upstream, err)
	}
	return &Proxy{p: p}, nil
}

// Addr is the proxy's address (host:port): give it to the client instead
// of the upstream's.
func (p *Proxy) Addr() string { return p.p.Listen }

// Stop closes the proxy and every connection through it. It removes the
// toxics first: a blackhole (a timeout toxic without a timeout) holds its
// link's goroutine until the toxic is removed, closing the connection does
// not end it, and a test's goroutine leak check would find it.
func (p *Proxy) Stop() {
	_ = p.Heal()
	p.p.Stop()
}

// A Toxic is one fault: Type is a toxiproxy toxic (latency, bandwidth,
// timeout, reset_peer, slicer, limit_data, slow_close), Stream "upstream"
// (client to server) or "downstream" (server to client), Attributes its
// settings (latency and jitter in ms, rate in KB/s, timeout in ms).
type Toxic struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	Stream     string         `json:"stream"`
	Toxicity   float32        `json:"toxicity"`
	Attributes map[string]any `json:"attributes"`
}

// Add adds a toxic to the proxy's links, open and future.
func (p *Proxy) Add(t Toxic) error {
	if t.Toxicity == 0 {
		t.Toxicity = 1
	}
	body, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if _, err := p.p.Toxics.AddToxicJson(strings.NewReader(string(body))); err != nil {
		return fmt.Errorf("faultproxy: adding %s toxic %q: %w", t.Type, t.Name, err)
	}
	p.mu.Lock()
	p.toxics = append(p.toxics, t.Name)
	p.mu.Unlock()
	return nil
}

// Remove removes a toxic.
func (p *Proxy) Remove(name string) error {
	p.mu.Lock()
	for i, n := range p.toxics {
		if n == name {
			p.toxics = append(p.toxics[:i], p.toxics[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
	if err := p.p.Toxics.RemoveToxic(context.Background(), name); err != nil {
		return fmt.Errorf("faultproxy: removing toxic %q: %w", name, err)
	}
	return nil
}

// Heal removes every toxic added.
func (p *Proxy) Heal() error {
	p.mu.Lock()
	names := append([]string(nil), p.toxics...)
	p.mu.Unlock()
	var first error
	for _, n := range names {
		if err := p.Remove(n); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Blackhole drops everything in both directions and leaves the connections
// open, as a network that silently loses packets does; Heal (or Remove of
// "blackhole_up" and "blackhole_down") ends it, closing the connections that
// met it.
func (p *Proxy) Blackhole() error {
	if err := p.Add(Toxic{Name: "blackhole_up", Type: "timeout", Stream: "upstream", Attributes: map[string]any{"timeout": 0}}); err != nil {
		return err
	}
	return p.Add(Toxic{Name: "blackhole_down", Type: "timeout", Stream: "downstream", Attributes: map[string]any{"timeout": 0}})
}

// IgnoreLinks are goleak options for toxiproxy's own goroutines: a link's
// reader, writer and toxic stubs, and the one a toxic's removal starts,
// end a while after the connection they serve (a stub may wait up to 5 s
// to flush what it held). They belong to the test's fault injection, not
// to the code under test, whose goroutines stay checked.
func IgnoreLinks() []goleak.Option {
	const pkg = "github.com/Shopify/toxiproxy/v2"
	return []goleak.Option{
		goleak.IgnoreAnyFunction(pkg + ".(*ToxicLink).read"),
		goleak.IgnoreAnyFunction(pkg + ".(*ToxicLink).write"),
		goleak.IgnoreAnyFunction(pkg + ".(*ToxicLink).RemoveToxic.func1"),
		goleak.IgnoreAnyFunction(pkg + "/toxics.(*ToxicStub).Run"),
	}
}
