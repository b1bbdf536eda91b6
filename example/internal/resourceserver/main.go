// Command resourceserver is an API in a process of its own that accepts
// the access tokens of an m2mauth authorization server, such as the
// example's started with -signing-alg ES256, knowing only its issuer URL:
// it reads the issuer's metadata (RFC 8414), fetches the public keys from
// the jwks_uri there, and never holds a signing key.
//
//	go run ./example -signing-alg ES256
//	go run ./example/internal/resourceserver -issuer http://127.0.0.1:8080
//
// It serves GET /api/builders (scope read:builders) and GET /healthz, and
// prints "listening on URL" once it accepts connections.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/m2mauth/m2mauth"
)

func main() {
	issuer := flag.String("issuer", "http://127.0.0.1:8080", "the authorization server: the exact \"iss\" of its tokens")
	audience := flag.String("audience", "https://api.example.com", "this API's audience")
	addr := flag.String("addr", "127.0.0.1:8081", "listen address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *issuer, *audience, *addr, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "resourceserver:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, issuer, audience, addr string, stdout io.Writer) error {
	// The keys come from the issuer's metadata; a key the issuer starts
	// signing with is fetched when the first token naming it arrives.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	keys, err := m2mauth.DiscoverRemoteKeys(dctx, issuer, m2mauth.RemoteKeysConfig{})
	cancel()
	if err != nil {
		return err
	}
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{Issuer: issuer, Audience: audience})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /api/builders", v.RequireScopes("read:builders")(http.HandlerFunc(builders)))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	fmt.Fprintf(stdout, "resourceserver: listening on http://%s (tokens of %s)\n", ln.Addr(), issuer)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// builders answers with who asked, from the verified token.
func builders(w http.ResponseWriter, r *http.Request) {
	c, _ := m2mauth.ClaimsFromContext(r.Context())
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"client_id": c.ClientID,
		"builders":  []string{"Acme Building", "Northside Construction"},
	})
}
