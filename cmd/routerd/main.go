// Command routerd routes domain-change events to cache invalidation channels
// and applies them; see `routerd help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/routerd/routerd/internal/cli"
)

func main() { os.Exit(run()) }

func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	return cli.Main(ctx, os.Args[1:], cli.Env{Reload: reload})
}
