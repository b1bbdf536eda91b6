package bench

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// Endpoint is one token endpoint under test: a handler for the client
// credentials request and the Authorization header value that
// authenticates its client.
type Endpoint struct {
	// Name identifies the implementation in benchmark names and tables.
	Name string
	// Handler serves POST /oauth/token.
	Handler http.Handler
	// Authorization is the client's "Basic …" header value.
	Authorization string
	// release frees what the implementation holds beyond the garbage
	// collector's reach, if anything.
	release func()
}

// Close releases the endpoint's resources. The endpoint must not be used
// afterwards.
func (e Endpoint) Close() {
	if e.release != nil {
		e.release()
	}
}

// Serve sends the token request to the handler in process and returns the
// recorded answer.
func (e Endpoint) Serve() *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	e.Handler.ServeHTTP(w, NewTokenRequest(e.Authorization))
	return w
}

// EndpointMaker builds one implementation's token endpoint.
type EndpointMaker struct {
	Name string
	// New builds a fresh endpoint with its own empty token storage.
	New func() (Endpoint, error)
	// BCrypt marks an endpoint that checks the client secret with bcrypt:
	// hundreds of milliseconds a request, so it is measured with few
	// iterations.
	BCrypt bool
	// Stores marks an implementation that keeps every issued token.
	Stores bool
}

// Names of the token endpoints.
const (
	EndpointNoop         = "noop"
	EndpointResponse     = "response"
	EndpointFloor        = "floor"
	EndpointM2MAuth      = "m2mauth"
	EndpointM2MAuthSlog  = "m2mauth-slog"
	EndpointM2MAuthJSON  = "m2mauth-json"
	EndpointFositeBCrypt = "fosite-bcrypt"
	EndpointFositePlain  = "fosite-plain"
	EndpointGoOAuth2     = "go-oauth2"
	EndpointGoOAuth2JWT  = "go-oauth2-jwt"
)

// Endpoints lists every token endpoint, the references first.
func Endpoints() []EndpointMaker {
	return []EndpointMaker{
		{Name: EndpointNoop, New: NewNoopEndpoint},
		{Name: EndpointResponse, New: NewResponseEndpoint},
		{Name: EndpointFloor, New: NewFloorEndpoint},
		{Name: EndpointM2MAuth, New: func() (Endpoint, error) { return NewM2MAuthEndpoint(EndpointM2MAuth) }},
		{Name: EndpointM2MAuthJSON, New: func() (Endpoint, error) { return NewM2MAuthEndpoint(EndpointM2MAuthJSON) }},
		{Name: EndpointM2MAuthSlog, New: func() (Endpoint, error) { return NewM2MAuthEndpoint(EndpointM2MAuthSlog) }},
		{Name: EndpointFositeBCrypt, New: func() (Endpoint, error) { return NewFositeEndpoint(true) }, BCrypt: true, Stores: true},
		{Name: EndpointFositePlain, New: func() (Endpoint, error) { return NewFositeEndpoint(false) }, Stores: true},
		{Name: EndpointGoOAuth2, New: func() (Endpoint, error) { return NewGoOAuth2Endpoint(false) }, Stores: true},
		{Name: EndpointGoOAuth2JWT, New: func() (Endpoint, error) { return NewGoOAuth2Endpoint(true) }, Stores: true},
	}
}

// NewEndpoint builds the named endpoint.
func NewEndpoint(name string) (Endpoint, error) {
	for _, m := range Endpoints() {
		if m.Name == name {
			return m.New()
		}
	}
	return Endpoint{}, fmt.Errorf("bench: unknown endpoint %q", name)
}

// NewNoopEndpoint is the harness cost: a handler that only writes 200.
func NewNoopEndpoint() (Endpoint, error) {
	secret, err := m2mauth.GenerateSecret()
	if err != nil {
		return Endpoint{}, err
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	return Endpoint{Name: EndpointNoop, Handler: h, Authorization: basicAuth(ClientID, secret)}, nil
}

// NewResponseEndpoint is the cost of m2mauth's answer without the work
// behind it: a handler that writes the response m2mauth's endpoint gave
// to the token request, its status, headers and body, kept from one
// request made when the endpoint is built. It checks nothing. Between it
// and the no-op handler is what sending a token response the way RFC 6749
// §5.1 asks (the token, three headers) costs any endpoint in this
// harness; between it and m2mauth is m2mauth's own work.
func NewResponseEndpoint() (Endpoint, error) {
	e, err := NewM2MAuthEndpoint(EndpointM2MAuth)
	if err != nil {
		return Endpoint{}, err
	}
	rec := e.Serve()
	if rec.Code != http.StatusOK {
		return Endpoint{}, fmt.Errorf("bench: m2mauth answered %d: %s", rec.Code, rec.Body)
	}
	hdr, body := rec.Header().Clone(), rec.Body.Bytes()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dst := w.Header()
		for k, v := range hdr {
			dst[k] = v
		}
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	})
	return Endpoint{Name: EndpointResponse, Handler: h, Authorization: e.Authorization}, nil
}

// NewM2MAuthEndpoint is m2mauth's TokenHandler over a memstore holding the
// client with a secret from m2mauth.NewSecret (salted SHA-256), named
// name: with EndpointM2MAuth its auditor does nothing; with
// EndpointM2MAuthJSON it is a JSONAuditor (the default auditor where slog
// is not configured) and with EndpointM2MAuthSlog a SlogAuditor on
// slog's JSON handler, both writing to io.Discard.
func NewM2MAuthEndpoint(name string) (Endpoint, error) {
	auditor, ok := Auditors()[name]
	switch {
	case name == EndpointM2MAuth:
		auditor = m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})
	case !ok:
		return Endpoint{}, fmt.Errorf("bench: %q is not an m2mauth endpoint", name)
	}
	return newM2MAuthEndpoint(name, auditor)
}

// Auditors are the auditors of the m2mauth endpoints that audit: the
// JSONAuditor and the SlogAuditor on slog's JSON handler, both writing to
// io.Discard, by endpoint name.
func Auditors() map[string]m2mauth.Auditor {
	return map[string]m2mauth.Auditor{
		EndpointM2MAuthJSON: m2mauth.NewJSONAuditor(io.Discard),
		EndpointM2MAuthSlog: m2mauth.NewSlogAuditor(slog.New(slog.NewJSONHandler(io.Discard, nil))),
	}
}

// IssuedEvent returns the audit event m2mauth's endpoint records for the
// token request.
func IssuedEvent() (m2mauth.AuditEvent, error) {
	var got []m2mauth.AuditEvent
	e, err := newM2MAuthEndpoint(EndpointM2MAuth, m2mauth.AuditorFunc(func(_ context.Context, ev m2mauth.AuditEvent) {
		got = append(got, ev)
	}))
	if err != nil {
		return m2mauth.AuditEvent{}, err
	}
	if w := e.Serve(); w.Code != http.StatusOK || len(got) != 1 || got[0].Type != m2mauth.EventTokenIssued {
		return m2mauth.AuditEvent{}, fmt.Errorf("bench: status %d and %d audit events", w.Code, len(got))
	}
	return got[0], nil
}

func newM2MAuthEndpoint(name string, auditor m2mauth.Auditor) (Endpoint, error) {
	store := memstore.New()
	plain, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
	if err != nil {
		return Endpoint{}, err
	}
	err = store.CreateClient(context.Background(), &m2mauth.Client{
		ID:      ClientID,
		Secrets: []m2mauth.Secret{sec},
		Grants:  map[string]m2mauth.Scopes{Audience: {"read", "write"}},
	})
	if err != nil {
		return Endpoint{}, err
	}
	keys, err := m2mauthKeys()
	if err != nil {
		return Endpoint{}, err
	}
	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          Issuer,
		DefaultAudience: Audience,
		Auditor:         auditor,
		// The peers are measured over plain HTTP from test addresses
		// too; TLS would cost the same for every one of them.
		AllowInsecureHTTP: true,
	})
	if err != nil {
		return Endpoint{}, err
	}
	return Endpoint{Name: name, Handler: h, Authorization: basicAuth(ClientID, plain)}, nil
}

// m2mauthKeys returns the HS256 key as m2mauth's static key provider.
func m2mauthKeys() (*m2mauth.StaticKeys, error) {
	key, err := m2mauth.NewHS256Key(KeyID, Key())
	if err != nil {
		return nil, err
	}
	return m2mauth.NewStaticKeys(key)
}

// floorClaims are the claims the floor signs: those of an m2mauth token.
type floorClaims struct {
	jwt.Claims
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
}

// NewFloorEndpoint is a minimal hand-written token endpoint with go-jose:
// parse the form, compare a plaintext secret in constant time, sign the
// same claims as m2mauth with jwt.Signed(...).Claims(...).Serialize(). It
// is BenchmarkTokenHandlerFloor of the root benchmarks.
func NewFloorEndpoint() (Endpoint, error) {
	secret, err := m2mauth.GenerateSecret()
	if err != nil {
		return Endpoint{}, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: Key()},
		(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", KeyID))
	if err != nil {
		return Endpoint{}, err
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if err := r.ParseForm(); err != nil || !ok || u != ClientID ||
			subtle.ConstantTimeCompare([]byte(p), []byte(secret)) != 1 ||
			r.PostForm.Get("grant_type") != "client_credentials" {
			http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
			return
		}
		var jti [16]byte
		rand.Read(jti[:])
		now := time.Now()
		c := floorClaims{
			Claims: jwt.Claims{
				Issuer: Issuer, Subject: ClientID, Audience: jwt.Audience{Audience},
				IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now),
				Expiry: jwt.NewNumericDate(now.Add(time.Hour)),
				ID:     base64.RawURLEncoding.EncodeToString(jti[:]),
			},
			ClientID: ClientID,
			Scope:    r.PostForm.Get("scope"),
		}
		tok, err := jwt.Signed(signer).Claims(c).Serialize()
		if err != nil {
			http.Error(w, `{"error":"server_error"}`, http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(map[string]any{
			"access_token": tok, "token_type": "Bearer", "expires_in": 3600, "scope": c.Scope,
		})
	})
	return Endpoint{Name: EndpointFloor, Handler: h, Authorization: basicAuth(ClientID, secret)}, nil
}

// TokenResponse is the successful token response (RFC 6749 §5.1).
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope"`
}

// IssueToken issues one access token through m2mauth's token handler: the
// token every validator is measured with.
func IssueToken() (string, error) {
	e, err := NewM2MAuthEndpoint(EndpointM2MAuth)
	if err != nil {
		return "", err
	}
	w := e.Serve()
	if w.Code != http.StatusOK {
		return "", fmt.Errorf("bench: token request: status %d: %s", w.Code, w.Body)
	}
	var resp TokenResponse
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
		return "", fmt.Errorf("bench: token response: %w", err)
	}
	return resp.AccessToken, nil
}
