package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// probe asks an HTTP endpoint (/readyz) whether it is ready: the health
// check of an image that has no shell or curl (docker-compose.yml).
func probe(ctx context.Context, env *Env, args []string) error {
	f := newFlags(env, "probe", "URL")
	timeout := f.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := f.Parse(args); err != nil {
		return err
	}
	if f.NArg() != 1 {
		return f.fail("want one URL, got %s", argList(f.Args()))
	}
	url := f.Arg(0)
	if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
		return f.fail("URL %q: must start with http:// or https://", url)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(env.Stdout, "%s: %s\n", resp.Status, strings.TrimSpace(string(body)))
	return nil
}
