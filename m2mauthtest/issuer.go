package m2mauthtest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// Issuer mints access tokens signed with an HS256 key of its own, made
// from random bytes when the Issuer is made: a validator built from
// [Issuer.Keys] accepts its tokens, and a validator built from any other
// keys, another Issuer's included, refuses them.
//
// An Issuer is immutable and safe for concurrent use, so one may serve
// parallel subtests.
type Issuer struct {
	keys *m2mauth.StaticKeys
}

// NewIssuer returns an Issuer with a fresh random signing key.
func NewIssuer(t testing.TB) *Issuer {
	t.Helper()
	secret := make([]byte, m2mauth.MinHMACKeyLen)
	rand.Read(secret)
	key, err := m2mauth.NewHS256Key("", secret)
	if err != nil {
		t.Fatalf("m2mauthtest: signing key: %v", err)
	}
	keys, err := m2mauth.NewStaticKeys(key)
	if err != nil {
		t.Fatalf("m2mauthtest: signing key: %v", err)
	}
	return &Issuer{keys: keys}
}

// Keys returns the keys the Issuer signs with, to build the
// [m2mauth.Validator] under test from.
func (iss *Issuer) Keys() m2mauth.KeyProvider { return iss.keys }

// Token returns an access token for the client clientID as described by
// opts, signed with the Issuer's key, and fails t if it cannot.
//
// The token is the one an [m2mauth.TokenHandler] issues: Token registers
// clientID, granted opts.Scopes for opts.Audience, in a fresh in-memory
// store, and asks a token handler configured with opts.Issuer, opts.TTL
// and a clock stopped at opts.IssuedAt for a token with the client
// credentials grant, in process. Its jti is random, as in production; a
// test that needs it reads it from the claims a validator returns.
func (iss *Issuer) Token(t testing.TB, clientID string, opts TokenOptions) string {
	t.Helper()
	s := resolve(t, clientID, opts)

	secret, hashed, err := m2mauth.NewSecret(s.issuedAt, time.Time{})
	if err != nil {
		t.Fatalf("m2mauthtest: client secret: %v", err)
	}
	store := memstore.New()
	err = store.CreateClient(context.Background(), &m2mauth.Client{
		ID:      clientID,
		Secrets: []m2mauth.Secret{hashed},
		Grants:  map[string]m2mauth.Scopes{s.audience: s.scopes},
	})
	if err != nil {
		t.Fatalf("m2mauthtest: client %q: %v", clientID, err)
	}
	h, err := m2mauth.NewTokenHandler(store, iss.keys, m2mauth.TokenHandlerConfig{
		Issuer:          s.issuer,
		DefaultAudience: s.audience,
		TokenTTL:        s.ttl,
		Auditor:         m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {}),
		Logger:          slog.New(slog.DiscardHandler),
		Now:             func() time.Time { return s.issuedAt },
	})
	if err != nil {
		t.Fatalf("m2mauthtest: token handler: %v", err)
	}

	form := url.Values{"grant_type": {m2mauth.GrantTypeClientCredentials}}
	if len(s.scopes) > 0 {
		form.Set("scope", s.scopes.String())
	}
	r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		t.Fatalf("m2mauthtest: token request for %q refused: %d %s", clientID, w.Code, w.Body)
	}
	var resp struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil || resp.AccessToken == "" {
		t.Fatalf("m2mauthtest: token response %s: no access_token (%v)", w.Body, err)
	}
	return resp.AccessToken
}
