// Command resourceserver is an API in a process of its own that accepts
// the access tokens of an m2mauth authorization server, such as the
// example's started with -signing-alg ES256, knowing only its issuer URL:
// it reads the issuer's metadata (RFC 8414), fetches the public keys from
// the jwks_uri there, and never holds a signing key.
//
//	go run ./example -signing-alg ES256
//	go run ./example/internal/resourceserver -issuer http://127.0.0.1:8080
//
// It refuses revoked tokens: it polls the signed revocation list the
// issuer publishes (-revocations, by default /oauth/revocations at the
// issuer's scheme and host, where the example serves it) every -revocation-refresh (5s), with a conditional
// GET that costs a 304 while nothing changes, and checks every token
// against the list it holds in memory. A revocation reaches it within
// -revocation-refresh after it reaches the issuer's list (which, on a
// database, reads the revocations every -revocation-refresh of its own).
// When the list cannot be fetched for -revocation-max-stale (30s), it
// refuses every token with 503 until a fetch succeeds: it cannot tell a
// revoked token from a good one.
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
	"net/url"
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
	var cfg revocationFlags
	flag.StringVar(&cfg.listURL, "revocations", "", "`URL` of the issuer's signed revocation list (default: /oauth/revocations at the issuer's scheme and host)")
	flag.DurationVar(&cfg.refresh, "revocation-refresh", 5*time.Second, "how often the revocation list is fetched: a revocation published there is refused here within it")
	flag.DurationVar(&cfg.maxStale, "revocation-max-stale", 30*time.Second, "how long the last list fetched is trusted while fetches fail; past it every token is refused with 503")
	flag.Parse()
	if cfg.listURL == "" {
		if u, err := url.Parse(*issuer); err == nil {
			cfg.listURL = (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: "/oauth/revocations"}).String()
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *issuer, *audience, *addr, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "resourceserver:", err)
		os.Exit(1)
	}
}

// revocationFlags say where and how often the revocation list is read.
type revocationFlags struct {
	listURL           string
	refresh, maxStale time.Duration
}

func run(ctx context.Context, issuer, audience, addr string, rf revocationFlags, stdout io.Writer) error {
	// The keys come from the issuer's metadata; a key the issuer starts
	// signing with is fetched when the first token naming it arrives.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	keys, err := m2mauth.DiscoverRemoteKeys(dctx, issuer, m2mauth.RemoteKeysConfig{})
	cancel()
	if err != nil {
		return err
	}
	// The revocation list is signed with the same keys, under the same
	// issuer. The poller fetches it in the background; validations read
	// the last list fetched, from memory.
	feed, err := m2mauth.NewRemoteRevocations(rf.listURL, keys, m2mauth.RemoteRevocationsConfig{Issuer: issuer})
	if err != nil {
		return fmt.Errorf("-revocations: %w", err)
	}
	revocations, err := m2mauth.NewRevocationPoller(feed, m2mauth.RevocationPollerConfig{Interval: rf.refresh, MaxStale: rf.maxStale})
	if err != nil {
		return err
	}
	defer revocations.Close()
	// Until the first fetch succeeds every token would be refused: wait
	// for it, so that the server accepts tokens once it says it listens.
	if err := revocations.Refresh(ctx); err != nil {
		return fmt.Errorf("fetching the revocation list %s: %w", rf.listURL, err)
	}
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{Issuer: issuer, Audience: audience, Revocations: revocations})
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
