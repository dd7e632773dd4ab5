package reload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/matrix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// matrixText is a valid matrix told apart by n.
func matrixText(n int) []byte {
	return fmt.Appendf(nil, "# version %d\nversion: 1\ntags:\n  t: {services: [s]}\ndomains:\n  d: {tags: [t]}\nservices:\n  s: {tenants: all}\n", n)
}

// replace writes data to path the way editors and deploy tools do: a new
// file renamed over the old one.
func replace(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func hashOf(t *testing.T, data []byte) string {
	t.Helper()
	m, err := matrix.Parse("x", data)
	if err != nil {
		t.Fatal(err)
	}
	return m.Hash
}

// gauge returns the series of a metric family as label value (or "") → value.
func gauge(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			label := ""
			if len(m.GetLabel()) > 0 {
				label = m.GetLabel()[0].GetValue()
			}
			out[label] = m.GetGauge().GetValue()
		}
	}
	return out
}

// lockedBuffer is testbin.Buffer: written by a process or a logger while the test reads.
type lockedBuffer = testbin.Buffer

// start writes version 0 and returns its coordinator, with a subscriber
// that records the hash of the last matrix it was given.
func start(t *testing.T, opt Options) (path string, c *Coordinator, applied func() string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "matrix.yaml")
	replace(t, path, matrixText(0))
	m, err := matrix.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	c = New(path, m, opt)
	var mu sync.Mutex
	last := m.Hash
	c.Subscribe(func(m *matrix.Matrix) error {
		runtime.Gosched() // widen the window between reading the file and taking it up
		mu.Lock()
		defer mu.Unlock()
		last = m.Hash
		return nil
	})
	return path, c, func() string { mu.Lock(); defer mu.Unlock(); return last }
}

// Reloads racing with changes of the file (SIGHUP, POST /-/reload and the
// watcher at once) end on the newest file, and matrix_info keeps one series.
func TestConcurrentReloadsEndOnNewestFile(t *testing.T) {
	reg := prometheus.NewRegistry()
	path, c, applied := start(t, Options{Registerer: reg})
	c.stable = time.Millisecond // eight reloads queue behind each other
	for round := range 20 {
		var stop atomic.Bool
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for !stop.Load() {
					if err := c.Reload(); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		var data []byte
		for i := 1; i <= 20; i++ {
			data = matrixText(round*100 + i)
			replace(t, path, data)
		}
		_ = c.Reload() // the reload the last change causes
		stop.Store(true)
		wg.Wait()
		newest := hashOf(t, data)
		if got := applied(); got != newest {
			t.Fatalf("round %d: the subscriber has %.8s, the newest file is %.8s", round, got, newest)
		}
		if got := c.Matrix().Hash; got != newest {
			t.Fatalf("round %d: Matrix() is %.8s, the newest file is %.8s", round, got, newest)
		}
		if info := gauge(t, reg, "routerd_matrix_info"); len(info) != 1 || info[newest] != 1 {
			t.Fatalf("round %d: routerd_matrix_info = %v, want only %.8s", round, info, newest)
		}
	}
}

// A file replaced while the coordinator runs is taken up through fsnotify:
// the poll interval is an hour, so polling cannot be what sees it.
func TestFileChangeTakenUpByWatch(t *testing.T) {
	path, c, applied := start(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, nil, time.Hour); close(done) }()
	defer func() { cancel(); <-done }()

	for _, n := range []int{1, 2} {
		data := matrixText(n)
		if n == 1 {
			replace(t, path, data) // rename over the file
		} else if err := os.WriteFile(path, data, 0o644); err != nil { // written in place
			t.Fatal(err)
		}
		want := hashOf(t, data)
		redistest.Eventually(t, 10*time.Second, fmt.Sprintf("version %d taken up", n), func() bool { return applied() == want })
	}
}

// Another file of the directory written without pause does not postpone
// taking up the matrix.
func TestBusyDirectoryDoesNotPostponeReload(t *testing.T) {
	path, c, applied := start(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { c.Run(ctx, nil, time.Hour) })
	wg.Go(func() {
		log := filepath.Join(filepath.Dir(path), "busy.log")
		for i := 0; ctx.Err() == nil && i < 100_000; i++ {
			_ = os.WriteFile(log, fmt.Appendf(nil, "%d\n", i), 0o644)
		}
	})
	defer func() { cancel(); wg.Wait() }()
	data := matrixText(1)
	replace(t, path, data)
	want := hashOf(t, data)
	redistest.Eventually(t, 10*time.Second, "version 1 taken up", func() bool { return applied() == want })
}

// A Kubernetes config map mounts the file as a symlink through "..data",
// itself a symlink to a timestamped directory that an update replaces by
// renaming a new "..data" over the old one.
func TestConfigMapSwapTakenUpByWatch(t *testing.T) {
	dir := t.TempDir()
	version := func(n int) []byte {
		data := matrixText(n)
		d := filepath.Join(dir, fmt.Sprintf("..v%d", n))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "matrix.yaml"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Base(d), filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		return data
	}
	version(0)
	path := filepath.Join(dir, "matrix.yaml")
	if err := os.Symlink(filepath.Join("..data", "matrix.yaml"), path); err != nil {
		t.Fatal(err)
	}
	m, err := matrix.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	c := New(path, m, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, nil, time.Hour); close(done) }()
	defer func() { cancel(); <-done }()

	want := hashOf(t, version(1))
	if err := os.RemoveAll(filepath.Join(dir, "..v0")); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the swapped config map taken up", func() bool { return c.Matrix().Hash == want })
}

// Where the file cannot be watched, it is read every poll.
func TestPollWhenWatchFails(t *testing.T) {
	path, c, applied := start(t, Options{})
	c.watchFile = func() (*fsnotify.Watcher, error) { return nil, errors.New("no inotify here") }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, nil, 10*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	data := matrixText(1)
	replace(t, path, data)
	want := hashOf(t, data)
	redistest.Eventually(t, 10*time.Second, "version 1 taken up by polling", func() bool { return applied() == want })
}

// Every value on the signal channel (SIGHUP) reloads.
func TestSignalReloads(t *testing.T) {
	path, c, applied := start(t, Options{})
	signals := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, signals, 0); close(done) }()
	defer func() { cancel(); <-done }()
	data := matrixText(1)
	replace(t, path, data)
	signals <- struct{}{}
	want := hashOf(t, data)
	redistest.Eventually(t, 10*time.Second, "reload on signal", func() bool { return applied() == want })
}

// A file that breaks the rules is refused with every error as file:line:col;
// the matrix in force, the subscribers and matrix_info stay, and
// last_reload_successful drops to 0 until a good file loads.
func TestBadFileKeepsMatrix(t *testing.T) {
	reg := prometheus.NewRegistry()
	var logs lockedBuffer
	path, c, applied := start(t, Options{Registerer: reg, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	old := c.Matrix().Hash
	bad, err := os.ReadFile("../../matrix/testdata/bad/references.yaml")
	if err != nil {
		t.Fatal(err)
	}
	replace(t, path, bad)
	err = c.Reload()
	var errs matrix.Errors
	if !errors.As(err, &errs) || len(errs) < 2 {
		t.Fatalf("Reload of a bad file: %v", err)
	}
	for _, e := range errs {
		want := fmt.Sprintf("%s:%d:%d: ", path, e.Line, e.Col)
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	if c.Matrix().Hash != old || applied() != old {
		t.Errorf("the bad file replaced the matrix in force")
	}
	if got := gauge(t, reg, "routerd_matrix_last_reload_successful"); got[""] != 0 {
		t.Errorf("last_reload_successful = %v after a refusal", got)
	}
	if info := gauge(t, reg, "routerd_matrix_info"); len(info) != 1 || info[old] != 1 {
		t.Errorf("routerd_matrix_info = %v, want the old matrix only", info)
	}

	// A subscriber's refusal (a prefix change, say) is a failed reload too.
	c.Subscribe(func(*matrix.Matrix) error { return errors.New("refused by the subscriber") })
	replace(t, path, matrixText(1))
	if err := c.Reload(); err == nil || c.Matrix().Hash != old {
		t.Errorf("a refused matrix: err %v, in force %.8s", err, c.Matrix().Hash)
	}
}

// The metrics carry the namespace given (the agent's are subscriber_…).
func TestNamespace(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, c, _ := start(t, Options{Registerer: reg, Namespace: "subscriber"})
	for _, name := range []string{"subscriber_matrix_last_reload_successful", "subscriber_matrix_last_reload_success_timestamp_seconds"} {
		if got := gauge(t, reg, name); len(got) != 1 || got[""] == 0 {
			t.Errorf("%s = %v", name, got)
		}
	}
	if info := gauge(t, reg, "subscriber_matrix_info"); info[c.Matrix().Hash] != 1 {
		t.Errorf("subscriber_matrix_info = %v", info)
	}
}

// A SIGHUP (or POST /-/reload) that reads the file half-written is refused;
// the file then written whole again as the matrix in force must not leave
// last_reload_successful at 0: the file on disk is good and in force, and
// an alert on the metric would page for nothing until the next change.
func TestAttack9HalfWrittenFileAtSignalThenRestored(t *testing.T) {
	for _, mode := range []string{"watch", "poll"} {
		t.Run(mode, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			path, c, applied := start(t, Options{Registerer: reg})
			if mode == "poll" {
				c.watchFile = func() (*fsnotify.Watcher, error) { return nil, errors.New("no inotify here") }
			}
			good, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// The deploy tool truncates the file and writes it again; the
			// signal's reload reads it in between.
			if err := os.WriteFile(path, good[:len(good)-12], 0o644); err != nil {
				t.Fatal(err)
			}
			if err := c.Reload(); err == nil {
				t.Fatal("a half-written file was taken")
			}
			if err := os.WriteFile(path, good, 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { c.Run(ctx, nil, 10*time.Millisecond); close(done) }()
			defer func() { cancel(); <-done }()
			redistest.Eventually(t, 10*time.Second, "last_reload_successful back to 1 for the good file", func() bool {
				return gauge(t, reg, "routerd_matrix_last_reload_successful")[""] == 1
			})
			if applied() != hashOf(t, good) {
				t.Errorf("in force %.8s, want the good file", applied())
			}
		})
	}
}

// A SIGHUP while a deploy tool writes the file in place (truncate, then
// write) may read it cut at a line that still parses: here, a domain's
// second tag not written yet. That matrix must never be taken: while it
// was in force the domain's events would skip the tag's channel, and no
// re-drive brings them back (the domain is known). The reload reads the
// file until it stops changing.
func TestAttack9SignalDuringAnInPlaceWrite(t *testing.T) {
	full := []byte("version: 1\ntags:\n  t: {services: [s]}\n  u: {services: [s]}\nservices:\n  s: {tenants: all}\ndomains:\n  d:\n    tags:\n      - t\n      - u\n")
	cut := full[:len(full)-len("      - u\n")]
	path, c, _ := start(t, Options{})
	var mu sync.Mutex
	var given []string
	c.Subscribe(func(m *matrix.Matrix) error {
		mu.Lock()
		defer mu.Unlock()
		given = append(given, fmt.Sprint(m.Domains["d"].Tags))
		return nil
	})
	if err := os.WriteFile(path, cut, 0o644); err != nil {
		t.Fatal(err)
	}
	// The writer finishes just after the reload's first read.
	var once sync.Once
	c.readFile = func(name string) ([]byte, error) {
		data, err := os.ReadFile(name)
		once.Do(func() {
			if err := os.WriteFile(path, full, 0o644); err != nil {
				t.Error(err)
			}
		})
		return data, err
	}
	if err := c.Reload(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(given) != 1 || given[0] != "[t u]" {
		t.Errorf("the subscribers were given the domain's tags %v, want [t u] alone: a half-written file was taken", given)
	}
}

// A file written in place is empty between its truncation and its write: two
// reads that each fall in such a moment agree, and the matrix was taken
// for empty ("the matrix is empty": routerd agent exited at start, once in
// make test under a CPU hog). An empty read is not agreement until the file
// stays empty for emptyRounds.
func TestReadStableWaitsOutAnEmptyMoment(t *testing.T) {
	reads := []string{"", "", "a: 1\n", "a: 1\n"}
	i := 0
	read := func(string) ([]byte, error) {
		b := []byte(reads[min(i, len(reads)-1)])
		i++
		return b, nil
	}
	data, err := readStable(read, "m.yaml", time.Millisecond)
	if err != nil || string(data) != "a: 1\n" {
		t.Fatalf("readStable = %q, %v; want the file once written", data, err)
	}
	i, reads = 0, []string{""}
	data, err = readStable(read, "m.yaml", time.Millisecond)
	if err != nil || len(data) != 0 || i != emptyRounds+1 {
		t.Fatalf("an empty file: readStable = %q, %v after %d reads; want it empty after %d", data, err, i, emptyRounds+1)
	}
}
