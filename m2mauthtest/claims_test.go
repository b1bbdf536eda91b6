package m2mauthtest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

func TestNewClaimsMatchValidatedToken(t *testing.T) {
	iss := NewIssuer(t)
	now := time.Now()
	tests := []struct {
		name string
		opts TokenOptions
	}{
		{"defaults", TokenOptions{IssuedAt: now}},
		{"scopes", TokenOptions{Scopes: m2mauth.Scopes{"read:builders", "write:builders", "read:builders"}, IssuedAt: now}},
		{"audience, issuer, ttl", TokenOptions{Audience: "https://billing.example.com", Issuer: "https://login.example.com", TTL: 90*time.Second + time.Millisecond, IssuedAt: now}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newValidator(t, iss.Keys(), tt.opts.Issuer, tt.opts.Audience)
			fromToken, err := v.Validate(context.Background(), iss.Token(t, "reporting-service", tt.opts))
			require.NoError(t, err)

			c := NewClaims(t, "reporting-service", tt.opts)
			assert.Len(t, c.ID, 22, "jti: 128 bits, base64url")
			assert.NotEqual(t, fromToken.ID, c.ID)
			want := *fromToken
			want.ID = c.ID
			assert.Equal(t, &want, c)
		})
	}
}

func TestNewClaimsDefaults(t *testing.T) {
	before := time.Now().Truncate(time.Second)
	c := NewClaims(t, "reporting-service", TokenOptions{})
	after := time.Now()
	assert.Equal(t, DefaultIssuer, c.Issuer)
	assert.Equal(t, []string{DefaultAudience}, []string(c.Audience))
	assert.Nil(t, c.Scopes)
	assert.WithinRange(t, c.IssuedAt.Time(), before, after)
	assert.Equal(t, time.Hour, c.Expiry.Time().Sub(c.IssuedAt.Time()))
}

func TestNewClaimsExpired(t *testing.T) {
	// NewClaims describes what it is asked to, valid or not.
	issued := time.Now().Add(-2 * time.Hour)
	c := NewClaims(t, "reporting-service", TokenOptions{IssuedAt: issued})
	assert.True(t, c.Expiry.Time().Before(time.Now()))
}

func TestNewClaimsFreshJTI(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id := NewClaims(t, "reporting-service", TokenOptions{}).ID
		require.False(t, seen[id], "repeated jti %q", id)
		seen[id] = true
	}
}

func TestNewClaimsFailsTheTest(t *testing.T) {
	for _, tt := range badOptions {
		t.Run(tt.name, func(t *testing.T) {
			msg := fatalMessage(t, func(ft testing.TB) {
				NewClaims(ft, tt.clientID, tt.opts)
				t.Error("NewClaims returned")
			})
			assert.Contains(t, msg, tt.wantMsg)
		})
	}
}

func TestWithClaims(t *testing.T) {
	c := NewClaims(t, "reporting-service", TokenOptions{Scopes: m2mauth.Scopes{"read:builders"}})
	tests := []struct {
		name   string
		claims *m2mauth.Claims
	}{
		{"claims", c},
		{"nil claims", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/api/builders", nil)
			rc := WithClaims(r, tt.claims)

			got, ok := m2mauth.ClaimsFromContext(rc.Context())
			if tt.claims == nil {
				assert.False(t, ok, "no claims in the context")
				assert.Nil(t, got)
			} else {
				assert.True(t, ok)
				assert.Same(t, tt.claims, got)
			}
			_, ok = m2mauth.ClaimsFromContext(r.Context())
			assert.False(t, ok, "the original request is unchanged")
			assert.Equal(t, r.URL, rc.URL)
		})
	}
}
