// Package reload owns a running daemon's matrix file. Its Coordinator loads
// the file again on SIGHUP, on POST /-/reload and when the file changes, one
// reload at a time; it hands a good matrix to its subscribers (the router's
// or the subscriber's SetMatrix) and exports the outcome as metrics. A bad
// file is refused with every error logged as file:line:col, and the matrix in
// force stays. `routerd serve` and `routerd agent` both use it, and start
// with the file as Load reads it, the same way.
package reload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/routerd/routerd/matrix"
)

// Options configure a Coordinator.
type Options struct {
	// Namespace starts the metric names: "routerd" gives
	// routerd_matrix_last_reload_successful, …; "routerd" when empty.
	Namespace string
	// Logger receives reloads and refusals; nothing is logged when nil.
	Logger *slog.Logger
	// Registerer takes the metrics; they are not registered when nil.
	Registerer prometheus.Registerer
}

// settle is how long after a change in the file's directory the file is
// read: an editor or a config map swap changes it in several steps, and
// reading at the first would often find it half-written.
const settle = 100 * time.Millisecond

// Coordinator serializes the reloads of one matrix file.
type Coordinator struct {
	path string
	log  *slog.Logger

	// mu is held for a whole reload, from reading the file to the metrics,
	// so the last reload to start is the one in force and the metrics
	// describe it.
	mu          sync.Mutex
	current     *matrix.Matrix
	subscribers []func(*matrix.Matrix) error
	// read is the hex SHA-256 of the file as the last reload read it,
	// taken or refused ("" when it could not be read): the watch reloads
	// when the file differs from it, so a file a signal's reload read
	// half-written, then written whole again, is read once more.
	read string

	success prometheus.Gauge
	when    prometheus.Gauge
	info    *prometheus.GaugeVec

	// watchFile sets up the watch; tests make it fail to reach the polling.
	watchFile func() (*fsnotify.Watcher, error)
	// readFile reads the file (os.ReadFile; tests write it meanwhile), and
	// stable is how far apart readStable's reads are (settle).
	readFile func(string) ([]byte, error)
	stable   time.Duration
}

// New returns the coordinator of the file at path, whose matrix current the
// daemon was started with.
func New(path string, current *matrix.Matrix, opt Options) *Coordinator {
	ns := opt.Namespace
	if ns == "" {
		ns = "routerd"
	}
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := promauto.With(opt.Registerer)
	c := &Coordinator{
		path: path, log: log, current: current, read: current.Hash,
		success: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "matrix_last_reload_successful",
			Help: "Whether the last matrix reload succeeded (1) or was refused (0)."}),
		when: f.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "matrix_last_reload_success_timestamp_seconds",
			Help: "When the matrix was last loaded successfully."}),
		info: f.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "matrix_info",
			Help: "The matrix in force, by the SHA-256 of its file."}, []string{"sha256"}),
	}
	c.watchFile = c.newWatcher
	c.readFile, c.stable = os.ReadFile, settle
	c.success.Set(1)
	c.when.SetToCurrentTime()
	c.info.WithLabelValues(current.Hash).Set(1)
	return c
}

// Subscribe adds a function that takes up each new matrix. One that returns
// an error refuses the matrix: the reload fails and the previous matrix stays
// the coordinator's current one (subscribers called before it keep the new one).
func (c *Coordinator) Subscribe(fn func(*matrix.Matrix) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subscribers = append(c.subscribers, fn)
}

// Matrix returns the matrix in force.
func (c *Coordinator) Matrix() *matrix.Matrix {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// Reload reads the file until it stops changing (readStable), validates it
// and hands the matrix to every subscriber. On failure it logs every error, sets last_reload_successful to
// 0 and returns the error (matrix.Errors for a file that breaks a rule); the
// matrix in force stays. Concurrent calls run one after the other.
func (c *Coordinator) Reload() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	data, err := c.readStable()
	c.read = ""
	var m *matrix.Matrix
	if err == nil {
		c.read = sum(data)
		m, err = matrix.Parse(c.path, data)
	}
	for i := 0; err == nil && i < len(c.subscribers); i++ {
		err = c.subscribers[i](m)
	}
	if err != nil {
		c.success.Set(0)
		var errs matrix.Errors
		if errors.As(err, &errs) {
			for _, e := range errs {
				c.log.Error("matrix refused; the running one stays", "err", e.Error())
			}
		} else {
			c.log.Error("matrix refused; the running one stays", "err", err)
		}
		return err
	}
	c.current = m
	c.success.Set(1)
	c.when.SetToCurrentTime()
	c.info.Reset()
	c.info.WithLabelValues(m.Hash).Set(1)
	c.log.Info("matrix reloaded", "sha256", m.Hash[:12])
	return nil
}

// Run reloads on every value received from signals (SIGHUP) and, when poll
// is above zero, whenever the file's content changes, until ctx is done. The
// file is watched with fsnotify through its directory (and its target's,
// when it is a symlink), so a file replaced by rename or a Kubernetes config
// map's symlink swap is seen as well as one written in place; only when the
// watch cannot be set up is the file read every poll instead.
func (c *Coordinator) Run(ctx context.Context, signals <-chan struct{}, poll time.Duration) {
	var wg sync.WaitGroup
	if poll > 0 {
		wg.Go(func() { c.watch(ctx, poll) })
	}
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-signals:
			_ = c.Reload()
		}
	}
}

// fileSum is the hex SHA-256 of the file as matrix.Matrix.Hash has it, or ""
// when it cannot be read (in the middle of a swap, say).
func (c *Coordinator) fileSum() string {
	data, err := os.ReadFile(c.path)
	if err != nil {
		return ""
	}
	return sum(data)
}

func sum(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

// lastRead is the file's hex SHA-256 as the last reload read it.
func (c *Coordinator) lastRead() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read
}

// watch reloads when the file's content differs from what the last reload
// read (whichever started it: a signal's may have read the file
// half-written), looking after fsnotify events or, failing a watch, every
// poll.
func (c *Coordinator) watch(ctx context.Context, poll time.Duration) {
	check := func() {
		if sum := c.fileSum(); sum != "" && sum != c.lastRead() {
			_ = c.Reload()
		}
	}
	w, err := c.watchFile()
	if err != nil {
		c.log.Warn("cannot watch the matrix file; reading it every --matrix-poll instead", "path", c.path, "every", poll, "err", err)
		t := time.NewTicker(poll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				check()
			}
		}
	}
	defer w.Close()
	check() // a change between the start and the watch
	// The file is read settle after the first event of a burst; events
	// meanwhile (the rest of the burst, or other files of a busy directory)
	// do not postpone it further, and one after the read schedules another.
	timer := time.NewTimer(settle)
	timer.Stop()
	defer timer.Stop()
	due := false
	soon := func() {
		if !due {
			due = true
			timer.Reset(settle)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.Events:
			soon()
		case err := <-w.Errors:
			// An overflow lost events: look at the file anyway.
			c.log.Warn("watching the matrix file", "path", c.path, "err", err)
			soon()
		case <-timer.C:
			due = false
			check()
		}
	}
}

// newWatcher watches the directories that hold the file: its own, and its
// target's when it is a symlink.
func (c *Coordinator) newWatcher() (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	dirs := []string{filepath.Dir(c.path)}
	if target, err := filepath.EvalSymlinks(c.path); err == nil && filepath.Dir(target) != dirs[0] {
		dirs = append(dirs, filepath.Dir(target))
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			w.Close()
			return nil, fmt.Errorf("watching %s: %w", d, err)
		}
	}
	return w, nil
}

// stableRounds bounds how many times readStable reads a file that keeps
// changing (stableRounds × settle apart) before the reload is refused.
const stableRounds = 50

// emptyRounds is how long (× settle) a file must stay empty to be taken for
// empty: a file written in place is empty between its truncation and its
// write, and two reads falling in two such moments agree.
const emptyRounds = 10

// Load reads the matrix file at path as a reload does (readStable) and
// validates it: what a daemon starts with, so that a file being written
// while it starts is not taken half-written.
func Load(path string) (*matrix.Matrix, error) {
	data, err := readStable(os.ReadFile, path, settle)
	if err != nil {
		return nil, err
	}
	return matrix.Parse(path, data)
}

func (c *Coordinator) readStable() ([]byte, error) {
	return readStable(c.readFile, c.path, c.stable)
}

// readStable reads the file with read until two reads stable apart agree:
// a file being written in place (truncated, then written) can be read cut
// at a line and still parse — a tenant, a tag or a service short — and a
// matrix short of a route, while in force, sends events to fewer channels
// with nothing to bring them back.
func readStable(read func(string) ([]byte, error), path string, stable time.Duration) ([]byte, error) {
	data, err := read(path)
	empty := 0 // reads in a row that found the file empty
	for range stableRounds {
		if err != nil {
			return nil, err
		}
		time.Sleep(stable)
		var again []byte
		if again, err = read(path); err == nil && bytes.Equal(again, data) {
			if empty++; len(data) > 0 || empty >= emptyRounds {
				return data, nil
			}
			continue
		}
		data, empty = again, 0
	}
	if err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%s kept changing for %v: not read", path, stableRounds*stable)
}
