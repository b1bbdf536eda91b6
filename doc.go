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
//     Unknown clients are verified against a dummy hash so response time
//     does not reveal which client ids exist.
//   - Unknown client, wrong secret, expired secret and disabled client all
//     get the same 401 invalid_client; the audit event says which it was.
//   - Tokens are stateless JWTs: issuing one writes nothing anywhere, and
//     there are no refresh tokens (RFC 6749 §4.4.3).
//   - With HS256 (the default) every party that holds the key can both
//     verify and mint tokens, so share it only with resource servers you
//     trust as much as the authorization server itself.
//   - Parameters are read only from the request body, never from the URL
//     query, and a repeated parameter is refused (RFC 6749 §3.2). Bearer
//     tokens are read only from the Authorization header.
//   - Failed authentications are rate limited per client id and address and
//     per address ([RateLimiter]); a locked-out request gets 429 with
//     Retry-After before any store lookup or hashing, and a client with the
//     right secret from another address is unaffected.
//   - Rate-limited requests are answered with the RFC 6749 code
//     temporarily_unavailable: no registered code means "too many failed
//     attempts", and this one tells a client to retry later without saying
//     whether the client id exists.
package m2mauth
