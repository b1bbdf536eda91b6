package m2mauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// AuthorizationServerMetadataConfig holds what the authorization server
// metadata of a [TokenHandler] publishes beyond the handler's own
// settings (RFC 8414 §2). Only TokenEndpoint is required. Every URL must
// be absolute, use https (http only on a loopback host: localhost,
// 127.0.0.0/8, ::1) and have no fragment or user info.
type AuthorizationServerMetadataConfig struct {
	// TokenEndpoint is the URL where the TokenHandler is mounted,
	// published as "token_endpoint". Required.
	TokenEndpoint string
	// JWKSURI is the URL of a [JWKSHandler] serving the keys the token
	// handler signs with, published as "jwks_uri". Default: none, and the
	// member is omitted (HS256 keys are never published).
	JWKSURI string
	// ScopesSupported, if set, is published as "scopes_supported". It may
	// name only some of the scopes clients are granted (RFC 8414 §2).
	// Default: none, and the member is omitted.
	ScopesSupported []string
	// RevocationEndpoint is the URL of a token revocation endpoint
	// (RFC 7009) mounted by the host, published as "revocation_endpoint"
	// with "revocation_endpoint_auth_methods_supported". Default: none,
	// and both members are omitted.
	RevocationEndpoint string
	// IntrospectionEndpoint is the URL of a token introspection endpoint
	// (RFC 7662) mounted by the host, published as
	// "introspection_endpoint" with
	// "introspection_endpoint_auth_methods_supported". Default: none, and
	// both members are omitted.
	IntrospectionEndpoint string
	// MaxAge is how long clients and shared caches may reuse the document
	// (Cache-Control max-age, in whole seconds). Negative means max-age=0.
	// At most 24h. Default: 1h.
	MaxAge time.Duration
}

// ProtectedResourceMetadataConfig holds what the protected resource
// metadata of a [Validator] publishes beyond the validator's own settings
// (RFC 9728 §2). The zero value is a working configuration.
type ProtectedResourceMetadataConfig struct {
	// JWKSURI is the URL of the protected resource's own JWK Set,
	// published as "jwks_uri": keys the resource itself uses, such as
	// keys that sign its responses (RFC 9728 §2). It is not the
	// authorization server's JWK Set, which clients find through
	// [AuthorizationServerMetadataConfig.JWKSURI]. It must be absolute,
	// use https (http only on a loopback host) and have no fragment or
	// user info. Default: none, and the member is omitted.
	JWKSURI string
	// ScopesSupported, if set, is published as "scopes_supported": the
	// scopes clients request to use this resource. It may name only some
	// of them (RFC 9728 §2). Default: none, and the member is omitted.
	ScopesSupported []string
	// MaxAge is how long clients and shared caches may reuse the document
	// (Cache-Control max-age, in whole seconds). Negative means max-age=0.
	// At most 24h. Default: 1h.
	MaxAge time.Duration
}

// MetadataHandler serves a metadata document built at construction:
// authorization server metadata (RFC 8414) from
// [NewAuthorizationServerMetadataHandler] or protected resource metadata
// (RFC 9728) from [NewProtectedResourceMetadataHandler].
//
// It answers GET and HEAD with the document as application/json, a
// strong ETag and "Cache-Control: public, max-age=N" (1h by default),
// and 304 Not Modified to a matching If-None-Match; other methods get
// 405. A MetadataHandler is immutable and safe for concurrent use.
type MetadataHandler struct {
	doc   *document
	cache string
}

const (
	defaultMetadataMaxAge = time.Hour

	wellKnownAuthorizationServer = "/.well-known/oauth-authorization-server"
	wellKnownProtectedResource   = "/.well-known/oauth-protected-resource"
)

// authorizationServerMetadata is the RFC 8414 §2 document, members in
// the order of that section.
type authorizationServerMetadata struct {
	Issuer                 string   `json:"issuer"`
	TokenEndpoint          string   `json:"token_endpoint"`
	JWKSURI                string   `json:"jwks_uri,omitempty"`
	ScopesSupported        []string `json:"scopes_supported,omitempty"`
	ResponseTypesSupported []string `json:"response_types_supported"`
	GrantTypesSupported    []string `json:"grant_types_supported"`
	TokenAuthMethods       []string `json:"token_endpoint_auth_methods_supported"`
	RevocationEndpoint     string   `json:"revocation_endpoint,omitempty"`
	RevocationAuthMethods  []string `json:"revocation_endpoint_auth_methods_supported,omitempty"`
	IntrospectionEndpoint  string   `json:"introspection_endpoint,omitempty"`
	IntrospectionMethods   []string `json:"introspection_endpoint_auth_methods_supported,omitempty"`
}

// protectedResourceMetadata is the RFC 9728 §2 document, members in the
// order of that section.
type protectedResourceMetadata struct {
	Resource             string   `json:"resource"`
	AuthorizationServers []string `json:"authorization_servers"`
	JWKSURI              string   `json:"jwks_uri,omitempty"`
	ScopesSupported      []string `json:"scopes_supported,omitempty"`
	BearerMethods        []string `json:"bearer_methods_supported"`
}

// NewAuthorizationServerMetadataHandler returns the authorization server
// metadata (RFC 8414) of h, to be mounted at the path
// [AuthorizationServerMetadataPath] derives from the issuer:
//
//	p, err := m2mauth.AuthorizationServerMetadataPath(issuer)
//	mux.Handle("GET "+p, md)
//
// The document states what h does, and nothing else: "issuer" is h's
// Issuer, exactly; "grant_types_supported" is ["client_credentials"];
// "token_endpoint_auth_methods_supported" is ["client_secret_basic",
// "client_secret_post"]; and "response_types_supported" is [], since
// there is no authorization endpoint. (RFC 8414 §2 requires that member
// and §3.2 says to omit empty ones; it is kept, because clients reject
// metadata without it.) The other members come from cfg and are omitted
// when it leaves them unset.
//
// h's Issuer must be a URL that [AuthorizationServerMetadataPath]
// accepts.
func NewAuthorizationServerMetadataHandler(h *TokenHandler, cfg AuthorizationServerMetadataConfig) (*MetadataHandler, error) {
	if h == nil {
		return nil, errors.New("m2mauth: nil TokenHandler")
	}
	if _, err := AuthorizationServerMetadataPath(h.cfg.Issuer); err != nil {
		return nil, err
	}
	if cfg.TokenEndpoint == "" {
		return nil, errors.New("m2mauth: AuthorizationServerMetadataConfig.TokenEndpoint is required")
	}
	for _, u := range [...]struct{ name, value string }{
		{"TokenEndpoint", cfg.TokenEndpoint},
		{"JWKSURI", cfg.JWKSURI},
		{"RevocationEndpoint", cfg.RevocationEndpoint},
		{"IntrospectionEndpoint", cfg.IntrospectionEndpoint},
	} {
		if u.value == "" {
			continue
		}
		if _, err := checkPublishedURL("AuthorizationServerMetadataConfig."+u.name, u.value, false); err != nil {
			return nil, err
		}
	}
	md := authorizationServerMetadata{
		Issuer:                 h.cfg.Issuer,
		TokenEndpoint:          cfg.TokenEndpoint,
		JWKSURI:                cfg.JWKSURI,
		ResponseTypesSupported: []string{},
		GrantTypesSupported:    []string{GrantTypeClientCredentials},
		TokenAuthMethods:       clientAuthMethods(),
		RevocationEndpoint:     cfg.RevocationEndpoint,
		IntrospectionEndpoint:  cfg.IntrospectionEndpoint,
	}
	if cfg.RevocationEndpoint != "" {
		md.RevocationAuthMethods = clientAuthMethods()
	}
	if cfg.IntrospectionEndpoint != "" {
		md.IntrospectionMethods = clientAuthMethods()
	}
	var err error
	if md.ScopesSupported, err = publishedScopes("AuthorizationServerMetadataConfig", cfg.ScopesSupported); err != nil {
		return nil, err
	}
	return newMetadataHandler(md, "AuthorizationServerMetadataConfig.MaxAge", cfg.MaxAge)
}

// NewProtectedResourceMetadataHandler returns the protected resource
// metadata (RFC 9728) of the API that v protects, to be mounted at the
// path [ProtectedResourceMetadataPath] derives from the resource
// identifier:
//
//	p, err := m2mauth.ProtectedResourceMetadataPath(audience)
//	mux.Handle("GET "+p, md)
//
// The document states what v does: "resource" is v's Audience, the
// resource identifier a client asks a token for (the "resource" or
// "audience" parameter of the token request) and the only one v accepts;
// "authorization_servers" holds v's Issuer, the only issuer v accepts;
// "bearer_methods_supported" is ["header"], since tokens are read only
// from the Authorization header. "jwks_uri" and "scopes_supported" come
// from cfg and are omitted when it leaves them unset.
// "resource_signing_alg_values_supported" is never published: it names
// algorithms for signing the resource's responses, which v does not do,
// not those of access tokens.
//
// v's Audience must be a URL that [ProtectedResourceMetadataPath]
// accepts, and v's Issuer one that [AuthorizationServerMetadataPath]
// accepts.
func NewProtectedResourceMetadataHandler(v *Validator, cfg ProtectedResourceMetadataConfig) (*MetadataHandler, error) {
	if v == nil {
		return nil, errors.New("m2mauth: nil Validator")
	}
	if _, err := ProtectedResourceMetadataPath(v.cfg.Audience); err != nil {
		return nil, err
	}
	if _, err := AuthorizationServerMetadataPath(v.cfg.Issuer); err != nil {
		return nil, err
	}
	if cfg.JWKSURI != "" {
		if _, err := checkPublishedURL("ProtectedResourceMetadataConfig.JWKSURI", cfg.JWKSURI, false); err != nil {
			return nil, err
		}
	}
	scopes, err := publishedScopes("ProtectedResourceMetadataConfig", cfg.ScopesSupported)
	if err != nil {
		return nil, err
	}
	md := protectedResourceMetadata{
		Resource:             v.cfg.Audience,
		AuthorizationServers: []string{v.cfg.Issuer},
		JWKSURI:              cfg.JWKSURI,
		ScopesSupported:      scopes,
		BearerMethods:        []string{"header"},
	}
	return newMetadataHandler(md, "ProtectedResourceMetadataConfig.MaxAge", cfg.MaxAge)
}

// AuthorizationServerMetadataPath returns the path of the authorization
// server metadata of issuer (RFC 8414 §3.1): the well-known prefix
// "/.well-known/oauth-authorization-server" inserted before the issuer's
// path, whose trailing "/" is dropped. For "https://auth.example.com" it
// is "/.well-known/oauth-authorization-server"; for
// "https://auth.example.com/tenant1" it is
// "/.well-known/oauth-authorization-server/tenant1". The path is
// returned escaped, as it appears in a URL.
//
// issuer must be an absolute https URL without query or fragment
// (RFC 8414 §2); http is accepted on a loopback host (localhost,
// 127.0.0.0/8, ::1) for development.
func AuthorizationServerMetadataPath(issuer string) (string, error) {
	u, err := checkPublishedURL("issuer", issuer, true)
	if err != nil {
		return "", err
	}
	return wellKnownAuthorizationServer + strings.TrimRight(u.EscapedPath(), "/"), nil
}

// ProtectedResourceMetadataPath returns the path of the protected
// resource metadata of resource (RFC 9728 §3.1): the well-known prefix
// "/.well-known/oauth-protected-resource" inserted before the resource
// identifier's path, whose trailing "/" is dropped. For
// "https://api.example.com" it is "/.well-known/oauth-protected-resource";
// for "https://api.example.com/builders" it is
// "/.well-known/oauth-protected-resource/builders". The path is returned
// escaped, as it appears in a URL.
//
// For a resource identifier whose path ends in "/"
// ("https://api.example.com/builders/"), RFC 9728 §3.1 is read two ways:
// this path drops the slash, as RFC 8414 §3.1 drops an issuer's; some
// clients (oauth4webapi) keep it. Serve the document at the path with
// "/" added too (with http.ServeMux, the pattern path + "/{$}"); the
// example server does.
//
// resource must be an absolute https URL without fragment (RFC 9728 §2);
// http is accepted on a loopback host for development. A query, which
// RFC 8707 §2 advises against, is refused too: a mux cannot route by it.
func ProtectedResourceMetadataPath(resource string) (string, error) {
	u, err := checkPublishedURL("resource", resource, true)
	if err != nil {
		return "", err
	}
	return wellKnownProtectedResource + strings.TrimRight(u.EscapedPath(), "/"), nil
}

// ServeHTTP answers GET and HEAD with the metadata document.
func (h *MetadataHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !allowGetHead(w, r, "the metadata document") {
		return
	}
	h.doc.serve(w, r, h.cache)
}

func newMetadataHandler(md any, maxAgeName string, maxAge time.Duration) (*MetadataHandler, error) {
	secs, err := documentMaxAge(maxAgeName, maxAge, defaultMetadataMaxAge)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // URLs keep their '&'
	if err := enc.Encode(md); err != nil {
		return nil, fmt.Errorf("m2mauth: metadata: %w", err)
	}
	body := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	return &MetadataHandler{doc: newDocument("application/json", body), cache: cacheControl(secs)}, nil
}

// publishedScopes validates an opt-in scopes_supported list; an empty
// list is omitted (RFC 8414 §3.2, RFC 9728 §3.2).
func publishedScopes(cfgName string, scopes []string) ([]string, error) {
	if len(scopes) == 0 {
		return nil, nil
	}
	s, err := NewScopes(scopes...)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: %s.ScopesSupported: %w", cfgName, err)
	}
	return s, nil
}

// checkPublishedURL checks a URL published in metadata: absolute, https
// (http only on a loopback host), no user info, no fragment, and no query
// when noQuery.
func checkPublishedURL(name, s string, noQuery bool) (*url.URL, error) {
	u, err := parseURL(s)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: %s: %w", name, err)
	}
	var problem string
	switch {
	case !u.IsAbs() || u.Opaque != "" || u.Host == "":
		problem = "is not an absolute URL"
	case u.User != nil:
		return nil, fmt.Errorf("m2mauth: %s %q must not contain user info", name, u.Redacted())
	case strings.Contains(s, "#"):
		problem = "must not have a fragment"
	case noQuery && (u.RawQuery != "" || u.ForceQuery):
		problem = "must not have a query"
	case u.Scheme == "https":
	case u.Scheme == "http" && isLoopbackHost(u.Hostname()):
	case u.Scheme == "http":
		problem = "must use https (http only on a loopback host)"
	default:
		problem = "must use https"
	}
	if problem != "" {
		return nil, fmt.Errorf("m2mauth: %s %q %s", name, u.Redacted(), problem)
	}
	return u, nil
}
