package storetest

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// errAny stands for any error in a test case.
var errAny = errors.New("any error")

// lookupWait bounds how long an auditor waits for a read of the store
// before it concludes that the store holds a lock while it audits.
const lookupWait = 5 * time.Second

// recorder is an auditor that keeps the events it receives and, for each,
// what the store's Client returned for the event's client while Audit ran.
type recorder struct {
	store m2mauth.ClientManager // set once the store is made

	mu     sync.Mutex
	events []m2mauth.AuditEvent
	seen   []lookup
}

// lookup is what the store's Client, and Revocations when it has them,
// returned during one Audit call.
type lookup struct {
	client  *m2mauth.Client
	err     error
	rev     *m2mauth.Revocations
	revErr  error
	blocked bool
}

func (r *recorder) Audit(ctx context.Context, e m2mauth.AuditEvent) {
	var l lookup
	if r.store != nil {
		// Read in another goroutine, and give up waiting after a while:
		// a store that audits with a lock held blocks the read until
		// Audit returns, which must fail the test rather than hang it.
		done := make(chan lookup, 1)
		go func() {
			ctx := context.WithoutCancel(ctx)
			c, err := r.store.Client(ctx, e.ClientID)
			l := lookup{client: c, err: err}
			if rv, ok := r.store.(m2mauth.Revoker); ok {
				l.rev, l.revErr = rv.Revocations(ctx)
			}
			done <- l
		}()
		select {
		case l = <-done:
		case <-time.After(lookupWait):
			l.blocked = true
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	r.seen = append(r.seen, l)
}

// take returns the events and lookups recorded since the last take.
func (r *recorder) take() ([]m2mauth.AuditEvent, []lookup) {
	r.mu.Lock()
	defer r.mu.Unlock()
	events, seen := r.events, r.seen
	r.events, r.seen = nil, nil
	return events, seen
}

// adminEvent is an expected event, Time aside.
func adminEvent(typ m2mauth.AuditEventType, clientID, secretID, reason string) m2mauth.AuditEvent {
	return m2mauth.AuditEvent{Type: typ, ClientID: clientID, SecretID: secretID, Reason: reason}
}

func testAdminAudit(t *testing.T, newStore func(*testing.T, m2mauth.Auditor) m2mauth.ClientManager) {
	rec := &recorder{}
	s := newStore(t, rec)
	require.NotNil(t, s, "newStore returned nil")
	rec.store = s
	rv, isRevoker := s.(m2mauth.Revoker)
	// revoked is the event of a watermark the change sets, when the store
	// keeps revocations.
	revoked := func(id, reason string) []m2mauth.AuditEvent {
		if !isRevoker {
			return nil
		}
		return []m2mauth.AuditEvent{adminEvent(m2mauth.EventTokensRevoked, id, "", reason)}
	}

	now := utcNow()
	plain0, s0 := newSecret(t, now, time.Time{})
	plain1, s1 := newSecret(t, now, time.Time{})
	expiry := now.Add(time.Hour)
	other := "https://other.example.com"

	// Each case works on a client of its own, named after the case, made
	// by its setup: by default, base.
	base := func(id string) *m2mauth.Client {
		return &m2mauth.Client{
			ID:       id,
			Secrets:  []m2mauth.Secret{s0},
			Grants:   map[string]m2mauth.Scopes{api: {"read", "write"}},
			TokenTTL: time.Minute,
		}
	}
	none := func(*testing.T, string) {}
	disabled := func(t *testing.T, id string) {
		c := base(id)
		c.Disabled = true
		mustCreate(t, s, c)
	}
	expiring := func(t *testing.T, id string) {
		mustCreate(t, s, base(id))
		require.NoError(t, s.ExpireSecret(t.Context(), id, s0.ID, expiry))
	}
	withoutSecrets := func(t *testing.T, id string) {
		mustCreate(t, s, &m2mauth.Client{ID: id, Grants: map[string]m2mauth.Scopes{api: {"read"}}})
	}

	tests := []struct {
		name    string
		setup   func(t *testing.T, id string) // nil: create base(id)
		change  func(ctx context.Context, id string) error
		wantErr error // nil for success; errAny for any error
		want    func(id string) []m2mauth.AuditEvent
		revoker bool // run only on a store that implements m2mauth.Revoker
	}{
		{
			name:  "CreateClient",
			setup: none,
			change: func(ctx context.Context, id string) error {
				return s.CreateClient(ctx, &m2mauth.Client{
					ID:            id,
					Secrets:       []m2mauth.Secret{s0, s1},
					Grants:        map[string]m2mauth.Scopes{api: {"read"}},
					TokenTTL:      time.Minute,
					CanIntrospect: true,
				})
			},
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{
					adminEvent(m2mauth.EventClientCreated, id, "", "grants,token_ttl,introspect"),
					adminEvent(m2mauth.EventSecretAdded, id, s0.ID, ""),
					adminEvent(m2mauth.EventSecretAdded, id, s1.ID, ""),
				}
			},
		},
		{
			name:  "CreatePublicDisabled",
			setup: none,
			change: func(ctx context.Context, id string) error {
				return s.CreateClient(ctx, &m2mauth.Client{ID: id, Public: true, Disabled: true})
			},
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventClientCreated, id, "", "public,disabled")}
			},
		},
		{
			name:  "CreateMinimal",
			setup: none,
			change: func(ctx context.Context, id string) error {
				return s.CreateClient(ctx, &m2mauth.Client{ID: id, Secrets: []m2mauth.Secret{s1}})
			},
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{
					adminEvent(m2mauth.EventClientCreated, id, "", ""),
					adminEvent(m2mauth.EventSecretAdded, id, s1.ID, ""),
				}
			},
		},
		{
			name:    "CreateDuplicate",
			change:  func(ctx context.Context, id string) error { return s.CreateClient(ctx, base(id)) },
			wantErr: m2mauth.ErrClientExists,
		},
		{
			name:  "CreateInvalid",
			setup: none,
			change: func(ctx context.Context, id string) error {
				return s.CreateClient(ctx, &m2mauth.Client{ID: id, Public: true, Secrets: []m2mauth.Secret{s0}})
			},
			wantErr: errAny,
		},
		{
			name: "UpdateClient",
			change: func(ctx context.Context, id string) error {
				return s.UpdateClient(ctx, &m2mauth.Client{
					ID:       id,
					Grants:   map[string]m2mauth.Scopes{api: {"read", "write"}, other: {"read"}},
					TokenTTL: 2 * time.Minute,
				})
			},
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventClientUpdated, id, "", "grants,token_ttl")}
			},
		},
		{
			name: "UpdateScopes",
			change: func(ctx context.Context, id string) error {
				return s.UpdateClient(ctx, &m2mauth.Client{
					ID: id, Grants: map[string]m2mauth.Scopes{api: {"read"}}, TokenTTL: time.Minute,
				})
			},
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventClientUpdated, id, "", "grants")}
			},
		},
		{
			name: "UpdateIntrospect",
			change: func(ctx context.Context, id string) error {
				c := base(id)
				c.Secrets, c.CanIntrospect = nil, true
				return s.UpdateClient(ctx, c)
			},
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventClientUpdated, id, "", "introspect")}
			},
		},
		{
			name: "UpdateNothing",
			change: func(ctx context.Context, id string) error {
				// The same grants, listed in another order.
				return s.UpdateClient(ctx, &m2mauth.Client{
					ID: id, Grants: map[string]m2mauth.Scopes{api: {"write", "read"}}, TokenTTL: time.Minute,
				})
			},
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventClientUpdated, id, "", "")}
			},
		},
		{
			name: "UpdateDisables",
			change: func(ctx context.Context, id string) error {
				c := base(id)
				c.Secrets, c.Disabled = nil, true
				return s.UpdateClient(ctx, c)
			},
			want: func(id string) []m2mauth.AuditEvent {
				return append([]m2mauth.AuditEvent{
					adminEvent(m2mauth.EventClientUpdated, id, "", "disabled"),
					adminEvent(m2mauth.EventClientDisabled, id, "", "disabled"),
				}, revoked(id, "disabled")...)
			},
		},
		{
			// A client that stays disabled is not disabled again.
			name:  "UpdateStaysDisabled",
			setup: disabled,
			change: func(ctx context.Context, id string) error {
				c := base(id)
				c.Secrets, c.Disabled, c.TokenTTL = nil, true, 2*time.Minute
				return s.UpdateClient(ctx, c)
			},
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventClientUpdated, id, "", "token_ttl")}
			},
		},
		{
			name:  "UpdateEnables",
			setup: disabled,
			change: func(ctx context.Context, id string) error {
				return s.UpdateClient(ctx, &m2mauth.Client{ID: id})
			},
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{
					adminEvent(m2mauth.EventClientUpdated, id, "", "grants,disabled,token_ttl"),
					adminEvent(m2mauth.EventClientEnabled, id, "", "disabled"),
				}
			},
		},
		{
			name:  "UpdatePublic",
			setup: withoutSecrets,
			change: func(ctx context.Context, id string) error {
				return s.UpdateClient(ctx, &m2mauth.Client{ID: id, Public: true, Grants: map[string]m2mauth.Scopes{api: {"read"}}})
			},
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventClientUpdated, id, "", "public")}
			},
		},
		{
			name:    "UpdateNotFound",
			setup:   none,
			change:  func(ctx context.Context, id string) error { return s.UpdateClient(ctx, &m2mauth.Client{ID: id}) },
			wantErr: m2mauth.ErrClientNotFound,
		},
		{
			name: "UpdateInvalid",
			change: func(ctx context.Context, id string) error {
				// A client with a secret cannot become public.
				return s.UpdateClient(ctx, &m2mauth.Client{ID: id, Public: true})
			},
			wantErr: errAny,
		},
		{
			name:   "AddSecret",
			change: func(ctx context.Context, id string) error { return s.AddSecret(ctx, id, s1) },
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventSecretAdded, id, s1.ID, "")}
			},
		},
		{
			name:    "AddSecretDuplicate",
			change:  func(ctx context.Context, id string) error { return s.AddSecret(ctx, id, s0) },
			wantErr: errAny,
		},
		{
			name:    "AddSecretNotFound",
			setup:   none,
			change:  func(ctx context.Context, id string) error { return s.AddSecret(ctx, id, s1) },
			wantErr: m2mauth.ErrClientNotFound,
		},
		{
			name:   "ExpireSecret",
			change: func(ctx context.Context, id string) error { return s.ExpireSecret(ctx, id, s0.ID, expiry) },
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventSecretExpiring, id, s0.ID, "expires_at")}
			},
		},
		{
			name:  "ExpireSecretLater",
			setup: expiring,
			change: func(ctx context.Context, id string) error {
				return s.ExpireSecret(ctx, id, s0.ID, expiry.Add(time.Hour))
			},
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventSecretExpiring, id, s0.ID, "expires_at")}
			},
		},
		{
			name:   "ExpireSecretAgain",
			setup:  expiring,
			change: func(ctx context.Context, id string) error { return s.ExpireSecret(ctx, id, s0.ID, expiry) },
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventSecretExpiring, id, s0.ID, "")}
			},
		},
		{
			name:   "RemoveExpiry",
			setup:  expiring,
			change: func(ctx context.Context, id string) error { return s.ExpireSecret(ctx, id, s0.ID, time.Time{}) },
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventSecretExpiring, id, s0.ID, "expires_at_removed")}
			},
		},
		{
			name:   "RemoveNoExpiry",
			change: func(ctx context.Context, id string) error { return s.ExpireSecret(ctx, id, s0.ID, time.Time{}) },
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventSecretExpiring, id, s0.ID, "")}
			},
		},
		{
			name:    "ExpireSecretNotFound",
			change:  func(ctx context.Context, id string) error { return s.ExpireSecret(ctx, id, s1.ID, expiry) },
			wantErr: m2mauth.ErrSecretNotFound,
		},
		{
			name:    "ExpireSecretClientNotFound",
			setup:   none,
			change:  func(ctx context.Context, id string) error { return s.ExpireSecret(ctx, id, s0.ID, expiry) },
			wantErr: m2mauth.ErrClientNotFound,
		},
		{
			name:   "RemoveSecret",
			change: func(ctx context.Context, id string) error { return s.RemoveSecret(ctx, id, s0.ID) },
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventSecretRemoved, id, s0.ID, "")}
			},
		},
		{
			name:    "RemoveSecretNotFound",
			change:  func(ctx context.Context, id string) error { return s.RemoveSecret(ctx, id, s1.ID) },
			wantErr: m2mauth.ErrSecretNotFound,
		},
		{
			name:    "RemoveSecretClientNotFound",
			setup:   none,
			change:  func(ctx context.Context, id string) error { return s.RemoveSecret(ctx, id, s0.ID) },
			wantErr: m2mauth.ErrClientNotFound,
		},
		{
			name:   "Disable",
			change: func(ctx context.Context, id string) error { return s.SetDisabled(ctx, id, true) },
			want: func(id string) []m2mauth.AuditEvent {
				return append([]m2mauth.AuditEvent{adminEvent(m2mauth.EventClientDisabled, id, "", "disabled")}, revoked(id, "disabled")...)
			},
		},
		{
			name:   "DisableDisabled",
			setup:  disabled,
			change: func(ctx context.Context, id string) error { return s.SetDisabled(ctx, id, true) },
			want: func(id string) []m2mauth.AuditEvent {
				return append([]m2mauth.AuditEvent{adminEvent(m2mauth.EventClientDisabled, id, "", "")}, revoked(id, "disabled")...)
			},
		},
		{
			name:   "Enable",
			setup:  disabled,
			change: func(ctx context.Context, id string) error { return s.SetDisabled(ctx, id, false) },
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventClientEnabled, id, "", "disabled")}
			},
		},
		{
			name:   "EnableEnabled",
			change: func(ctx context.Context, id string) error { return s.SetDisabled(ctx, id, false) },
			want: func(id string) []m2mauth.AuditEvent {
				return []m2mauth.AuditEvent{adminEvent(m2mauth.EventClientEnabled, id, "", "")}
			},
		},
		{
			name:    "SetDisabledNotFound",
			setup:   none,
			change:  func(ctx context.Context, id string) error { return s.SetDisabled(ctx, id, true) },
			wantErr: m2mauth.ErrClientNotFound,
		},
		{
			name:   "DeleteClient",
			change: func(ctx context.Context, id string) error { return s.DeleteClient(ctx, id) },
			want: func(id string) []m2mauth.AuditEvent {
				return append([]m2mauth.AuditEvent{adminEvent(m2mauth.EventClientDeleted, id, "", "")}, revoked(id, "deleted")...)
			},
		},
		{
			name:    "DeleteNotFound",
			setup:   none,
			change:  func(ctx context.Context, id string) error { return s.DeleteClient(ctx, id) },
			wantErr: m2mauth.ErrClientNotFound,
		},
		{
			name:    "RevokeClientTokens",
			change:  func(ctx context.Context, id string) error { return rv.RevokeClientTokens(ctx, id) },
			want:    func(id string) []m2mauth.AuditEvent { return revoked(id, "revoke") },
			revoker: true,
		},
		{
			name:    "RevokeClientTokensNotFound",
			setup:   none,
			change:  func(ctx context.Context, id string) error { return rv.RevokeClientTokens(ctx, id) },
			wantErr: m2mauth.ErrClientNotFound,
			revoker: true,
		},
		{
			name:    "RevokeAllTokens",
			change:  func(ctx context.Context, _ string) error { return rv.RevokeAllTokens(ctx) },
			want:    func(string) []m2mauth.AuditEvent { return revoked("", "revoke_all") },
			revoker: true,
		},
		{
			// The revocation endpoint audits it, with the caller's address.
			name: "RevokeToken",
			change: func(ctx context.Context, id string) error {
				return rv.RevokeToken(ctx, id, "jti-audit", time.Now().Add(time.Hour))
			},
			revoker: true,
		},
		{
			name: "RevokeTokenInvalid",
			change: func(ctx context.Context, id string) error {
				return rv.RevokeToken(ctx, id, "", time.Now().Add(time.Hour))
			},
			wantErr: errAny,
			revoker: true,
		},
		{
			name: "Reads",
			change: func(ctx context.Context, id string) error {
				if _, err := s.Client(ctx, id); err != nil {
					return err
				}
				if _, err := s.ListClients(ctx, "", 0); err != nil {
					return err
				}
				if isRevoker {
					if _, err := rv.Revocations(ctx); err != nil {
						return err
					}
				}
				if feed, ok := s.(m2mauth.RevocationFeed); ok {
					if _, err := feed.RevocationsSince(ctx, 0); err != nil {
						return err
					}
				}
				return nil
			},
			want: func(string) []m2mauth.AuditEvent { return nil },
		},
	}
	secrets := map[string]string{plain0: s0.Hash, plain1: s1.Hash}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.revoker && !isRevoker {
				t.Skip("the store does not implement m2mauth.Revoker")
			}
			id := "audit-" + tt.name
			if tt.setup == nil {
				mustCreate(t, s, base(id))
			} else {
				tt.setup(t, id)
			}
			rec.take()

			before := time.Now()
			err := tt.change(t.Context(), id)
			got, seen := rec.take()
			for i, e := range got {
				assert.WithinDuration(t, before, e.Time, time.Minute, "Time of event %d", i)
				assertNoSecretMaterial(t, e, secrets)
				assertSeenAfterChange(t, e, seen[i])
			}
			switch {
			case tt.wantErr == nil:
				require.NoError(t, err)
			case errors.Is(tt.wantErr, errAny):
				require.Error(t, err)
			default:
				require.ErrorIs(t, err, tt.wantErr)
			}
			var want []m2mauth.AuditEvent
			if tt.want != nil {
				want = tt.want(id)
			}
			for i := range got {
				got[i].Time = time.Time{}
			}
			assert.Equal(t, want, got, "events")
		})
	}
}

// assertNoSecretMaterial checks that no text of e holds a secret, a hash,
// or a part of a hash.
func assertNoSecretMaterial(t *testing.T, e m2mauth.AuditEvent, secrets map[string]string) {
	t.Helper()
	fields := map[string]string{
		"ClientID": e.ClientID, "RemoteIP": e.RemoteIP, "UserAgent": e.UserAgent, "Audience": e.Audience,
		"Scopes": e.Scopes.String(), "JTI": e.JTI, "SecretID": e.SecretID, "Error": e.Error, "Reason": e.Reason,
	}
	for plain, hash := range secrets {
		parts := []string{plain, hash}
		for _, p := range strings.Split(hash, "$") {
			if len(p) >= 8 {
				parts = append(parts, p)
			}
		}
		for name, v := range fields {
			for _, p := range parts {
				assert.NotContains(t, v, p, "%s of a %s event holds secret material", name, e.Type)
			}
		}
	}
}

// assertSeenAfterChange checks that the store's own read, made while the
// auditor received e, saw the change that e reports.
func assertSeenAfterChange(t *testing.T, e m2mauth.AuditEvent, l lookup) {
	t.Helper()
	if l.blocked {
		assert.Fail(t, "the store's Client blocked while the auditor ran: events are sent with a lock held",
			"event %s", e.Type)
		return
	}
	if e.Type == m2mauth.EventTokensRevoked {
		assertWatermarkSeen(t, e, l)
		return
	}
	if e.Type == m2mauth.EventClientDeleted {
		assert.ErrorIs(t, l.err, m2mauth.ErrClientNotFound, "the auditor received %s before the client was deleted", e.Type)
		return
	}
	if !assert.NoError(t, l.err, "the auditor received %s before the change was visible", e.Type) {
		return
	}
	switch e.Type {
	case m2mauth.EventSecretAdded:
		assert.Contains(t, secretIDs(l.client), e.SecretID, "the auditor received %s before the secret was added", e.Type)
	case m2mauth.EventSecretRemoved:
		assert.NotContains(t, secretIDs(l.client), e.SecretID, "the auditor received %s before the secret was removed", e.Type)
	case m2mauth.EventClientDisabled:
		assert.True(t, l.client.Disabled, "the auditor received %s before the client was disabled", e.Type)
	case m2mauth.EventClientEnabled:
		assert.False(t, l.client.Disabled, "the auditor received %s before the client was enabled", e.Type)
	}
}

// assertWatermarkSeen checks that the store's Revocations, read while the
// auditor received the tokens_revoked event e, held the watermark e
// reports, in the second of e's Time, and that so did the client's
// TokensRevokedAt when it still exists.
func assertWatermarkSeen(t *testing.T, e m2mauth.AuditEvent, l lookup) {
	t.Helper()
	if !assert.NoError(t, l.revErr, "Revocations while the auditor received %s", e.Type) ||
		!assert.NotNil(t, l.rev, "Revocations while the auditor received %s", e.Type) {
		return
	}
	if e.ClientID == "" {
		assertSameSecond(t, e.Time, l.rev.Before, "the store-wide watermark when the auditor received %s", e.Type)
		return
	}
	assertSameSecond(t, e.Time, l.rev.Clients[e.ClientID], "the watermark of %q when the auditor received %s", e.ClientID, e.Type)
	if e.Reason == "deleted" {
		assert.ErrorIs(t, l.err, m2mauth.ErrClientNotFound, "the auditor received %s before the client was deleted", e.Type)
		return
	}
	if assert.NoError(t, l.err, "the auditor received %s before the change was visible", e.Type) {
		assertSameSecond(t, e.Time, l.client.TokensRevokedAt, "TokensRevokedAt of %q when the auditor received %s", e.ClientID, e.Type)
	}
}

func secretIDs(c *m2mauth.Client) []string {
	ids := make([]string, len(c.Secrets))
	for i, s := range c.Secrets {
		ids[i] = s.ID
	}
	return ids
}
