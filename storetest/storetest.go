// Package storetest checks a [m2mauth.ClientManager] against the contract
// written on that interface and on [m2mauth.Client]. The memstore and
// sqlstore packages run it from their tests, and any other implementation,
// including your own, can do the same from a _test.go file:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) m2mauth.ClientManager {
//			return mystore.New(openTestDB(t))
//		})
//	}
//
// The suite checks lookups, validation (an invalid client is refused and
// nothing is stored), copy semantics (a store neither keeps nor hands out a
// reference it shares with a caller), the secret methods, pagination and
// safety under concurrent use, and [m2mauth.SecretRotator] when the store
// implements it. CanIntrospect round-trips like the other
// fields a caller sets; TokensRevokedAt is kept as CreateClient was given
// it (normally zero) and UpdateClient leaves it as stored.
//
// Every time the suite writes is in UTC and truncated to the microsecond,
// the precision SQL databases keep, so a store may drop anything finer.
// Timestamps a store sets itself must be within a minute of the clock of
// the machine running the tests. TokensRevokedAt, watermarks and token
// expiries are compared to the second, the precision of token timestamps:
// a store may keep them as whole seconds, rounded down.
//
// # Shared clients
//
// A store that also implements [m2mauth.ClientSharer] must return itself
// from SharingStore, and is checked on every read the suite makes: SharedClient must return what Client returns, so
// every change is seen by the next call, and an unknown id is an error
// wrapping [m2mauth.ErrClientNotFound]. A copy from Client that the
// caller modifies must leave what SharedClient returns untouched, and
// readers calling SharedClient while writers change the client must each
// get a whole client.
//
// # Revocations
//
// A store that also implements [m2mauth.Revoker] is checked against the
// contract below when [Run] is given [WithClock], a constructor of stores
// that read the time from a clock the suite controls:
//
//	storetest.Run(t, newStore, storetest.WithClock(
//		func(t *testing.T, now func() time.Time) m2mauth.ClientManager {
//			return mystore.New(openTestDB(t), mystore.WithClock(now))
//		}))
//
// The contract, on top of the one written on [m2mauth.Revoker]:
//
//   - A new store's [m2mauth.Revoker.Revocations] are empty, at Version 0.
//   - A client's watermark is set to now by RevokeClientTokens, by
//     SetDisabled(true) (every call, even on a client already disabled),
//     by an UpdateClient that turns Disabled on (not one that leaves it
//     on), and by DeleteClient. It never moves back. The client's
//     TokensRevokedAt becomes the same time (except after DeleteClient),
//     and UpdateClient leaves it. Re-enabling keeps the watermark. A
//     deleted client's watermark stays in force when its id is registered
//     again. RevokeClientTokens of an unknown or impossible id returns an
//     error wrapping [m2mauth.ErrClientNotFound] and changes nothing.
//   - RevokeAllTokens sets the store-wide watermark (Before) to now and
//     changes no client.
//   - RevokeToken needs a valid client id ([m2mauth.ValidClientID]), but
//     not an existing client; a jti of 1 to 255 printable ASCII
//     characters (%x20-7E), compared byte for byte; and a non-zero
//     expiry. Anything else is an error that changes nothing. Revoking a
//     token again is not an error; revoking one already dead at now (see
//     [m2mauth.DenyLive]) succeeds and need not be kept.
//   - Version is 0 until the first change and strictly increases with
//     every change above; reads, failed calls, the passing of time, and
//     administration that revokes nothing (CreateClient, UpdateClient
//     that does not turn Disabled on, the secret methods,
//     SetDisabled(false)) leave it.
//   - Revocations never holds an entry that is dead at now
//     ([m2mauth.Revocations.Pruned]), however many there were: the
//     "ManyTokens" subtest revokes [WithRevokedTokens] tokens one by one
//     and expects them all gone once dead.
//   - A store that implements [m2mauth.RevocationFeed] answers
//     RevocationsSince(v) with (nil, nil) when v is the current Version,
//     and with the current state for any other v, lower or higher.
//   - A store that implements [m2mauth.RevocationSource] is expected to
//     be immediate: CurrentRevocations, once pruned, equals Revocations
//     after every change. A source that lags (polling a shared store, for
//     example) belongs in a separate type.
//   - Revocations from many goroutines at once are all kept, and the
//     Version a reader sees never goes back.
//
// With [WithAuditedStore] as well, a Revoker's events are checked too (see
// below).
//
// # Audit events
//
// A store that reports its changes to an [m2mauth.Auditor], as memstore
// and sqlstore do, is checked for that too when [Run] is given
// [WithAuditedStore]:
//
//	storetest.Run(t, newStore, storetest.WithAuditedStore(
//		func(t *testing.T, a m2mauth.Auditor) m2mauth.ClientManager {
//			return mystore.New(openTestDB(t), mystore.WithAuditor(a))
//		}))
//
// Every successful change must send its events to the auditor before the
// method returns, and after the change is visible to the store's own
// reads, without holding a lock that those reads wait for; a call that
// fails sends none. Each event has Time within a minute of the test's
// clock, its Type, ClientID, the SecretID where one is concerned, and a
// Reason naming the fields whose value the call changed, comma-separated
// in the order of [m2mauth.Client]'s fields ("grants", "public",
// "disabled", "token_ttl", "introspect"), or empty when it changed none;
// its other fields are empty, so no secret, hash or token id can be among
// them.
//
//   - CreateClient: [m2mauth.EventClientCreated], Reason naming the
//     fields set to other than their zero value, then one
//     [m2mauth.EventSecretAdded] for each of the client's secrets, in
//     order.
//   - UpdateClient: [m2mauth.EventClientUpdated] (grants compare as sets
//     of scopes per audience); and when Disabled changed,
//     [m2mauth.EventClientDisabled] or [m2mauth.EventClientEnabled] too,
//     with Reason "disabled".
//   - AddSecret: [m2mauth.EventSecretAdded].
//   - ExpireSecret: [m2mauth.EventSecretExpiring], Reason "expires_at"
//     when it set a new expiry, "expires_at_removed" when it removed one,
//     empty when the expiry was already as asked.
//   - RemoveSecret: [m2mauth.EventSecretRemoved].
//   - SetDisabled: [m2mauth.EventClientDisabled] or
//     [m2mauth.EventClientEnabled], Reason "disabled" when the client was
//     not already so.
//   - DeleteClient: [m2mauth.EventClientDeleted].
//
// A store that also implements [m2mauth.Revoker] sends an
// [m2mauth.EventTokensRevoked] for each watermark it sets, after the
// events above, with the ClientID, a Time in the same second as the
// watermark, and a Reason:
//
//   - SetDisabled(true), and an UpdateClient that turns Disabled on:
//     "disabled".
//   - DeleteClient: "deleted".
//   - RevokeClientTokens: "revoke".
//   - RevokeAllTokens: an empty ClientID and "revoke_all".
//
// RevokeToken sends none (the revocation endpoint audits it, with the
// caller's address). When the auditor receives the event, the watermark
// is already in the store's Revocations.
//
// Reads send no events.
//
// # Managed signing keys
//
// [RunKeyStore] checks a [m2mauth.KeyStore], such as memstore's and
// sqlstore's, against the contract written there and on that interface.
package storetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/m2mauth/m2mauth"
)

// Option adds to what [Run] checks.
type Option func(*options)

type options struct {
	newAudited    func(t *testing.T, a m2mauth.Auditor) m2mauth.ClientManager
	newClocked    func(t *testing.T, now func() time.Time) m2mauth.ClientManager
	revokedTokens int
}

// WithAuditedStore makes [Run] check the audit events of client
// administration as well (see the package documentation), in a subtest
// named "AdminAudit" that calls newStore once. newStore must return a
// fresh, empty store that sends the events of its changes to a.
func WithAuditedStore(newStore func(t *testing.T, a m2mauth.Auditor) m2mauth.ClientManager) Option {
	return func(o *options) { o.newAudited = newStore }
}

// Run checks the store made by newStore against the [m2mauth.ClientManager]
// contract, one t.Run subtest per property, and against the options'
// contracts: the audit events with [WithAuditedStore], and the
// [m2mauth.Revoker] contract, in a subtest named "Revocations", with
// [WithClock].
//
// Run calls newStore once per subtest, with that subtest's t, and expects a
// fresh, empty store each time; newStore may register cleanup with
// t.Cleanup. Subtests run one after another, but some use the store from
// several goroutines at once, as a server does.
func Run(t *testing.T, newStore func(t *testing.T) m2mauth.ClientManager, opts ...Option) {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	tests := []struct {
		name string
		test func(*testing.T, m2mauth.ClientManager)
	}{
		{"ClientNotFound", testClientNotFound},
		{"SharingStore", testSharingStore},
		{"CreateRoundTrip", testCreateRoundTrip},
		{"CreateSetsTimestamps", testCreateSetsTimestamps},
		{"CreateKeepsGivenTimestamps", testCreateKeepsGivenTimestamps},
		{"AudienceWithoutScopes", testAudienceWithoutScopes},
		{"IDsAreExact", testIDsAreExact},
		{"CreateDuplicate", testCreateDuplicate},
		{"CreateInvalid", testCreateInvalid},
		{"CreateDoesNotKeepInput", testCreateDoesNotKeepInput},
		{"ReadsReturnCopies", testReadsReturnCopies},
		{"UpdateClient", testUpdateClient},
		{"UpdateDoesNotKeepInput", testUpdateDoesNotKeepInput},
		{"UpdateNotFound", testUpdateNotFound},
		{"UpdateStaleCopy", testUpdateStaleCopy},
		{"UpdateInvalid", testUpdateInvalid},
		{"Secrets", testSecrets},
		{"RotateSecret", testRotateSecret},
		{"SecretHashFormats", testSecretHashFormats},
		{"SecretNotFound", testSecretNotFound},
		{"SecretInvalid", testSecretInvalid},
		{"SecretIDsArePerClient", testSecretIDsArePerClient},
		{"SetDisabled", testSetDisabled},
		{"DeleteClient", testDeleteClient},
		{"ListClients", testListClients},
		{"ListClientsDefaultLimit", testListClientsDefaultLimit},
		{"ListClientsMixedIDs", testListClientsMixedIDs},
		{"ConcurrentReadsAndWrites", testConcurrentReadsAndWrites},
		{"ConcurrentCreate", testConcurrentCreate},
		{"ConcurrentAddSameSecret", testConcurrentAddSameSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			require.NotNil(t, s, "newStore returned nil")
			tt.test(t, s)
		})
	}
	if o.newAudited != nil {
		t.Run("AdminAudit", func(t *testing.T) { testAdminAudit(t, o.newAudited) })
	}
	t.Run("UpdatedAtStoppedClock", func(t *testing.T) {
		if o.newClocked == nil {
			t.Skip("pass storetest.WithClock to check UpdatedAt on a clock that stops or goes back")
		}
		testUpdatedAtStoppedClock(t, o.newClocked)
	})
	t.Run("Revocations", func(t *testing.T) { runRevocations(t, newStore, o) })
}

// testUpdatedAtStoppedClock checks that every change moves UpdatedAt on,
// and that UpdateClient still tells a stale copy, when the store's clock
// stands still or goes back.
func testUpdatedAtStoppedClock(t *testing.T, newClocked func(*testing.T, func() time.Time) m2mauth.ClientManager) {
	ctx := t.Context()
	clock := newTestClock()
	s := newClocked(t, clock.Now)
	now := clock.Now().Truncate(time.Microsecond)
	_, first := newSecret(t, now, time.Time{})
	mustCreate(t, s, &m2mauth.Client{ID: "still", Secrets: []m2mauth.Secret{first}, Grants: map[string]m2mauth.Scopes{api: {"read"}}})
	prev := mustGet(t, s, "still")
	_, second := newSecret(t, now, time.Time{})
	second.ID = "second"
	changes := []func() error{
		func() error { return s.SetDisabled(ctx, "still", true) },
		func() error { clock.Add(-time.Hour); return s.SetDisabled(ctx, "still", false) },
		func() error {
			return s.UpdateClient(ctx, &m2mauth.Client{ID: "still", Grants: map[string]m2mauth.Scopes{api: {"read"}}, TokenTTL: time.Minute})
		},
		func() error { return s.AddSecret(ctx, "still", second) },
		func() error { return s.ExpireSecret(ctx, "still", second.ID, now.Add(time.Hour)) },
		func() error { return s.RemoveSecret(ctx, "still", second.ID) },
	}
	if r, ok := s.(m2mauth.Revoker); ok {
		changes = append(changes, func() error { return r.RevokeClientTokens(ctx, "still") })
	}
	if r, ok := s.(m2mauth.SecretRotator); ok {
		_, third := newSecret(t, now, time.Time{})
		third.ID = "third"
		changes = append(changes, func() error { return r.RotateSecret(ctx, "still", third, now.Add(time.Hour)) })
	}
	for i, change := range changes {
		require.NoError(t, change(), "change %d", i)
		got := mustGet(t, s, "still")
		require.True(t, got.UpdatedAt.After(prev.UpdatedAt), "change %d: UpdatedAt %v did not move past %v", i, got.UpdatedAt, prev.UpdatedAt)
		require.ErrorIs(t, s.UpdateClient(ctx, prev), m2mauth.ErrClientChanged, "change %d", i)
		assertUnchanged(t, s, got)
		prev = got
	}
}

const api = "https://api.example.com"

func testClientNotFound(t *testing.T, s m2mauth.ClientManager) {
	for _, id := range []string{"nobody", ""} {
		assertNotFound(t, s, id)
	}
}

func testSharingStore(t *testing.T, s m2mauth.ClientManager) {
	sh, ok := s.(m2mauth.ClientSharer)
	if !ok {
		t.Skip("the store is not an m2mauth.ClientSharer")
	}
	assert.True(t, sh.SharingStore() == m2mauth.ClientStore(s),
		"SharingStore must return the store itself, or the endpoints never call its SharedClient")
}

func testCreateRoundTrip(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	_, s1 := newSecret(t, now.Add(-time.Hour), time.Time{})
	_, s2 := newSecret(t, now, now.Add(30*24*time.Hour))
	tests := []struct {
		name   string
		client *m2mauth.Client
	}{
		{"Confidential", &m2mauth.Client{
			ID:      "confidential",
			Secrets: []m2mauth.Secret{s1, s2},
			Grants: map[string]m2mauth.Scopes{
				api:                         {"invoices:read", "invoices:write", "admin"},
				"https://other.example.com": {"read"},
			},
			Disabled:      true,
			TokenTTL:      90 * time.Second,
			CanIntrospect: true,
		}},
		{"Public", &m2mauth.Client{
			ID:     "public",
			Grants: map[string]m2mauth.Scopes{api: {"read"}},
			Public: true,
		}},
		{"Minimal", &m2mauth.Client{
			ID:      "minimal",
			Secrets: []m2mauth.Secret{s1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.client.Clone()
			require.NoError(t, s.CreateClient(ctx, tt.client))
			got := mustGet(t, s, want.ID)
			assertSameClient(t, want, got)
		})
	}
}

func testCreateSetsTimestamps(t *testing.T, s m2mauth.ClientManager) {
	_, sec := newSecret(t, utcNow(), time.Time{})
	before := time.Now()
	mustCreate(t, s, &m2mauth.Client{ID: "stamped", Secrets: []m2mauth.Secret{sec}})
	got := mustGet(t, s, "stamped")
	assert.WithinDuration(t, before, got.CreatedAt, time.Minute, "CreatedAt")
	assert.WithinDuration(t, before, got.UpdatedAt, time.Minute, "UpdatedAt")
	assert.False(t, got.UpdatedAt.Before(got.CreatedAt), "UpdatedAt %v is before CreatedAt %v", got.UpdatedAt, got.CreatedAt)
}

func testCreateKeepsGivenTimestamps(t *testing.T, s m2mauth.ClientManager) {
	now := utcNow()
	_, sec := newSecret(t, now, time.Time{})
	created, updated, revoked := now.Add(-48*time.Hour), now.Add(-24*time.Hour), now.Add(-36*time.Hour)
	mustCreate(t, s, &m2mauth.Client{
		ID:              "imported",
		Secrets:         []m2mauth.Secret{sec},
		TokensRevokedAt: revoked,
		CreatedAt:       created,
		UpdatedAt:       updated,
	})
	got := mustGet(t, s, "imported")
	assertSameTime(t, created, got.CreatedAt, "CreatedAt")
	assertSameTime(t, updated, got.UpdatedAt, "UpdatedAt")
	assertSameSecond(t, revoked, got.TokensRevokedAt, "TokensRevokedAt")

	mustCreate(t, s, &m2mauth.Client{ID: "fresh", Secrets: []m2mauth.Secret{sec}})
	assert.True(t, mustGet(t, s, "fresh").TokensRevokedAt.IsZero(), "TokensRevokedAt of a new client")
}

// testAudienceWithoutScopes checks that an audience granted with no scopes
// survives a round trip: the client may still get tokens for it.
func testAudienceWithoutScopes(t *testing.T, s m2mauth.ClientManager) {
	_, sec := newSecret(t, utcNow(), time.Time{})
	want := &m2mauth.Client{
		ID:      "no-scopes",
		Secrets: []m2mauth.Secret{sec},
		Grants:  map[string]m2mauth.Scopes{api: {}, "https://other.example.com": {"read"}},
	}
	mustCreate(t, s, want.Clone())
	got := mustGet(t, s, "no-scopes")
	assert.Contains(t, got.Grants, api)
	assertSameClient(t, want, got)
}

// testIDsAreExact checks that client ids are compared byte for byte: case,
// spaces and SQL wildcard characters are significant.
func testIDsAreExact(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	var all strings.Builder
	for c := byte(0x20); c <= 0x7e; c++ {
		all.WriteByte(c)
	}
	ids := []string{
		"Case", "case", "CASE",
		"pad", "pad ", " pad",
		"under_score", "per%cent",
		all.String(),
		strings.Repeat("x", 255),
	}
	for _, id := range ids {
		require.NoError(t, s.CreateClient(ctx, publicClient(id)), "CreateClient(%q)", id)
	}
	for _, id := range ids {
		got := mustGet(t, s, id)
		assert.Equal(t, id, got.ID)
	}
	for _, id := range []string{"cASE", "pad  ", "under-score", "underXscore", "per%", "Cas_", "Ca%", strings.Repeat("x", 254)} {
		_, err := s.Client(ctx, id)
		assert.ErrorIs(t, err, m2mauth.ErrClientNotFound, "Client(%q)", id)
	}
}

func testCreateDuplicate(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	_, s1 := newSecret(t, utcNow(), time.Time{})
	mustCreate(t, s, &m2mauth.Client{
		ID:      "dup",
		Secrets: []m2mauth.Secret{s1},
		Grants:  map[string]m2mauth.Scopes{api: {"read"}},
	})
	before := mustGet(t, s, "dup")

	_, s2 := newSecret(t, utcNow(), time.Time{})
	err := s.CreateClient(ctx, &m2mauth.Client{
		ID:       "dup",
		Secrets:  []m2mauth.Secret{s2},
		Grants:   map[string]m2mauth.Scopes{api: {"read", "write"}},
		Disabled: true,
	})
	require.ErrorIs(t, err, m2mauth.ErrClientExists)
	assertUnchanged(t, s, before)

	err = s.CreateClient(ctx, publicClient("dup"))
	require.ErrorIs(t, err, m2mauth.ErrClientExists)
	assertUnchanged(t, s, before)
}

func testCreateInvalid(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	_, sec := newSecret(t, now, time.Time{})
	_, other := newSecret(t, now, time.Time{})
	dupID := other
	dupID.ID = sec.ID
	noID := sec
	noID.ID = ""
	unreadable := sec
	unreadable.Hash = "hunter2"
	truncated := sec
	truncated.Hash = sec.Hash[:len(sec.Hash)-1]
	unknownScheme := sec
	unknownScheme.Hash = "$md5$" + strings.TrimPrefix(sec.Hash, "$sha256$")
	confidential := func(id string) *m2mauth.Client {
		return &m2mauth.Client{ID: id, Secrets: []m2mauth.Secret{sec}, Grants: map[string]m2mauth.Scopes{api: {"read"}}}
	}
	withGrants := func(id string, g map[string]m2mauth.Scopes) *m2mauth.Client {
		c := confidential(id)
		c.Grants = g
		return c
	}
	withSecrets := func(id string, secs ...m2mauth.Secret) *m2mauth.Client {
		c := confidential(id)
		c.Secrets = secs
		return c
	}

	// A valid client already present must survive every refused call.
	mustCreate(t, s, confidential("existing"))
	existing := mustGet(t, s, "existing")

	tests := []struct {
		name   string
		client *m2mauth.Client
	}{
		{"Nil", nil},
		{"EmptyID", confidential("")},
		{"NewlineInID", confidential("bad\nid")},
		{"NULInID", confidential("bad\x00id")},
		{"DELInID", confidential("bad\x7fid")},
		{"NonASCIIID", confidential("cl\u00edent")},
		{"IDTooLong", confidential(strings.Repeat("x", 256))},
		{"SpaceInScope", withGrants("space-scope", map[string]m2mauth.Scopes{api: {"a b"}})},
		{"QuoteInScope", withGrants("quote-scope", map[string]m2mauth.Scopes{api: {"read", `"`}})},
		{"BackslashInScope", withGrants("backslash-scope", map[string]m2mauth.Scopes{api: {`a\b`}})},
		{"EmptyScope", withGrants("empty-scope", map[string]m2mauth.Scopes{api: {""}})},
		{"EmptyAudience", withGrants("empty-audience", map[string]m2mauth.Scopes{api: {"read"}, "": {"read"}})},
		{"UnreadableHash", withSecrets("unreadable-hash", sec, unreadable)},
		{"TruncatedHash", withSecrets("truncated-hash", truncated)},
		{"UnknownHashScheme", withSecrets("unknown-scheme", unknownScheme)},
		{"EmptySecretID", withSecrets("empty-secret-id", noID)},
		{"DuplicateSecretID", withSecrets("duplicate-secret-id", sec, dupID)},
		{"PublicWithSecrets", &m2mauth.Client{ID: "public-with-secrets", Public: true, Secrets: []m2mauth.Secret{sec}}},
		{"NegativeTokenTTL", &m2mauth.Client{ID: "negative-ttl", Secrets: []m2mauth.Secret{sec}, TokenTTL: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.CreateClient(ctx, tt.client)
			require.Error(t, err)
			if tt.client != nil {
				_, err := s.Client(ctx, tt.client.ID)
				assert.ErrorIs(t, err, m2mauth.ErrClientNotFound, "refused client %q was stored", tt.client.ID)
			}
			assert.Equal(t, []string{"existing"}, listAll(t, s, 0), "a refused client was stored")
			assertUnchanged(t, s, existing)
		})
	}
}

func testCreateDoesNotKeepInput(t *testing.T, s m2mauth.ClientManager) {
	now := utcNow()
	_, s1 := newSecret(t, now, time.Time{})
	_, s2 := newSecret(t, now, now.Add(time.Hour))
	c := &m2mauth.Client{
		ID:       "owned",
		Secrets:  []m2mauth.Secret{s1, s2},
		Grants:   map[string]m2mauth.Scopes{api: {"read", "write"}, "https://other.example.com": {"read"}},
		TokenTTL: time.Minute,
	}
	want := c.Clone()
	mustCreate(t, s, c)

	scribble(c)
	c.ID = "renamed"
	assertSameClient(t, want, mustGet(t, s, "owned"))
	_, err := s.Client(t.Context(), "renamed")
	assert.ErrorIs(t, err, m2mauth.ErrClientNotFound)
}

func testReadsReturnCopies(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	_, s1 := newSecret(t, now, time.Time{})
	_, s2 := newSecret(t, now, now.Add(time.Hour))
	want := &m2mauth.Client{
		ID:       "shared",
		Secrets:  []m2mauth.Secret{s1, s2},
		Grants:   map[string]m2mauth.Scopes{api: {"read", "write"}, "https://other.example.com": {"read"}},
		TokenTTL: time.Minute,
	}
	mustCreate(t, s, want.Clone())

	t.Run("Client", func(t *testing.T) {
		got := mustGet(t, s, "shared")
		scribble(got)
		assertSameClient(t, want, mustGet(t, s, "shared"))
	})
	t.Run("ListClients", func(t *testing.T) {
		page, err := s.ListClients(ctx, "", 0)
		require.NoError(t, err)
		require.Len(t, page, 1)
		scribble(page[0])
		assertSameClient(t, want, mustGet(t, s, "shared"))
		page, err = s.ListClients(ctx, "", 0)
		require.NoError(t, err)
		require.Len(t, page, 1)
		assertSameClient(t, want, page[0])
	})
}

func testUpdateClient(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	_, s1 := newSecret(t, now, time.Time{})
	mustCreate(t, s, &m2mauth.Client{
		ID:      "upd",
		Secrets: []m2mauth.Secret{s1},
		Grants: map[string]m2mauth.Scopes{
			api:                         {"read"},
			"https://gone.example.com":  {"read"},
			"https://other.example.com": {"read", "write"},
		},
		TokenTTL: time.Minute,
	})
	before := mustGet(t, s, "upd")

	// Secrets, CreatedAt and UpdatedAt in the update are not the store's
	// to take.
	_, s2 := newSecret(t, now, time.Time{})
	update := &m2mauth.Client{
		ID:      "upd",
		Secrets: []m2mauth.Secret{s2},
		Grants: map[string]m2mauth.Scopes{
			api:                         {"read", "write"},
			"https://other.example.com": {"admin"},
			"https://new.example.com":   {"read"},
		},
		Disabled:      true,
		TokenTTL:      5 * time.Minute,
		CanIntrospect: true,
		CreatedAt:     now.Add(-100 * 24 * time.Hour),
		UpdatedAt:     before.UpdatedAt,
	}
	require.NoError(t, s.UpdateClient(ctx, update))
	got := mustGet(t, s, "upd")
	want := update.Clone()
	want.Secrets = before.Secrets
	assertSameClient(t, want, got)
	assertSameTime(t, before.CreatedAt, got.CreatedAt, "CreatedAt")
	assertNotBefore(t, before.UpdatedAt, got.UpdatedAt, "UpdatedAt")

	t.Run("ClearEverything", func(t *testing.T) {
		require.NoError(t, s.UpdateClient(ctx, &m2mauth.Client{ID: "upd"}))
		got := mustGet(t, s, "upd")
		assertSameClient(t, &m2mauth.Client{ID: "upd", Secrets: before.Secrets}, got)
		assert.Empty(t, got.Grants)
		assertSameTime(t, before.CreatedAt, got.CreatedAt, "CreatedAt")
	})

	// TokensRevokedAt is the store's: an update neither sets nor clears
	// it (unless it disables the client, which the Revocations tests
	// check).
	t.Run("KeepsTokensRevokedAt", func(t *testing.T) {
		revokedAt := now.Add(-time.Hour)
		for _, disabled := range []bool{false, true} {
			id := fmt.Sprintf("kept-%t", disabled)
			mustCreate(t, s, &m2mauth.Client{ID: id, Secrets: []m2mauth.Secret{s1}, Disabled: disabled, TokensRevokedAt: revokedAt})
			for _, at := range []time.Time{{}, now.Add(time.Hour), now.Add(-48 * time.Hour)} {
				require.NoError(t, s.UpdateClient(ctx, &m2mauth.Client{ID: id, Disabled: disabled, CanIntrospect: true, TokensRevokedAt: at}))
				got := mustGet(t, s, id)
				assert.True(t, got.CanIntrospect, "CanIntrospect of %q", id)
				assertSameSecond(t, revokedAt, got.TokensRevokedAt, "TokensRevokedAt of %q after an update with %v", id, at)
			}
		}
	})

	t.Run("PublicClient", func(t *testing.T) {
		mustCreate(t, s, &m2mauth.Client{ID: "to-public", Grants: map[string]m2mauth.Scopes{api: {"read"}}, Public: true})
		require.NoError(t, s.UpdateClient(ctx, &m2mauth.Client{ID: "to-public", Public: true, Disabled: true}))
		got := mustGet(t, s, "to-public")
		assert.True(t, got.Public)
		assert.True(t, got.Disabled)
		assert.Empty(t, got.Grants)
	})

	t.Run("OtherClientsUntouched", func(t *testing.T) {
		_, sec := newSecret(t, now, time.Time{})
		mustCreate(t, s, &m2mauth.Client{ID: "bystander", Secrets: []m2mauth.Secret{sec}, Grants: map[string]m2mauth.Scopes{api: {"read"}}})
		bystander := mustGet(t, s, "bystander")
		require.NoError(t, s.UpdateClient(ctx, &m2mauth.Client{ID: "upd", Grants: map[string]m2mauth.Scopes{api: {"write"}}}))
		assertUnchanged(t, s, bystander)
	})
}

func testUpdateDoesNotKeepInput(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	_, sec := newSecret(t, utcNow(), time.Time{})
	mustCreate(t, s, &m2mauth.Client{ID: "owned", Secrets: []m2mauth.Secret{sec}})
	update := &m2mauth.Client{
		ID:     "owned",
		Grants: map[string]m2mauth.Scopes{api: {"read", "write"}, "https://other.example.com": {"read"}},
	}
	require.NoError(t, s.UpdateClient(ctx, update))
	want := update.Clone()
	want.Secrets = []m2mauth.Secret{sec}

	scribble(update)
	assertSameClient(t, want, mustGet(t, s, "owned"))
}

// testUpdateStaleCopy checks that UpdateClient refuses a copy read
// before any other change to the client, and changes nothing then: a
// read-modify-write must not undo a change made in between.
func testUpdateStaleCopy(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	changes := []struct {
		name   string
		change func(id, secretID string) error
	}{
		{"SetDisabled", func(id, _ string) error { return s.SetDisabled(ctx, id, true) }},
		{"SetDisabledFalse", func(id, _ string) error { return s.SetDisabled(ctx, id, false) }},
		{"UpdateClient", func(id, _ string) error {
			return s.UpdateClient(ctx, &m2mauth.Client{ID: id, Grants: map[string]m2mauth.Scopes{api: {"write"}}})
		}},
		{"UpdateClientNoChange", func(id, _ string) error {
			return s.UpdateClient(ctx, &m2mauth.Client{ID: id, Grants: map[string]m2mauth.Scopes{api: {"read"}}})
		}},
		{"AddSecret", func(id, _ string) error {
			_, sec := newSecret(t, now, time.Time{})
			sec.ID = "second"
			return s.AddSecret(ctx, id, sec)
		}},
		{"ExpireSecret", func(id, secretID string) error {
			return s.ExpireSecret(ctx, id, secretID, now.Add(time.Hour))
		}},
		{"RemoveSecret", func(id, secretID string) error { return s.RemoveSecret(ctx, id, secretID) }},
	}
	if r, ok := s.(m2mauth.Revoker); ok {
		changes = append(changes, struct {
			name   string
			change func(id, secretID string) error
		}{"RevokeClientTokens", func(id, _ string) error { return r.RevokeClientTokens(ctx, id) }})
	}
	for i, tt := range changes {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("stale-%d", i)
			_, sec := newSecret(t, now, time.Time{})
			mustCreate(t, s, &m2mauth.Client{ID: id, Secrets: []m2mauth.Secret{sec}, Grants: map[string]m2mauth.Scopes{api: {"read"}}})
			read := mustGet(t, s, id)
			require.NoError(t, tt.change(id, sec.ID))
			changed := mustGet(t, s, id)
			require.True(t, changed.UpdatedAt.After(read.UpdatedAt),
				"UpdatedAt %v did not move past %v", changed.UpdatedAt, read.UpdatedAt)

			// The stale copy, changed as an administrator would: it must
			// not bring back what the change took away.
			read.Grants[api] = m2mauth.Scopes{"admin"}
			read.TokenTTL = time.Minute
			err := s.UpdateClient(ctx, read)
			require.ErrorIs(t, err, m2mauth.ErrClientChanged)
			assertUnchanged(t, s, changed)

			// Read again, the same change goes through, once.
			fresh := mustGet(t, s, id)
			fresh.Grants[api] = m2mauth.Scopes{"admin"}
			require.NoError(t, s.UpdateClient(ctx, fresh))
			got := mustGet(t, s, id)
			assert.Equal(t, m2mauth.Scopes{"admin"}, got.Grants[api])
			assert.Equal(t, changed.Disabled, got.Disabled, "Disabled")
			require.True(t, got.UpdatedAt.After(fresh.UpdatedAt),
				"UpdatedAt %v did not move past %v", got.UpdatedAt, fresh.UpdatedAt)
			require.ErrorIs(t, s.UpdateClient(ctx, fresh), m2mauth.ErrClientChanged, "the copy just written is stale")

			// A zero UpdatedAt is unconditional.
			fresh.UpdatedAt = time.Time{}
			fresh.Grants[api] = m2mauth.Scopes{"read"}
			require.NoError(t, s.UpdateClient(ctx, fresh))
			assert.Equal(t, m2mauth.Scopes{"read"}, mustGet(t, s, id).Grants[api])
		})
	}
}

func testUpdateNotFound(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	mustCreate(t, s, publicClient("someone"))
	err := s.UpdateClient(ctx, &m2mauth.Client{ID: "nobody", Grants: map[string]m2mauth.Scopes{api: {"read"}}})
	require.ErrorIs(t, err, m2mauth.ErrClientNotFound)
	_, err = s.Client(ctx, "nobody")
	assert.ErrorIs(t, err, m2mauth.ErrClientNotFound, "UpdateClient created a client")
	assert.Equal(t, []string{"someone"}, listAll(t, s, 0))
}

func testUpdateInvalid(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	_, sec := newSecret(t, utcNow(), time.Time{})
	mustCreate(t, s, &m2mauth.Client{
		ID:       "stable",
		Secrets:  []m2mauth.Secret{sec},
		Grants:   map[string]m2mauth.Scopes{api: {"read"}},
		TokenTTL: time.Minute,
	})
	before := mustGet(t, s, "stable")
	update := func(f func(c *m2mauth.Client)) *m2mauth.Client {
		c := &m2mauth.Client{ID: "stable", Grants: map[string]m2mauth.Scopes{api: {"read", "write"}}, Disabled: true}
		f(c)
		return c
	}
	tests := []struct {
		name   string
		client *m2mauth.Client
	}{
		{"Nil", nil},
		{"SpaceInScope", update(func(c *m2mauth.Client) { c.Grants[api] = m2mauth.Scopes{"read", "a b"} })},
		{"QuoteInScope", update(func(c *m2mauth.Client) { c.Grants[api] = m2mauth.Scopes{`"`} })},
		{"EmptyAudience", update(func(c *m2mauth.Client) { c.Grants[""] = m2mauth.Scopes{"read"} })},
		{"NegativeTokenTTL", update(func(c *m2mauth.Client) { c.TokenTTL = -time.Minute })},
		// The client has a secret, and a public client has none.
		{"PublicWithSecrets", update(func(c *m2mauth.Client) { c.Public = true })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Error(t, s.UpdateClient(ctx, tt.client))
			assertUnchanged(t, s, before)
		})
	}
}

// testRotateSecret checks [m2mauth.SecretRotator], for stores that
// implement it: the new secret is added and the others' expiry brought
// forward, never pushed back, in one change that a failure leaves undone.
func testRotateSecret(t *testing.T, s m2mauth.ClientManager) {
	r, ok := s.(m2mauth.SecretRotator)
	if !ok {
		t.Skip("the store does not implement m2mauth.SecretRotator")
	}
	ctx := t.Context()
	now := utcNow()
	plain0, s0 := newSecret(t, now.Add(-time.Hour), time.Time{})
	_, s1 := newSecret(t, now.Add(-time.Hour), now.Add(10*time.Minute))
	mustCreate(t, s, &m2mauth.Client{ID: "rot", Secrets: []m2mauth.Secret{s0, s1}, Grants: map[string]m2mauth.Scopes{api: {"read"}}})

	expiries := func() map[string]time.Time {
		out := map[string]time.Time{}
		for _, sec := range mustGet(t, s, "rot").Secrets {
			out[sec.ID] = sec.ExpiresAt
		}
		return out
	}
	assertExpiries := func(want map[string]time.Time) {
		t.Helper()
		got := expiries()
		require.Len(t, got, len(want))
		for id, at := range want {
			require.Contains(t, got, id)
			assertSameTime(t, at, got[id], "ExpiresAt of %q", id)
		}
	}

	// A rotation with a grace period: the new secret as given, s0 until
	// the grace ends, s1 (ending sooner) as it was.
	plain2, s2 := newSecret(t, now, time.Time{})
	grace := now.Add(time.Hour)
	prev := mustGet(t, s, "rot")
	require.NoError(t, r.RotateSecret(ctx, "rot", s2, grace))
	assertExpiries(map[string]time.Time{s0.ID: grace, s1.ID: s1.ExpiresAt, s2.ID: {}})
	got := mustGet(t, s, "rot")
	assertVerifies(t, got, s2.ID, plain2)
	assertVerifies(t, got, s0.ID, plain0)
	assert.True(t, got.UpdatedAt.After(prev.UpdatedAt), "UpdatedAt")

	// Refused, and nothing changes: a duplicate id, no expiry for the
	// others, an unknown client.
	before := mustGet(t, s, "rot")
	_, dup := newSecret(t, now, time.Time{})
	dup.ID = s2.ID
	require.Error(t, r.RotateSecret(ctx, "rot", dup, now))
	require.Error(t, r.RotateSecret(ctx, "rot", m2mauth.Secret{ID: "new", Hash: s2.Hash, CreatedAt: now}, time.Time{}))
	assertUnchanged(t, s, before)
	_, s3 := newSecret(t, now, time.Time{})
	require.ErrorIs(t, r.RotateSecret(ctx, "nobody", s3, now), m2mauth.ErrClientNotFound)

	// A leaked secret: no grace. Every other secret ends now...
	leakedAt := now.Add(time.Second)
	require.NoError(t, r.RotateSecret(ctx, "rot", s3, leakedAt))
	assertExpiries(map[string]time.Time{s0.ID: leakedAt, s1.ID: leakedAt, s2.ID: leakedAt, s3.ID: {}})
	// ... and a routine rotation afterwards does not bring them back.
	_, s4 := newSecret(t, now, time.Time{})
	require.NoError(t, r.RotateSecret(ctx, "rot", s4, now.Add(24*time.Hour)))
	assertExpiries(map[string]time.Time{s0.ID: leakedAt, s1.ID: leakedAt, s2.ID: leakedAt, s3.ID: now.Add(24 * time.Hour), s4.ID: {}})

	t.Run("Concurrent", func(t *testing.T) {
		// Both orders of a routine rotation and an urgent one, at once:
		// the secret they both expire ends at the urgent one's time.
		for i := range 10 {
			id := fmt.Sprintf("rot-%d", i)
			_, old := newSecret(t, now, time.Time{})
			mustCreate(t, s, &m2mauth.Client{ID: id, Secrets: []m2mauth.Secret{old}, Grants: map[string]m2mauth.Scopes{api: {"read"}}})
			_, routine := newSecret(t, now, time.Time{})
			_, urgent := newSecret(t, now, time.Time{})
			var wg sync.WaitGroup
			var errs [2]error
			wg.Go(func() { errs[0] = r.RotateSecret(ctx, id, routine, now.Add(24*time.Hour)) })
			wg.Go(func() { errs[1] = r.RotateSecret(ctx, id, urgent, now) })
			wg.Wait()
			require.NoError(t, errs[0])
			require.NoError(t, errs[1])
			c := mustGet(t, s, id)
			require.Len(t, c.Secrets, 3)
			assertSameTime(t, now, findSecret(t, c, old.ID).ExpiresAt, "the old secret of %q", id)
		}
	})
}

func testSecrets(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	plain1, s1 := newSecret(t, now.Add(-time.Hour), time.Time{})
	mustCreate(t, s, &m2mauth.Client{ID: "rotating", Secrets: []m2mauth.Secret{s1}, Grants: map[string]m2mauth.Scopes{api: {"read"}}})
	prev := mustGet(t, s, "rotating")

	plain2, s2 := newSecret(t, now, now.Add(24*time.Hour))
	require.NoError(t, s.AddSecret(ctx, "rotating", s2))
	got := mustGet(t, s, "rotating")
	assertSameClient(t, &m2mauth.Client{
		ID:      "rotating",
		Secrets: []m2mauth.Secret{s1, s2},
		Grants:  map[string]m2mauth.Scopes{api: {"read"}},
	}, got)
	assertSameTime(t, prev.CreatedAt, got.CreatedAt, "CreatedAt")
	assertNotBefore(t, prev.UpdatedAt, got.UpdatedAt, "UpdatedAt")
	assertVerifies(t, got, s1.ID, plain1)
	assertVerifies(t, got, s2.ID, plain2)
	stored2 := findSecret(t, got, s2.ID)
	ok, err := m2mauth.VerifySecret(stored2.Hash, plain1)
	require.NoError(t, err)
	assert.False(t, ok, "secret 2's hash accepts secret 1")

	t.Run("ExpireSecret", func(t *testing.T) {
		prev := mustGet(t, s, "rotating")
		at := now.Add(time.Hour)
		require.NoError(t, s.ExpireSecret(ctx, "rotating", s1.ID, at))
		got := mustGet(t, s, "rotating")
		assertSameTime(t, at, findSecret(t, got, s1.ID).ExpiresAt, "ExpiresAt of the expired secret")
		assertSameTime(t, s2.ExpiresAt, findSecret(t, got, s2.ID).ExpiresAt, "ExpiresAt of the other secret")
		assertNotBefore(t, prev.UpdatedAt, got.UpdatedAt, "UpdatedAt")

		past := now.Add(-time.Minute)
		require.NoError(t, s.ExpireSecret(ctx, "rotating", s2.ID, past))
		got = mustGet(t, s, "rotating")
		assertSameTime(t, past, findSecret(t, got, s2.ID).ExpiresAt, "ExpiresAt in the past")
		assert.False(t, findSecret(t, got, s2.ID).ActiveAt(now))
	})

	t.Run("ClearExpiry", func(t *testing.T) {
		for _, id := range []string{s1.ID, s2.ID} {
			require.NoError(t, s.ExpireSecret(ctx, "rotating", id, time.Time{}))
			got := mustGet(t, s, "rotating")
			assert.True(t, findSecret(t, got, id).ExpiresAt.IsZero(), "expiry of %q not cleared", id)
		}
		got := mustGet(t, s, "rotating")
		assertSameTime(t, s1.CreatedAt, findSecret(t, got, s1.ID).CreatedAt, "CreatedAt of secret 1")
		assertSameTime(t, s2.CreatedAt, findSecret(t, got, s2.ID).CreatedAt, "CreatedAt of secret 2")
	})

	t.Run("RemoveSecret", func(t *testing.T) {
		prev := mustGet(t, s, "rotating")
		require.NoError(t, s.RemoveSecret(ctx, "rotating", s1.ID))
		got := mustGet(t, s, "rotating")
		require.Len(t, got.Secrets, 1)
		assert.Equal(t, s2.ID, got.Secrets[0].ID)
		assertVerifies(t, got, s2.ID, plain2)
		assertNotBefore(t, prev.UpdatedAt, got.UpdatedAt, "UpdatedAt")
		assertSameTime(t, prev.CreatedAt, got.CreatedAt, "CreatedAt")
		assertSameGrants(t, prev.Grants, got.Grants)

		require.ErrorIs(t, s.RemoveSecret(ctx, "rotating", s1.ID), m2mauth.ErrSecretNotFound, "removing twice")
		assertUnchanged(t, s, got)
	})
}

// testSecretHashFormats checks that a store keeps every hash format
// VerifySecret reads, each of which is a different length.
func testSecretHashFormats(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	plainSHA, sha := newSecret(t, now, time.Time{})
	mustCreate(t, s, &m2mauth.Client{ID: "formats", Secrets: []m2mauth.Secret{sha}})

	plainArgon := "a secret chosen by a person"
	argonHash, err := m2mauth.HashSecretArgon2id(plainArgon)
	require.NoError(t, err)
	require.NoError(t, s.AddSecret(ctx, "formats", m2mauth.Secret{ID: "argon2id", Hash: argonHash, CreatedAt: now}))

	plainBcrypt := "an imported secret"
	bcryptHash, err := bcrypt.GenerateFromPassword([]byte(plainBcrypt), bcrypt.MinCost)
	require.NoError(t, err)
	require.NoError(t, s.AddSecret(ctx, "formats", m2mauth.Secret{ID: "bcrypt", Hash: string(bcryptHash), CreatedAt: now}))

	got := mustGet(t, s, "formats")
	require.Len(t, got.Secrets, 3)
	assertVerifies(t, got, sha.ID, plainSHA)
	assertVerifies(t, got, "argon2id", plainArgon)
	assertVerifies(t, got, "bcrypt", plainBcrypt)
}

func testSecretNotFound(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	_, sec := newSecret(t, now, time.Time{})
	mustCreate(t, s, &m2mauth.Client{ID: "holder", Secrets: []m2mauth.Secret{sec}})
	before := mustGet(t, s, "holder")
	_, fresh := newSecret(t, now, time.Time{})

	t.Run("UnknownSecret", func(t *testing.T) {
		require.ErrorIs(t, s.ExpireSecret(ctx, "holder", "sec_unknown", now), m2mauth.ErrSecretNotFound)
		require.ErrorIs(t, s.RemoveSecret(ctx, "holder", "sec_unknown"), m2mauth.ErrSecretNotFound)
		require.ErrorIs(t, s.ExpireSecret(ctx, "holder", "", now), m2mauth.ErrSecretNotFound)
		require.ErrorIs(t, s.RemoveSecret(ctx, "holder", ""), m2mauth.ErrSecretNotFound)
		assertUnchanged(t, s, before)
	})
	t.Run("UnknownClient", func(t *testing.T) {
		require.ErrorIs(t, s.AddSecret(ctx, "nobody", fresh), m2mauth.ErrClientNotFound)
		require.ErrorIs(t, s.ExpireSecret(ctx, "nobody", sec.ID, now), m2mauth.ErrClientNotFound)
		require.ErrorIs(t, s.RemoveSecret(ctx, "nobody", sec.ID), m2mauth.ErrClientNotFound)
		_, err := s.Client(ctx, "nobody")
		require.ErrorIs(t, err, m2mauth.ErrClientNotFound, "AddSecret created a client")
		assertUnchanged(t, s, before)
	})
}

func testSecretInvalid(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	_, sec := newSecret(t, now, time.Time{})
	mustCreate(t, s, &m2mauth.Client{ID: "guarded", Secrets: []m2mauth.Secret{sec}, Grants: map[string]m2mauth.Scopes{api: {"read"}}})
	mustCreate(t, s, publicClient("public"))
	guarded, public := mustGet(t, s, "guarded"), mustGet(t, s, "public")

	_, fresh := newSecret(t, now, time.Time{})
	unreadable := fresh
	unreadable.Hash = "hunter2"
	empty := fresh
	empty.Hash = ""
	truncated := fresh
	truncated.Hash = fresh.Hash[:len(fresh.Hash)-1]
	noID := fresh
	noID.ID = ""
	_, dup := newSecret(t, now, time.Time{})
	dup.ID = sec.ID

	tests := []struct {
		name     string
		clientID string
		secret   m2mauth.Secret
	}{
		{"UnreadableHash", "guarded", unreadable},
		{"EmptyHash", "guarded", empty},
		{"TruncatedHash", "guarded", truncated},
		{"EmptySecretID", "guarded", noID},
		{"DuplicateSecretID", "guarded", dup},
		{"PublicClient", "public", fresh},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Error(t, s.AddSecret(ctx, tt.clientID, tt.secret))
			assertUnchanged(t, s, guarded)
			assertUnchanged(t, s, public)
		})
	}
}

// testSecretIDsArePerClient checks that a secret id names a secret only
// within its client.
func testSecretIDsArePerClient(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	plainA, a := newSecret(t, now, time.Time{})
	plainB, b := newSecret(t, now, time.Time{})
	a.ID, b.ID = "primary", "primary"
	mustCreate(t, s, &m2mauth.Client{ID: "client-a", Secrets: []m2mauth.Secret{a}})
	mustCreate(t, s, &m2mauth.Client{ID: "client-b", Secrets: []m2mauth.Secret{b}})
	clientA, clientB := mustGet(t, s, "client-a"), mustGet(t, s, "client-b")
	assertVerifies(t, clientA, "primary", plainA)
	assertVerifies(t, clientB, "primary", plainB)

	_, onlyA := newSecret(t, now, time.Time{})
	require.NoError(t, s.AddSecret(ctx, "client-a", onlyA))
	clientA = mustGet(t, s, "client-a")
	require.ErrorIs(t, s.ExpireSecret(ctx, "client-b", onlyA.ID, now), m2mauth.ErrSecretNotFound)
	require.ErrorIs(t, s.RemoveSecret(ctx, "client-b", onlyA.ID), m2mauth.ErrSecretNotFound)
	assertUnchanged(t, s, clientA)
	assertUnchanged(t, s, clientB)

	require.NoError(t, s.ExpireSecret(ctx, "client-a", "primary", now.Add(time.Hour)))
	require.NoError(t, s.RemoveSecret(ctx, "client-a", "primary"))
	assertUnchanged(t, s, clientB)
	got := mustGet(t, s, "client-a")
	require.Len(t, got.Secrets, 1)
	assert.Equal(t, onlyA.ID, got.Secrets[0].ID)
}

func testSetDisabled(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	_, sec := newSecret(t, utcNow(), time.Time{})
	want := &m2mauth.Client{ID: "switch", Secrets: []m2mauth.Secret{sec}, Grants: map[string]m2mauth.Scopes{api: {"read"}}, TokenTTL: time.Minute}
	mustCreate(t, s, want.Clone())
	mustCreate(t, s, publicClient("bystander"))
	bystander := mustGet(t, s, "bystander")
	prev := mustGet(t, s, "switch")

	for _, disabled := range []bool{true, true, false, false, true} {
		require.NoError(t, s.SetDisabled(ctx, "switch", disabled))
		got := mustGet(t, s, "switch")
		want.Disabled = disabled
		assertSameClient(t, want, got)
		assertSameTime(t, prev.CreatedAt, got.CreatedAt, "CreatedAt")
		assertNotBefore(t, prev.UpdatedAt, got.UpdatedAt, "UpdatedAt")
		prev = got
	}
	assertUnchanged(t, s, bystander)

	require.ErrorIs(t, s.SetDisabled(ctx, "nobody", true), m2mauth.ErrClientNotFound)
	_, err := s.Client(ctx, "nobody")
	require.ErrorIs(t, err, m2mauth.ErrClientNotFound, "SetDisabled created a client")
}

func testDeleteClient(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	_, sec := newSecret(t, utcNow(), time.Time{})
	mustCreate(t, s, &m2mauth.Client{ID: "doomed", Secrets: []m2mauth.Secret{sec}, Grants: map[string]m2mauth.Scopes{api: {"read"}}})
	mustCreate(t, s, publicClient("bystander"))
	bystander := mustGet(t, s, "bystander")

	mustGet(t, s, "doomed") // a SharedClient may now hold it
	require.NoError(t, s.DeleteClient(ctx, "doomed"))
	assertNotFound(t, s, "doomed")
	assert.Equal(t, []string{"bystander"}, listAll(t, s, 0))
	assertUnchanged(t, s, bystander)

	require.ErrorIs(t, s.DeleteClient(ctx, "doomed"), m2mauth.ErrClientNotFound, "deleting twice")
	require.ErrorIs(t, s.DeleteClient(ctx, "nobody"), m2mauth.ErrClientNotFound)

	_, other := newSecret(t, utcNow(), time.Time{})
	require.ErrorIs(t, s.AddSecret(ctx, "doomed", other), m2mauth.ErrClientNotFound)
	require.ErrorIs(t, s.ExpireSecret(ctx, "doomed", sec.ID, time.Time{}), m2mauth.ErrClientNotFound)
	require.ErrorIs(t, s.RemoveSecret(ctx, "doomed", sec.ID), m2mauth.ErrClientNotFound)
	require.ErrorIs(t, s.SetDisabled(ctx, "doomed", true), m2mauth.ErrClientNotFound)
	require.ErrorIs(t, s.UpdateClient(ctx, &m2mauth.Client{ID: "doomed"}), m2mauth.ErrClientNotFound)
	assertNotFound(t, s, "doomed")

	// The id is free again, and nothing of the deleted client comes back
	// with it.
	t.Run("Recreate", func(t *testing.T) {
		want := publicClient("doomed")
		mustCreate(t, s, want.Clone())
		got := mustGet(t, s, "doomed")
		assertSameClient(t, want, got)
		assert.Empty(t, got.Secrets)
	})
}

func testListClients(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	const n = 25
	want := make(map[string]*m2mauth.Client, n)
	var ids []string
	for _, i := range rand.Perm(n) {
		_, sec := newSecret(t, now, time.Time{})
		c := &m2mauth.Client{
			ID:            fmt.Sprintf("list-%02d", i),
			Secrets:       []m2mauth.Secret{sec},
			Grants:        map[string]m2mauth.Scopes{api: {"read", fmt.Sprintf("scope-%d", i)}},
			Disabled:      i%3 == 0,
			TokenTTL:      time.Duration(i) * time.Second,
			CanIntrospect: i%2 == 0,
		}
		want[c.ID] = c.Clone()
		ids = append(ids, c.ID)
		mustCreate(t, s, c)
	}
	slices.Sort(ids)

	t.Run("Pages", func(t *testing.T) {
		var got []string
		var sizes []int
		after := ""
		for range n {
			page, err := s.ListClients(ctx, after, 10)
			require.NoError(t, err)
			sizes = append(sizes, len(page))
			if len(page) == 0 {
				break
			}
			for _, c := range page {
				got = append(got, c.ID)
				if assert.Contains(t, want, c.ID) {
					assertSameClient(t, want[c.ID], c)
				}
			}
			after = page[len(page)-1].ID
		}
		assert.Equal(t, []int{10, 10, 5, 0}, sizes, "page sizes")
		assert.Equal(t, ids, got, "ids over all pages, in order")
	})
	t.Run("After", func(t *testing.T) {
		page, err := s.ListClients(ctx, "list-12", 5)
		require.NoError(t, err)
		assert.Equal(t, ids[13:18], clientIDs(page))

		page, err = s.ListClients(ctx, "list-12", 100)
		require.NoError(t, err)
		assert.Equal(t, ids[13:], clientIDs(page))

		page, err = s.ListClients(ctx, ids[n-1], 10)
		require.NoError(t, err)
		assert.Empty(t, page)

		page, err = s.ListClients(ctx, "zzz", 10)
		require.NoError(t, err)
		assert.Empty(t, page)
	})
	t.Run("LimitOne", func(t *testing.T) {
		page, err := s.ListClients(ctx, "", 1)
		require.NoError(t, err)
		assert.Equal(t, ids[:1], clientIDs(page))
	})
	t.Run("NoLimit", func(t *testing.T) {
		for _, limit := range []int{0, -1} {
			page, err := s.ListClients(ctx, "", limit)
			require.NoError(t, err)
			assert.Equal(t, ids, clientIDs(page), "limit %d", limit)
		}
	})
	t.Run("Empty", func(t *testing.T) {
		for _, id := range ids {
			require.NoError(t, s.DeleteClient(ctx, id))
		}
		page, err := s.ListClients(ctx, "", 10)
		require.NoError(t, err)
		assert.Empty(t, page)
	})
}

func testListClientsDefaultLimit(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	const n = 105
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("many-%03d", i)
		mustCreate(t, s, publicClient(ids[i]))
	}
	for _, limit := range []int{0, -5} {
		page, err := s.ListClients(ctx, "", limit)
		require.NoError(t, err)
		assert.Equal(t, ids[:100], clientIDs(page), "limit %d", limit)
	}
	page, err := s.ListClients(ctx, ids[99], 0)
	require.NoError(t, err)
	assert.Equal(t, ids[100:], clientIDs(page))
}

// testListClientsMixedIDs checks that paging through ids that differ in
// case and punctuation visits each exactly once. It does not insist on
// byte order, which a database collation may not follow.
func testListClientsMixedIDs(t *testing.T, s m2mauth.ClientManager) {
	ids := []string{"A", "a", "B", "b", "a b", "a-b", "a_b", "a.b", "a%b", "~x", "!x", "0", "9", "Z", "z", "ab", "aB", "Ab"}
	for _, id := range ids {
		mustCreate(t, s, publicClient(id))
	}
	got := listAll(t, s, 3)
	assert.ElementsMatch(t, ids, got)
}

func testConcurrentReadsAndWrites(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	now := utcNow()
	const (
		writers = 4
		adds    = 10
		readers = 8
		reads   = 20
	)
	ids := []string{"busy-a", "busy-b"}
	grants := map[string]m2mauth.Scopes{api: {"read", "write"}}
	want := make(map[string][]m2mauth.Secret)
	for _, id := range ids {
		_, sec := newSecret(t, now, time.Time{})
		mustCreate(t, s, &m2mauth.Client{ID: id, Secrets: []m2mauth.Secret{sec}, Grants: grants})
		want[id] = append(want[id], sec)
	}
	// Two writers share each client.
	work := make([][]m2mauth.Secret, writers)
	for w := range writers {
		for range adds {
			_, sec := newSecret(t, now, time.Time{})
			work[w] = append(work[w], sec)
		}
		id := ids[w%len(ids)]
		want[id] = append(want[id], work[w]...)
	}

	var wg sync.WaitGroup
	for w := range writers {
		id := ids[w%len(ids)]
		wg.Go(func() {
			for i, sec := range work[w] {
				assert.NoError(t, s.AddSecret(ctx, id, sec))
				assert.NoError(t, s.SetDisabled(ctx, id, i%2 == 0))
			}
			// Every writer's last word is false, so the client ends enabled.
			assert.NoError(t, s.SetDisabled(ctx, id, false))
		})
	}
	// Readers look clients up with Client and, when the store has it,
	// SharedClient.
	gets := []func(context.Context, string) (*m2mauth.Client, error){s.Client}
	if sh, ok := s.(m2mauth.ClientSharer); ok {
		gets = append(gets, sh.SharedClient)
	}
	for r := range readers {
		wg.Go(func() {
			for i := range reads {
				id := ids[(r+i)%len(ids)]
				for g, get := range gets {
					c, err := get(ctx, id)
					if !assert.NoError(t, err) {
						return
					}
					assert.Equal(t, id, c.ID)
					assert.NoError(t, c.Validate())
					assert.NotEmpty(t, c.Secrets)
					assert.ElementsMatch(t, grants[api], c.Grants[api])
					if g == 0 {
						scribble(c) // Client's copy is the caller's
					}
				}
				if i%5 == 0 {
					page, err := s.ListClients(ctx, "", 0)
					if assert.NoError(t, err) {
						assert.Equal(t, ids, clientIDs(page))
					}
				}
			}
		})
	}
	wg.Wait()

	for _, id := range ids {
		assertSameClient(t, &m2mauth.Client{ID: id, Secrets: want[id], Grants: grants}, mustGet(t, s, id))
	}
}

func testConcurrentCreate(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	const racers = 8
	candidates := make([]*m2mauth.Client, racers)
	for i := range candidates {
		_, sec := newSecret(t, utcNow(), time.Time{})
		candidates[i] = &m2mauth.Client{ID: "contested", Secrets: []m2mauth.Secret{sec}, TokenTTL: time.Duration(i+1) * time.Second}
	}
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i, c := range candidates {
		wg.Go(func() { errs[i] = s.CreateClient(ctx, c) })
	}
	wg.Wait()

	winner := -1
	for i, err := range errs {
		if err == nil {
			assert.Equal(t, -1, winner, "more than one CreateClient succeeded")
			winner = i
			continue
		}
		assert.ErrorIs(t, err, m2mauth.ErrClientExists, "racer %d", i)
	}
	require.NotEqual(t, -1, winner, "no CreateClient succeeded")
	assertSameClient(t, candidates[winner], mustGet(t, s, "contested"))
}

func testConcurrentAddSameSecret(t *testing.T, s m2mauth.ClientManager) {
	ctx := t.Context()
	const racers = 8
	_, first := newSecret(t, utcNow(), time.Time{})
	mustCreate(t, s, &m2mauth.Client{ID: "contested", Secrets: []m2mauth.Secret{first}})
	_, sec := newSecret(t, utcNow(), time.Time{})
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() { errs[i] = s.AddSecret(ctx, "contested", sec) })
	}
	wg.Wait()

	succeeded := 0
	for _, err := range errs {
		if err == nil {
			succeeded++
		}
	}
	assert.Equal(t, 1, succeeded, "AddSecret of one secret id succeeded %d times: %v", succeeded, errs)
	got := mustGet(t, s, "contested")
	assertSameSecrets(t, []m2mauth.Secret{first, sec}, got.Secrets)
}

// utcNow returns the current time at the precision every store keeps.
func utcNow() time.Time {
	return time.Now().UTC().Truncate(time.Microsecond)
}

func newSecret(t *testing.T, now, expiresAt time.Time) (string, m2mauth.Secret) {
	t.Helper()
	plain, sec, err := m2mauth.NewSecret(now, expiresAt)
	require.NoError(t, err)
	return plain, sec
}

func publicClient(id string) *m2mauth.Client {
	return &m2mauth.Client{ID: id, Public: true, Grants: map[string]m2mauth.Scopes{api: {"read"}}}
}

func mustCreate(t *testing.T, s m2mauth.ClientManager, c *m2mauth.Client) {
	t.Helper()
	require.NoError(t, s.CreateClient(t.Context(), c), "CreateClient(%q)", c.ID)
}

// mustGet returns Client(id), after checking that a ClientSharer's
// SharedClient(id), asked first, returns the same, and still does after
// a copy from Client is modified.
func mustGet(t *testing.T, s m2mauth.ClientManager, id string) *m2mauth.Client {
	t.Helper()
	sh, sharer := s.(m2mauth.ClientSharer)
	var shared *m2mauth.Client
	if sharer {
		var err error
		shared, err = sh.SharedClient(t.Context(), id)
		require.NoError(t, err, "SharedClient(%q)", id)
		require.NotNil(t, shared, "SharedClient(%q)", id)
	}
	c, err := s.Client(t.Context(), id)
	require.NoError(t, err, "Client(%q)", id)
	require.NotNil(t, c, "Client(%q)", id)
	if !sharer {
		return c
	}
	assertSameClient(t, c, shared)
	other, err := s.Client(t.Context(), id)
	require.NoError(t, err, "Client(%q)", id)
	scribble(other)
	again, err := sh.SharedClient(t.Context(), id)
	require.NoError(t, err, "SharedClient(%q)", id)
	assertSameClient(t, c, again)
	return c
}

// assertNotFound checks that Client(id), and a ClientSharer's
// SharedClient(id), return an error wrapping ErrClientNotFound.
func assertNotFound(t *testing.T, s m2mauth.ClientManager, id string) {
	t.Helper()
	c, err := s.Client(t.Context(), id)
	require.ErrorIs(t, err, m2mauth.ErrClientNotFound, "Client(%q)", id)
	assert.Nil(t, c)
	if sh, ok := s.(m2mauth.ClientSharer); ok {
		c, err := sh.SharedClient(t.Context(), id)
		require.ErrorIs(t, err, m2mauth.ErrClientNotFound, "SharedClient(%q)", id)
		assert.Nil(t, c)
	}
}

// listAll pages through every client, limit at a time, and returns their
// ids in the order listed.
func listAll(t *testing.T, s m2mauth.ClientManager, limit int) []string {
	t.Helper()
	var ids []string
	after := ""
	for range 1000 {
		page, err := s.ListClients(t.Context(), after, limit)
		require.NoError(t, err)
		if len(page) == 0 {
			return ids
		}
		for _, c := range page {
			require.NotContains(t, ids, c.ID, "ListClients returned %q twice", c.ID)
			ids = append(ids, c.ID)
		}
		after = page[len(page)-1].ID
	}
	require.FailNow(t, "ListClients never returned an empty page")
	return nil
}

func clientIDs(cs []*m2mauth.Client) []string {
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return ids
}

// scribble changes everything a caller can reach through c, including the
// elements of its slices and maps.
func scribble(c *m2mauth.Client) {
	for i := range c.Secrets {
		c.Secrets[i].ID += "-changed"
		c.Secrets[i].Hash = "changed"
		c.Secrets[i].ExpiresAt = time.Unix(1, 0)
	}
	for aud, scopes := range c.Grants {
		for i := range scopes {
			scopes[i] = "changed"
		}
		c.Grants[aud] = append(scopes, "added")
	}
	if c.Grants != nil {
		c.Grants["https://added.example.com"] = m2mauth.Scopes{"added"}
	}
	c.Public = !c.Public
	c.Disabled = !c.Disabled
	c.TokenTTL += time.Hour
	c.CanIntrospect = !c.CanIntrospect
	c.TokensRevokedAt = time.Unix(1, 0)
	c.CreatedAt = time.Unix(1, 0)
	c.UpdatedAt = time.Unix(1, 0)
}

// assertSameClient compares the fields a caller sets. Secrets and the
// scopes of an audience are compared as sets, and a nil slice or map
// matches an empty one.
func assertSameClient(t *testing.T, want, got *m2mauth.Client) {
	t.Helper()
	if !assert.NotNil(t, got) {
		return
	}
	assert.Equal(t, want.ID, got.ID, "ID")
	assert.Equal(t, want.Public, got.Public, "Public of %q", want.ID)
	assert.Equal(t, want.Disabled, got.Disabled, "Disabled of %q", want.ID)
	assert.Equal(t, want.TokenTTL, got.TokenTTL, "TokenTTL of %q", want.ID)
	assert.Equal(t, want.CanIntrospect, got.CanIntrospect, "CanIntrospect of %q", want.ID)
	assertSameSecrets(t, want.Secrets, got.Secrets)
	assertSameGrants(t, want.Grants, got.Grants)
}

// assertUnchanged checks that the stored client still matches before,
// timestamps included.
func assertUnchanged(t *testing.T, s m2mauth.ClientManager, before *m2mauth.Client) {
	t.Helper()
	got := mustGet(t, s, before.ID)
	assertSameClient(t, before, got)
	assertSameTime(t, before.CreatedAt, got.CreatedAt, "CreatedAt of %q", before.ID)
	assertSameTime(t, before.UpdatedAt, got.UpdatedAt, "UpdatedAt of %q", before.ID)
	assertSameSecond(t, before.TokensRevokedAt, got.TokensRevokedAt, "TokensRevokedAt of %q", before.ID)
}

func assertSameSecrets(t *testing.T, want, got []m2mauth.Secret) {
	t.Helper()
	ids := func(secs []m2mauth.Secret) []string {
		out := make([]string, len(secs))
		for i, s := range secs {
			out[i] = s.ID
		}
		return out
	}
	if !assert.ElementsMatch(t, ids(want), ids(got), "secret ids") {
		return
	}
	for _, w := range want {
		for _, g := range got {
			if g.ID != w.ID {
				continue
			}
			assert.Equal(t, w.Hash, g.Hash, "Hash of secret %q", w.ID)
			assertSameTime(t, w.CreatedAt, g.CreatedAt, "CreatedAt of secret %q", w.ID)
			assertSameTime(t, w.ExpiresAt, g.ExpiresAt, "ExpiresAt of secret %q", w.ID)
		}
	}
}

func assertSameGrants(t *testing.T, want, got map[string]m2mauth.Scopes) {
	t.Helper()
	auds := func(g map[string]m2mauth.Scopes) []string {
		out := make([]string, 0, len(g))
		for aud := range g {
			out = append(out, aud)
		}
		return out
	}
	if !assert.ElementsMatch(t, auds(want), auds(got), "granted audiences") {
		return
	}
	for aud, w := range want {
		assert.ElementsMatch(t, []string(w), []string(got[aud]), "scopes for %q", aud)
	}
}

// assertSameTime compares two instants at microsecond precision; a zero
// time matches only a zero time.
func assertSameTime(t *testing.T, want, got time.Time, what string, args ...any) {
	t.Helper()
	what = fmt.Sprintf(what, args...)
	if want.IsZero() || got.IsZero() {
		assert.Equal(t, want.IsZero(), got.IsZero(), "%s: want %v, got %v", what, want, got)
		return
	}
	assert.Equal(t, want.UTC().Truncate(time.Microsecond), got.UTC().Truncate(time.Microsecond), what)
}

// assertSameSecond compares two instants to the second, the precision of
// watermarks and token timestamps; a zero time matches only a zero time.
func assertSameSecond(t *testing.T, want, got time.Time, what string, args ...any) {
	t.Helper()
	what = fmt.Sprintf(what, args...)
	if want.IsZero() || got.IsZero() {
		assert.Equal(t, want.IsZero(), got.IsZero(), "%s: want %v, got %v", what, want, got)
		return
	}
	assert.Equal(t, want.Unix(), got.Unix(), "%s: want %v, got %v", what, want.UTC(), got.UTC())
}

func assertNotBefore(t *testing.T, earlier, later time.Time, what string) {
	t.Helper()
	assert.False(t, later.Before(earlier), "%s went back from %v to %v", what, earlier, later)
}

func findSecret(t *testing.T, c *m2mauth.Client, id string) m2mauth.Secret {
	t.Helper()
	for _, s := range c.Secrets {
		if s.ID == id {
			return s
		}
	}
	require.FailNow(t, "secret not found", "client %q has no secret %q", c.ID, id)
	return m2mauth.Secret{}
}

// assertVerifies checks that the stored hash of the secret id accepts plain.
func assertVerifies(t *testing.T, c *m2mauth.Client, id, plain string) {
	t.Helper()
	ok, err := m2mauth.VerifySecret(findSecret(t, c, id).Hash, plain)
	require.NoError(t, err, "VerifySecret for secret %q", id)
	assert.True(t, ok, "the stored hash of secret %q does not accept its secret", id)
}
