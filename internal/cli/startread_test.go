package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/routerd/routerd/internal/redistest"
	"github.com/routerd/routerd/internal/testbin"
	"github.com/routerd/routerd/matrix"
)

// A daemon that starts while its matrix file is being written in place
// (truncated, then written: a config push, an editor) starts with the file
// as it is once written, not with a part of it: the start reads the file
// as a reload does, until two reads 100 ms apart agree.
func TestStartReadsAMatrixBeingWritten(t *testing.T) {
	bus, cache := redistest.Start(t), redistest.Start(t)
	full, err := os.ReadFile("../../matrix.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want, err := matrix.Parse("", full)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(full), "\n")
	for _, tc := range []struct {
		name string
		args []string
		// started is the line the daemon logs once started, with the
		// matrix's hash where it logs it.
		started string
	}{
		{"serve", []string{"serve", "--redis", bus.URL}, "routerd serving"},
		{"agent", []string{"agent", "--redis", bus.URL, "--cache-redis", cache.URL, "--service", "search-svc"}, "routerd agent running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The start's guarantee holds while the writer changes the
			// file more often than every 100 ms; a writer the machine
			// stalled longer leaves a part that two reads agree on, as any
			// writer in place can (docs: replace the file by rename). Such
			// a round proves nothing: it is run again.
			for try := 1; ; try++ {
				gap, problem := startWhileWritten(t, tc.name, tc.args, tc.started, lines, full, want.Hash)
				if problem == "" {
					return
				}
				if gap < 90*time.Millisecond || try == 3 {
					t.Fatal(problem)
				}
				t.Logf("round %d: the writer stalled %v between two writes: %s; again", try, gap, problem)
			}
		})
	}
}

// startWhileWritten starts the daemon (args) while a writer rewrites its
// matrix file in place, cut short at another line each time, every few
// milliseconds for 300 ms, then whole (full, whose hash is hash). It returns
// the writer's longest gap between the starts of two writes, and what went
// wrong ("" when the daemon started with the whole file).
func startWhileWritten(t *testing.T, name string, args []string, started string, lines []string, full []byte, hash string) (time.Duration, string) {
	path := filepath.Join(t.TempDir(), "matrix.yaml")
	part := func(n int) []byte {
		return []byte(strings.Join(lines[:len(lines)/2+n%(len(lines)/2)], "") + fmt.Sprintf("# %d\n", n))
	}
	must(t, os.WriteFile(path, part(0), 0o644))
	var gap time.Duration
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		last := time.Now()
		write := func(b []byte) {
			gap = max(gap, time.Since(last))
			last = time.Now()
			must(t, os.WriteFile(path, b, 0o644))
		}
		for n, end := 1, time.Now().Add(300*time.Millisecond); time.Now().Before(end); n++ {
			write(part(n))
			time.Sleep(2 * time.Millisecond)
		}
		write(full)
	})
	var errb syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	args = append(args[:len(args):len(args)], "--matrix", path, "--listen", anyPort, "--matrix-poll", "0")
	go func() {
		done <- Main(ctx, args, Env{Stdout: &syncBuffer{}, Stderr: &errb, Getenv: func(string) string { return "" }})
	}()
	defer func() {
		cancel()
		<-done
	}()
	addr := ""
	redistest.Eventually(t, 15*time.Second, name+" started, or exited", func() bool {
		select {
		case code := <-done:
			done <- code
			return true
		default:
		}
		addr = testbin.ListenAddrIn(errb.String())
		return addr != "" && strings.Contains(errb.String(), started)
	})
	problem := ""
	select {
	case code := <-done:
		done <- code
		problem = fmt.Sprintf("%s exited %d while its matrix file was written:\n%s", name, code, errb.String())
	default:
		if _, metrics := get(t, "http://"+addr+"/metrics"); !strings.Contains(metrics, `matrix_info{sha256="`+hash+`"} 1`) {
			problem = fmt.Sprintf("%s started with another matrix than the file written:\n%s", name, grep(metrics, "matrix_info"))
		}
	}
	wg.Wait() // gap is the writer's
	return gap, problem
}
