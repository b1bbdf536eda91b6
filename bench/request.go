// Package bench measures m2mauth's token endpoint and bearer-token
// middleware against the Go libraries a project would otherwise use:
// ory/fosite and go-oauth2/oauth2 for issuing tokens, auth0's
// go-jwt-middleware and golang-jwt/jwt for checking them, and minimal
// hand-written go-jose handlers as the floor.
//
// Every implementation is built here from the same client, key, issuer,
// audience and request, so the benchmarks in bench_test.go, the loopback
// load generator in cmd/load and the sanity tests compare like with like.
// The package is a separate module so that the peer libraries never enter
// m2mauth's own dependencies.
package bench

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
)

// The request every token endpoint answers, and the claims every validator
// expects.
const (
	// Issuer is the "iss" of every token.
	Issuer = "https://auth.example.com"
	// Audience is the audience every client is granted and every validator
	// expects.
	Audience = "https://api.example.com"
	// ClientID is the one registered client.
	ClientID = "bench-client"
	// Scope is the scope requested at the token endpoint and required by
	// every protected route.
	Scope = "read"
	// KeyID is the kid of the HS256 key.
	KeyID = "k1"
	// TokenBody is the token request body.
	TokenBody = "grant_type=client_credentials&scope=" + Scope
	// TokenPath and RoutePath are the paths requests are sent to.
	TokenPath = "/oauth/token"
	RoutePath = "/api/builders"
)

// hmacKey is the HS256 key, 32 bytes.
const hmacKey = "0123456789abcdef0123456789abcdef"

// Key returns a copy of the HS256 key every implementation signs or
// verifies with.
func Key() []byte { return []byte(hmacKey) }

// basicAuth returns the Authorization header value for client_secret_basic.
func basicAuth(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))
}

// NewTokenRequest returns the token request, POST form
// grant_type=client_credentials&scope=read with the given Basic
// Authorization value, as an in-process server request.
func NewTokenRequest(authorization string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, TokenPath, strings.NewReader(TokenBody))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", authorization)
	return r
}

// NewRouteRequest returns GET /api/builders carrying token as a bearer
// token, as an in-process server request.
func NewRouteRequest(token string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, RoutePath, nil)
	r.Header.Set("Authorization", "Bearer "+token)
	return r
}

// hasScope reports whether the space-delimited scope list holds want; the
// same check the go-jose floor of the root benchmarks makes.
func hasScope(scopes, want string) bool {
	return strings.Contains(" "+scopes+" ", " "+want+" ")
}
