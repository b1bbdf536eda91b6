// Command example runs a small authorization server: the m2mauth token
// endpoint on 127.0.0.1:8080, backed by an in-memory client store holding
// one demo client whose credentials are printed at start-up.
//
//	go run ./example
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	issuer := flag.String("issuer", "http://127.0.0.1:8080", "token issuer (iss)")
	audience := flag.String("audience", "https://api.example.com", "default audience")
	flag.Parse()

	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	keySecret, err := signingKey()
	if err != nil {
		return err
	}
	key, err := m2mauth.NewHS256Key("", keySecret)
	if err != nil {
		return err
	}
	keys, err := m2mauth.NewStaticKeys(key)
	if err != nil {
		return err
	}

	store := memstore.New()
	plain, secret, err := m2mauth.NewSecret(time.Now(), time.Time{})
	if err != nil {
		return err
	}
	if err := store.CreateClient(ctx, &m2mauth.Client{
		ID:      "demo",
		Secrets: []m2mauth.Secret{secret},
		Grants:  map[string]m2mauth.Scopes{*audience: {"read:builders", "read:subcontractors"}},
	}); err != nil {
		return err
	}

	tokens, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          *issuer,
		DefaultAudience: *audience,
		Auditor:         m2mauth.NewSlogAuditor(logger),
		Logger:          logger,
	})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/oauth/token", tokens)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})

	srv := &http.Server{
		Addr:              *addr,
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	fmt.Printf(`m2mauth example listening on http://%s
demo client (shown once):
  client_id:     demo
  client_secret: %s
get a token:
  curl -s -u 'demo:%s' -d grant_type=client_credentials http://%s/oauth/token
`, *addr, plain, plain, *addr)

	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// signingKey reads the HS256 key from M2MAUTH_SIGNING_KEY (base64), or
// makes an ephemeral one.
func signingKey() ([]byte, error) {
	if v := os.Getenv("M2MAUTH_SIGNING_KEY"); v != "" {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("M2MAUTH_SIGNING_KEY: %w", err)
		}
		return b, nil
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	fmt.Fprintln(os.Stderr, "warning: M2MAUTH_SIGNING_KEY not set; using an ephemeral signing key, tokens die with the process")
	return b, nil
}
