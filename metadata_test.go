package m2mauth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

func metadataKeys(t testing.TB) *m2mauth.StaticKeys {
	t.Helper()
	keys, err := m2mauth.NewStaticKeys(jwksHMAC(t, "k1"))
	require.NoError(t, err)
	return keys
}

func metadataTokenHandler(t testing.TB, issuer string) *m2mauth.TokenHandler {
	t.Helper()
	h, err := m2mauth.NewTokenHandler(memstore.New(), metadataKeys(t), m2mauth.TokenHandlerConfig{Issuer: issuer})
	require.NoError(t, err)
	return h
}

func metadataValidator(t testing.TB, issuer, audience string) *m2mauth.Validator {
	t.Helper()
	v, err := m2mauth.NewValidator(metadataKeys(t), m2mauth.ValidatorConfig{Issuer: issuer, Audience: audience})
	require.NoError(t, err)
	return v
}

// metadataGet fetches the document at url through mux, as a client
// following RFC 8414 §3.1 or RFC 9728 §3.1 would.
func metadataGet(t *testing.T, h http.Handler, method, url string, header ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestAuthorizationServerMetadataMembers(t *testing.T) {
	tests := []struct {
		name   string
		issuer string
		cfg    m2mauth.AuthorizationServerMetadataConfig
		want   string
	}{
		{
			name:   "RFC 8414 §2: required members only; nothing unconfigured",
			issuer: "https://auth.example.com",
			cfg:    m2mauth.AuthorizationServerMetadataConfig{TokenEndpoint: "https://auth.example.com/oauth/token"},
			want: `{
				"issuer": "https://auth.example.com",
				"token_endpoint": "https://auth.example.com/oauth/token",
				"response_types_supported": [],
				"grant_types_supported": ["client_credentials"],
				"token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]
			}`,
		},
		{
			name:   "RFC 8414 §2: every configured member",
			issuer: "https://auth.example.com/tenant1",
			cfg: m2mauth.AuthorizationServerMetadataConfig{
				TokenEndpoint:         "https://auth.example.com/tenant1/oauth/token",
				JWKSURI:               "https://auth.example.com/tenant1/.well-known/jwks.json",
				ScopesSupported:       []string{"read:builders", "write:builders", "read:builders"},
				RevocationEndpoint:    "https://auth.example.com/tenant1/oauth/revoke",
				IntrospectionEndpoint: "https://auth.example.com/tenant1/oauth/introspect?v=2&x=1",
			},
			want: `{
				"issuer": "https://auth.example.com/tenant1",
				"token_endpoint": "https://auth.example.com/tenant1/oauth/token",
				"jwks_uri": "https://auth.example.com/tenant1/.well-known/jwks.json",
				"scopes_supported": ["read:builders", "write:builders"],
				"response_types_supported": [],
				"grant_types_supported": ["client_credentials"],
				"token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
				"revocation_endpoint": "https://auth.example.com/tenant1/oauth/revoke",
				"revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
				"introspection_endpoint": "https://auth.example.com/tenant1/oauth/introspect?v=2&x=1",
				"introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]
			}`,
		},
		{
			name:   "RFC 8414 §3.2: an empty scope list is omitted",
			issuer: "https://auth.example.com",
			cfg:    m2mauth.AuthorizationServerMetadataConfig{TokenEndpoint: "https://auth.example.com/oauth/token", ScopesSupported: []string{}},
			want: `{
				"issuer": "https://auth.example.com",
				"token_endpoint": "https://auth.example.com/oauth/token",
				"response_types_supported": [],
				"grant_types_supported": ["client_credentials"],
				"token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]
			}`,
		},
		{
			name:   "RFC 8414 §3.3: the issuer exactly as configured, trailing slash kept",
			issuer: "https://auth.example.com/",
			cfg:    m2mauth.AuthorizationServerMetadataConfig{TokenEndpoint: "http://127.0.0.1:8080/oauth/token"},
			want: `{
				"issuer": "https://auth.example.com/",
				"token_endpoint": "http://127.0.0.1:8080/oauth/token",
				"response_types_supported": [],
				"grant_types_supported": ["client_credentials"],
				"token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]
			}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			md, err := m2mauth.NewAuthorizationServerMetadataHandler(metadataTokenHandler(t, tc.issuer), tc.cfg)
			require.NoError(t, err)
			path, err := m2mauth.AuthorizationServerMetadataPath(tc.issuer)
			require.NoError(t, err)
			mux := http.NewServeMux()
			mux.Handle("GET "+path, md)

			w := metadataGet(t, mux, http.MethodGet, "https://auth.example.com"+path)
			require.Equal(t, http.StatusOK, w.Code, "RFC 8414 §3.2: 200")
			assert.Equal(t, "application/json", w.Header().Get("Content-Type"), "RFC 8414 §3.2")
			assert.Equal(t, "public, max-age=3600", w.Header().Get("Cache-Control"))
			assert.NotEmpty(t, w.Header().Get("ETag"))
			assert.JSONEq(t, tc.want, w.Body.String())
			assert.NotContains(t, w.Body.String(), `\u0026`, "URLs are not HTML-escaped")

			var doc struct {
				Issuer string `json:"issuer"`
			}
			require.NoError(t, json.Unmarshal(w.Body.Bytes(), &doc))
			assert.Equal(t, tc.issuer, doc.Issuer, "RFC 8414 §3.3: identical to the issuer the URL was built from")
		})
	}
}

func TestNewAuthorizationServerMetadataHandlerRefuses(t *testing.T) {
	type cfg = m2mauth.AuthorizationServerMetadataConfig
	const iss, te = "https://auth.example.com", "https://auth.example.com/oauth/token"
	tests := []struct {
		name   string
		issuer string
		cfg    cfg
		want   string
	}{
		{"RFC 8414 §2: token_endpoint is required", iss, cfg{}, "TokenEndpoint is required"},
		{"RFC 8414 §2: a relative token endpoint", iss, cfg{TokenEndpoint: "/oauth/token"}, "not an absolute URL"},
		{"a token endpoint without host", iss, cfg{TokenEndpoint: "https:///oauth/token"}, "not an absolute URL"},
		{"RFC 6749 §3.2: a token endpoint with a fragment", iss, cfg{TokenEndpoint: te + "#x"}, "fragment"},
		{"RFC 6749 §3.2: an empty fragment", iss, cfg{TokenEndpoint: te + "#"}, "fragment"},
		{"RFC 6749 §3.2.1: http on a public host", iss, cfg{TokenEndpoint: "http://auth.example.com/oauth/token"}, "https"},
		{"http on a private address", iss, cfg{TokenEndpoint: "http://10.0.0.1/oauth/token"}, "https"},
		{"http on a host named like localhost", iss, cfg{TokenEndpoint: "http://localhost.example.com/oauth/token"}, "https"},
		{"another scheme", iss, cfg{TokenEndpoint: "ftp://auth.example.com/oauth/token"}, "https"},
		{"user info in a URL", iss, cfg{TokenEndpoint: "https://u:p@auth.example.com/oauth/token"}, "user info"},
		{"RFC 8414 §2: a relative jwks_uri", iss, cfg{TokenEndpoint: te, JWKSURI: "jwks.json"}, "JWKSURI"},
		{"RFC 8414 §2: an http jwks_uri", iss, cfg{TokenEndpoint: te, JWKSURI: "http://auth.example.com/jwks.json"}, "JWKSURI"},
		{"a revocation endpoint with a fragment", iss, cfg{TokenEndpoint: te, RevocationEndpoint: iss + "/revoke#r"}, "RevocationEndpoint"},
		{"a relative introspection endpoint", iss, cfg{TokenEndpoint: te, IntrospectionEndpoint: "introspect"}, "IntrospectionEndpoint"},
		{"RFC 6749 §3.3: a scope with a space", iss, cfg{TokenEndpoint: te, ScopesSupported: []string{"read builders"}}, "ScopesSupported"},
		{"RFC 6749 §3.3: an empty scope", iss, cfg{TokenEndpoint: te, ScopesSupported: []string{""}}, "ScopesSupported"},
		{"MaxAge over 24h", iss, cfg{TokenEndpoint: te, MaxAge: 48 * time.Hour}, "MaxAge"},
		{"RFC 8414 §2: an issuer that is not a URL", "auth-server", cfg{TokenEndpoint: te}, "issuer"},
		{"RFC 8414 §2: an http issuer", "http://auth.example.com", cfg{TokenEndpoint: te}, "issuer"},
		{"RFC 8414 §2: an issuer with a query", iss + "?tenant=1", cfg{TokenEndpoint: te}, "query"},
		{"RFC 8414 §2: an issuer with an empty query", iss + "?", cfg{TokenEndpoint: te}, "query"},
		{"RFC 8414 §2: an issuer with a fragment", iss + "#t", cfg{TokenEndpoint: te}, "fragment"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			md, err := m2mauth.NewAuthorizationServerMetadataHandler(metadataTokenHandler(t, tc.issuer), tc.cfg)
			require.Error(t, err)
			assert.Nil(t, md)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), "u:p@", "passwords in URLs are not repeated")
		})
	}
	t.Run("nil TokenHandler", func(t *testing.T) {
		_, err := m2mauth.NewAuthorizationServerMetadataHandler(nil, cfg{TokenEndpoint: te})
		assert.ErrorContains(t, err, "nil TokenHandler")
	})
	t.Run("http on loopback is accepted for development", func(t *testing.T) {
		for _, u := range []string{"http://localhost:8080", "http://LOCALHOST", "http://127.0.0.1:9000/t", "http://127.1.2.3", "http://[::1]:8080"} {
			_, err := m2mauth.NewAuthorizationServerMetadataHandler(metadataTokenHandler(t, u),
				cfg{TokenEndpoint: u + "/oauth/token", JWKSURI: u + "/jwks.json"})
			assert.NoError(t, err, u)
		}
	})
}

func TestAuthorizationServerMetadataPath(t *testing.T) {
	tests := []struct {
		name, issuer, want string
	}{
		{"RFC 8414 §3.1: no path", "https://a.example", "/.well-known/oauth-authorization-server"},
		{"RFC 8414 §3.1: a lone slash is no path", "https://a.example/", "/.well-known/oauth-authorization-server"},
		{"RFC 8414 §3.1: a path is appended", "https://a.example/t1", "/.well-known/oauth-authorization-server/t1"},
		{"RFC 8414 §3.1: a terminating slash is removed", "https://a.example/t1/", "/.well-known/oauth-authorization-server/t1"},
		{"RFC 8414 §3.1: a deeper path", "https://a.example/issuer1/tenant2", "/.well-known/oauth-authorization-server/issuer1/tenant2"},
		{"the port is not part of the path", "https://a.example:8443/t1", "/.well-known/oauth-authorization-server/t1"},
		{"an escaped path stays escaped", "https://a.example/t%201", "/.well-known/oauth-authorization-server/t%201"},
		{"http on loopback", "http://localhost:8080/dev", "/.well-known/oauth-authorization-server/dev"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := m2mauth.AuthorizationServerMetadataPath(tc.issuer)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	for _, bad := range []string{"", "a.example", "/t1", "https://a.example/t1?x=1", "https://a.example/t1#f", "http://a.example/t1", "https://user@a.example"} {
		t.Run("refused "+bad, func(t *testing.T) {
			_, err := m2mauth.AuthorizationServerMetadataPath(bad)
			assert.Error(t, err)
		})
	}
}

func TestProtectedResourceMetadataMembers(t *testing.T) {
	tests := []struct {
		name     string
		issuer   string
		audience string
		cfg      m2mauth.ProtectedResourceMetadataConfig
		want     string
	}{
		{
			name:     "RFC 9728 §2: the validator's resource, issuer and bearer method; nothing unconfigured",
			issuer:   "https://auth.example.com",
			audience: "https://api.example.com",
			want: `{
				"resource": "https://api.example.com",
				"authorization_servers": ["https://auth.example.com"],
				"bearer_methods_supported": ["header"]
			}`,
		},
		{
			name:     "RFC 9728 §2: every configured member",
			issuer:   "https://auth.example.com/tenant1",
			audience: "https://api.example.com/builders",
			cfg: m2mauth.ProtectedResourceMetadataConfig{
				JWKSURI:         "https://api.example.com/builders/jwks.json",
				ScopesSupported: []string{"read:builders", "write:builders"},
			},
			want: `{
				"resource": "https://api.example.com/builders",
				"authorization_servers": ["https://auth.example.com/tenant1"],
				"jwks_uri": "https://api.example.com/builders/jwks.json",
				"scopes_supported": ["read:builders", "write:builders"],
				"bearer_methods_supported": ["header"]
			}`,
		},
		{
			name:     "RFC 9728 §3.2: an empty scope list is omitted",
			issuer:   "https://auth.example.com",
			audience: "https://api.example.com",
			cfg:      m2mauth.ProtectedResourceMetadataConfig{ScopesSupported: []string{}},
			want: `{
				"resource": "https://api.example.com",
				"authorization_servers": ["https://auth.example.com"],
				"bearer_methods_supported": ["header"]
			}`,
		},
		{
			name:     "RFC 9728 §3.3: the resource exactly as configured, trailing slash kept",
			issuer:   "http://localhost:8080",
			audience: "http://localhost:9090/api/",
			want: `{
				"resource": "http://localhost:9090/api/",
				"authorization_servers": ["http://localhost:8080"],
				"bearer_methods_supported": ["header"]
			}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			md, err := m2mauth.NewProtectedResourceMetadataHandler(metadataValidator(t, tc.issuer, tc.audience), tc.cfg)
			require.NoError(t, err)
			path, err := m2mauth.ProtectedResourceMetadataPath(tc.audience)
			require.NoError(t, err)
			mux := http.NewServeMux()
			mux.Handle("GET "+path, md)

			w := metadataGet(t, mux, http.MethodGet, "https://api.example.com"+path)
			require.Equal(t, http.StatusOK, w.Code, "RFC 9728 §3.2: 200")
			assert.Equal(t, "application/json", w.Header().Get("Content-Type"), "RFC 9728 §3.2")
			assert.Equal(t, "public, max-age=3600", w.Header().Get("Cache-Control"))
			assert.JSONEq(t, tc.want, w.Body.String())
			assert.NotContains(t, w.Body.String(), "resource_signing_alg_values_supported",
				"RFC 9728 §2: that member is for signed responses, which the validator does not make")

			var doc struct {
				Resource string `json:"resource"`
			}
			require.NoError(t, json.Unmarshal(w.Body.Bytes(), &doc))
			assert.Equal(t, tc.audience, doc.Resource, "RFC 9728 §3.3: identical to the identifier the URL was built from")
		})
	}
}

func TestNewProtectedResourceMetadataHandlerRefuses(t *testing.T) {
	const issuer, audience = "https://auth.example.com", "https://api.example.com"
	tests := []struct {
		name             string
		issuer, audience string
		cfg              m2mauth.ProtectedResourceMetadataConfig
		want             string
	}{
		{"RFC 9728 §1.2: a resource that is not a URL", issuer, "builders-api", m2mauth.ProtectedResourceMetadataConfig{}, "resource"},
		{"RFC 9728 §1.2: a relative resource", issuer, "/api", m2mauth.ProtectedResourceMetadataConfig{}, "not an absolute URL"},
		{"RFC 9728 §1.2: an http resource on a public host", issuer, "http://api.example.com", m2mauth.ProtectedResourceMetadataConfig{}, "https"},
		{"RFC 9728 §1.2: a resource with a fragment", issuer, "https://api.example.com#v1", m2mauth.ProtectedResourceMetadataConfig{}, "fragment"},
		{"RFC 8707 §2: a resource with a query", issuer, "https://api.example.com?v=1", m2mauth.ProtectedResourceMetadataConfig{}, "query"},
		{"RFC 9728 §2: an authorization server that is not an RFC 8414 issuer", "auth-server", audience, m2mauth.ProtectedResourceMetadataConfig{}, "issuer"},
		{"RFC 9728 §2: an http authorization server", "http://auth.example.com", audience, m2mauth.ProtectedResourceMetadataConfig{}, "issuer"},
		{"RFC 9728 §2: a relative jwks_uri", issuer, audience, m2mauth.ProtectedResourceMetadataConfig{JWKSURI: "/jwks.json"}, "JWKSURI"},
		{"RFC 9728 §2: an http jwks_uri", issuer, audience, m2mauth.ProtectedResourceMetadataConfig{JWKSURI: "http://api.example.com/jwks.json"}, "JWKSURI"},
		{"RFC 6749 §3.3: a scope with a quote", issuer, audience, m2mauth.ProtectedResourceMetadataConfig{ScopesSupported: []string{`read"`}}, "ScopesSupported"},
		{"MaxAge over 24h", issuer, audience, m2mauth.ProtectedResourceMetadataConfig{MaxAge: 25 * time.Hour}, "MaxAge"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			md, err := m2mauth.NewProtectedResourceMetadataHandler(metadataValidator(t, tc.issuer, tc.audience), tc.cfg)
			require.Error(t, err)
			assert.Nil(t, md)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	t.Run("nil Validator", func(t *testing.T) {
		_, err := m2mauth.NewProtectedResourceMetadataHandler(nil, m2mauth.ProtectedResourceMetadataConfig{})
		assert.ErrorContains(t, err, "nil Validator")
	})
}

func TestProtectedResourceMetadataPath(t *testing.T) {
	tests := []struct {
		name, resource, want string
	}{
		{"RFC 9728 §3.1: no path", "https://resource.example.com", "/.well-known/oauth-protected-resource"},
		{"RFC 9728 §3.1: a lone slash is no path", "https://resource.example.com/", "/.well-known/oauth-protected-resource"},
		{"RFC 9728 §3.1: a path is appended", "https://resource.example.com/resource1", "/.well-known/oauth-protected-resource/resource1"},
		{"RFC 9728 §3.1: a terminating slash is removed", "https://resource.example.com/resource1/", "/.well-known/oauth-protected-resource/resource1"},
		{"a deeper path", "https://api.example.com/v1/builders", "/.well-known/oauth-protected-resource/v1/builders"},
		{"http on loopback", "http://127.0.0.1:8081/api", "/.well-known/oauth-protected-resource/api"},
		{"http on IPv4-mapped loopback", "http://[::ffff:127.0.0.1]:8081/api", "/.well-known/oauth-protected-resource/api"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := m2mauth.ProtectedResourceMetadataPath(tc.resource)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	for _, bad := range []string{"", "api", "/api", "https://api.example.com/a#f", "https://api.example.com/a?q=1", "http://api.example.com/a"} {
		t.Run("refused "+bad, func(t *testing.T) {
			_, err := m2mauth.ProtectedResourceMetadataPath(bad)
			assert.Error(t, err)
		})
	}
}

func TestMetadataHandlerHTTP(t *testing.T) {
	md, err := m2mauth.NewProtectedResourceMetadataHandler(metadataValidator(t, "https://auth.example.com", "https://api.example.com"),
		m2mauth.ProtectedResourceMetadataConfig{MaxAge: 10 * time.Minute})
	require.NoError(t, err)
	const url = "https://api.example.com/.well-known/oauth-protected-resource"
	get := metadataGet(t, md, http.MethodGet, url)
	require.Equal(t, http.StatusOK, get.Code)
	etag := get.Header().Get("ETag")
	require.NotEmpty(t, etag)
	assert.Equal(t, "public, max-age=600", get.Header().Get("Cache-Control"))
	assert.Equal(t, etag, metadataGet(t, md, http.MethodGet, url).Header().Get("ETag"), "stable")

	t.Run("RFC 9110 §9.3.2 HEAD", func(t *testing.T) {
		w := metadataGet(t, md, http.MethodHead, url)
		assert.Equal(t, http.StatusOK, w.Code)
		assert.Empty(t, w.Body.String())
		assert.Equal(t, fmt.Sprint(get.Body.Len()), w.Header().Get("Content-Length"))
		assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
	})
	t.Run("RFC 9110 §13.1.2 If-None-Match", func(t *testing.T) {
		w := metadataGet(t, md, http.MethodGet, url, "If-None-Match", `"x", W/`+etag)
		assert.Equal(t, http.StatusNotModified, w.Code)
		assert.Empty(t, w.Body.String())
		assert.Equal(t, etag, w.Header().Get("ETag"))
		assert.Equal(t, "public, max-age=600", w.Header().Get("Cache-Control"))
	})
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodOptions} {
		t.Run("RFC 9110 §15.5.6 "+method, func(t *testing.T) {
			w := metadataGet(t, md, method, url)
			assert.Equal(t, http.StatusMethodNotAllowed, w.Code)
			assert.Equal(t, "GET, HEAD", w.Header().Get("Allow"))
			assert.JSONEq(t, `{"error":"invalid_request","error_description":"the metadata document accepts only GET and HEAD"}`, w.Body.String())
		})
	}
	t.Run("negative MaxAge is max-age=0", func(t *testing.T) {
		md, err := m2mauth.NewAuthorizationServerMetadataHandler(metadataTokenHandler(t, "https://auth.example.com"),
			m2mauth.AuthorizationServerMetadataConfig{TokenEndpoint: "https://auth.example.com/oauth/token", MaxAge: -1})
		require.NoError(t, err)
		assert.Equal(t, "public, max-age=0", metadataGet(t, md, http.MethodGet, url).Header().Get("Cache-Control"))
	})
}

// ExampleNewAuthorizationServerMetadataHandler publishes the
// authorization server metadata of a token handler at the path RFC 8414
// derives from its issuer.
func ExampleNewAuthorizationServerMetadataHandler() {
	const issuer = "https://auth.example.com"
	key, err := m2mauth.NewHS256Key("2026-11", []byte("use-32-or-more-random-bytes-here"))
	if err != nil {
		log.Fatal(err)
	}
	keys, err := m2mauth.NewStaticKeys(key)
	if err != nil {
		log.Fatal(err)
	}
	tokens, err := m2mauth.NewTokenHandler(memstore.New(), keys, m2mauth.TokenHandlerConfig{Issuer: issuer})
	if err != nil {
		log.Fatal(err)
	}
	md, err := m2mauth.NewAuthorizationServerMetadataHandler(tokens, m2mauth.AuthorizationServerMetadataConfig{
		TokenEndpoint: issuer + "/oauth/token",
	})
	if err != nil {
		log.Fatal(err)
	}
	path, err := m2mauth.AuthorizationServerMetadataPath(issuer)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", tokens)
	mux.Handle("GET "+path, md)

	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest(http.MethodGet, issuer+path, nil))
	var out bytes.Buffer
	json.Indent(&out, w.Body.Bytes(), "", "  ")
	fmt.Println(path)
	fmt.Println(w.Code, w.Header().Get("Content-Type"), w.Header().Get("Cache-Control"))
	fmt.Println(out.String())
	// Output:
	// /.well-known/oauth-authorization-server
	// 200 application/json public, max-age=3600
	// {
	//   "issuer": "https://auth.example.com",
	//   "token_endpoint": "https://auth.example.com/oauth/token",
	//   "response_types_supported": [],
	//   "grant_types_supported": [
	//     "client_credentials"
	//   ],
	//   "token_endpoint_auth_methods_supported": [
	//     "client_secret_basic",
	//     "client_secret_post"
	//   ]
	// }
}

// ExampleNewProtectedResourceMetadataHandler publishes the protected
// resource metadata of an API, so clients can find which authorization
// server issues its tokens and which scopes it knows.
func ExampleNewProtectedResourceMetadataHandler() {
	const audience = "https://api.example.com/builders"
	key, err := m2mauth.NewHS256Key("2026-11", []byte("use-32-or-more-random-bytes-here"))
	if err != nil {
		log.Fatal(err)
	}
	keys, err := m2mauth.NewStaticKeys(key)
	if err != nil {
		log.Fatal(err)
	}
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
		Issuer:   "https://auth.example.com",
		Audience: audience,
	})
	if err != nil {
		log.Fatal(err)
	}
	md, err := m2mauth.NewProtectedResourceMetadataHandler(v, m2mauth.ProtectedResourceMetadataConfig{
		ScopesSupported: []string{"read:builders", "write:builders"},
	})
	if err != nil {
		log.Fatal(err)
	}
	path, err := m2mauth.ProtectedResourceMetadataPath(audience)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+path, md)

	w := httptest.NewRecorder()
	mux.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "https://api.example.com"+path, nil))
	var out bytes.Buffer
	json.Indent(&out, w.Body.Bytes(), "", "  ")
	fmt.Println(path)
	fmt.Println(w.Code, w.Header().Get("Content-Type"))
	fmt.Println(out.String())
	// Output:
	// /.well-known/oauth-protected-resource/builders
	// 200 application/json
	// {
	//   "resource": "https://api.example.com/builders",
	//   "authorization_servers": [
	//     "https://auth.example.com"
	//   ],
	//   "scopes_supported": [
	//     "read:builders",
	//     "write:builders"
	//   ],
	//   "bearer_methods_supported": [
	//     "header"
	//   ]
	// }
}

// TestURLErrorsHidePasswords: every constructor that takes a URL names
// a URL it refuses without the password it may carry, whether the URL
// does not parse (url.Parse's own error repeats it whole) or breaks a
// rule: a configuration error ends up in logs.
func TestURLErrorsHidePasswords(t *testing.T) {
	const issuer = "https://auth.example.com"
	keys := metadataKeys(t)
	takers := []struct {
		name string
		try  func(u string) error
	}{
		{"NewRemoteKeys", func(u string) error {
			_, err := m2mauth.NewRemoteKeys(u, m2mauth.RemoteKeysConfig{})
			return err
		}},
		{"DiscoverRemoteKeys", func(u string) error {
			_, err := m2mauth.DiscoverRemoteKeys(context.Background(), u, m2mauth.RemoteKeysConfig{})
			return err
		}},
		{"NewRemoteRevocations", func(u string) error {
			_, err := m2mauth.NewRemoteRevocations(u, keys, m2mauth.RemoteRevocationsConfig{Issuer: issuer})
			return err
		}},
		{"NewAuthorizationServerMetadataHandler", func(u string) error {
			_, err := m2mauth.NewAuthorizationServerMetadataHandler(metadataTokenHandler(t, issuer),
				m2mauth.AuthorizationServerMetadataConfig{TokenEndpoint: issuer + "/oauth/token", JWKSURI: u})
			return err
		}},
		{"NewProtectedResourceMetadataHandler", func(u string) error {
			_, err := m2mauth.NewProtectedResourceMetadataHandler(metadataValidator(t, issuer, "https://api.example.com"),
				m2mauth.ProtectedResourceMetadataConfig{JWKSURI: u})
			return err
		}},
		{"AuthorizationServerMetadataPath", func(u string) error {
			_, err := m2mauth.AuthorizationServerMetadataPath(u)
			return err
		}},
		{"ProtectedResourceMetadataPath", func(u string) error {
			_, err := m2mauth.ProtectedResourceMetadataPath(u)
			return err
		}},
		{"ValidatorConfig.ResourceMetadataURL", func(u string) error {
			_, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{Issuer: issuer, Audience: "https://api.example.com", ResourceMetadataURL: u})
			return err
		}},
	}
	urls := []string{
		"https://app:hunter2@keys.example.com:bad/jwks", // does not parse: a bad port
		"https://app:hunter2@keys.example.com/%zz",      // does not parse: a bad escape
		"https://app:hunter2@keys.example.com/jwks",     // user information
		"http://app:hunter2@keys.example.com/jwks",      // user information, and not https
		"ftp://app:hunter2@keys.example.com/jwks",       // not https
	}
	for _, tk := range takers {
		for _, u := range urls {
			t.Run(tk.name+"/"+u, func(t *testing.T) {
				err := tk.try(u)
				require.Error(t, err)
				assert.NotContains(t, err.Error(), "hunter2")
			})
		}
	}
}
