// Package testbin builds the project's commands for tests that run them as
// real processes (kill -9 ends them for real), once per test binary.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	dir   string
	built = map[string]string{} // package -> binary
)

// Build builds the main package pkg (an import path such as
// "github.com/routerd/routerd/cmd/routerd") once and returns the binary's
// path, or fails the test with the compiler's output.
func Build(tb testing.TB, pkg string) string {
	tb.Helper()
	path, err := build(pkg)
	if err != nil {
		tb.Fatal(err)
	}
	return path
}

// Routerd builds cmd/routerd once and returns the binary's path.
func Routerd(tb testing.TB) string {
	tb.Helper()
	return Build(tb, "github.com/routerd/routerd/cmd/routerd")
}

func build(pkg string) (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if path, ok := built[pkg]; ok {
		return path, nil
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "routerd-testbin-")
		if err != nil {
			return "", err
		}
		dir = d
	}
	path := filepath.Join(dir, filepath.Base(pkg))
	out, err := exec.Command("go", "build", "-o", path, pkg).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	built[pkg] = path
	return path, nil
}

// Cleanup removes the binaries built; call it from TestMain after m.Run.
func Cleanup() error {
	mu.Lock()
	defer mu.Unlock()
	if dir == "" {
		return nil
	}
	err := os.RemoveAll(dir)
	dir, built = "", map[string]string{}
	return err
}
