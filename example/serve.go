package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// Demo client made on the first start.
const (
	demoClientID = "demo-client"
	demoScopes   = "read:builders read:subcontractors"
)

// serveFlags are the flags of "serve".
type serveFlags struct {
	addr            string
	tlsCert, tlsKey string
	insecureHTTP    bool
	proxies         string
	forwardedHeader string
	pool            dbPool
	storeTimeout    time.Duration
	maxConcurrent   int
	requireAudit    bool
	auditSpill      string
	// alertWebhook receives the detector's alerts, signed with
	// alertWebhookSecret (never printed).
	alertWebhook, alertWebhookSecret string
	// alertLearning is how long the new_address rule learns a client's
	// networks before it alerts on a new one.
	alertLearning time.Duration
	// revocationRefresh is how often a database's revocations are read:
	// a revocation takes effect on every replica within it.
	revocationRefresh time.Duration
	// revocationMaxStale is how long the last revocations read are
	// trusted while reading them fails; then tokens are refused.
	revocationMaxStale time.Duration
	// keyRefresh is how often managed signing keys are read from the
	// database; 0: the default of keySchedule.
	keyRefresh time.Duration
}

// parseServeFlags reads and checks the flags of "serve", before anything
// is opened.
func parseServeFlags(args []string, stderr io.Writer) (*serveFlags, error) {
	var f serveFlags
	pool := defaultPool()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.addr, "addr", "127.0.0.1:8080", "listen address; any address but a loopback one needs TLS, -trusted-proxies or -insecure-http")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate chain `file`: serve HTTPS (TLS 1.2 or later); needs -tls-key")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM private key `file` of -tls-cert")
	fs.BoolVar(&f.insecureHTTP, "insecure-http", false, "INSECURE: serve plain HTTP on any address and accept token requests over plain HTTP from anywhere; client secrets and tokens cross the network in the clear")
	fs.StringVar(&f.proxies, "trusted-proxies", "", "comma-separated `networks` of TLS-terminating reverse proxies whose -forwarded-header is believed, e.g. 10.0.0.0/8 (default: none; forwarding headers are ignored)")
	fs.StringVar(&f.forwardedHeader, "forwarded-header", m2mauth.HeaderXForwardedFor, `the header the trusted proxies write: "X-Forwarded-For" (with X-Forwarded-Proto) or "Forwarded" (RFC 7239). The proxies must overwrite or strip what clients send in it and in X-Forwarded-Proto`)
	fs.IntVar(&f.pool.maxOpen, "db-max-open", pool.maxOpen, "most connections open to the database; more queries wait for one. Keep replicas × this below the database server's max_connections")
	fs.IntVar(&f.pool.maxIdle, "db-max-idle", pool.maxIdle, "most idle connections kept for reuse (at most -db-max-open)")
	fs.DurationVar(&f.pool.maxLifetime, "db-conn-max-lifetime", pool.maxLifetime, "close connections after this long, so failovers and load balancers are followed (0: never)")
	fs.DurationVar(&f.storeTimeout, "store-timeout", 5*time.Second, "how long a token request waits for a turn, a database connection and its query before it is answered 503 with Retry-After")
	fs.IntVar(&f.maxConcurrent, "max-concurrent", 256, "most token requests handled at once; others wait up to -store-timeout, then get 503 with Retry-After")
	fs.BoolVar(&f.requireAudit, "require-audit", false, "answer token requests 503 while the audit table cannot record events, so that no token is issued unaudited")
	fs.StringVar(&f.auditSpill, "audit-spill", "", "`file` where audit events wait, synced to disk, while the audit table cannot be written; one per server process (default: beside the SQLite file, as NAME-audit.spill, or "+defaultAuditSpill+" in the working directory for a server database; \"none\": no file)")
	fs.StringVar(&f.alertWebhook, "alert-webhook", "", "`URL` (https, or http on this machine) to POST alerts to, each signed with -alert-webhook-secret; they are always in the JSON log")
	fs.StringVar(&f.alertWebhookSecret, "alert-webhook-secret", "", "`secret` that signs the webhook's alerts (HMAC-SHA256), at least 32 bytes, e.g. from: openssl rand -hex 32; default: $"+webhookSecretEnv+", which keeps it out of the process list")
	fs.DurationVar(&f.alertLearning, "alert-learning-period", 7*24*time.Hour, "how long the new_address alert learns a new client's networks, and remembers a network after its last token, before a token from an unknown network raises it (on a database a starting server learns the last two periods from the audit table; with -db memory each start learns anew)")
	fs.DurationVar(&f.revocationRefresh, "revocation-refresh", defaultRevocationRefresh, "how often the revocations are read from the database (at least 10ms): a revoked token, and the tokens of a disabled or deleted client, are refused within it on every server sharing the database. With -db memory revocations take effect at once")
	fs.DurationVar(&f.revocationMaxStale, "revocation-max-stale", 0, "how long the revocations last read are trusted while reading them fails; past it every token is refused with 503 until a read succeeds (default: 6 × -revocation-refresh, and at least 30s)")
	fs.DurationVar(&f.keyRefresh, "key-refresh", 0, "with managed signing keys ($"+kekEnv+"): how often they are read from the database (at least 10ms), so that a key published, revoked or resealed elsewhere is seen within it (default: 30s, or a quarter of -key-propagation-delay when that is shorter)")
	if err := fs.Parse(args); err != nil {
		return nil, usageError(err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return nil, errUsage
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		fmt.Fprintln(stderr, "-tls-cert and -tls-key go together")
		fs.Usage()
		return nil, errUsage
	}
	if !strings.EqualFold(f.forwardedHeader, m2mauth.HeaderXForwardedFor) && !strings.EqualFold(f.forwardedHeader, m2mauth.HeaderForwarded) {
		return nil, fmt.Errorf("-forwarded-header %q: want %q or %q", f.forwardedHeader, m2mauth.HeaderXForwardedFor, m2mauth.HeaderForwarded)
	}
	if err := f.pool.check(); err != nil {
		return nil, err
	}
	if f.storeTimeout < time.Millisecond {
		return nil, errors.New("-store-timeout must be at least 1ms")
	}
	if f.maxConcurrent < 1 {
		return nil, errors.New("-max-concurrent must be at least 1")
	}
	if f.alertWebhook != "" && f.alertWebhookSecret == "" {
		f.alertWebhookSecret = os.Getenv(webhookSecretEnv)
	}
	switch {
	case f.alertWebhook != "" && f.alertWebhookSecret == "":
		return nil, fmt.Errorf("-alert-webhook needs a secret to sign the alerts: -alert-webhook-secret or $%s", webhookSecretEnv)
	case f.alertLearning < time.Millisecond:
		return nil, errors.New("-alert-learning-period must be at least 1ms")
	case f.alertWebhook == "" && f.alertWebhookSecret != "":
		return nil, errors.New("-alert-webhook-secret is given without -alert-webhook")
	case f.revocationRefresh < 10*time.Millisecond:
		return nil, errors.New("-revocation-refresh must be at least 10ms")
	case f.revocationMaxStale < 0:
		return nil, errors.New("-revocation-max-stale must not be negative")
	case f.revocationMaxStale == 0:
		f.revocationMaxStale = revocationMaxStale(f.revocationRefresh)
	case f.revocationMaxStale <= f.revocationRefresh:
		return nil, fmt.Errorf("-revocation-max-stale %v must be longer than -revocation-refresh %v, or one slow read would refuse every token", f.revocationMaxStale, f.revocationRefresh)
	}
	return &f, nil
}

// serve runs the authorization server and the demo API until SIGINT or
// SIGTERM.
func serve(g globals, args []string, stdout, stderr io.Writer) error {
	f, err := parseServeFlags(args, stderr)
	if err != nil {
		return err
	}
	trusted, err := parsePrefixes(f.proxies)
	if err != nil {
		return fmt.Errorf("-trusted-proxies: %w", err)
	}
	if err := checkServe(g, f, trusted); err != nil {
		return err
	}
	var tlsConfig *tls.Config
	if f.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return fmt.Errorf("-tls-cert, -tls-key: %w", err)
		}
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	// Plain HTTP is for this machine, or for the hop from a TLS-
	// terminating proxy (whose X-Forwarded-Proto the handler checks).
	if tlsConfig == nil && len(trusted) == 0 && !f.insecureHTTP && !loopbackOnly(f.addr) {
		return fmt.Errorf("refusing to serve plain HTTP on %s, which other machines can reach: client secrets and tokens would cross the network in the clear. "+
			"Give -tls-cert and -tls-key, or -trusted-proxies when a TLS-terminating reverse proxy is in front, or -insecure-http to accept the risk", f.addr)
	}
	// The address is taken before the database is opened, so that one
	// in use changes nothing.
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	defer ln.Close() // again after Serve, harmlessly
	// -db and the signing keys are settled before the database is opened.
	d, err := parseDB(g.db)
	if err != nil {
		return err
	}
	// sched is the key schedule with its defaults; g.keys stays as
	// given, for the command lines the banner prints.
	g.keys.refresh = f.keyRefresh
	sched, err := g.keys.resolve()
	if err != nil {
		return err
	}
	sk, err := chooseKeys(d, g, stderr)
	if err != nil {
		return err
	}
	if sk.managed() {
		// What the banner, the JWKS and the metadata say about the
		// algorithm is that of new keys.
		g.alg = sk.alg
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	logger := slog.New(slog.NewJSONHandler(stderr, nil))
	if f.insecureHTTP {
		logger.Warn("INSECURE: -insecure-http is set: token requests are accepted over plain HTTP from any address, so client secrets and tokens may cross the network in the clear; use -tls-cert and -tls-key, or a TLS-terminating proxy and -trusted-proxies")
	}
	b, err := openBackend(ctx, d, backendOptions{pool: f.pool, auditLog: logger, server: true, auditSpill: f.auditSpill})
	if err != nil {
		return err
	}
	defer b.close()
	disc := newDiscovery(g, logger)

	// Audit events go to the JSON log and, with a database, to its audit
	// table too.
	tee := teeAuditor{log: m2mauth.NewSlogAuditor(logger)}
	if b.auditor != nil {
		tee.table = b.auditor
	}
	// One provider signs the tokens and the revocation list and serves
	// the JWKS and the metadata: the one key, or the managed keys, which
	// every server sharing the database reads every -key-refresh.
	var keys m2mauth.KeyProvider
	var managed *m2mauth.ManagedKeys
	if sk.managed() {
		managed, err = openManagedKeys(ctx, b, sk.sealer, sk.alg, sched, tee, logger)
		if err != nil {
			return err
		}
		defer managed.Close()
		keys = managed
		logger.Info("signing keys: "+sk.describe(sched), "kek", sk.sealer.KEKID(), "previous_kek", sk.oldKEK,
			"algorithm", string(sk.alg), "rotation_interval", sched.rotationInterval.String(),
			"propagation_delay", sched.propagationDelay.String(), "key_refresh", sched.refresh.String(),
			"jwks_max_age", sched.jwksMaxAge.String())
		if secretKey(sk.alg) {
			logger.Warn("managed " + string(sk.alg) + " keys are secret and never published: only the servers sharing the database can verify the tokens; -signing-alg ES256 lets other services verify them with the published public keys")
		}
	} else if keys, err = m2mauth.NewStaticKeys(*sk.static); err != nil {
		return err
	}
	// The token endpoint's events pass through the metrics' counters and
	// the detector, which watches them for unusual patterns and raises
	// alerts, on their way to the log and the table.
	obs, err := newObservability(f, tee, logger)
	if err != nil {
		return err
	}
	defer obs.close()
	if b.sql != nil {
		go learnAddresses(ctx, b.sql, obs.detector, f.alertLearning, logger)
	}
	m := obs.metrics
	limiter := b.limiter
	if limiter == nil {
		// The in-memory limiter, made here so that its size is reported.
		l, err := m2mauth.NewRateLimiter(m2mauth.RateLimiterConfig{})
		if err != nil {
			return err
		}
		if err := m.ObserveRateLimiter("token", l); err != nil {
			return err
		}
		limiter = l
	}
	tokens, err := m2mauth.NewTokenHandler(b.store, keys, m2mauth.TokenHandlerConfig{
		Issuer:                g.issuer,
		DefaultAudience:       g.audience,
		Auditor:               m.Auditor(obs.detector), // reports tee's health, for -require-audit
		Logger:                logger,
		Limiter:               limiter,
		TrustedProxies:        trusted,
		ForwardedHeader:       f.forwardedHeader,
		AllowInsecureHTTP:     f.insecureHTTP,
		StoreTimeout:          f.storeTimeout,
		MaxConcurrentRequests: f.maxConcurrent,
		RequireAudit:          f.requireAudit,
	})
	if err != nil {
		return err
	}
	// Revoked tokens are refused by the API, reported inactive by the
	// introspection endpoint and published to other resource servers,
	// all from one in-memory snapshot.
	revocations, err := newRevocationSource(ctx, b, f, logger)
	if err != nil {
		return err
	}
	defer revocations.close()
	revocationEndpoints, err := newRevocationHandlers(tokens, b, revocations, keys, g.issuer, logger)
	if err != nil {
		return err
	}
	// Managed keys keep their own algorithm when -signing-alg changes,
	// so every algorithm is accepted: each key verifies only its own.
	algs := []jose.SignatureAlgorithm{g.alg}
	if managed != nil {
		algs = nil
	}
	validator, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
		Issuer:     g.issuer,
		Audience:   g.audience,
		Algorithms: algs,
		// Challenges name the API's metadata, and through it the
		// authorization server to ask for a token.
		ResourceMetadataURL: disc.resourceMetadataURL(),
		Auditor:             m.Auditor(tee),
		Revocations:         revocations.RevocationSource,
		// The API, like the token endpoint, takes tokens only over TLS
		// (or from this machine), and records the client's address
		// behind the trusted proxies.
		RequireHTTPS:    !f.insecureHTTP,
		TrustedProxies:  trusted,
		ForwardedHeader: f.forwardedHeader,
	})
	if err != nil {
		return err
	}
	if err := m.ObserveValidator("api", validator); err != nil {
		return err
	}
	// Ready when the store answers, the key is there and, with a
	// database, the audit table can record events, the revocations are
	// fresh and the managed keys were read (and opened) at their last
	// refresh.
	checks := map[string]func(context.Context) error{
		"audit": func(context.Context) error { return tee.AuditHealth() },
	}
	revocations.addCheck(checks)
	if managed != nil {
		checks["signing_keys"] = managed.Ping
	}
	ready, err := m2mauth.NewReadinessHandler(b.store, keys, m2mauth.ReadinessConfig{Logger: logger, Checks: checks})
	if err != nil {
		return err
	}
	docs, err := disc.documents(keys, tokens, validator, logger)
	if err != nil {
		return err
	}

	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
	}
	base := scheme + "://" + ln.Addr().String()
	// The demo's commands go where clients reach the server: over TLS or
	// through the trusted proxies, at -issuer's host (which the
	// certificate names, and which the proxy answers for); over plain
	// HTTP, at the listener.
	demo := base
	if (tlsConfig != nil || len(trusted) > 0) && strings.HasPrefix(disc.origin, "https://") {
		demo = disc.origin
	}
	if err := greet(ctx, b, g, sk, sched, disc, revocations, base, demo, stdout); err != nil {
		return err
	}

	srv := &http.Server{
		Handler: routes(handlers{
			tokens: tokens, revocation: revocationEndpoints, validator: validator,
			metrics: m, ready: ready, scrape: obs.scrape,
		}, docs...),
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		// Long enough for a request that waited the whole store timeout.
		WriteTimeout:   max(15*time.Second, f.storeTimeout+10*time.Second),
		IdleTimeout:    60 * time.Second,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	logger.Info("listening", "addr", base, "store", b.kind,
		"db_max_open", f.pool.maxOpen, "max_concurrent", f.maxConcurrent, "store_timeout", f.storeTimeout.String(),
		"revocations", revocations.delay(), "signing_keys", sk.kind())
	errc := make(chan error, 1)
	go func() {
		if tlsConfig != nil {
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()
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

// checkServe checks what serve's flags and the global ones can be checked
// for without opening anything, so that a bad value changes nothing: no
// database created or migrated, no key file written. The token endpoint's
// and the validator's settings are checked by building them over a
// throwaway store and key, which costs nothing and holds nothing.
func checkServe(g globals, f *serveFlags, trusted []netip.Prefix) error {
	if _, _, err := net.SplitHostPort(f.addr); err != nil {
		return fmt.Errorf("-addr %q: want host:port: %w", f.addr, err)
	}
	if d, err := parseDB(g.db); err == nil && !d.memory && f.auditSpill != "" && f.auditSpill != "none" {
		// (-db memory has no audit table, hence no spill file.)
		dir := filepath.Dir(f.auditSpill)
		if fi, err := os.Stat(dir); err != nil {
			return fmt.Errorf("-audit-spill: %w", err)
		} else if !fi.IsDir() {
			return fmt.Errorf("-audit-spill: %s is not a directory", dir)
		}
	}
	if f.alertWebhook != "" {
		sink, err := m2mauth.NewWebhookAlertSink(f.alertWebhook, []byte(f.alertWebhookSecret), m2mauth.WebhookConfig{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return fmt.Errorf("-alert-webhook: %w", err)
		}
		sink.Close()
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	key, err := m2mauth.NewHS256Key("", secret)
	if err != nil {
		return err
	}
	keys, err := m2mauth.NewStaticKeys(key)
	if err != nil {
		return err
	}
	if _, err := m2mauth.NewTokenHandler(memstore.New(), keys, m2mauth.TokenHandlerConfig{
		Issuer: g.issuer, DefaultAudience: g.audience,
		TrustedProxies: trusted, ForwardedHeader: f.forwardedHeader, AllowInsecureHTTP: f.insecureHTTP,
		StoreTimeout: f.storeTimeout, MaxConcurrentRequests: f.maxConcurrent,
	}); err != nil {
		return err
	}
	_, err = m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
		Issuer: g.issuer, Audience: g.audience, TrustedProxies: trusted, ForwardedHeader: f.forwardedHeader,
		RequireHTTPS: !f.insecureHTTP,
	})
	return err
}

// loopbackOnly reports whether the listen address addr can be reached
// only from this machine: "localhost" or a loopback IP address. An empty
// host, an unspecified address or another name cannot.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
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

// tokenPath is where the token endpoint is mounted.
const tokenPath = "/oauth/token"

// handlers are what routes mounts.
type handlers struct {
	tokens     http.Handler
	revocation revocationHandlers
	validator  *m2mauth.Validator
	metrics    *m2mauth.Metrics
	ready      http.Handler // GET /readyz
	scrape     http.Handler // GET /metrics
}

// routes is the server's mux: the token, revocation and introspection
// endpoints, the revocation list, two protected demo routes, liveness and
// readiness checks, the metrics and the discovery documents.
func routes(s handlers, docs ...wellKnown) *http.ServeMux {
	mux := http.NewServeMux()
	m, v := s.metrics, s.validator
	// Any method: these handlers answer 405 themselves, in JSON.
	mux.Handle(tokenPath, m.Handler("token", s.tokens))
	mux.Handle(revokePath, m.Handler("revocation", s.revocation.revoke))
	mux.Handle(introspectPath, m.Handler("introspection", s.revocation.introspect))
	mux.Handle("GET "+revocationsPath, m.Handler("revocation_list", s.revocation.list)) // and HEAD
	mux.Handle("GET /api/builders", m.Handler("api", v.RequireScopes("read:builders")(m.Validated(listing("builders", "Acme Building", "Northside Construction")))))
	mux.Handle("GET /api/subcontractors", m.Handler("api", v.RequireScopes("read:subcontractors")(m.Validated(listing("subcontractors", "Sparks Electrical", "Flow Plumbing")))))
	mux.Handle("GET /readyz", s.ready)
	mux.Handle("GET /metrics", s.scrape)
	// Liveness: the process serves HTTP; it does not ask the database,
	// so that an outage takes replicas out of rotation (readyz) rather
	// than having them all restarted.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	for _, d := range docs {
		mux.Handle("GET "+d.path, d.h) // and HEAD
	}
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

// greet prints where the server listens, base, and, on the first start,
// creates the demo client and shows its secret once, with commands that
// use it at demo.
func greet(ctx context.Context, b *backend, g globals, sk *serverKeys, sched keySchedule, disc discovery, revocations *revocationSource, base, demo string, out io.Writer) error {
	fmt.Fprintf(out, "m2mauth example: listening on %s (store: %s)\n", base, b.kind)
	greetDiscovery(g, disc, base, out)
	if sk.managed() {
		fmt.Fprintf(out, "Signing keys: %s.\n  A new key is in the JWKS for the propagation delay before it signs. List the keys with:\n    go run ./example %s key list\n  and rotate or revoke one with \"key rotate\" or \"key revoke -kid KID\" in place of \"key list\".\n",
			sk.describe(sched), g.commandLine())
	}
	greetRevocation(disc, revocations, base, out)
	secret, err := demoClient(ctx, b, g)
	switch {
	case errors.Is(err, errDemoDeleted):
		fmt.Fprintf(out, "No demo client: %q was deleted, and stays deleted.\n", demoClientID)
		fmt.Fprintf(out, "Make a client with: go run ./example %s client create -id my-client -scopes %s\n", g.commandLine(), shellQuote(demoScopes))
		return nil
	case errors.Is(err, m2mauth.ErrClientExists):
		// Created on an earlier start, or just now by another server
		// sharing the database.
		secret = "<the secret shown on the first start>"
		fmt.Fprintf(out, "Using the existing database; the demo client %q was created on the first start and its secret shown then.\n", demoClientID)
		fmt.Fprintf(out, "Make another client with: go run ./example %s client create -id my-client -scopes %s\n", g.commandLine(), shellQuote(demoScopes))
	case err != nil:
		return err
	default:
		fmt.Fprintf(out, "Created the demo client; its secret is shown only now:\n  client_id:     %s\n  client_secret: %s\n", demoClientID, secret)
	}
	fmt.Fprintf(out, `
Get a token:
  TOKEN=$(curl -s -u %s -d grant_type=client_credentials %s | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
Call the protected API with it:
  curl -s -H "Authorization: Bearer $TOKEN" %s
`, shellQuote(demoClientID+":"+secret), shellQuote(demo+tokenPath), shellQuote(demo+"/api/builders"))
	return nil
}

// errDemoDeleted: the demo client was deleted.
var errDemoDeleted = errors.New("the demo client was deleted")

// demoClient creates the demo client unless it exists or was deleted, and
// returns its secret; an error wrapping [m2mauth.ErrClientExists] if it
// exists, whether it did before or another process sharing the database
// created it meanwhile, and errDemoDeleted if the audit table records its
// deletion: a demo client an operator deleted is not brought back by a
// restart.
func demoClient(ctx context.Context, b *backend, g globals) (string, error) {
	_, err := b.store.Client(ctx, demoClientID)
	switch {
	case err == nil:
		return "", m2mauth.ErrClientExists
	case !errors.Is(err, m2mauth.ErrClientNotFound):
		return "", err
	}
	if b.sql != nil {
		// An operator deleted it: the audit table remembers.
		deleted, err := b.sql.AuditEvents(ctx, sqlstore.AuditQuery{ClientID: demoClientID, Type: m2mauth.EventClientDeleted, Limit: 1})
		switch {
		case err != nil:
			return "", err
		case len(deleted) > 0:
			return "", errDemoDeleted
		}
	}
	scopes, err := m2mauth.ParseScopes(demoScopes)
	if err != nil {
		return "", err
	}
	plain, s, err := m2mauth.NewSecret(time.Now(), time.Time{})
	if err != nil {
		return "", err
	}
	err = b.store.CreateClient(ctx, &m2mauth.Client{
		ID: demoClientID, Secrets: []m2mauth.Secret{s}, Grants: map[string]m2mauth.Scopes{g.audience: scopes},
	})
	if err != nil {
		return "", err
	}
	return plain, nil
}

// greetDiscovery prints how other services verify the tokens, and the
// URLs of the discovery documents as published (from -issuer).
func greetDiscovery(g globals, disc discovery, base string, out io.Writer) {
	if disc.publicKey {
		fmt.Fprintf(out, "Tokens are signed with %s; other services verify them with the public key published at\n", g.alg)
	} else {
		fmt.Fprintf(out, "Tokens are signed with %s: services that verify them need its secret key (-signing-alg ES256 would let them use a public key)\n", g.alg)
	}
	jwks := disc.urlOr(base, jwksPath)
	if !disc.publicKey {
		jwks += " (empty: " + string(g.alg) + " keys are secret)"
	}
	fmt.Fprintf(out, "  JWKS:                          %s\n", jwks)
	if disc.asPath != "" {
		fmt.Fprintf(out, "  Authorization server metadata: %s\n", disc.url(disc.asPath))
	}
	if disc.prPath != "" {
		fmt.Fprintf(out, "  Protected resource metadata:   %s\n", disc.url(disc.prPath))
	}
	fmt.Fprintf(out, "  Revocation list:               %s\n", disc.urlOr(base, revocationsPath))
	if disc.origin != "" && disc.origin != base {
		fmt.Fprintf(out, "  (URLs under -issuer %s, where other services reach this server; it listens on %s)\n", g.issuer, base)
	}
}

// greetRevocation prints where clients revoke and introspect tokens, and
// how soon a revocation takes effect.
func greetRevocation(disc discovery, revocations *revocationSource, base string, out io.Writer) {
	fmt.Fprintf(out, "Clients revoke their tokens at %s (RFC 7009) and introspect tokens at %s (RFC 7662).\n",
		disc.urlOr(base, revokePath), disc.urlOr(base, introspectPath))
	if revocations.poller == nil {
		fmt.Fprintln(out, "A revoked token, and the tokens of a disabled or deleted client, are refused at once.")
		return
	}
	fmt.Fprintf(out, "A revoked token, and the tokens of a disabled or deleted client, are refused within %v (-revocation-refresh) by every server sharing the database.\n", revocations.refresh)
}
