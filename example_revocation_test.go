package m2mauth_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"time"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// examplePost posts form to path on h with client_secret_basic, as a
// client would, and returns the status and body.
func examplePost(h http.Handler, path, id, secret string, form url.Values) (int, string) {
	r := httptest.NewRequest(http.MethodPost, "https://auth.example.com"+path, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

// ExampleTokenHandler_RevocationHandler mounts the revocation endpoint
// (RFC 7009) beside the token endpoint: a client gets a token, then
// revokes it, and the introspection endpoint (RFC 7662) sees it go.
func ExampleTokenHandler_RevocationHandler() {
	ctx := context.Background()
	key, err := m2mauth.NewHS256Key("2026-11", []byte("use-32-or-more-random-bytes-here"))
	if err != nil {
		log.Fatal(err)
	}
	keys, err := m2mauth.NewStaticKeys(key)
	if err != nil {
		log.Fatal(err)
	}
	store := memstore.New() // a ClientStore, a Revoker and a RevocationSource
	secret, hashed, err := m2mauth.NewSecret(time.Now(), time.Time{})
	if err != nil {
		log.Fatal(err)
	}
	err = store.CreateClient(ctx, &m2mauth.Client{
		ID:      "reporting-service",
		Secrets: []m2mauth.Secret{hashed},
		Grants:  map[string]m2mauth.Scopes{"https://api.example.com": {"read:builders"}},
		// Lets it introspect any token, not only those for itself.
		CanIntrospect: true,
	})
	if err != nil {
		log.Fatal(err)
	}

	quiet := m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})
	tokens, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          "https://auth.example.com",
		DefaultAudience: "https://api.example.com",
		Auditor:         quiet,
	})
	if err != nil {
		log.Fatal(err)
	}
	revoke, err := tokens.RevocationHandler(store)
	if err != nil {
		log.Fatal(err)
	}
	introspect, err := tokens.IntrospectionHandler(m2mauth.IntrospectionConfig{Revocations: store})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/oauth/token", tokens)
	mux.Handle("/oauth/revoke", revoke)
	mux.Handle("/oauth/introspect", introspect)

	_, body := examplePost(mux, "/oauth/token", "reporting-service", secret, url.Values{"grant_type": {"client_credentials"}})
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal([]byte(body), &tok); err != nil {
		log.Fatal(err)
	}

	status, body := examplePost(mux, "/oauth/introspect", "reporting-service", secret, url.Values{"token": {tok.AccessToken}})
	fmt.Println(status, strings.Contains(body, `"active":true`))
	status, body = examplePost(mux, "/oauth/revoke", "reporting-service", secret, url.Values{"token": {tok.AccessToken}, "token_type_hint": {"access_token"}})
	fmt.Println(status, body)
	status, body = examplePost(mux, "/oauth/introspect", "reporting-service", secret, url.Values{"token": {tok.AccessToken}})
	fmt.Println(status, body)
	// Output:
	// 200 true
	// 200 {}
	// 200 {"active":false}
}

// ExampleTokenHandler_IntrospectionHandler mounts the introspection
// endpoint (RFC 7662) for a resource server that cannot verify tokens
// itself: it is registered as a client whose id is its audience, so it
// may introspect the tokens issued for it.
func ExampleTokenHandler_IntrospectionHandler() {
	ctx := context.Background()
	key, _ := m2mauth.NewHS256Key("2026-11", []byte("use-32-or-more-random-bytes-here"))
	keys, _ := m2mauth.NewStaticKeys(key)
	store := memstore.New()
	clientSecret, clientHash, _ := m2mauth.NewSecret(time.Now(), time.Time{})
	apiSecret, apiHash, _ := m2mauth.NewSecret(time.Now(), time.Time{})
	store.CreateClient(ctx, &m2mauth.Client{
		ID:      "reporting-service",
		Secrets: []m2mauth.Secret{clientHash},
		Grants:  map[string]m2mauth.Scopes{"https://api.example.com": {"read:builders"}},
	})
	store.CreateClient(ctx, &m2mauth.Client{
		ID:      "https://api.example.com", // the resource server
		Secrets: []m2mauth.Secret{apiHash},
	})
	quiet := m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})
	tokens, _ := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer: "https://auth.example.com", DefaultAudience: "https://api.example.com", Auditor: quiet,
	})
	introspect, err := tokens.IntrospectionHandler(m2mauth.IntrospectionConfig{
		Revocations: store,
		Rate:        50, // introspections per second and resource server
		Burst:       100,
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/oauth/token", tokens)
	mux.Handle("/oauth/introspect", introspect)

	_, body := examplePost(mux, "/oauth/token", "reporting-service", clientSecret, url.Values{"grant_type": {"client_credentials"}})
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	json.Unmarshal([]byte(body), &tok)

	// The resource server asks about the token it was sent.
	status, body := examplePost(mux, "/oauth/introspect", "https://api.example.com", apiSecret, url.Values{"token": {tok.AccessToken}})
	var info struct {
		Active    bool   `json:"active"`
		ClientID  string `json:"client_id"`
		Scope     string `json:"scope"`
		Audience  string `json:"aud"`
		TokenType string `json:"token_type"`
	}
	json.Unmarshal([]byte(body), &info)
	fmt.Println(status, info.Active, info.ClientID, info.Scope, info.Audience, info.TokenType)

	// To a client that is neither the token's audience nor allowed to
	// introspect any token, it is inactive (RFC 7662 §2.2), as a forged
	// one would be.
	status, body = examplePost(mux, "/oauth/introspect", "reporting-service", clientSecret, url.Values{"token": {tok.AccessToken}})
	fmt.Println(status, body)
	// Output:
	// 200 true reporting-service read:builders https://api.example.com Bearer
	// 200 {"active":false}
}
