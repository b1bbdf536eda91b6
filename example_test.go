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

// ExampleTokenHandler mounts the token endpoint on a mux, registers a
// client, and gets a token with client_secret_basic.
func ExampleTokenHandler() {
	ctx := context.Background()

	// The signing key: 32+ random bytes, kept secret (a file, a secret
	// manager, an environment variable).
	key, err := m2mauth.NewHS256Key("2026-11", []byte("use-32-or-more-random-bytes-here"))
	if err != nil {
		log.Fatal(err)
	}
	keys, err := m2mauth.NewStaticKeys(key)
	if err != nil {
		log.Fatal(err)
	}

	// A client with one secret; the store keeps only its hash.
	store := memstore.New()
	secret, hashed, err := m2mauth.NewSecret(time.Now(), time.Time{})
	if err != nil {
		log.Fatal(err)
	}
	err = store.CreateClient(ctx, &m2mauth.Client{
		ID:      "reporting-service",
		Secrets: []m2mauth.Secret{hashed},
		Grants: map[string]m2mauth.Scopes{
			"https://api.example.com": {"read:builders", "read:subcontractors"},
		},
	})
	if err != nil {
		log.Fatal(err)
	}

	tokens, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          "https://auth.example.com",
		DefaultAudience: "https://api.example.com",
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	// On the path alone: the handler answers every method but POST
	// itself, with 405, Allow: POST and an RFC 6749 §5.2 JSON error,
	// where a "POST /oauth/token" pattern would leave that to the mux's
	// plain-text 405.
	mux.Handle("/oauth/token", tokens)

	// A client's request, as golang.org/x/oauth2/clientcredentials sends it.
	body := url.Values{"grant_type": {"client_credentials"}, "scope": {"read:builders"}}
	r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader(body.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.SetBasicAuth(url.QueryEscape("reporting-service"), url.QueryEscape(secret))
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)

	var resp struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int    `json:"expires_in"`
		Scope       string `json:"scope"`
	}
	if err := json.NewDecoder(w.Body).Decode(&resp); err != nil {
		log.Fatal(err)
	}
	fmt.Println(w.Code, resp.TokenType, resp.ExpiresIn, resp.Scope, strings.Count(resp.AccessToken, "."))

	// Any other method.
	w = httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "https://m2mauth.test/oauth/token", nil))
	fmt.Println(w.Code, w.Header().Get("Allow"), w.Header().Get("Content-Type"), strings.TrimSpace(w.Body.String()))
	// Output:
	// 200 Bearer 3600 read:builders 2
	// 405 POST application/json {"error":"invalid_request","error_description":"this endpoint accepts only POST"}
}

// ExampleValidator_RequireScopes shows how a host application unit-tests
// its own protected route: a memstore with one client, the token handler
// and the middleware wired in a few lines, a token obtained and a request
// served with httptest.
func ExampleValidator_RequireScopes() {
	ctx := context.Background()
	key, _ := m2mauth.NewHS256Key("test", []byte("test-key-test-key-test-key-test-key"))
	keys, _ := m2mauth.NewStaticKeys(key)
	store := memstore.New()
	secret, hashed, _ := m2mauth.NewSecret(time.Now(), time.Time{})
	store.CreateClient(ctx, &m2mauth.Client{
		ID:      "test-client",
		Secrets: []m2mauth.Secret{hashed},
		Grants:  map[string]m2mauth.Scopes{"https://api.example.com": {"read:builders"}},
	})
	quiet := m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})
	tokens, _ := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer: "https://auth.example.com", DefaultAudience: "https://api.example.com", Auditor: quiet,
	})
	v, _ := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
		Issuer: "https://auth.example.com", Audience: "https://api.example.com",
	})

	// The application's route, as it is mounted in production.
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", tokens)
	mux.Handle("GET /api/builders", v.RequireScopes("read:builders")(http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) {
			claims, _ := m2mauth.ClaimsFromContext(r.Context())
			fmt.Fprintf(w, "builders for %s", claims.ClientID)
		})))

	// Get a token.
	r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.SetBasicAuth("test-client", secret)
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	json.NewDecoder(w.Body).Decode(&tok)

	// Call the route with it, and without it.
	r = httptest.NewRequest(http.MethodGet, "/api/builders", nil)
	r.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	w = httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	fmt.Println(w.Code, w.Body.String())

	r = httptest.NewRequest(http.MethodGet, "/api/builders", nil)
	w = httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	fmt.Println(w.Code, w.Header().Get("WWW-Authenticate"))
	// Output:
	// 200 builders for test-client
	// 401 Bearer realm="m2mauth"
}

// ExampleClientSharer shows the contract of a store that lends clients:
// while a client is unchanged, lookups share one Client, which nobody
// modifies; a change gives the next lookup a new one, and the Client
// lent before stays as it was.
func ExampleClientSharer() {
	ctx := context.Background()
	store := memstore.New()
	if err := store.CreateClient(ctx, &m2mauth.Client{ID: "billing", Public: true}); err != nil {
		log.Fatal(err)
	}

	var s m2mauth.ClientStore = store
	sharer, ok := s.(m2mauth.ClientSharer)
	fmt.Println("lends clients:", ok)
	first, err := sharer.SharedClient(ctx, "billing")
	if err != nil {
		log.Fatal(err)
	}
	again, err := sharer.SharedClient(ctx, "billing")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("shared while unchanged:", first == again)

	if err := store.SetDisabled(ctx, "billing", true); err != nil {
		log.Fatal(err)
	}
	changed, err := sharer.SharedClient(ctx, "billing")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("after a change:", changed == first, changed.Disabled, first.Disabled)
	// Output:
	// lends clients: true
	// shared while unchanged: true
	// after a change: false true false
}
