package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
)

// webFlags are the HTTP endpoint flags of serve and agent, after
// Prometheus: --listen, --web-config-file (TLS and basic auth, through
// prometheus/exporter-toolkit) and --enable-lifecycle for the endpoints
// that change what the daemon does (POST /-/reload).
type webFlags struct {
	listen, configFile *string
	lifecycle          *bool
	command            string
}

// web adds the HTTP flags; envPrefix is ROUTERD_ for serve, ROUTERD_AGENT_
// for agent. lifecycle adds --enable-lifecycle, for a command that has
// lifecycle endpoints.
func (f *flags) web(command, envPrefix, listenDef, endpoints string, lifecycle bool) webFlags {
	w := webFlags{
		command:    command,
		listen:     f.stringEnv("listen", envPrefix+"LISTEN", listenDef, "HTTP address for "+endpoints),
		configFile: f.stringEnv("web-config-file", envPrefix+"WEB_CONFIG_FILE", "", "exporter-toolkit web configuration file: TLS and basic auth for the HTTP endpoints (read again on each request)"),
		lifecycle:  new(bool),
	}
	if lifecycle {
		w.lifecycle = f.Bool("enable-lifecycle", false, "serve POST /-/reload; without it the endpoint answers 403")
	}
	return w
}

// check validates the web configuration file before anything starts, so a
// mistake in it is an error at start rather than a server that never
// listens.
func (w webFlags) check() error {
	if err := web.Validate(*w.configFile); err != nil {
		return fmt.Errorf("--web-config-file %s: %w", *w.configFile, err)
	}
	return nil
}

// gate serves h only with --enable-lifecycle; otherwise it answers 403
// naming the flag, as Prometheus does.
func (w webFlags) gate(h http.HandlerFunc) http.HandlerFunc {
	if *w.lifecycle {
		return h
	}
	return func(rw http.ResponseWriter, _ *http.Request) {
		http.Error(rw, "Lifecycle API is not enabled: start routerd "+w.command+" with --enable-lifecycle to reload by HTTP (SIGHUP reloads without it)", http.StatusForbidden)
	}
}

// server serves /metrics, /healthz, /readyz and any extra handlers until
// ctx is done, with the TLS and basic auth of --web-config-file. /readyz
// answers 200 "ready" when problems lists none, else 503 with one
// "<reason>: <detail>" line for each.
func (w webFlags) server(ctx context.Context, log *slog.Logger, reg *prometheus.Registry, problems func() []string, extra map[string]http.HandlerFunc) func() error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if p := problems(); len(p) > 0 {
			http.Error(w, "not ready\n"+strings.Join(p, "\n"), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	for pattern, h := range extra {
		mux.HandleFunc(pattern, h)
	}
	srv := &http.Server{Addr: *w.listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return func() error {
		ln, err := net.Listen("tcp", *w.listen)
		if err != nil {
			return fmt.Errorf("--listen %s: %w", *w.listen, err)
		}
		defer ln.Close() // when web.Serve fails before serving
		go func() {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		systemd := false
		err = web.Serve(ln, srv, &web.FlagConfig{WebListenAddresses: &[]string{*w.listen}, WebSystemdSocket: &systemd, WebConfigFile: w.configFile}, log.With("component", "http"))
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}
