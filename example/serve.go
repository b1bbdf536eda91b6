package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/m2mauth/m2mauth"
)

// Demo client made on the first start.
const (
	demoClientID = "demo-client"
	demoScopes   = "read:builders read:subcontractors"
)

// serve runs the authorization server and the demo API until SIGINT or
// SIGTERM.
func serve(g globals, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	proxies := fs.String("trusted-proxies", "", "comma-separated networks of reverse proxies whose X-Forwarded-For/Forwarded headers are believed, e.g. 10.0.0.0/8")
	if err := fs.Parse(args); err != nil {
		return usageError(err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return errUsage
	}
	trusted, err := parsePrefixes(*proxies)
	if err != nil {
		return fmt.Errorf("-trusted-proxies: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	logger := slog.New(slog.NewJSONHandler(stderr, nil))
	b, err := openBackend(ctx, g.db)
	if err != nil {
		return err
	}
	defer b.close()
	key, err := signingKey(b, g.keyFile, stderr)
	if err != nil {
		return err
	}
	jwk, err := m2mauth.NewHS256Key("", key)
	if err != nil {
		return err
	}
	keys, err := m2mauth.NewStaticKeys(jwk)
	if err != nil {
		return err
	}

	// Audit events go to the JSON log and, with a database, to its audit
	// table too.
	var auditor m2mauth.Auditor = m2mauth.NewSlogAuditor(logger)
	if b.auditor != nil {
		slogAuditor, tableAuditor := auditor, b.auditor
		auditor = m2mauth.AuditorFunc(func(ctx context.Context, e m2mauth.AuditEvent) {
			slogAuditor.Audit(ctx, e)
			tableAuditor.Audit(ctx, e)
		})
	}
	tokens, err := m2mauth.NewTokenHandler(b.store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          g.issuer,
		DefaultAudience: g.audience,
		Auditor:         auditor,
		Logger:          logger,
		Limiter:         b.limiter, // nil: the in-memory default
		TrustedProxies:  trusted,
	})
	if err != nil {
		return err
	}
	validator, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
		Issuer:   g.issuer,
		Audience: g.audience,
		Auditor:  auditor,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	base := "http://" + ln.Addr().String()
	if err := greet(ctx, b, g, base, stdout); err != nil {
		ln.Close()
		return err
	}

	srv := &http.Server{
		Handler:           routes(tokens, validator),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	logger.Info("listening", "addr", base, "store", b.kind)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	logger.Info("stopped")
	return nil
}

// parsePrefixes reads a comma-separated list of networks.
func parsePrefixes(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(list, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// routes is the server's mux: the token endpoint, two protected demo
// routes and a health check.
func routes(tokens http.Handler, v *m2mauth.Validator) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/oauth/token", tokens) // any method: the handler answers 405 itself
	mux.Handle("GET /api/builders", v.RequireScopes("read:builders")(listing("builders", "Acme Building", "Northside Construction")))
	mux.Handle("GET /api/subcontractors", v.RequireScopes("read:subcontractors")(listing("subcontractors", "Sparks Electrical", "Flow Plumbing")))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	return mux
}

// listing is a demo API route: it answers with a fixed list and who asked.
func listing(kind string, names ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := m2mauth.ClaimsFromContext(r.Context())
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"client_id":%q,"%s":[`, c.ClientID, kind)
		for i, n := range names {
			if i > 0 {
				io.WriteString(w, ",")
			}
			fmt.Fprintf(w, "%q", n)
		}
		io.WriteString(w, "]}\n")
	})
}

// greet prints where the server listens and, on the first start, creates
// the demo client and shows its secret once.
func greet(ctx context.Context, b *backend, g globals, base string, out io.Writer) error {
	fmt.Fprintf(out, "m2mauth example: listening on %s (store: %s)\n", base, b.kind)
	_, err := b.store.Client(ctx, demoClientID)
	secret := "<the demo client's secret>"
	switch {
	case err == nil:
		fmt.Fprintf(out, "Using the existing database; the demo client %q was created on the first start and its secret shown then.\n", demoClientID)
		fmt.Fprintf(out, "Make another client with: go run ./example client create -id my-client -scopes %q\n", demoScopes)
	case errors.Is(err, m2mauth.ErrClientNotFound):
		scopes, err := m2mauth.ParseScopes(demoScopes)
		if err != nil {
			return err
		}
		plain, s, err := m2mauth.NewSecret(time.Now(), time.Time{})
		if err != nil {
			return err
		}
		if err := b.store.CreateClient(ctx, &m2mauth.Client{
			ID: demoClientID, Secrets: []m2mauth.Secret{s}, Grants: map[string]m2mauth.Scopes{g.audience: scopes},
		}); err != nil {
			return err
		}
		secret = plain
		fmt.Fprintf(out, "Created the demo client; its secret is shown only now:\n  client_id:     %s\n  client_secret: %s\n", demoClientID, plain)
	default:
		return err
	}
	fmt.Fprintf(out, `
Get a token:
  TOKEN=$(curl -s -u '%s:%s' -d grant_type=client_credentials %s/oauth/token | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
Call the protected API with it:
  curl -s -H "Authorization: Bearer $TOKEN" %s/api/builders
`, demoClientID, secret, base, base)
	return nil
}
