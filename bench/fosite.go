package bench

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"time"

	"github.com/ory/fosite"
	"github.com/ory/fosite/compose"
	"github.com/ory/fosite/storage"

	"github.com/m2mauth/m2mauth"
)

// FositeBCryptCost is the bcrypt cost of the fosite client's secret hash:
// fosite's default work factor.
const FositeBCryptCost = fosite.DefaultBCryptWorkFactor

// NewFositeEndpoint is ory/fosite's token endpoint, composed with only the
// client credentials grant (its cheapest configuration for this request)
// and fosite's default HMAC-SHA strategy, which issues opaque
// "ory_at_…" tokens (HMAC-SHA512/256) rather than JWTs. Clients and
// issued tokens live in fosite's in-memory store, which keeps every token.
//
// With bcrypt the client secret is checked by fosite's default hasher at
// its default cost; without, by a hasher comparing plaintext in constant
// time, which separates the cost of hashing from the rest.
func NewFositeEndpoint(bcrypt bool) (Endpoint, error) {
	secret, err := m2mauth.GenerateSecret()
	if err != nil {
		return Endpoint{}, err
	}
	cfg := &fosite.Config{
		AccessTokenLifespan: time.Hour,
		AccessTokenIssuer:   Issuer,
		GlobalSecret:        []byte("fosite-global-secret-32-bytes-xx"),
		ScopeStrategy:       fosite.ExactScopeStrategy,
	}
	name := EndpointFositeBCrypt
	if !bcrypt {
		name = EndpointFositePlain
		cfg.ClientSecretsHasher = plaintextHasher{}
	}
	hashed, err := cfg.GetSecretsHasher(context.Background()).Hash(context.Background(), []byte(secret))
	if err != nil {
		return Endpoint{}, err
	}
	store := storage.NewMemoryStore()
	store.Clients[ClientID] = &fosite.DefaultClient{
		ID:         ClientID,
		Secret:     hashed,
		GrantTypes: fosite.Arguments{"client_credentials"},
		Scopes:     fosite.Arguments{"read", "write"},
		Audience:   fosite.Arguments{Audience},
	}
	provider := compose.Compose(cfg, store,
		&compose.CommonStrategy{CoreStrategy: compose.NewOAuth2HMACStrategy(cfg)},
		compose.OAuth2ClientCredentialsGrantFactory)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		ar, err := provider.NewAccessRequest(ctx, r, &fosite.DefaultSession{})
		if err != nil {
			provider.WriteAccessError(ctx, w, ar, err)
			return
		}
		// The client credentials handler has checked the requested scopes
		// against the client's; grant them, and the default audience as
		// m2mauth does.
		for _, s := range ar.GetRequestedScopes() {
			ar.GrantScope(s)
		}
		ar.GrantAudience(Audience)
		resp, err := provider.NewAccessResponse(ctx, ar)
		if err != nil {
			provider.WriteAccessError(ctx, w, ar, err)
			return
		}
		provider.WriteAccessResponse(ctx, w, ar, resp)
	})
	return Endpoint{Name: name, Handler: h, Authorization: basicAuth(ClientID, secret)}, nil
}

// plaintextHasher is the cheapest fosite.Hasher: the "hash" is the secret,
// compared in constant time.
type plaintextHasher struct{}

var errSecretMismatch = errors.New("bench: client secret mismatch")

func (plaintextHasher) Compare(_ context.Context, hash, data []byte) error {
	if subtle.ConstantTimeCompare(hash, data) != 1 {
		return errSecretMismatch
	}
	return nil
}

func (plaintextHasher) Hash(_ context.Context, data []byte) ([]byte, error) {
	return bytes.Clone(data), nil
}
