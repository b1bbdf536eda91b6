// Package m2mauth implements an OAuth 2.0 authorization server for
// machine-to-machine APIs, to be embedded in a Go web application: a token
// endpoint for the client credentials grant (RFC 6749 §4.4) that issues JWT
// access tokens (RFC 9068), and the pluggable pieces behind it.
//
// # Wiring
//
// A host application needs a [ClientStore] (the memstore and sqlstore
// packages provide two), a [KeyProvider] holding the signing key, and a
// [TokenHandler] mounted on its own mux:
//
//	key, _ := m2mauth.NewHS256Key("", signingSecret) // ≥ 32 random bytes
//	keys, _ := m2mauth.NewStaticKeys(key)
//	store := memstore.New()
//	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
//		Issuer:          "https://auth.example.com",
//		DefaultAudience: "https://api.example.com",
//	})
//	if err != nil { ... }
//	mux.Handle("/oauth/token", h)
//
// API routes are protected by a [Validator]'s middleware, which checks the
// bearer token (RFC 6750, RFC 9068 §4) and the scopes a route needs:
//
//	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
//		Issuer:   "https://auth.example.com",
//		Audience: "https://api.example.com",
//	})
//	mux.Handle("GET /api/builders", v.RequireScopes("read:builders")(builders))
//
// # Discovery and other services
//
// With asymmetric keys, publish the public verification keys for resource
// servers that verify tokens on their own:
//
//	jwks, err := m2mauth.NewJWKSHandler(keys, m2mauth.JWKSConfig{})
//	mux.Handle("GET /.well-known/jwks.json", jwks)
//
// Only public keys are served: private keys as their public halves, HS256
// keys never (an HS256-only provider serves {"keys":[]}). Verifiers may
// cache the set for [JWKSConfig].MaxAge (5 min), never past a key change a
// [KeySchedule] provider announces, and revalidate with If-None-Match.
//
// Clients find the token endpoint and the keys through authorization
// server metadata (RFC 8414), mounted at the path derived from the issuer:
//
//	md, err := m2mauth.NewAuthorizationServerMetadataHandler(h,
//		m2mauth.AuthorizationServerMetadataConfig{
//			TokenEndpoint: "https://auth.example.com/oauth/token",
//			JWKSURI:       "https://auth.example.com/.well-known/jwks.json",
//		})
//	p, err := m2mauth.AuthorizationServerMetadataPath("https://auth.example.com")
//	mux.Handle("GET "+p, md) // /.well-known/oauth-authorization-server
//
// An API tells clients which authorization server issues its tokens with
// protected resource metadata (RFC 9728), built from its Validator (the
// resource is its Audience, the authorization server its Issuer), and
// points to it from every challenge with
// [ValidatorConfig].ResourceMetadataURL.
//
// A resource server in another process verifies tokens with [RemoteKeys],
// which fetches the authorization server's JWKS directly
// ([NewRemoteKeys]) or through RFC 8414 discovery ([DiscoverRemoteKeys],
// which requires the metadata's issuer to match exactly). Verifying a
// token does no I/O while the keys held are fresh. The set stays fresh
// for its Cache-Control max-age, clamped to [1 s, 24 h] (10 min without
// one), and is refreshed shortly before it expires, or, after a quiet
// spell past its expiry, fetched again before it is trusted; a token
// naming an unknown kid triggers a refetch, but at most one such fetch
// happens per RefreshCooldown (30 s) and concurrent callers share it, so
// forged kids cannot flood the authorization server. A failed fetch never
// discards the last good set: it is served up to MaxStale (24 h) past its
// expiry, then tokens are refused (fail closed). Every fetch uses https
// (http only to loopback hosts, or with AllowInsecureHTTP), a 5 s timeout,
// a 64 KiB body limit and at most 3 redirects; a set that publishes any
// private or symmetric key material, or holds no usable key, is refused
// whole, and the set held before with it; only RSA (≥ 2048 bits, with an
// explicit RS256 or PS256 alg), P-256 and Ed25519 keys are accepted.
//
// # Operating it
//
// Observability hangs off the audit stream: every issued token, failed
// authentication, refusal and rejected token is an [AuditEvent], and the
// pieces below are Auditors that watch it and pass it on, so the token
// path gains nothing but counter updates. The events end in a
// [JSONAuditor] (JSON lines, a few hundred nanoseconds an event), a
// [SlogAuditor] (the process's slog handler) or sqlstore's audit table.
//
//   - [NewDetector] raises an [Alert] on unusual patterns (failures for one
//     client, spraying from one address, lock-outs, a client from a new
//     network, an issuance spike, an expired secret or a disabled client
//     still trying), with a Recovered notice when the condition clears;
//     memory is bounded under hostile input. Alerts go to an [AlertSink]:
//     [NewSlogAlertSink] (the log) or [NewWebhookAlertSink] (signed JSON
//     POSTs, bounded queue and retries, never blocking a request).
//   - [NewMetrics] records OpenTelemetry metrics (tokens issued, failures
//     by reason, rate limiting, validations, latency, cache and limiter
//     size, alerts) through the OpenTelemetry metrics API only; without an
//     SDK configured it costs nothing.
//   - [NewReadinessHandler] answers 503 while the store or the key
//     provider does not answer within a short timeout; keep a separate
//     liveness check.
//   - Stores given an Auditor (memstore.WithAuditor, sqlstore.Config)
//     audit every client administration change, and sqlstore reads its
//     audit table back: per-client usage and the newest events.
//
// Clients are registered through the store's administration interface,
// [ClientManager], with secrets made by [NewSecret]: the store keeps only a
// one-way hash, and the plaintext is shown to the operator once.
//
// # Choices made
//
//   - Client secrets are stored as one-way hashes. Secrets made by
//     [GenerateSecret] carry 256 bits of entropy, so a salted SHA-256
//     ([HashSecret]) protects them and costs about a microsecond; secrets
//     of unknown strength should be hashed with [HashSecretArgon2id].
//     Imported hashes are bounded in cost (argon2id up to m=64 MiB, t=4,
//     p=4; bcrypt up to cost 12), and slow hashes are verified a few at a
//     time ([TokenHandlerConfig.SlowHashConcurrency]).
//   - Unknown client, wrong secret, expired secret, disabled client and
//     public client all get the same 401 invalid_client; the audit event
//     says which it was. An unknown id is verified against the secret
//     hashes of the last client the store returned, so it costs what a
//     known client costs, argon2id included. What remains measurable is
//     the store's own work: a SQL store decodes rows for a known id and
//     none for an unknown one (some microseconds), and a client whose
//     hashes differ in kind or number from the last one seen costs
//     differently until it becomes the profile. Client ids are not
//     secrets; the secret is.
//   - The token endpoint requires TLS (RFC 6749 §1.6, §3.2): a request
//     that did not arrive over TLS, directly or at a trusted proxy whose
//     forwarding header says https, is refused with invalid_request,
//     unless its peer is a loopback address (development) or the host sets
//     [TokenHandlerConfig.AllowInsecureHTTP]. Responses over TLS carry
//     Strict-Transport-Security.
//   - Behind a reverse proxy, the client's address and scheme come only
//     from the one header the operator names
//     ([TokenHandlerConfig.ForwardedHeader]), and only when the peer is
//     one of [TokenHandlerConfig.TrustedProxies]. The proxy must remove or
//     overwrite that header as clients send it: nginx, HAProxy and AWS ALB
//     append to X-Forwarded-For and pass a client's Forwarded header
//     through, so behind them name X-Forwarded-For.
//   - Tokens are stateless JWTs: issuing one writes nothing anywhere, and
//     there are no refresh tokens (RFC 6749 §4.4.3).
//   - Tokens are signed with the signing key's algorithm: HS256 (the
//     default), ES256, EdDSA (Ed25519), RS256 or PS256
//     ([SupportedAlgorithms]). With HS256 every party that holds the key
//     can both verify and mint tokens, so share it only with resource
//     servers you trust as much as the authorization server; with an
//     asymmetric key ([GenerateSigningKey], [ParseKeyPEM], [ParseJWK],
//     [NewSignerKey] for a KMS or HSM) resource servers hold only the
//     public key. Each key verifies only tokens whose header names its own
//     algorithm (RFC 8725 §3.1), so a verification set may mix HS256 and
//     asymmetric keys.
//   - ES256 signatures are malleable: (R, n−S) verifies wherever (R, S)
//     does, so one token may travel under two strings. Identify tokens by
//     their jti, never by their string.
//   - Parameters are read only from the request body, never from the URL
//     query, and a repeated parameter is refused (RFC 6749 §3.2), except
//     an RFC 8707 resource repeated with the same value. One sent without a
//     value counts as omitted (RFC 6749 §3.1). Bearer
//     tokens are read only from the Authorization header.
//   - Failed authentications are rate limited per client id and address
//     (5 in a row, one forgiven every 12 s) and per address (20, one every
//     3 s) by a [Limiter]. Every attempt is reserved before any store
//     lookup or hashing and released with its outcome, so the burst holds
//     however many guesses arrive at once; a locked-out request gets 429
//     with Retry-After, and a client with the right secret from another
//     address is unaffected. A client that authenticated from an address
//     within the last 24 hours is not locked out by other clients'
//     failures from that address (a NAT, a proxy), only by its own.
//     [LimiterInvalidClientID] is the id under which impossible client ids
//     share one bucket per address. A limiter that fails refuses the
//     request with a server error: the handler fails closed.
//   - A stalled store or limiter never holds a request open-ended:
//     waiting for a turn (at most
//     [TokenHandlerConfig.MaxConcurrentRequests] requests are handled at
//     once), then reading the client and reserving an attempt, each end
//     within [TokenHandlerConfig.StoreTimeout] (5 s); ending the attempt
//     (the limiter's Release, which must run even when the request has
//     run out of time, or a guess would go uncounted) gets StoreTimeout
//     of its own past that. So a request waits at most StoreTimeout for
//     a stalled store, twice that when the limiter stalls after granting
//     the attempt, and three times that at the most when it also waited
//     for its turn; past any of these the answer is 503
//     temporarily_unavailable with Retry-After, never a 500.
//   - No token lives longer than [MaxClientTokenTTL] (24 h).
//   - Rate-limited requests are answered with the RFC 6749 code
//     temporarily_unavailable: no registered code means "too many failed
//     attempts", and this one tells a client to retry later without saying
//     whether the client id exists.
package m2mauth
