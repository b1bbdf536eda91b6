package m2mauthtest

import (
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/m2mauth/m2mauth"
)

// NewClaims returns the claims of an access token for the client clientID
// as described by opts, with a fresh random jti: the value
// [m2mauth.Validator.RequireScopes] passes to the handler behind it for
// the token [Issuer.Token] would mint. No token is made, signed or
// checked, so expired or foreign claims are returned as asked; NewClaims
// fails t only on what a token handler would refuse (an invalid client
// id or scope, a lifetime out of range).
func NewClaims(t testing.TB, clientID string, opts TokenOptions) *m2mauth.Claims {
	t.Helper()
	s := resolve(t, clientID, opts)
	var id [16]byte // 128 bits, as the token handler draws them
	rand.Read(id[:])
	iat := s.issuedAt.Truncate(time.Second)
	return &m2mauth.Claims{
		Claims: jwt.Claims{
			Issuer:    s.issuer,
			Subject:   clientID,
			Audience:  jwt.Audience{s.audience},
			Expiry:    jwt.NewNumericDate(iat.Add(s.ttl)),
			NotBefore: jwt.NewNumericDate(iat),
			IssuedAt:  jwt.NewNumericDate(iat),
			ID:        base64.RawURLEncoding.EncodeToString(id[:]),
		},
		ClientID: clientID,
		Scopes:   s.scopes,
	}
}

// WithClaims returns a shallow copy of r whose context carries c, as the
// middleware of an [m2mauth.Validator] passes an accepted request to the
// handler behind it: that handler finds c with
// [m2mauth.ClaimsFromContext]. It is for unit tests of such handlers,
// which then need neither a token nor a validator. A nil c returns r
// itself, whose context carries no claims, as a handler mounted without
// the middleware sees it.
func WithClaims(r *http.Request, c *m2mauth.Claims) *http.Request {
	if c == nil {
		return r
	}
	return r.WithContext(m2mauth.ContextWithClaims(r.Context(), c))
}
