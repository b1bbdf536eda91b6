package m2mauthtest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// newValidator returns a validator for audience and issuer (the defaults
// when empty) that trusts keys.
func newValidator(t testing.TB, keys m2mauth.KeyProvider, issuer, audience string) *m2mauth.Validator {
	t.Helper()
	if issuer == "" {
		issuer = DefaultIssuer
	}
	if audience == "" {
		audience = DefaultAudience
	}
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{Issuer: issuer, Audience: audience})
	require.NoError(t, err)
	return v
}

func TestIssuerTokenValidates(t *testing.T) {
	iss := NewIssuer(t)
	past := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	tests := []struct {
		name       string
		clientID   string
		opts       TokenOptions
		wantScopes m2mauth.Scopes
		wantTTL    time.Duration
	}{
		{"defaults", "reporting-service", TokenOptions{}, nil, time.Hour},
		{"one scope", "reporting-service", TokenOptions{Scopes: m2mauth.Scopes{"read:builders"}}, m2mauth.Scopes{"read:builders"}, time.Hour},
		{"scopes in order, duplicates folded", "reporting-service",
			TokenOptions{Scopes: m2mauth.Scopes{"write:builders", "read:builders", "write:builders"}},
			m2mauth.Scopes{"write:builders", "read:builders"}, time.Hour},
		{"audience and issuer", "reporting-service",
			TokenOptions{Audience: "https://billing.example.com", Issuer: "https://login.example.com"}, nil, time.Hour},
		{"ttl", "reporting-service", TokenOptions{TTL: 5 * time.Minute}, nil, 5 * time.Minute},
		{"ttl fraction dropped", "reporting-service", TokenOptions{TTL: 90*time.Second + 700*time.Millisecond}, nil, 90 * time.Second},
		{"longest ttl", "reporting-service", TokenOptions{TTL: m2mauth.MaxClientTokenTTL}, nil, m2mauth.MaxClientTokenTTL},
		{"issued in the past, still valid", "reporting-service", TokenOptions{IssuedAt: past}, nil, time.Hour},
		{"client id needing escapes", "team a:reports/v2%", TokenOptions{}, nil, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now().Truncate(time.Second)
			tok := iss.Token(t, tt.clientID, tt.opts)
			after := time.Now()

			v := newValidator(t, iss.Keys(), tt.opts.Issuer, tt.opts.Audience)
			c, err := v.Validate(context.Background(), tok)
			require.NoError(t, err)

			wantIss, wantAud := tt.opts.Issuer, tt.opts.Audience
			if wantIss == "" {
				wantIss = DefaultIssuer
			}
			if wantAud == "" {
				wantAud = DefaultAudience
			}
			assert.Equal(t, tt.clientID, c.ClientID)
			assert.Equal(t, tt.clientID, c.Subject)
			assert.Equal(t, wantIss, c.Issuer)
			assert.Equal(t, []string{wantAud}, []string(c.Audience))
			assert.Equal(t, tt.wantScopes, c.Scopes)
			assert.Equal(t, tt.wantTTL, c.Expiry.Time().Sub(c.IssuedAt.Time()))
			assert.Equal(t, c.IssuedAt.Time(), c.NotBefore.Time())
			if tt.opts.IssuedAt.IsZero() {
				assert.WithinRange(t, c.IssuedAt.Time(), before, after)
			} else {
				assert.Equal(t, tt.opts.IssuedAt, c.IssuedAt.Time())
			}
			assert.Len(t, c.ID, 22, "jti: 128 bits, base64url")
		})
	}
}

// tokenParts decodes the header and claims of a JWS compact token.
func tokenParts(t *testing.T, tok string) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	require.Len(t, parts, 3)
	for i, dst := range []*map[string]any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		require.NoError(t, err)
		require.NoError(t, json.Unmarshal(b, dst))
	}
	return header, claims
}

func TestIssuerTokenIsAnAccessToken(t *testing.T) {
	iss := NewIssuer(t)
	key, err := iss.Keys().SigningKey(context.Background())
	require.NoError(t, err)
	issued := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

	tests := []struct {
		name       string
		opts       TokenOptions
		wantClaims map[string]any
	}{
		{"with scopes", TokenOptions{Scopes: m2mauth.Scopes{"read:builders", "read:subcontractors"}, IssuedAt: issued, TTL: 10 * time.Minute},
			map[string]any{
				"iss": DefaultIssuer, "sub": "reporting-service", "client_id": "reporting-service", "aud": DefaultAudience,
				"iat": float64(issued.Unix()), "nbf": float64(issued.Unix()), "exp": float64(issued.Add(10 * time.Minute).Unix()),
				"scope": "read:builders read:subcontractors",
			}},
		{"without scopes", TokenOptions{IssuedAt: issued},
			map[string]any{
				"iss": DefaultIssuer, "sub": "reporting-service", "client_id": "reporting-service", "aud": DefaultAudience,
				"iat": float64(issued.Unix()), "nbf": float64(issued.Unix()), "exp": float64(issued.Add(time.Hour).Unix()),
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			header, claims := tokenParts(t, iss.Token(t, "reporting-service", tt.opts))
			assert.Equal(t, map[string]any{"alg": "HS256", "kid": key.KeyID, "typ": m2mauth.TokenType}, header)
			require.IsType(t, "", claims["jti"])
			delete(claims, "jti")
			assert.Equal(t, tt.wantClaims, claims)
		})
	}
}

func TestIssuerTokenRefused(t *testing.T) {
	iss := NewIssuer(t)
	signing, err := iss.Keys().SigningKey(context.Background())
	require.NoError(t, err)
	// Same kid, another secret: an impostor key.
	impostor, err := m2mauth.NewHS256Key(signing.KeyID, []byte("another-secret-another-secret-another"))
	require.NoError(t, err)
	impostorKeys, err := m2mauth.NewStaticKeys(impostor)
	require.NoError(t, err)

	tests := []struct {
		name       string
		opts       TokenOptions
		keys       m2mauth.KeyProvider
		issuer     string
		audience   string
		wantReason string
	}{
		{"expired", TokenOptions{IssuedAt: time.Now().Add(-2 * time.Hour)}, iss.Keys(), "", "", m2mauth.ReasonTokenExpired},
		{"expired just now", TokenOptions{IssuedAt: time.Now().Add(-time.Minute), TTL: time.Second}, iss.Keys(), "", "", m2mauth.ReasonTokenExpired},
		{"not valid yet", TokenOptions{IssuedAt: time.Now().Add(time.Hour)}, iss.Keys(), "", "", m2mauth.ReasonTokenNotYetValid},
		{"other audience", TokenOptions{Audience: "https://billing.example.com"}, iss.Keys(), "", "", m2mauth.ReasonTokenAudience},
		{"validator for another audience", TokenOptions{}, iss.Keys(), "", "https://billing.example.com", m2mauth.ReasonTokenAudience},
		{"other issuer", TokenOptions{Issuer: "https://evil.example.com"}, iss.Keys(), "", "", m2mauth.ReasonTokenIssuer},
		{"another Issuer's keys", TokenOptions{}, NewIssuer(t).Keys(), "", "", m2mauth.ReasonTokenUnknownKey},
		{"same key id, another secret", TokenOptions{}, impostorKeys, "", "", m2mauth.ReasonTokenSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := iss.Token(t, "reporting-service", tt.opts)
			v := newValidator(t, tt.keys, tt.issuer, tt.audience)
			c, err := v.Validate(context.Background(), tok)
			assert.Nil(t, c)
			require.ErrorIs(t, err, m2mauth.NewError(m2mauth.CodeInvalidToken, ""))
			assert.Equal(t, tt.wantReason, m2mauth.RejectionReason(err))
		})
	}
}

func TestIssuerTokenThroughMiddleware(t *testing.T) {
	iss := NewIssuer(t)
	v := newValidator(t, iss.Keys(), "", "")
	h := v.RequireScopes("read:builders")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := m2mauth.ClaimsFromContext(r.Context())
		if !ok {
			http.Error(w, "no claims", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, c.ClientID)
	}))

	tests := []struct {
		name     string
		token    string
		wantCode int
		wantBody string
	}{
		{"scope granted", iss.Token(t, "reporting-service", TokenOptions{Scopes: m2mauth.Scopes{"read:builders", "write:builders"}}), http.StatusOK, "reporting-service"},
		{"scope missing", iss.Token(t, "reporting-service", TokenOptions{Scopes: m2mauth.Scopes{"write:builders"}}), http.StatusForbidden, ""},
		{"no scope at all", iss.Token(t, "reporting-service", TokenOptions{}), http.StatusForbidden, ""},
		{"expired", iss.Token(t, "reporting-service", TokenOptions{Scopes: m2mauth.Scopes{"read:builders"}, IssuedAt: time.Now().Add(-2 * time.Hour)}), http.StatusUnauthorized, ""},
		{"another Issuer's token", NewIssuer(t).Token(t, "reporting-service", TokenOptions{Scopes: m2mauth.Scopes{"read:builders"}}), http.StatusUnauthorized, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/api/builders", nil)
			r.Header.Set("Authorization", "Bearer "+tt.token)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			assert.Equal(t, tt.wantCode, w.Code)
			if tt.wantBody != "" {
				assert.Equal(t, tt.wantBody, w.Body.String())
			}
		})
	}
}

func TestIssuerConcurrentUse(t *testing.T) {
	iss := NewIssuer(t)
	v := newValidator(t, iss.Keys(), "", "")
	for i := range 8 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			id := fmt.Sprintf("client-%d", i)
			c, err := v.Validate(context.Background(), iss.Token(t, id, TokenOptions{Scopes: m2mauth.Scopes{"read:builders"}}))
			require.NoError(t, err)
			assert.Equal(t, id, c.ClientID)
		})
	}
}

func TestIssuersHaveTheirOwnKeys(t *testing.T) {
	a, b := NewIssuer(t), NewIssuer(t)
	ka, err := a.Keys().SigningKey(context.Background())
	require.NoError(t, err)
	kb, err := b.Keys().SigningKey(context.Background())
	require.NoError(t, err)
	assert.NotEqual(t, ka.KeyID, kb.KeyID)
	assert.NotEqual(t, ka.Key, kb.Key)
}

// fatalT records the message of Fatalf and ends the goroutine, as
// testing.T does, without failing the test it wraps.
type fatalT struct {
	testing.TB
	msg string
}

func (f *fatalT) Helper() {}

func (f *fatalT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// fatalMessage runs f and returns what it passed to Fatalf, or "".
func fatalMessage(t *testing.T, f func(t testing.TB)) string {
	ft := &fatalT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(ft)
	}()
	<-done
	return ft.msg
}

// badOptions are requests a token handler would refuse, so both Token
// and NewClaims fail the test on them.
var badOptions = []struct {
	name     string
	clientID string
	opts     TokenOptions
	wantMsg  string
}{
	{"empty client id", "", TokenOptions{}, "client id"},
	{"client id with a newline", "a\nb", TokenOptions{}, "client id"},
	{"client id too long", strings.Repeat("a", 256), TokenOptions{}, "client id"},
	{"scope with a space", "c", TokenOptions{Scopes: m2mauth.Scopes{"read builders"}}, "scopes"},
	{"scope with a quote", "c", TokenOptions{Scopes: m2mauth.Scopes{`read"`}}, "scopes"},
	{"empty scope", "c", TokenOptions{Scopes: m2mauth.Scopes{""}}, "scopes"},
	{"negative ttl", "c", TokenOptions{TTL: -time.Hour}, "TTL"},
	{"ttl under a second", "c", TokenOptions{TTL: 999 * time.Millisecond}, "TTL"},
	{"ttl over a day", "c", TokenOptions{TTL: m2mauth.MaxClientTokenTTL + time.Second}, "TTL"},
}

func TestIssuerTokenFailsTheTest(t *testing.T) {
	iss := NewIssuer(t)
	for _, tt := range badOptions {
		t.Run(tt.name, func(t *testing.T) {
			msg := fatalMessage(t, func(ft testing.TB) {
				iss.Token(ft, tt.clientID, tt.opts)
				t.Error("Token returned")
			})
			assert.Contains(t, msg, tt.wantMsg)
		})
	}
}
