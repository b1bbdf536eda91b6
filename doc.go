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
//	mux.Handle("POST /oauth/token", h)
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
//   - With HS256 (the default) every party that holds the key can both
//     verify and mint tokens, so share it only with resource servers you
//     trust as much as the authorization server itself.
//   - Parameters are read only from the request body, never from the URL
//     query, and a repeated parameter is refused (RFC 6749 §3.2). Bearer
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
//   - A stalled store or limiter holds a request at most
//     [TokenHandlerConfig.StoreTimeout] (5 s), and at most
//     [TokenHandlerConfig.MaxConcurrentRequests] requests are handled at
//     once; past either, the answer is 503 temporarily_unavailable with
//     Retry-After, never a 500 or an open-ended wait.
//   - No token lives longer than [MaxClientTokenTTL] (24 h).
//   - Rate-limited requests are answered with the RFC 6749 code
//     temporarily_unavailable: no registered code means "too many failed
//     attempts", and this one tells a client to retry later without saying
//     whether the client id exists.
package m2mauth
