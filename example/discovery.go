package main

import (
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/m2mauth/m2mauth"
)

// jwksPath is where the server publishes its public keys.
const jwksPath = "/.well-known/jwks.json"

// discovery is what lets other services find the server's keys and
// endpoints on their own: the JWK Set, the authorization server metadata
// (RFC 8414) and the demo API's protected resource metadata (RFC 9728).
// Its URLs are -issuer's scheme and host followed by the route's path:
// -issuer is the URL clients reach this server at.
type discovery struct {
	origin string // scheme://host of -issuer
	// asPath and prPath are the paths of the two metadata documents, ""
	// when -issuer or -audience cannot be published in one.
	asPath, prPath string
	// prSlash is prPath with the -audience path's trailing "/" kept, ""
	// when it has none. RFC 9728 §3.1 inserts the well-known string
	// before the resource identifier's path; its "terminating slash"
	// rule is read two ways for a path ending in "/": dropped, as RFC 8414
	// §3.1 drops the issuer's (m2mauth.ProtectedResourceMetadataPath), or
	// kept (oauth4webapi's resourceDiscoveryRequest). The document is
	// served at both.
	prSlash string
	// publicKey: the JWK Set holds the signing key's public half (it is
	// empty with HS256, whose key is secret).
	publicKey bool
	// jwksMaxAge is how long verifiers may cache the JWK Set
	// (-jwks-max-age); 0: the default, 5m.
	jwksMaxAge time.Duration
}

// newDiscovery works out the discovery URLs for the global flags,
// warning on log about a document that cannot be served and why.
func newDiscovery(g globals, log *slog.Logger) discovery {
	d := discovery{publicKey: !secretKey(g.alg), jwksMaxAge: g.keys.jwksMaxAge}
	asPath, err := m2mauth.AuthorizationServerMetadataPath(g.issuer)
	if err == nil && path.Clean(asPath) != asPath {
		err = errUnroutable
	}
	if err != nil {
		// Every URL of both documents is derived from the issuer.
		log.Warn("no authorization server or protected resource metadata is served: -issuer must be an https URL (http on a loopback host) without query or fragment", "issuer", g.issuer, "error", err.Error())
		return d
	}
	u, _ := url.Parse(g.issuer) // parsed by AuthorizationServerMetadataPath
	d.origin, d.asPath = u.Scheme+"://"+u.Host, asPath
	prPath, err := m2mauth.ProtectedResourceMetadataPath(g.audience)
	if err == nil && path.Clean(prPath) != prPath {
		err = errUnroutable
	}
	if err != nil {
		log.Warn("no protected resource metadata is served, and the API's challenges name none: -audience must be an https URL (http on a loopback host) without query or fragment", "audience", g.audience, "error", err.Error())
		return d
	}
	d.prPath = prPath
	if a, _ := url.Parse(g.audience); a != nil && a.EscapedPath() != "/" &&
		wellKnownResource+a.EscapedPath() == prPath+"/" {
		d.prSlash = prPath + "/"
	}
	return d
}

// wellKnownResource is the prefix of every protected resource metadata
// path (RFC 9728 §3).
const wellKnownResource = "/.well-known/oauth-protected-resource"

// errUnroutable is a metadata path with empty, "." or ".." segments,
// which http.ServeMux cannot route.
var errUnroutable = errors.New(`its path has empty, "." or ".." segments`)

// url is the URL of the route at p.
func (d discovery) url(p string) string { return d.origin + p }

// urlOr is the URL of the route at p under -issuer, or under base, where
// the server listens, when -issuer cannot be published.
func (d discovery) urlOr(base, p string) string {
	if d.origin == "" {
		return base + p
	}
	return d.url(p)
}

// resourceMetadataURL is the URL of the protected resource metadata, ""
// when it is not served.
func (d discovery) resourceMetadataURL() string {
	if d.prPath == "" {
		return ""
	}
	return d.url(d.prPath)
}

// wellKnown is a discovery document and the path it is served at.
type wellKnown struct {
	path string
	h    http.Handler
}

// documents builds the handlers of the documents that can be served: the
// JWK Set of keys always, the metadata of tokens and v when -issuer and
// -audience allow.
func (d discovery) documents(keys m2mauth.KeyProvider, tokens *m2mauth.TokenHandler, v *m2mauth.Validator, log *slog.Logger) ([]wellKnown, error) {
	jwks, err := m2mauth.NewJWKSHandler(keys, m2mauth.JWKSConfig{MaxAge: d.jwksMaxAge, Logger: log})
	if err != nil {
		return nil, err
	}
	docs := []wellKnown{{jwksPath, jwks}}
	if d.asPath == "" {
		return docs, nil
	}
	cfg := m2mauth.AuthorizationServerMetadataConfig{
		TokenEndpoint:         d.url(tokenPath),
		RevocationEndpoint:    d.url(revokePath),
		IntrospectionEndpoint: d.url(introspectPath),
	}
	if d.publicKey {
		cfg.JWKSURI = d.url(jwksPath)
	}
	as, err := m2mauth.NewAuthorizationServerMetadataHandler(tokens, cfg)
	if err != nil {
		return nil, err
	}
	docs = append(docs, wellKnown{d.asPath, as})
	if d.prPath == "" {
		return docs, nil
	}
	pr, err := m2mauth.NewProtectedResourceMetadataHandler(v, m2mauth.ProtectedResourceMetadataConfig{
		ScopesSupported: strings.Fields(demoScopes), // the scopes of the demo API
	})
	if err != nil {
		return nil, err
	}
	docs = append(docs, wellKnown{d.prPath, pr})
	if d.prSlash != "" {
		docs = append(docs, wellKnown{d.prSlash + "{$}", pr}) // the path alone, not the tree below it
	}
	return docs, nil
}
