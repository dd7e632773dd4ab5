package redisconn

import "context"

// UntilDone runs call and returns its error, or ctx's as soon as ctx is
// done first, with left true: go-redis waits for a reply until the
// client's ReadTimeout whatever ctx says (a deadline reaches the read only
// with ContextTimeoutEnabled, a cancel never), and a caller must not wait
// that long on a Redis that does not answer. The call left behind goes on
// beside the caller and ends within the client's own timeouts, or when the
// client is closed; what it writes may land all the same.
func UntilDone(ctx context.Context, call func(context.Context) error) (left bool, err error) {
	if ctx.Done() == nil {
		return false, call(ctx) // never done: no need to watch it
	}
	done := make(chan error, 1) // a call left behind ends on its own
	go func() { done <- call(ctx) }()
	select {
	case err := <-done:
		return false, err
	case <-ctx.Done():
		select {
		case err := <-done: // both ready: the call's own outcome says more
			return false, err
		default:
			return true, ctx.Err()
		}
	}
}
