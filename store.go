package m2mauth

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// MaxClientTokenTTL is the longest token lifetime m2mauth issues: the
// bound of [TokenHandlerConfig.MaxTokenTTL] and of a [Client]'s TokenTTL.
const MaxClientTokenTTL = 24 * time.Hour

// ErrClientNotFound is returned by a [ClientStore] for an unknown client id.
var ErrClientNotFound = errors.New("m2mauth: client not found")

// ErrClientExists is returned by [ClientManager.CreateClient] for a client
// id that is already taken.
var ErrClientExists = errors.New("m2mauth: client already exists")

// ErrSecretNotFound is returned by [ClientManager] secret methods for an
// unknown secret id.
var ErrSecretNotFound = errors.New("m2mauth: secret not found")

// ErrClientChanged is returned by [ClientManager.UpdateClient] when the
// client was changed after the copy being written back was read.
var ErrClientChanged = errors.New("m2mauth: client changed since it was read")

// Client is an OAuth 2.0 client registered with the authorization server.
//
// A Client value belongs to whoever holds it: stores hand out copies, and a
// store never keeps a reference to a Client passed to it. The one
// exception is [ClientSharer.SharedClient], whose Client is shared,
// read-only, by every caller.
type Client struct {
	// ID is the client_id: 1 to 255 printable ASCII characters
	// (RFC 6749 Appendix A.1, VSCHAR).
	ID string
	// Secrets are the client's secrets, as one-way hashes. A confidential
	// client authenticates with any of them that has not expired.
	Secrets []Secret
	// Grants maps each audience (the API a token is for) to the scopes the
	// client may request for it: the ceiling for that audience.
	Grants map[string]Scopes
	// Public marks a client that cannot keep a secret. Public clients may
	// not use the client credentials grant (RFC 6749 §4.4); they exist in
	// the model so the token handler can refuse them, with 401
	// invalid_client like any client that cannot authenticate, and say
	// why in the audit event.
	Public bool
	// Disabled clients cannot authenticate.
	Disabled bool
	// TokenTTL, when positive, overrides the token handler's token lifetime
	// for this client; at most [MaxClientTokenTTL], and never more than
	// the handler's MaxTokenTTL.
	TokenTTL time.Duration
	// CanIntrospect lets the client introspect any token this server
	// issued (RFC 7662). Without it a client may introspect only tokens
	// whose audience is its own id.
	CanIntrospect bool
	// TokensRevokedAt is when the client's tokens were last revoked (by
	// disabling the client or [Revoker.RevokeClientTokens]): every token
	// issued to it up to the end of that second is refused. Maintained by
	// the store; [ClientManager.UpdateClient] leaves it as stored.
	TokensRevokedAt time.Time
	// CreatedAt and UpdatedAt are maintained by the store. Every change
	// to the client moves UpdatedAt later, by at least a microsecond even
	// when the clock has not moved, so it tells one version of the client
	// from the next (see [ClientManager.UpdateClient]).
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Clone returns a deep copy of c.
func (c *Client) Clone() *Client {
	if c == nil {
		return nil
	}
	out := *c
	if c.Secrets != nil {
		out.Secrets = append(make([]Secret, 0, len(c.Secrets)), c.Secrets...)
	}
	if c.Grants != nil {
		out.Grants = make(map[string]Scopes, len(c.Grants))
		for aud, s := range c.Grants {
			out.Grants[aud] = s.Clone()
		}
	}
	return &out
}

// maxClientIDLen bounds client ids; longer ids in requests are refused
// before any store is asked.
const maxClientIDLen = 255

// ValidClientID reports whether id is a well-formed client id: 1 to 255
// characters of VSCHAR (%x20-7E, RFC 6749 Appendix A.1). Stores may use
// it to answer [ErrClientNotFound] for impossible ids without a lookup.
func ValidClientID(id string) bool {
	if id == "" || len(id) > maxClientIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// Validate reports whether c is well-formed: a valid ID, secrets with
// unique ids and readable hashes (a client with no secret is valid but
// cannot authenticate until one is added), no secrets on a public client, and
// grants with non-empty audiences and valid scope tokens. Stores call it
// before writing.
func (c *Client) Validate() error {
	if !ValidClientID(c.ID) {
		return errors.New("m2mauth: client id must be 1 to 255 printable ASCII characters")
	}
	if c.TokenTTL < 0 || c.TokenTTL > MaxClientTokenTTL {
		return fmt.Errorf("m2mauth: client token TTL %v outside [0, %v]", c.TokenTTL, MaxClientTokenTTL)
	}
	seen := make(map[string]bool, len(c.Secrets))
	for _, s := range c.Secrets {
		if s.ID == "" || seen[s.ID] {
			return fmt.Errorf("m2mauth: client %q: secret ids must be unique and non-empty", c.ID)
		}
		seen[s.ID] = true
		if err := ValidateSecretHash(s.Hash); err != nil {
			return fmt.Errorf("m2mauth: client %q: secret %q: %w", c.ID, s.ID, err)
		}
	}
	if c.Public && len(c.Secrets) > 0 {
		return fmt.Errorf("m2mauth: client %q: a public client has no secrets", c.ID)
	}
	for aud, scopes := range c.Grants {
		if aud == "" {
			return fmt.Errorf("m2mauth: client %q: empty audience in grants", c.ID)
		}
		for _, s := range scopes {
			if !validScopeToken(s) {
				return fmt.Errorf("m2mauth: client %q: audience %q: %w", c.ID, aud, errInvalidScope)
			}
		}
	}
	return nil
}

// ClientStore is where the token handler finds clients. It is consulted on
// every token request, so implementations should answer from one query or
// memory.
type ClientStore interface {
	// Client returns the client with the given id, or an error wrapping
	// ErrClientNotFound if there is none. Any other error is treated as a
	// store failure (500 server_error), never as failed authentication.
	// The caller may modify the returned Client; the store must not keep
	// a reference to it.
	Client(ctx context.Context, id string) (*Client, error)
}

// ClientSharer is a [ClientStore] that can answer a lookup with a Client
// it shares, read-only, with other callers, rather than with a copy of
// its own: a store that keeps decoded clients saves a copy per request.
// The token, introspection and revocation endpoints only read the client
// they look up, and call SharedClient instead of Client when their store
// is a ClientSharer whose SharingStore is the store itself. memstore and
// sqlstore implement it.
//
// A type that embeds a ClientSharer inherits its methods, but its
// SharingStore is then the embedded store, not itself, so the endpoints
// call its own Client: a wrapper that changes what Client returns (to
// restrict, decorate, count or fail lookups) stays in force. A wrapper
// that lends clients itself implements all three methods.
type ClientSharer interface {
	ClientStore
	// SharedClient returns the client with the given id, as Client
	// does, or an error wrapping ErrClientNotFound. The returned Client
	// may be shared with other callers: neither they nor the store may
	// modify it, then or later. A change to the client is seen by every
	// call that begins after the change returns, as with Client.
	SharedClient(ctx context.Context, id string) (*Client, error)
	// SharingStore returns the ClientSharer itself (a comparable value,
	// such as a pointer): the store whose Client SharedClient stands in
	// for.
	SharingStore() ClientStore
}

// clientReader returns how an endpoint that only reads clients looks one
// up in store: with SharedClient when store is a ClientSharer of its own,
// not one that a wrapper of another type embeds.
func clientReader(store ClientStore) func(ctx context.Context, id string) (*Client, error) {
	if s, ok := store.(ClientSharer); ok && sameStore(s.SharingStore(), store) {
		return s.SharedClient
	}
	return store.Client
}

// sameStore reports whether a and b are the same store: equal interface
// values. Values of a type that cannot be compared are never the same.
func sameStore(a, b ClientStore) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// ClientManager is the optional administration interface of a
// [ClientStore]. memstore and sqlstore implement it; the storetest package
// checks any implementation against its contract.
//
// Every method validates its input and changes nothing on error. Methods
// that name an unknown client return an error wrapping [ErrClientNotFound].
type ClientManager interface {
	ClientStore

	// CreateClient stores a new client. It sets CreatedAt and UpdatedAt
	// when they are zero and returns an error wrapping [ErrClientExists]
	// if the id is taken.
	CreateClient(ctx context.Context, c *Client) error
	// UpdateClient replaces the grants, Public, Disabled, TokenTTL and
	// CanIntrospect of an existing client and sets UpdatedAt. Secrets,
	// TokensRevokedAt and CreatedAt are left as stored; change secrets
	// with the secret methods. Disabling a client this way revokes its
	// tokens as SetDisabled does.
	//
	// When c.UpdatedAt is not zero, c is taken to be a client as read
	// and changed, and is written only if the stored client's UpdatedAt
	// is still the same (to the microsecond); otherwise UpdateClient
	// changes nothing and returns an error wrapping [ErrClientChanged],
	// and the caller reads the client again. So a read-modify-write
	// does not undo a change made in between, such as a SetDisabled that
	// took a compromised client's access away. With a zero UpdatedAt the
	// update is unconditional.
	UpdateClient(ctx context.Context, c *Client) error
	// AddSecret adds a secret to a client.
	AddSecret(ctx context.Context, clientID string, s Secret) error
	// ExpireSecret sets the expiry of one secret; a zero time removes the
	// expiry. It returns an error wrapping [ErrSecretNotFound] for an
	// unknown secret id.
	ExpireSecret(ctx context.Context, clientID, secretID string, at time.Time) error
	// RemoveSecret deletes one secret. It returns an error wrapping
	// [ErrSecretNotFound] for an unknown secret id.
	RemoveSecret(ctx context.Context, clientID, secretID string) error
	// SetDisabled disables or re-enables a client. Disabling it also
	// revokes every token issued to it so far (see [Revoker]), when the
	// store keeps revocations.
	SetDisabled(ctx context.Context, clientID string, disabled bool) error
	// DeleteClient removes a client and its secrets, and revokes every
	// token issued to it so far when the store keeps revocations.
	DeleteClient(ctx context.Context, clientID string) error
	// ListClients returns up to limit clients with ids greater than after,
	// in ascending id order. Pass the last id of one page as after to get
	// the next; an empty page means the end. limit <= 0 means 100.
	ListClients(ctx context.Context, after string, limit int) ([]*Client, error)
}

// SecretRotator is implemented by client managers that rotate a client's
// secret in one step, as memstore and sqlstore do. Rotating with
// AddSecret and ExpireSecret takes several steps, which a failure can cut
// short and two administrators can interleave.
type SecretRotator interface {
	// RotateSecret adds s to the client and, in the same change, makes
	// each of its other secrets expire at othersExpireAt, unless it
	// expires earlier already: a rotation never lengthens a secret's
	// life, so a routine rotation with a long grace period, run at the
	// same time as one without (a leaked secret), cannot revive the
	// leaked secret. othersExpireAt must not be zero. It returns an error
	// wrapping [ErrClientNotFound] for an unknown client, and changes
	// nothing on error.
	RotateSecret(ctx context.Context, clientID string, s Secret, othersExpireAt time.Time) error
}

// ChangedFields names the fields that [ClientManager.UpdateClient] sets
// and that differ between a and b, comma-separated in the order of the
// Client's fields ("grants,public,disabled,token_ttl,introspect"); grants are
// compared as sets of scopes per audience. It is the Reason of an
// [EventClientUpdated], and of an [EventClientCreated] against an empty
// Client: stores that audit administration use it so their events read
// alike, and the storetest suite checks them.
func ChangedFields(a, b *Client) string {
	var out []string
	if !sameGrants(a.Grants, b.Grants) {
		out = append(out, "grants")
	}
	if a.Public != b.Public {
		out = append(out, "public")
	}
	if a.Disabled != b.Disabled {
		out = append(out, "disabled")
	}
	if a.TokenTTL != b.TokenTTL {
		out = append(out, "token_ttl")
	}
	if a.CanIntrospect != b.CanIntrospect {
		out = append(out, "introspect")
	}
	return strings.Join(out, ",")
}

func sameGrants(a, b map[string]Scopes) bool {
	if len(a) != len(b) {
		return false
	}
	for aud, sa := range a {
		sb, ok := b[aud]
		if !ok || !sa.HasAll(sb) || !sb.HasAll(sa) {
			return false
		}
	}
	return true
}

// ExpiryChange is the Reason of an [EventSecretExpiring] that moves a
// secret's expiry from old to at: "expires_at", "expires_at_removed" when
// at is zero, or "" when nothing changes.
func ExpiryChange(old, at time.Time) string {
	switch {
	case old.Equal(at):
		return ""
	case at.IsZero():
		return "expires_at_removed"
	}
	return "expires_at"
}
