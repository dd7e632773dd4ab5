package redisconn

import (
	"context"
	"errors"
	"testing"
)

// A call that does not return is left behind once ctx is done; one that
// returns gives its own outcome.
func TestUntilDone(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	ended := make(chan struct{})
	cancel()
	left, err := UntilDone(ctx, func(context.Context) error {
		defer close(ended)
		<-release
		return nil
	})
	if !left || !errors.Is(err, context.Canceled) {
		t.Errorf("a call that does not return: left %v, err %v; want left, context.Canceled", left, err)
	}
	close(release)
	<-ended

	own := errors.New("refused")
	live, stop := context.WithCancel(context.Background())
	defer stop()
	if left, err := UntilDone(live, func(context.Context) error { return own }); left || err != own {
		t.Errorf("a call that returns: left %v, err %v; want its error", left, err)
	}
	if left, err := UntilDone(context.WithoutCancel(ctx), func(context.Context) error { return own }); left || err != own {
		t.Errorf("a call under a context never done: left %v, err %v; want its error", left, err)
	}
}
