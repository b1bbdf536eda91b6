// Command example is a small, production-shaped authorization server and
// protected API built with m2mauth.
//
//	go run ./example                  # serve on 127.0.0.1:8080, SQLite file m2mauth.db
//	go run ./example client list      # administer clients
//
// Usage:
//
//	example [global flags] [command]
//
// Global flags (before the command):
//
//	-db string                 where clients live: a SQLite file path, a
//	                           postgres://… URL, a
//	                           mysql://user:pass@host:port/db?params URL, or
//	                           "memory" (default "m2mauth.db")
//	-issuer string             the "iss" of tokens (default "http://127.0.0.1:8080")
//	-audience string           the API's audience (default "https://api.example.com")
//	-signing-alg algorithm     how tokens are signed: HS256, ES256, EdDSA, RS256
//	                           or PS256 (default HS256)
//	-signing-key-file string   file holding the signing key: for HS256 its base64,
//	                           made with (umask 077 && head -c 32 /dev/urandom | base64 > FILE);
//	                           for the others a PEM private key, made with e.g.
//	                           (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out FILE)
//	                           (default: next to the SQLite file)
//	-jwks-max-age 5m           how long verifiers may cache the JWKS
//	-key-propagation-delay D   managed keys: from publication to first signature
//	                           (default: 2 × -jwks-max-age)
//	-key-rotation-interval D   managed keys: from one key's first signature to
//	                           the next's (default 2160h, 90 days)
//
// Commands:
//
//	serve [flags]                  run the server (the default command)
//	client create -id ID -scopes "a b" [-audience AUD] [-ttl 1h] [-introspect]
//	client update -id ID [-scopes "a b"] [-audience AUD] [-ttl 1h] [-introspect=true|false]
//	client show -id ID             one client, as JSON
//	client list [-id ID]           every client (or only ID), one JSON line each
//	client rotate-secret -id ID [-grace 24h] [-revoke-tokens]
//	client remove-secret -id ID -secret-id S
//	client revoke-tokens -id ID    revoke every token issued to ID until now
//	client disable -id ID          refuse its token requests and revoke its tokens
//	client enable -id ID           let it get new tokens (the revoked ones stay revoked)
//	client delete -id ID           delete it and revoke its tokens
//	client usage -id ID [-since 24h]   requests of the last -since, from the audit table
//	audit tail [-client ID] [-type T] [-n 50]
//	                               the newest audit events, one JSON line each
//	key list                       the managed signing keys, one JSON line each
//	key rotate                     publish a new signing key now
//	key revoke -kid KID            revoke a signing key at once
//	key rotate-kek                 reseal the signing keys under $M2MAUTH_NEW_KEK
//
// Scopes are space-separated in one argument: -scopes "read:builders
// read:subcontractors". A client's -ttl is at most 24h; 0 (the default)
// leaves its tokens the server's lifetime, 1h. "client update -scopes"
// replaces the scopes of -audience, by default the client's only one.
// show and list never print secrets or their hashes; remove-secret takes
// the secret ids they show. The client commands need no signing key.
// Every change they make is recorded in the audit table (client_created,
// secret_added and so on), which "audit tail" reads; "client usage" and
// "audit tail" need a SQL database. -introspect lets a client introspect
// any token; without it a client may introspect only tokens issued for
// its own client id as audience.
//
// Flags of serve (see "example serve -h"):
//
//	-addr 127.0.0.1:8080            listen address
//	-tls-cert FILE -tls-key FILE    serve HTTPS (TLS 1.2 or later)
//	-trusted-proxies NETS           TLS-terminating reverse proxies, e.g. 10.0.0.0/8
//	-forwarded-header NAME          the header they write: X-Forwarded-For (default) or Forwarded
//	-insecure-http                  INSECURE: plain HTTP on any address, from anywhere
//	-db-max-open 20                 database connections open at most
//	-db-max-idle 10                 idle connections kept
//	-db-conn-max-lifetime 30m       connections are replaced after this
//	-store-timeout 5s               then a token request is answered 503 with Retry-After
//	-max-concurrent 256             token requests handled at once
//	-require-audit                  answer 503 while the audit table cannot record
//	-audit-spill FILE               where audit events wait while the table cannot be
//	                                written (default: m2mauth-audit.spill beside
//	                                the SQLite file, or in the working directory)
//	-alert-webhook URL              POST alerts there too, signed with
//	-alert-webhook-secret S         this secret (default: $M2MAUTH_ALERT_WEBHOOK_SECRET)
//	-alert-learning-period 168h     how long new_address learns a client's networks
//	-revocation-refresh 5s          how often a database's revocations are read
//	-revocation-max-stale D         how long they are trusted while reads fail
//	                                (default: 6 × -revocation-refresh, at least 30s)
//	-key-refresh 30s                how often managed signing keys are read
//
// Plain HTTP is served only on a loopback address unless -trusted-proxies
// names the TLS-terminating proxy in front, or -insecure-http is given.
//
// The signing key comes from $M2MAUTH_SIGNING_KEY, else from
// -signing-key-file, which must exist. For HS256 it is base64 of at least
// 32 bytes; for ES256, EdDSA, RS256 and PS256 a private key as PEM
// (PKCS #8, SEC 1 or PKCS #1) or as a JWK. A key made for another
// algorithm than -signing-alg is refused. Without either, a SQLite
// database keeps its key next to the file (m2mauth.key for m2mauth.db
// with HS256, m2mauth-es256.pem with ES256, and so on), generated with
// mode 0600 on the first start so restarts keep tokens valid; "memory"
// uses a new key per process; and serve refuses to start on PostgreSQL or
// MySQL, whose replicas must share one key.
//
// With a database (not memory) and $M2MAUTH_KEK set, serve signs with
// managed keys instead: m2mauth.ManagedKeys, kept in the database sealed
// under that key-encryption key (base64 of 32 bytes, made with: openssl
// rand -base64 32; $M2MAUTH_OLD_KEK adds the one before it during a KEK
// rotation), the same on every server sharing the database, rotated every
// -key-rotation-interval, each new key in the JWKS -key-propagation-delay
// before it signs. -signing-alg, ES256 unless given, is the algorithm of
// new keys; $M2MAUTH_KEK beside $M2MAUTH_SIGNING_KEY or -signing-key-file
// is refused, and a KEK that does not open the stored keys stops serve,
// naming it. serve's -key-refresh (30s) is how often the keys are read
// again. The key commands administer them; they need $M2MAUTH_KEK and the
// schedule flags serve has.
//
// Besides the token endpoint and the demo API, serve publishes what other
// services need to verify tokens on their own: the public key at
// /.well-known/jwks.json (empty with HS256, whose key is secret), the
// authorization server metadata (RFC 8414) at
// /.well-known/oauth-authorization-server and the demo API's protected
// resource metadata (RFC 9728) at /.well-known/oauth-protected-resource,
// whose URL the API's 401 and 403 challenges carry. The URLs in them are
// -issuer's scheme and host followed by the route's path.
//
// Tokens are taken back with the admin commands (revoke-tokens, disable,
// delete, rotate-secret -revoke-tokens) and by clients at POST
// /oauth/revoke (RFC 7009); clients check tokens at POST
// /oauth/introspect (RFC 7662). The demo API and the introspection
// endpoint read the revocations from memory: with -db memory the store's
// own, which take effect at once; with a database a snapshot read every
// -revocation-refresh, so that a revocation made on any server sharing
// the database, or by an admin command, takes effect on all of them
// within it, and on the server that answered a POST /oauth/revoke before
// that answer. A server that cannot read them for -revocation-max-stale
// refuses every token (503) until it can. GET /oauth/revocations
// publishes them as a signed list for resource servers in other
// processes, such as example/internal/resourceserver.
//
// For operators it serves GET /healthz (liveness: the process answers),
// GET /readyz (readiness: 503 while the store, the key, the audit
// table or the revocations fail) and GET /metrics (Prometheus text, through the
// OpenTelemetry SDK and its Prometheus exporter). A detector watches the
// token endpoint's audit events and raises alerts (many failed
// authentications, a lockout, a new network, an issuance spike, …) on
// the JSON log and, with -alert-webhook, to a webhook, signed with
// HMAC-SHA256.
//
// -db takes no other scheme:// than those above. Connecting to PostgreSQL
// or MySQL gives up after 5s, naming the address, unless -db sets
// connect_timeout=SECONDS (PostgreSQL) or timeout=DURATION (MySQL); MySQL
// connections also get readTimeout and writeTimeout of 60s unless -db sets
// them.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/go-jose/go-jose/v4"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) && !errors.Is(err, errUsage) {
			fmt.Fprintln(os.Stderr, "example:", err)
		}
		os.Exit(exitCode(err))
	}
}

// errUsage marks an error already explained by a usage message.
var errUsage = errors.New("usage")

// usageError marks a flag parsing error, which the flag package has
// already printed with the usage.
func usageError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w: %v", errUsage, err)
}

func exitCode(err error) int {
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

// globals are the flags that come before the command.
type globals struct {
	db, issuer, audience, keyFile string
	alg                           jose.SignatureAlgorithm
	// algSet says that -signing-alg was given: managed keys default to
	// ES256 otherwise.
	algSet bool
	// keys is when managed signing keys are published and sign.
	keys keySchedule
}

// Defaults of the global flags.
const (
	defaultDB       = "m2mauth.db"
	defaultIssuer   = "http://127.0.0.1:8080"
	defaultAudience = "https://api.example.com"
)

// commandLine is g as global flags to paste into a shell: -db always,
// without its password, the others when they are not the default.
func (g globals) commandLine() string {
	args := []string{"-db", shellQuote(redactDB(g.db))}
	if g.issuer != defaultIssuer {
		args = append(args, "-issuer", shellQuote(g.issuer))
	}
	if g.audience != defaultAudience {
		args = append(args, "-audience", shellQuote(g.audience))
	}
	if g.alg != "" && g.alg != defaultAlg {
		args = append(args, "-signing-alg", string(g.alg))
	}
	if g.keyFile != "" {
		args = append(args, "-signing-key-file", shellQuote(g.keyFile))
	}
	args = append(args, g.keys.flagArgs()...)
	return strings.Join(args, " ")
}

const usage = `usage: example [global flags] [command]

commands:
  serve [flags]                      run the server (default); "serve -h" lists its flags
  client create -id ID -scopes "a b" [-audience AUD] [-ttl 1h] [-introspect]
  client update -id ID [-scopes "a b"] [-audience AUD] [-ttl 1h] [-introspect=true|false]
  client show -id ID                 one client as JSON (never secrets or hashes)
  client list [-id ID]               every client, or only ID, one JSON line each
  client rotate-secret -id ID [-grace 24h] [-revoke-tokens]
  client remove-secret -id ID -secret-id S
  client revoke-tokens -id ID        revoke every token issued to ID until now
  client disable -id ID              refuse its token requests and revoke its tokens
  client enable -id ID               let it get new tokens; revoked ones stay revoked
  client delete -id ID               delete it and revoke its tokens
  client usage -id ID [-since 24h]   the client's requests as counted in the audit table, as JSON
  audit tail [-client ID] [-type T] [-n 50]
                                     the newest audit events, newest first, one JSON line each
  key list                           the managed signing keys, one JSON line each (never key material)
  key rotate                         publish a new signing key now; it signs after -key-propagation-delay
  key revoke -kid KID                revoke a signing key at once (a key that leaked)
  key rotate-kek                     reseal every signing key under $M2MAUTH_NEW_KEK

Scopes are space-separated in one argument: -scopes "read:builders read:subcontractors".
A client's -ttl is at most 24h (0: the server's, 1h). "client update" replaces the
scopes of -audience (default: the client's only audience). -introspect lets a client
introspect any token. Running servers refuse revoked tokens within their
-revocation-refresh (5s). The client commands need no signing key; serve on
PostgreSQL or MySQL needs $M2MAUTH_SIGNING_KEY or -signing-key-file, or managed
keys. With -signing-alg ES256, EdDSA, RS256 or PS256 other services verify tokens
with the public key at /.well-known/jwks.json.

Managed signing keys: with a database and $M2MAUTH_KEK (a key-encryption key,
made with: openssl rand -base64 32) serve keeps its signing keys in the database,
sealed under it, the same on every server, and rotates them every
-key-rotation-interval, each new key published -key-propagation-delay before it
signs (ES256 unless -signing-alg says otherwise). The key commands need
$M2MAUTH_KEK too, and the global flags serve has. To rotate the KEK: restart the
servers with M2MAUTH_KEK=NEW and M2MAUTH_OLD_KEK=OLD, run "key rotate-kek" with
M2MAUTH_KEK=OLD and M2MAUTH_NEW_KEK=NEW, then restart them with M2MAUTH_KEK=NEW.

global flags:
`

func run(args []string, stdout, stderr io.Writer) error {
	var g globals
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&g.db, "db", defaultDB, `a SQLite file path, a postgres://… or mysql://user:pass@host:port/db?params URL, or "memory"`)
	fs.StringVar(&g.issuer, "issuer", defaultIssuer, `the "iss" of issued tokens`)
	fs.StringVar(&g.audience, "audience", defaultAudience, "the audience of the protected API")
	alg := signingAlg(defaultAlg)
	fs.Var(&alg, "signing-alg", "`algorithm` that signs tokens: HS256 (a secret key the verifiers share), or ES256, EdDSA, RS256 or PS256 (a private key; verifiers fetch the public one from /.well-known/jwks.json). With managed keys ($"+kekEnv+") the algorithm of new keys, ES256 unless given")
	fs.StringVar(&g.keyFile, "signing-key-file", "", "`file` holding the signing key: for HS256 its base64, made with: (umask 077 && head -c 32 /dev/urandom | base64 > FILE); for the others a PEM private key, made with e.g.: (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out FILE) (default: next to the SQLite file; PostgreSQL and MySQL need it, $M2MAUTH_SIGNING_KEY, or managed keys with $"+kekEnv+")")
	g.keys.addFlags(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return usageError(err)
	}
	g.alg = jose.SignatureAlgorithm(alg)
	fs.Visit(func(f *flag.Flag) { g.algSet = g.algSet || f.Name == "signing-alg" })
	rest := fs.Args()
	if len(rest) == 0 {
		return serve(g, nil, stdout, stderr)
	}
	switch rest[0] {
	case "serve":
		return serve(g, rest[1:], stdout, stderr)
	case "client":
		return clientCommand(g, rest[1:], stdout, stderr, fs.Usage)
	case "audit":
		return auditCommand(g, rest[1:], stdout, stderr, fs.Usage)
	case "key":
		return keyCommand(g, rest[1:], stdout, stderr, fs.Usage)
	default:
		fmt.Fprintf(stderr, "unknown command %q\n", rest[0])
		fs.Usage()
		return errUsage
	}
}
