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
			path := filepath.Join(t.TempDir(), "matrix.yaml")
			// The writer: the file cut short, at another line each time
			// (and so never the same twice), rewritten in place every few
			// milliseconds for 300 ms, then whole.
			part := func(n int) []byte {
				return []byte(strings.Join(lines[:len(lines)/2+n%(len(lines)/2)], "") + fmt.Sprintf("# %d\n", n))
			}
			must(t, os.WriteFile(path, part(0), 0o644))
			var wg sync.WaitGroup
			defer wg.Wait()
			wg.Go(func() {
				for n, end := 1, time.Now().Add(300*time.Millisecond); time.Now().Before(end); n++ {
					must(t, os.WriteFile(path, part(n), 0o644))
					time.Sleep(2 * time.Millisecond)
				}
				must(t, os.WriteFile(path, full, 0o644))
			})
			var out, errb syncBuffer
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan int, 1)
			args := append(tc.args, "--matrix", path, "--listen", anyPort, "--matrix-poll", "0")
			go func() {
				done <- Main(ctx, args, Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
			}()
			defer func() {
				cancel()
				<-done
			}()
			addr := ""
			redistest.Eventually(t, 15*time.Second, tc.name+" started, or exited", func() bool {
				select {
				case code := <-done:
					done <- code
					return true
				default:
				}
				addr = testbin.ListenAddrIn(errb.String())
				return addr != "" && strings.Contains(errb.String(), tc.started)
			})
			select {
			case code := <-done:
				done <- code
				t.Fatalf("%s exited %d while its matrix file was written:\n%s", tc.name, code, errb.String())
			default:
			}
			_, metrics := get(t, "http://"+addr+"/metrics")
			if !strings.Contains(metrics, `matrix_info{sha256="`+want.Hash+`"} 1`) {
				t.Errorf("%s started with another matrix than the file written:\n%s", tc.name, grep(metrics, "matrix_info"))
			}
		})
	}
}
