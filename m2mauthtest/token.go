package m2mauthtest

import (
	"testing"
	"time"

	"github.com/m2mauth/m2mauth"
)

// DefaultIssuer is the "iss" of tokens and claims whose [TokenOptions]
// name no issuer. A validator for them has this ValidatorConfig.Issuer.
const DefaultIssuer = "https://auth.example.com"

// DefaultAudience is the "aud" of tokens and claims whose [TokenOptions]
// name no audience. A validator for them has this
// ValidatorConfig.Audience.
const DefaultAudience = "https://api.example.com"

// defaultTTL is the lifetime of tokens whose options name none, the token
// handler's own default.
const defaultTTL = time.Hour

// TokenOptions describe a token minted by [Issuer.Token], or the claims
// built by [NewClaims]. The zero value describes a token for
// [DefaultAudience] from [DefaultIssuer], issued now, valid for an hour,
// with no scope.
type TokenOptions struct {
	// Scopes are the scopes the token grants, its "scope" claim. Each must
	// be a valid scope token (RFC 6749 §3.3); duplicates are folded.
	// Default: none, and the token has no "scope" claim.
	Scopes m2mauth.Scopes
	// Audience is the API the token is for, its "aud" claim.
	// Default: [DefaultAudience].
	Audience string
	// Issuer is the "iss" claim. Default: [DefaultIssuer].
	Issuer string
	// TTL is the token's lifetime, from IssuedAt to its "exp" claim. As
	// the token handler does, it counts whole seconds and drops the rest;
	// it must lie between 1s and [m2mauth.MaxClientTokenTTL].
	// Default: 1h.
	TTL time.Duration
	// IssuedAt is the time of issue, the "iat" and "nbf" claims, to the
	// second. A time more than TTL plus the validator's leeway (30s by
	// default) in the past gives an expired token; a time more than the
	// leeway in the future, one not valid yet. Default: now.
	IssuedAt time.Time
}

// tokenSpec is a client id and TokenOptions checked, with defaults filled.
type tokenSpec struct {
	clientID, issuer, audience string
	scopes                     m2mauth.Scopes // nil when empty
	ttl                        time.Duration  // whole seconds
	issuedAt                   time.Time
}

// resolve checks clientID and opts as the token handler would and fills
// in the defaults, failing the test on anything the handler would refuse.
func resolve(t testing.TB, clientID string, opts TokenOptions) tokenSpec {
	t.Helper()
	if !m2mauth.ValidClientID(clientID) {
		t.Fatalf("m2mauthtest: client id %q is not 1 to 255 printable ASCII characters", clientID)
	}
	s := tokenSpec{clientID: clientID, issuer: opts.Issuer, audience: opts.Audience, ttl: opts.TTL, issuedAt: opts.IssuedAt}
	if len(opts.Scopes) > 0 {
		scopes, err := m2mauth.NewScopes(opts.Scopes...)
		if err != nil {
			t.Fatalf("m2mauthtest: scopes %q: %v", []string(opts.Scopes), err)
		}
		s.scopes = scopes
	}
	if s.issuer == "" {
		s.issuer = DefaultIssuer
	}
	if s.audience == "" {
		s.audience = DefaultAudience
	}
	if s.ttl == 0 {
		s.ttl = defaultTTL
	}
	if s.ttl < time.Second || s.ttl > m2mauth.MaxClientTokenTTL {
		t.Fatalf("m2mauthtest: TTL %v outside [1s, %v]", s.ttl, m2mauth.MaxClientTokenTTL)
	}
	s.ttl = s.ttl.Truncate(time.Second)
	if s.issuedAt.IsZero() {
		s.issuedAt = time.Now()
	}
	return s
}
