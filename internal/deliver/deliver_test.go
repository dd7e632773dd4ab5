package deliver

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/routerd/routerd/subscriber"
	"github.com/routerd/routerd/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// receiver is an HTTP endpoint that records the bodies it accepts and
// answers the first fail requests with 500.
type receiver struct {
	mu       sync.Mutex
	fail     int
	requests int
	got      []string
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "want a JSON POST", http.StatusBadRequest)
		return
	}
	if r.fail > 0 {
		r.fail--
		http.Error(w, "not now", http.StatusInternalServerError)
		return
	}
	r.got = append(r.got, string(b))
}

func (r *receiver) bodies() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.got...)
}

func fast(target string, reg prometheus.Registerer) Options {
	return Options{Target: target, MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond, Registerer: reg}
}

var (
	keysInv = subscriber.Invalidation{Tenant: "acme", Tag: "active", Keys: []string{"user:1", "user:2"}, Epoch: "9f2c1a", Version: 42,
		Message: &wire.Message{Tenant: "acme", Tag: "active", Epoch: "9f2c1a", Version: 42, Keys: []string{"user:1", "user:2"},
			Event: "01JDX", Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}
	wholeInv = subscriber.Invalidation{Tenant: "acme", Tag: "active", Epoch: "9f2c1a", Version: 43, Recovered: true}
)

// The objects are exactly those docs/protocol.md names.
func TestEncode(t *testing.T) {
	for _, tc := range []struct {
		inv  subscriber.Invalidation
		want string
	}{
		{keysInv, `{"tenant":"acme","tag":"active","keys":["user:1","user:2"],"version":42,"epoch":"9f2c1a","event":"01JDX","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`},
		{wholeInv, `{"tenant":"acme","tag":"active","whole_tag":true,"version":43,"epoch":"9f2c1a"}`},
		{subscriber.Invalidation{Tenant: "acme", Tag: "active", Epoch: "e", Version: 7, Message: &wire.Message{Epoch: "e", Version: 7}},
			`{"tenant":"acme","tag":"active","whole_tag":true,"version":7,"epoch":"e"}`},
		{subscriber.Invalidation{Tenant: "acme", Tag: "active", Refs: []string{"user/1042"}, Epoch: "e", Version: 8},
			`{"tenant":"acme","tag":"active","refs":["user/1042"],"version":8,"epoch":"e"}`},
		{subscriber.Invalidation{Tenant: "acme", Tag: "active", Refs: []string{"user/1042"}, Plain: true, Epoch: "e", Version: 9},
			`{"tenant":"acme","tag":"active","refs":["user/1042"],"plain":true,"version":9,"epoch":"e"}`},
		{subscriber.Invalidation{Tenant: "acme", Tag: "active", Keys: []string{"user:1042"}, Refs: []string{"user/1042", "product"}, Epoch: "e", Version: 10},
			`{"tenant":"acme","tag":"active","keys":["user:1042"],"refs":["user/1042","product"],"version":10,"epoch":"e"}`},
	} {
		b, err := Encode(tc.inv, "")
		if err != nil || string(b) != tc.want {
			t.Errorf("Encode = %s, %v\nwant %s", b, err, tc.want)
		}
	}
	b, _ := Encode(wholeInv, "00-aa-bb-01")
	if !strings.Contains(string(b), `"traceparent":"00-aa-bb-01"`) {
		t.Errorf("the trace context of the agent's span is not carried: %s", b)
	}
}

// A receiver answering 500 three times and then 200 gets each object once,
// in order, the reset first; the retries are counted.
func TestRetriesInOrderExactlyOnce(t *testing.T) {
	rcv := &receiver{fail: 3}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	reg := prometheus.NewRegistry()
	opt := fast(srv.URL, reg)
	opt.Reset = true
	d, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, inv := range []subscriber.Invalidation{keysInv, wholeInv} {
		if err := d.Handle(ctx, inv); err != nil {
			t.Fatal(err)
		}
	}
	got := rcv.bodies()
	want := []string{`{"reset":true}`, `"version":42`, `"version":43`}
	if len(got) != len(want) {
		t.Fatalf("received %d objects, want %d: %q", len(got), len(want), got)
	}
	for i := range want {
		if !strings.Contains(got[i], want[i]) {
			t.Errorf("object %d = %s, want it to contain %s", i, got[i], want[i])
		}
	}
	if n := count(d.m.deliveries.WithLabelValues("retried")); n != 3 {
		t.Errorf("retried = %v, want 3", n)
	}
	if n := count(d.m.deliveries.WithLabelValues("delivered")); n != 3 {
		t.Errorf("delivered = %v, want 3", n)
	}
	if !d.Clean() || d.Delivered() != 3 {
		t.Errorf("Clean %v, Delivered %d; want true, 3", d.Clean(), d.Delivered())
	}
}

// A delivery whose context ends before the receiver accepts it returns an
// error, is counted failed, and leaves the Deliverer not clean; nothing
// after it was delivered.
func TestStopsWithADeliveryNotMade(t *testing.T) {
	rcv := &receiver{fail: 1 << 30}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	d, err := New(fast(srv.URL, nil))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Handle(ctx, keysInv) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rcv.mu.Lock()
		n := rcv.requests
		rcv.mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "not delivered") {
		t.Errorf("Handle after cancel = %v, want a not-delivered error", err)
	}
	if d.Clean() {
		t.Error("Clean after an abandoned delivery")
	}
	if n := count(d.m.deliveries.WithLabelValues("failed")); n != 1 {
		t.Errorf("failed = %v, want 1", n)
	}
	if got := rcv.bodies(); len(got) != 0 {
		t.Errorf("accepted %q", got)
	}
}

// A network error (nothing listening) is retried like a 500.
func TestNetworkErrorRetried(t *testing.T) {
	rcv := &receiver{}
	srv := httptest.NewUnstartedServer(rcv)
	addr := srv.Listener.Addr().String()
	d, err := New(fast("http://"+addr+"/invalidate", nil))
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener.Close() // refuse connections for now
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	err = d.Handle(ctx, keysInv)
	cancel()
	if err == nil {
		t.Fatal("delivered with nothing listening")
	}
	if d.Clean() {
		t.Error("clean after a delivery was abandoned")
	}
}

// With "-" each object is one JSON line on Stdout.
func TestJSONLines(t *testing.T) {
	var out bytes.Buffer
	d, err := New(Options{Target: Stdout, Stdout: &out, Reset: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, inv := range []subscriber.Invalidation{keysInv, wholeInv} {
		if err := d.Handle(context.Background(), inv); err != nil {
			t.Fatal(err)
		}
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 3 || lines[0] != `{"reset":true}` {
		t.Fatalf("lines = %q", lines)
	}
	for _, l := range lines[1:] {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Errorf("line %q: %v", l, err)
		}
	}
	if !strings.Contains(lines[2], `"whole_tag":true`) {
		t.Errorf("second invalidation = %s", lines[2])
	}
}

// A write that fails is retried: nothing is lost to a short write error.
func TestWriteErrorRetried(t *testing.T) {
	w := &flakyWriter{fail: 2}
	d, err := New(Options{Target: Stdout, Stdout: w, MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Handle(context.Background(), wholeInv); err != nil {
		t.Fatal(err)
	}
	if strings.Count(w.buf.String(), "\n") != 1 {
		t.Errorf("written %q", w.buf.String())
	}
}

type flakyWriter struct {
	fail int
	buf  bytes.Buffer
}

func (w *flakyWriter) Write(p []byte) (int, error) {
	if w.fail > 0 {
		w.fail--
		return 0, io.ErrClosedPipe
	}
	return w.buf.Write(p)
}

// A write to Stdout that does not end (nobody reads the pipe) does not hold
// a stop: Handle returns when its context ends, the delivery not made, and
// a later delivery waits for that write to end before its own, so lines
// never mix.
func TestStuckWriteAbandoned(t *testing.T) {
	w := &stuckWriter{entered: make(chan struct{}, 2), release: make(chan struct{})}
	d, err := New(Options{Target: Stdout, Stdout: w})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Handle(ctx, keysInv) }()
	<-w.entered
	cancel()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "not delivered") {
		t.Errorf("Handle after cancel = %v, want a not-delivered error", err)
	}
	if d.Clean() {
		t.Error("Clean after an abandoned write")
	}
	go func() { done <- d.Handle(context.Background(), wholeInv) }()
	select {
	case <-w.entered:
		t.Fatal("a second write began while the first had not ended")
	case <-time.After(50 * time.Millisecond):
	}
	close(w.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(w.buf.String(), "\n"); len(lines) != 3 || !strings.Contains(lines[0], `"keys"`) || !strings.Contains(lines[1], `"whole_tag"`) {
		t.Errorf("written %q", w.buf.String())
	}
}

// stuckWriter blocks every write until release is closed.
type stuckWriter struct {
	entered, release chan struct{}
	mu               sync.Mutex
	buf              bytes.Buffer
}

func (w *stuckWriter) Write(p []byte) (int, error) {
	w.entered <- struct{}{}
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// A password in the target never reaches a log line or an error.
func TestTargetRedacted(t *testing.T) {
	rcv := &receiver{fail: 1}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	target := strings.Replace(srv.URL, "http://", "http://svc:s3cret@", 1)
	var logs bytes.Buffer
	opt := fast(target, nil)
	opt.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	d, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Handle(context.Background(), wholeInv); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "delivery failed") || strings.Contains(logs.String(), "s3cret") {
		t.Errorf("logs:\n%s", logs.String())
	}
	if _, err := New(Options{Target: "ftp://svc:s3cret@x/"}); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("New = %v", err)
	}
	if Redacted("-") != "-" {
		t.Error("Redacted(-)")
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	for _, tc := range []struct {
		opt  Options
		want string
	}{
		{Options{}, "a target is required"},
		{Options{Target: "-"}, "needs a Stdout writer"},
		{Options{Target: "localhost:8080"}, "want an http:// or https:// URL"},
		{Options{Target: "ftp://x/y"}, "want an http:// or https:// URL"},
		{Options{Target: "http://x", MinBackoff: time.Second, MaxBackoff: time.Millisecond}, "below MinBackoff"},
		{Options{Target: "http://x", Timeout: -1}, "must not be negative"},
	} {
		if _, err := New(tc.opt); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error containing %q", tc.opt, err, tc.want)
		}
	}
}

func count(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

// A redirect is not an acceptance: the HTTP client must not follow it (a
// followed 302 turns the POST into a GET without the body, whose 200 would
// count as delivered although nothing was applied). Every 3xx is retried,
// and the invalidation reaches the receiver once the redirect is gone.
func TestRedirectIsRetriedNotFollowed(t *testing.T) {
	rcv := &receiver{}
	var mu sync.Mutex
	redirects, gets := 2, 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		if req.Method == http.MethodGet {
			gets++
			mu.Unlock()
			w.WriteHeader(http.StatusOK) // what a followed redirect would reach
			return
		}
		if redirects > 0 {
			redirects--
			mu.Unlock()
			http.Redirect(w, req, "/moved", http.StatusFound)
			return
		}
		mu.Unlock()
		rcv.ServeHTTP(w, req)
	}))
	defer srv.Close()
	d, err := New(fast(srv.URL+"/invalidate", nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Handle(context.Background(), keysInv); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if gets != 0 || redirects != 0 || len(rcv.bodies()) != 1 {
		t.Errorf("redirect followed: %d GETs, %d redirects left, bodies %q", gets, redirects, rcv.bodies())
	}
	if rcv.requests != 1 {
		t.Errorf("receiver saw %d POSTs after the redirects, want 1", rcv.requests)
	}
}

// A token in the target's query string never reaches a log line or an
// error, any more than a password does.
func TestTargetQueryRedacted(t *testing.T) {
	rcv := &receiver{fail: 1}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	var logs bytes.Buffer
	opt := fast(srv.URL+"/inv?token=s3cret&x=1", nil)
	opt.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	d, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Handle(context.Background(), wholeInv); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "delivery failed") || strings.Contains(logs.String(), "s3cret") {
		t.Errorf("logs:\n%s", logs.String())
	}
	if got := Redacted("http://h/inv?token=s3cret"); strings.Contains(got, "s3cret") || !strings.Contains(got, "http://h/inv") {
		t.Errorf("Redacted = %q", got)
	}
}
