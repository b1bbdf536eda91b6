package m2mauth_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// mkFixture is a memstore shared by the replicas of a test, with a
// settable clock, a KEK, a recording auditor and a log.
type mkFixture struct {
	store  *memstore.Store
	kek    []byte
	sealer *m2mauth.AESKeySealer

	mu     sync.Mutex
	now    time.Time
	events []m2mauth.AuditEvent
	logs   bytes.Buffer
}

func newMKFixture(t testing.TB) *mkFixture {
	t.Helper()
	f := &mkFixture{now: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)}
	f.store = memstore.New(memstore.WithClock(f.clock))
	f.kek = newKEK(t)
	f.sealer = newSealer(t, f.kek)
	return f
}

func (f *mkFixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *mkFixture) advance(d time.Duration) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	return f.now
}

func (f *mkFixture) Audit(_ context.Context, e m2mauth.AuditEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, e)
}

func (f *mkFixture) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.logs.Write(p)
}

func (f *mkFixture) log() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.logs.String()
}

// kidsOf returns the kids of the audit events of typ, in order.
func (f *mkFixture) kidsOf(typ m2mauth.AuditEventType) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var kids []string
	for _, e := range f.events {
		if e.Type == typ {
			kids = append(kids, e.Reason)
		}
	}
	return kids
}

// config returns the configuration of a replica on the fixture's clock.
func (f *mkFixture) config(edit ...func(*m2mauth.ManagedKeysConfig)) m2mauth.ManagedKeysConfig {
	cfg := m2mauth.ManagedKeysConfig{
		Now:     f.clock,
		Auditor: f,
		Logger:  slog.New(slog.NewTextHandler(f, nil)),
	}
	for _, e := range edit {
		e(&cfg)
	}
	return cfg
}

// replica starts a ManagedKeys over the fixture's store and sealer.
func (f *mkFixture) replica(t *testing.T, edit ...func(*m2mauth.ManagedKeysConfig)) *m2mauth.ManagedKeys {
	t.Helper()
	mk, err := m2mauth.NewManagedKeys(t.Context(), f.store, f.sealer, f.config(edit...))
	require.NoError(t, err)
	t.Cleanup(func() { mk.Close() })
	return mk
}

// signingKID returns the kid mk signs with now.
func signingKID(t *testing.T, mk m2mauth.KeyProvider) string {
	t.Helper()
	k, err := mk.SigningKey(t.Context())
	require.NoError(t, err)
	return k.KeyID
}

// verificationKIDs returns the kids of mk's verification keys.
func verificationKIDs(t *testing.T, mk m2mauth.KeyProvider) []string {
	t.Helper()
	set, err := mk.VerificationKeys(t.Context())
	require.NoError(t, err)
	kids := make([]string, len(set.Keys))
	for i, k := range set.Keys {
		kids[i] = k.KeyID
	}
	return kids
}

func TestManagedKeysFleet(t *testing.T) {
	f := newMKFixture(t)
	t0 := f.clock()

	// Two replicas start at once on an empty store, and both find it
	// empty.
	race := &barrierKeyStore{KeyStore: f.store}
	race.arm(2)
	replicas := make([]*m2mauth.ManagedKeys, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() {
			replicas[i], errs[i] = m2mauth.NewManagedKeys(t.Context(), race, f.sealer, f.config())
		})
	}
	wg.Wait()
	for i := range replicas {
		require.NoError(t, errs[i])
		t.Cleanup(func() { replicas[i].Close() })
	}
	a, b := replicas[0], replicas[1]

	rows, err := f.store.SigningKeys(t.Context())
	require.NoError(t, err)
	require.Len(t, rows, 1, "exactly one key between them")
	kid1 := rows[0].KID
	assert.Equal(t, int64(1), rows[0].Generation)
	assert.Equal(t, t0, rows[0].ActiveAt, "the first key signs at once")
	assert.Equal(t, kid1, signingKID(t, a))
	assert.Equal(t, kid1, signingKID(t, b))
	assert.Equal(t, []string{kid1}, f.kidsOf(m2mauth.EventKeyPublished))
	assert.Equal(t, []string{kid1}, f.kidsOf(m2mauth.EventKeyActivated), "once for the fleet")

	// a rotates: the new key is published, not signing.
	f.advance(time.Minute)
	info, err := a.Rotate(t.Context())
	require.NoError(t, err)
	kid2 := info.KID
	assert.Equal(t, int64(2), info.Generation)
	assert.Equal(t, m2mauth.KeyStatePublished, info.State)
	assert.Equal(t, t0.Add(11*time.Minute), info.ActiveAt, "default PropagationDelay: 10m")
	assert.ElementsMatch(t, []string{kid1, kid2}, verificationKIDs(t, a))
	assert.Equal(t, []string{kid1}, verificationKIDs(t, b), "b has not refreshed yet")
	require.NoError(t, b.Refresh(t.Context()))
	for _, mk := range replicas {
		assert.ElementsMatch(t, []string{kid1, kid2}, verificationKIDs(t, mk))
		assert.Equal(t, kid1, signingKID(t, mk))
	}

	// Both switch at its ActiveAt, by the clock alone.
	f.advance(10*time.Minute - time.Nanosecond)
	assert.Equal(t, kid1, signingKID(t, a))
	assert.Equal(t, kid1, signingKID(t, b))
	f.advance(time.Nanosecond)
	assert.Equal(t, kid2, signingKID(t, a))
	assert.Equal(t, kid2, signingKID(t, b))

	// Both refresh: the activation and the retirement are audited once.
	require.NoError(t, a.Refresh(t.Context()))
	require.NoError(t, b.Refresh(t.Context()))
	require.NoError(t, a.Refresh(t.Context()))
	assert.Equal(t, []string{kid1, kid2}, f.kidsOf(m2mauth.EventKeyPublished))
	assert.Equal(t, []string{kid1, kid2}, f.kidsOf(m2mauth.EventKeyActivated))
	assert.Equal(t, []string{kid1}, f.kidsOf(m2mauth.EventKeyRetired))

	// Replicas that rotate at once, reading the same keys, make one key.
	c, err := m2mauth.NewManagedKeys(t.Context(), race, f.sealer, f.config())
	require.NoError(t, err)
	defer c.Close()
	d, err := m2mauth.NewManagedKeys(t.Context(), race, f.sealer, f.config())
	require.NoError(t, err)
	defer d.Close()
	race.arm(2)
	var infos [2]m2mauth.ManagedKeyInfo
	for i, mk := range []*m2mauth.ManagedKeys{c, d} {
		wg.Go(func() {
			infos[i], errs[i] = mk.Rotate(t.Context())
		})
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	assert.Equal(t, infos[0].KID, infos[1].KID, "the loser returns the winner's key")
	assert.Equal(t, int64(3), infos[0].Generation)
	assert.Len(t, f.kidsOf(m2mauth.EventKeyPublished), 3)
}

// barrierKeyStore is a KeyStore whose next n reads, once armed, wait
// for each other before they return, so that n replicas read the same
// keys.
type barrierKeyStore struct {
	m2mauth.KeyStore
	waiting atomic.Int32
	wg      sync.WaitGroup
}

func (s *barrierKeyStore) arm(n int) {
	s.wg.Add(n)
	s.waiting.Store(int32(n))
}

func (s *barrierKeyStore) SigningKeys(ctx context.Context) ([]m2mauth.StoredKey, error) {
	rows, err := s.KeyStore.SigningKeys(ctx)
	if s.waiting.Add(-1) >= 0 {
		s.wg.Done()
		s.wg.Wait()
	}
	return rows, err
}

// mkServer serves a token endpoint signing with keys and an API
// validating with them, both over HTTP.
type mkServer struct {
	*httptest.Server
	secret string
}

func newMKServer(t *testing.T, f *mkFixture, keys m2mauth.KeyProvider) *mkServer {
	t.Helper()
	plain, sec, err := m2mauth.NewSecret(f.clock(), time.Time{})
	require.NoError(t, err)
	if _, err := f.store.Client(t.Context(), "svc"); errors.Is(err, m2mauth.ErrClientNotFound) {
		require.NoError(t, f.store.CreateClient(t.Context(), &m2mauth.Client{
			ID: "svc", Secrets: []m2mauth.Secret{sec},
			Grants: map[string]m2mauth.Scopes{testAudience: {"read"}},
		}))
	} else {
		require.NoError(t, f.store.AddSecret(t.Context(), "svc", sec))
	}
	h, err := m2mauth.NewTokenHandler(f.store, keys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience, Now: f.clock,
		Logger: discardLogger(),
	})
	require.NoError(t, err)
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, Now: f.clock})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", h)
	mux.Handle("GET /api", v.RequireScopes("read")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})))
	srv := &mkServer{Server: httptest.NewServer(mux), secret: plain}
	t.Cleanup(srv.Close)
	return srv
}

// token asks for a token and returns it and the kid it was signed with.
func (s *mkServer) token(t *testing.T) (string, string) {
	t.Helper()
	resp, err := s.Client().PostForm(s.URL+"/oauth/token", url.Values{
		"grant_type": {"client_credentials"}, "client_id": {"svc"}, "client_secret": {s.secret},
	})
	require.NoError(t, err)
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	h, _, _ := strings.Cut(body.AccessToken, ".")
	raw, err := base64.RawURLEncoding.DecodeString(h)
	require.NoError(t, err)
	var hdr struct {
		KID string `json:"kid"`
	}
	require.NoError(t, json.Unmarshal(raw, &hdr))
	return body.AccessToken, hdr.KID
}

// call calls the API with tok and returns the status.
func (s *mkServer) call(t *testing.T, tok string) int {
	t.Helper()
	r, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.URL+"/api", nil)
	require.NoError(t, err)
	r.Header.Set("Authorization", "Bearer "+tok)
	resp, err := s.Client().Do(r)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

func TestManagedKeysTokenLifecycle(t *testing.T) {
	f := newMKFixture(t)
	t0 := f.clock()
	mk := f.replica(t)
	srv := newMKServer(t, f, mk)

	tok1, kid1 := srv.token(t) // expires at t0+1h
	assert.Equal(t, http.StatusOK, srv.call(t, tok1))

	f.advance(time.Minute)
	info, err := mk.Rotate(t.Context())
	require.NoError(t, err)
	kid2 := info.KID
	_, kid := srv.token(t)
	assert.Equal(t, kid1, kid, "the published key does not sign yet")

	f.advance(10 * time.Minute) // t0+11m: kid2 active, kid1 retired
	tok2, kid := srv.token(t)
	assert.Equal(t, kid2, kid)
	assert.Equal(t, http.StatusOK, srv.call(t, tok1), "the retired key still verifies")
	assert.Equal(t, http.StatusOK, srv.call(t, tok2))

	f.advance(49*time.Minute + 31*time.Second) // t0+1h+31s: tok1 expired
	assert.Equal(t, http.StatusUnauthorized, srv.call(t, tok1))
	assert.ElementsMatch(t, []string{kid1, kid2}, verificationKIDs(t, mk))

	// kid1 leaves the key set at its retirement + MaxTokenTTL + Leeway.
	deleteAt := t0.Add(11*time.Minute + m2mauth.MaxClientTokenTTL + m2mauth.RevocationGrace)
	list, err := mk.Keys(t.Context())
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, m2mauth.KeyStateRetired, list[0].State)
	assert.Equal(t, t0.Add(11*time.Minute), list[0].RetireAt)
	assert.Equal(t, deleteAt, list[0].DeleteAt)
	assert.Equal(t, m2mauth.KeyStateActive, list[1].State)
	assert.True(t, list[1].DeleteAt.IsZero())

	f.advance(deleteAt.Sub(f.clock()) - time.Nanosecond)
	require.NoError(t, mk.Refresh(t.Context()))
	assert.ElementsMatch(t, []string{kid1, kid2}, verificationKIDs(t, mk))
	assert.Empty(t, f.kidsOf(m2mauth.EventKeyDeleted))
	f.advance(time.Nanosecond)
	assert.Equal(t, []string{kid2}, verificationKIDs(t, mk), "gone by the clock, before any refresh")
	require.NoError(t, mk.Refresh(t.Context()))
	rows, err := f.store.SigningKeys(t.Context())
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.Equal(t, kid2, rows[0].KID)
	assert.Equal(t, []string{kid1}, f.kidsOf(m2mauth.EventKeyDeleted))
	_, kid = srv.token(t)
	assert.Equal(t, kid2, kid)
}

func TestManagedKeysAutomaticRotation(t *testing.T) {
	f := newMKFixture(t)
	t0 := f.clock()
	mk := f.replica(t, func(c *m2mauth.ManagedKeysConfig) {
		c.RotationInterval = time.Hour
		c.MaxTokenTTL = time.Hour
	})
	kid1 := signingKID(t, mk)

	f.advance(50*time.Minute - time.Second)
	require.NoError(t, mk.Refresh(t.Context()))
	assert.Equal(t, []string{kid1}, verificationKIDs(t, mk), "not due yet")

	f.advance(time.Second) // t0+50m: the next key is due, to sign at t0+1h
	require.NoError(t, mk.Refresh(t.Context()))
	list, err := mk.Keys(t.Context())
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, m2mauth.KeyStatePublished, list[1].State)
	assert.Equal(t, t0.Add(time.Hour), list[1].ActiveAt)
	kid2 := list[1].KID
	require.NoError(t, mk.Refresh(t.Context()))
	assert.Len(t, verificationKIDs(t, mk), 2, "one key per rotation")

	f.advance(10 * time.Minute)
	assert.Equal(t, kid2, signingKID(t, mk))

	// And again an hour after kid2's activation; kid1 goes when its last
	// token has expired.
	f.advance(50 * time.Minute) // t0+1h50m
	require.NoError(t, mk.Refresh(t.Context()))
	list, err = mk.Keys(t.Context())
	require.NoError(t, err)
	require.Len(t, list, 3)
	assert.Equal(t, t0.Add(2*time.Hour), list[2].ActiveAt)
	f.advance(15 * time.Minute) // t0+2h05m: kid1 retired at t0+1h, deleted at t0+2h05m
	require.NoError(t, mk.Refresh(t.Context()))
	list, err = mk.Keys(t.Context())
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, kid2, list[0].KID)
	assert.Equal(t, m2mauth.KeyStateRetired, list[0].State)
	assert.Equal(t, m2mauth.KeyStateActive, list[1].State)
	assert.Equal(t, []string{kid1}, f.kidsOf(m2mauth.EventKeyDeleted))
}

func TestManagedKeysRevoke(t *testing.T) {
	f := newMKFixture(t)
	a := f.replica(t)
	b := f.replica(t)
	kid1 := signingKID(t, a)

	f.advance(time.Minute)
	info, err := a.Rotate(t.Context())
	require.NoError(t, err)
	kid2 := info.KID
	require.NoError(t, b.Refresh(t.Context()))

	// A published key, revoked, leaves the key set and never signs.
	require.NoError(t, a.Revoke(t.Context(), kid2))
	assert.Equal(t, []string{kid1}, verificationKIDs(t, a))
	assert.ElementsMatch(t, []string{kid1, kid2}, verificationKIDs(t, b), "until b refreshes")
	require.NoError(t, b.Refresh(t.Context()))
	assert.Equal(t, []string{kid1}, verificationKIDs(t, b))
	require.NoError(t, b.Revoke(t.Context(), kid2), "revoking twice is no error")
	assert.Equal(t, []string{kid2}, f.kidsOf(m2mauth.EventKeyRevoked), "audited once")
	f.advance(time.Hour)
	assert.Equal(t, kid1, signingKID(t, a))

	// Revoking the active key: the previous key still held signs again.
	info, err = a.Rotate(t.Context())
	require.NoError(t, err)
	kid3 := info.KID
	assert.Equal(t, int64(3), info.Generation)
	f.advance(10 * time.Minute)
	assert.Equal(t, kid3, signingKID(t, a))
	require.NoError(t, a.Revoke(t.Context(), kid3))
	assert.Equal(t, kid1, signingKID(t, a))
	assert.Equal(t, []string{kid1}, verificationKIDs(t, a))

	// Revoking every key: a new one signs at once, and the log says so.
	require.NoError(t, a.Revoke(t.Context(), kid1))
	kid4 := signingKID(t, a)
	assert.NotContains(t, []string{kid1, kid2, kid3}, kid4)
	assert.Equal(t, []string{kid4}, verificationKIDs(t, a))
	assert.Contains(t, f.log(), "every managed signing key is revoked")
	require.NoError(t, b.Refresh(t.Context()))
	assert.Equal(t, kid4, signingKID(t, b))
	list, err := a.Keys(t.Context())
	require.NoError(t, err)
	states := map[string]m2mauth.KeyState{}
	for _, k := range list {
		states[k.KID] = k.State
	}
	assert.Equal(t, map[string]m2mauth.KeyState{
		kid1: m2mauth.KeyStateRevoked, kid2: m2mauth.KeyStateRevoked,
		kid3: m2mauth.KeyStateRevoked, kid4: m2mauth.KeyStateActive,
	}, states)

	err = a.Revoke(t.Context(), "no-such-kid")
	require.ErrorIs(t, err, m2mauth.ErrKeyNotFound)

	// Revoked keys are deleted once their tokens would have expired.
	f.advance(m2mauth.MaxClientTokenTTL + m2mauth.RevocationGrace)
	require.NoError(t, b.Refresh(t.Context()))
	rows, err := f.store.SigningKeys(t.Context())
	require.NoError(t, err)
	require.Len(t, rows, 1)
	assert.Equal(t, kid4, rows[0].KID)
	assert.ElementsMatch(t, []string{kid1, kid2, kid3}, f.kidsOf(m2mauth.EventKeyDeleted))
}

func TestManagedKeysStartup(t *testing.T) {
	f := newMKFixture(t)
	a := f.replica(t)
	kid1 := signingKID(t, a)
	_, err := a.Rotate(t.Context())
	require.NoError(t, err)
	rows, err := f.store.SigningKeys(t.Context())
	require.NoError(t, err)
	require.Len(t, rows, 2)

	other := newKEK(t)
	tests := []struct {
		name   string
		sealer func(t *testing.T) m2mauth.KeySealer
		setup  func(t *testing.T, store *memstore.Store)
		want   []string // in the error; none when it starts
	}{
		{
			name:   "another KEK",
			sealer: func(t *testing.T) m2mauth.KeySealer { return newSealer(t, other) },
			want:   []string{kid1, f.sealer.KEKID(), newSealer(t, other).KEKID(), "not configured"},
		},
		{
			name:   "the KEK as a previous one",
			sealer: func(t *testing.T) m2mauth.KeySealer { return newSealer(t, other, f.kek) },
		},
		{
			name:   "a row copied onto another kid",
			sealer: func(t *testing.T) m2mauth.KeySealer { return f.sealer },
			setup: func(t *testing.T, store *memstore.Store) {
				cp := rows[0]
				cp.KID, cp.Generation = "copied", 7
				added, err := store.AddSigningKey(t.Context(), cp)
				require.NoError(t, err)
				require.True(t, added)
			},
			want: []string{`"copied"`, "altered"},
		},
		{
			name:   "a row copied onto another algorithm",
			sealer: func(t *testing.T) m2mauth.KeySealer { return f.sealer },
			setup: func(t *testing.T, store *memstore.Store) {
				cp := rows[1]
				cp.KID, cp.Generation, cp.Algorithm = "copied", 7, "EdDSA"
				_, err := store.AddSigningKey(t.Context(), cp)
				require.NoError(t, err)
			},
			want: []string{`"copied"`, "altered"},
		},
		{
			name:   "a revoked key does not need to open",
			sealer: func(t *testing.T) m2mauth.KeySealer { return f.sealer },
			setup: func(t *testing.T, store *memstore.Store) {
				cp := rows[1]
				cp.KID, cp.Generation = "copied", 7
				_, err := store.AddSigningKey(t.Context(), cp)
				require.NoError(t, err)
				require.NoError(t, store.RevokeSigningKey(t.Context(), "copied", f.clock()))
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := memstore.New()
			for _, r := range rows {
				_, err := store.AddSigningKey(t.Context(), r)
				require.NoError(t, err)
			}
			if tt.setup != nil {
				tt.setup(t, store)
			}
			before, err := store.SigningKeys(t.Context())
			require.NoError(t, err)
			mk, err := m2mauth.NewManagedKeys(t.Context(), store, tt.sealer(t), f.config())
			if len(tt.want) == 0 {
				require.NoError(t, err)
				t.Cleanup(func() { mk.Close() })
				assert.Equal(t, kid1, signingKID(t, mk))
				return
			}
			require.Error(t, err)
			assert.Nil(t, mk)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			assertNoKEK(t, err.Error(), f.kek)
			assertNoKEK(t, err.Error(), other)
			after, err := store.SigningKeys(t.Context())
			require.NoError(t, err)
			assert.Equal(t, before, after, "nothing written, no key generated")
		})
	}
}

func TestResealKeys(t *testing.T) {
	f := newMKFixture(t)
	old := f.replica(t)
	srv := newMKServer(t, f, old)
	tok, kid1 := srv.token(t)
	_, err := old.Rotate(t.Context())
	require.NoError(t, err)

	newKey := newKEK(t)
	both := newSealer(t, newKey, f.kek)

	// A sealer that cannot open the keys changes nothing.
	_, err = m2mauth.ResealKeys(t.Context(), f.store, newSealer(t, newKey), both)
	require.Error(t, err)
	assert.Contains(t, err.Error(), f.sealer.KEKID())

	n, err := m2mauth.ResealKeys(t.Context(), f.store, both, both)
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	rows, err := f.store.SigningKeys(t.Context())
	require.NoError(t, err)
	for _, r := range rows {
		assert.Equal(t, both.KEKID(), hex.EncodeToString(r.Sealed[1:9]), "sealed under the new KEK")
	}

	// A replica with the new KEK alone starts, and its keys work.
	f.sealer = newSealer(t, newKey)
	fresh := f.replica(t)
	assert.Equal(t, kid1, signingKID(t, fresh))
	srv2 := newMKServer(t, f, fresh)
	assert.Equal(t, http.StatusOK, srv2.call(t, tok), "a token signed before the rotation")
	tok2, _ := srv2.token(t)
	assert.Equal(t, http.StatusOK, srv.call(t, tok2))
	f.advance(10 * time.Minute)
	tok3, kid := srv2.token(t)
	assert.NotEqual(t, kid1, kid, "the key published before the rotation signs in its turn")
	assert.Equal(t, http.StatusOK, srv.call(t, tok3))

	// A running replica with the old KEK only keeps its keys, and says
	// it cannot open the resealed rows.
	err = old.Refresh(t.Context())
	require.Error(t, err)
	assert.Contains(t, err.Error(), both.KEKID())
	require.Error(t, old.Ping(t.Context()))
	assert.Equal(t, kid, signingKID(t, old))
	assert.Len(t, verificationKIDs(t, old), 2)

	// A replica with the old KEK only does not start.
	_, err = m2mauth.NewManagedKeys(t.Context(), f.store, newSealer(t, f.kek), f.config())
	require.Error(t, err)
	assert.Contains(t, err.Error(), both.KEKID())
}

func TestManagedKeysJWKS(t *testing.T) {
	f := newMKFixture(t)
	t0 := f.clock()
	mk := f.replica(t)
	h, err := m2mauth.NewJWKSHandler(mk, m2mauth.JWKSConfig{Now: f.clock})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	get := func(t *testing.T) (string, []string) {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		var set struct {
			Keys []map[string]any `json:"keys"`
		}
		require.NoError(t, json.Unmarshal(body, &set))
		var kids []string
		for _, k := range set.Keys {
			assert.NotContains(t, k, "d", "never private material")
			kids = append(kids, k["kid"].(string))
		}
		return resp.Header.Get("Cache-Control"), kids
	}

	cc, kids := get(t)
	assert.Equal(t, "public, max-age=300", cc)
	assert.Len(t, kids, 1)

	info, err := mk.Rotate(t.Context()) // active at t0+10m
	require.NoError(t, err)
	cc, kids = get(t)
	assert.Equal(t, "public, max-age=300", cc)
	assert.Equal(t, []string{info.KID, kids[1]}, kids, "newest first")
	next, ok := mk.NextKeyChange(t.Context())
	assert.True(t, ok)
	assert.Equal(t, info.ActiveAt, next)

	f.advance(8 * time.Minute)
	cc, _ = get(t)
	assert.Equal(t, "public, max-age=120", cc, "bounded by the activation")

	// Then by the deletion of the retired key.
	deleteAt := t0.Add(10*time.Minute + m2mauth.MaxClientTokenTTL + m2mauth.RevocationGrace)
	f.advance(3 * time.Minute)
	next, ok = mk.NextKeyChange(t.Context())
	assert.True(t, ok)
	assert.Equal(t, deleteAt, next)
	f.advance(deleteAt.Sub(f.clock()) - 100*time.Second)
	cc, kids = get(t)
	assert.Equal(t, "public, max-age=100", cc)
	assert.Len(t, kids, 2)
	f.advance(100 * time.Second)
	cc, kids = get(t)
	assert.Equal(t, "public, max-age=300", cc)
	assert.Equal(t, []string{info.KID}, kids)
	_, ok = mk.NextKeyChange(t.Context())
	assert.False(t, ok, "nothing planned until the next rotation is published")
}

func TestManagedKeysAlgorithms(t *testing.T) {
	for _, alg := range []jose.SignatureAlgorithm{jose.HS256, jose.ES256, jose.EdDSA} {
		t.Run(string(alg), func(t *testing.T) {
			f := newMKFixture(t)
			mk := f.replica(t, func(c *m2mauth.ManagedKeysConfig) { c.Algorithm = alg })
			srv := newMKServer(t, f, mk)
			tok, _ := srv.token(t)
			assert.Equal(t, http.StatusOK, srv.call(t, tok))

			sk, err := mk.SigningKey(t.Context())
			require.NoError(t, err)
			assert.Equal(t, string(alg), sk.Algorithm)
			set, err := mk.VerificationKeys(t.Context())
			require.NoError(t, err)
			require.Len(t, set.Keys, 1)
			if alg == jose.HS256 {
				assert.Equal(t, sk.Key, set.Keys[0].Key, "an HS256 key verifies with its secret")
			} else {
				assert.True(t, set.Keys[0].IsPublic(), "the public half only")
			}
			// A second replica opens the same key.
			other, err := m2mauth.NewManagedKeys(t.Context(), f.store, f.sealer, f.config())
			require.NoError(t, err)
			defer other.Close()
			ok, err := other.SigningKey(t.Context())
			require.NoError(t, err)
			assert.Equal(t, sk.KeyID, ok.KeyID)
			assert.Equal(t, sk.Key, ok.Key)
		})
	}
}

// TestManagedKeysNoMaterial runs the life of keys and checks that no
// key material, and no KEK, is in any audit event, log line or error.
func TestManagedKeysNoMaterial(t *testing.T) {
	for _, alg := range []jose.SignatureAlgorithm{jose.HS256, jose.ES256} {
		t.Run(string(alg), func(t *testing.T) {
			f := newMKFixture(t)
			cfg := func(c *m2mauth.ManagedKeysConfig) { c.Algorithm = alg }
			mk := f.replica(t, cfg)
			var secrets []string
			var errs []error
			note := func() {
				k, err := mk.SigningKey(t.Context())
				require.NoError(t, err)
				b, err := k.MarshalJSON()
				require.NoError(t, err)
				var m map[string]string
				require.NoError(t, json.Unmarshal(b, &m))
				for _, member := range []string{"d", "k"} {
					if v := m[member]; v != "" {
						secrets = append(secrets, v)
						raw, err := base64.RawURLEncoding.DecodeString(v)
						require.NoError(t, err)
						secrets = append(secrets, hex.EncodeToString(raw), base64.StdEncoding.EncodeToString(raw))
					}
				}
			}
			note()
			info, err := mk.Rotate(t.Context())
			require.NoError(t, err)
			f.advance(11 * time.Minute)
			note()
			require.NoError(t, mk.Refresh(t.Context()))
			_, err = m2mauth.NewManagedKeys(t.Context(), f.store, newSealer(t, newKEK(t)), f.config(cfg))
			errs = append(errs, err)
			_, err = m2mauth.ResealKeys(t.Context(), f.store, newSealer(t, newKEK(t)), f.sealer)
			errs = append(errs, err)
			errs = append(errs, mk.Revoke(t.Context(), "unknown"))
			require.NoError(t, mk.Revoke(t.Context(), info.KID))
			f.advance(m2mauth.MaxClientTokenTTL + time.Hour)
			require.NoError(t, mk.Refresh(t.Context()))

			require.Len(t, secrets, 6)
			var all strings.Builder
			fmt.Fprintf(&all, "%+v\n%s\n", f.events, f.log())
			for _, err := range errs {
				require.Error(t, err)
				fmt.Fprintln(&all, err)
			}
			list, err := mk.Keys(t.Context())
			require.NoError(t, err)
			fmt.Fprintf(&all, "%+v\n", list)
			for _, s := range secrets {
				assert.NotContains(t, all.String(), s)
			}
			assertNoKEK(t, all.String(), f.kek)
			for _, typ := range []m2mauth.AuditEventType{m2mauth.EventKeyPublished, m2mauth.EventKeyActivated,
				m2mauth.EventKeyRetired, m2mauth.EventKeyRevoked, m2mauth.EventKeyDeleted} {
				assert.NotEmpty(t, f.kidsOf(typ), "%s audited", typ)
			}
		})
	}
}

// flakyKeyStore is a KeyStore whose reads fail on demand.
type flakyKeyStore struct {
	m2mauth.KeyStore
	fail atomic.Bool
}

func (s *flakyKeyStore) SigningKeys(ctx context.Context) ([]m2mauth.StoredKey, error) {
	if s.fail.Load() {
		return nil, errors.New("connection refused")
	}
	return s.KeyStore.SigningKeys(ctx)
}

func TestManagedKeysStoreFailure(t *testing.T) {
	f := newMKFixture(t)
	store := &flakyKeyStore{KeyStore: f.store}
	store.fail.Store(true)
	_, err := m2mauth.NewManagedKeys(t.Context(), store, f.sealer, f.config())
	require.ErrorContains(t, err, "connection refused", "no start without the keys")

	store.fail.Store(false)
	mk, err := m2mauth.NewManagedKeys(t.Context(), store, f.sealer, f.config())
	require.NoError(t, err)
	defer mk.Close()
	kid := signingKID(t, mk)
	set, err := mk.VerificationKeys(t.Context())
	require.NoError(t, err)
	require.NoError(t, mk.Ping(t.Context()))

	store.fail.Store(true)
	for range 3 {
		require.ErrorContains(t, mk.Refresh(t.Context()), "connection refused")
	}
	require.ErrorContains(t, mk.Ping(t.Context()), "connection refused")
	assert.Equal(t, kid, signingKID(t, mk), "the last snapshot is kept")
	again, err := mk.VerificationKeys(t.Context())
	require.NoError(t, err)
	assert.Same(t, set, again)
	assert.Equal(t, 1, strings.Count(f.log(), "refreshing managed signing keys failed"), "logged once")

	store.fail.Store(false)
	require.NoError(t, mk.Refresh(t.Context()))
	require.NoError(t, mk.Ping(t.Context()))
	assert.Contains(t, f.log(), "managed signing keys refresh again")
	again, err = mk.VerificationKeys(t.Context())
	require.NoError(t, err)
	assert.Same(t, set, again, "the same set while nothing changed")
}

// stateOf returns the state of the key kid as mk reads it from the store.
func stateOf(t *testing.T, mk *m2mauth.ManagedKeys, kid string) m2mauth.KeyState {
	t.Helper()
	keys, err := mk.Keys(t.Context())
	require.NoError(t, err)
	for _, k := range keys {
		if k.KID == kid {
			return k.State
		}
	}
	t.Fatalf("no key %q", kid)
	return ""
}

// unclaimableKeyStore is a KeyStore whose ClaimKeyEvent fails for
// key_revoked on demand, after recording nothing.
type unclaimableKeyStore struct {
	m2mauth.KeyStore
	fail atomic.Bool
}

func (s *unclaimableKeyStore) ClaimKeyEvent(ctx context.Context, kid string, typ m2mauth.AuditEventType) (bool, error) {
	if typ == m2mauth.EventKeyRevoked && s.fail.Load() {
		return false, errors.New("connection reset")
	}
	return s.KeyStore.ClaimKeyEvent(ctx, kid, typ)
}

// TestManagedKeysRevocationAuditedLater: a revocation whose claim fails
// (the store failing just after the key was revoked) is audited by the
// next refresh of a replica, once for the fleet.
func TestManagedKeysRevocationAuditedLater(t *testing.T) {
	f := newMKFixture(t)
	store := &unclaimableKeyStore{KeyStore: f.store}
	mk, err := m2mauth.NewManagedKeys(t.Context(), store, f.sealer, f.config())
	require.NoError(t, err)
	defer mk.Close()
	other, err := m2mauth.NewManagedKeys(t.Context(), f.store, f.sealer, f.config())
	require.NoError(t, err)
	defer other.Close()
	f.advance(time.Minute)
	info, err := mk.Rotate(t.Context())
	require.NoError(t, err)

	store.fail.Store(true)
	// Revoked, and the caller is told that its event is not recorded.
	err = mk.Revoke(t.Context(), info.KID)
	require.ErrorContains(t, err, "is revoked")
	require.ErrorContains(t, err, "claiming the key_revoked event")
	assert.Equal(t, m2mauth.KeyStateRevoked, stateOf(t, other, info.KID))
	assert.Empty(t, f.kidsOf(m2mauth.EventKeyRevoked), "the claim failed")
	assert.Contains(t, f.log(), "not audited yet")
	require.ErrorContains(t, mk.Refresh(t.Context()), "connection reset", "retried at each refresh")
	assert.Empty(t, f.kidsOf(m2mauth.EventKeyRevoked))

	store.fail.Store(false)
	require.NoError(t, mk.Refresh(t.Context()))
	require.NoError(t, other.Refresh(t.Context()))
	require.NoError(t, mk.Refresh(t.Context()))
	assert.Equal(t, []string{info.KID}, f.kidsOf(m2mauth.EventKeyRevoked), "audited once")
}

// TestManagedKeysRevokeWhileUnreadable: a key revoked while the store
// cannot be read back stops signing and verifying on this replica at
// once, as Revoke says, and stays out while the reads keep failing.
func TestManagedKeysRevokeWhileUnreadable(t *testing.T) {
	f := newMKFixture(t)
	store := &flakyKeyStore{KeyStore: f.store}
	mk, err := m2mauth.NewManagedKeys(t.Context(), store, f.sealer, f.config())
	require.NoError(t, err)
	defer mk.Close()
	kid1 := signingKID(t, mk)
	f.advance(time.Minute)
	info, err := mk.Rotate(t.Context())
	require.NoError(t, err)
	f.advance(10 * time.Minute)
	require.Equal(t, info.KID, signingKID(t, mk))

	store.fail.Store(true)
	require.ErrorContains(t, mk.Revoke(t.Context(), info.KID), "connection refused")
	for i := range 3 {
		assert.Equal(t, kid1, signingKID(t, mk), "signing after the revocation (refresh %d)", i)
		assert.Equal(t, []string{kid1}, verificationKIDs(t, mk), "verifying after the revocation (refresh %d)", i)
		f.advance(30 * time.Second)
		require.Error(t, mk.Refresh(t.Context()))
	}
	store.fail.Store(false)
	require.NoError(t, mk.Refresh(t.Context()))
	assert.Equal(t, kid1, signingKID(t, mk))
	assert.Equal(t, []string{kid1}, verificationKIDs(t, mk))
}

func TestManagedKeysClockBehind(t *testing.T) {
	f := newMKFixture(t)
	a := f.replica(t)
	kid := signingKID(t, a)
	// b's clock is 2s behind a's, which made a key active at once.
	b := f.replica(t, func(c *m2mauth.ManagedKeysConfig) {
		c.Now = func() time.Time { return f.clock().Add(-2 * time.Second) }
	})
	assert.Equal(t, kid, signingKID(t, b))
	list, err := b.Keys(t.Context())
	require.NoError(t, err)
	assert.Equal(t, m2mauth.KeyStateActive, list[0].State)
}

func TestManagedKeysClose(t *testing.T) {
	f := newMKFixture(t)
	mk := f.replica(t)
	require.NoError(t, mk.Close())
	require.NoError(t, mk.Close(), "twice")
	_, err := mk.SigningKey(t.Context())
	assert.ErrorContains(t, err, "closed")
	_, err = mk.VerificationKeys(t.Context())
	assert.ErrorContains(t, err, "closed")
}

// TestManagedKeysRealClock runs replicas on the real clock: the
// background refresh brings another replica's key, and a timer switches
// the signing key at its ActiveAt.
func TestManagedKeysRealClock(t *testing.T) {
	store := memstore.New()
	sealer := newSealer(t, newKEK(t))
	cfg := m2mauth.ManagedKeysConfig{
		PropagationDelay: 300 * time.Millisecond,
		RefreshInterval:  20 * time.Millisecond,
		Logger:           discardLogger(),
	}
	a, err := m2mauth.NewManagedKeys(t.Context(), store, sealer, cfg)
	require.NoError(t, err)
	defer a.Close()
	b, err := m2mauth.NewManagedKeys(t.Context(), store, sealer, cfg)
	require.NoError(t, err)
	defer b.Close()
	kid1 := signingKID(t, a)

	// No clock read, no allocation, the same pointers.
	k1, err := a.SigningKey(t.Context())
	require.NoError(t, err)
	set1, err := a.VerificationKeys(t.Context())
	require.NoError(t, err)
	allocs := testing.AllocsPerRun(100, func() {
		k, _ := a.SigningKey(t.Context())
		s, _ := a.VerificationKeys(t.Context())
		if k != k1 || s != set1 {
			t.Error("another pointer while nothing changed")
		}
	})
	assert.Zero(t, allocs)

	info, err := a.Rotate(t.Context())
	require.NoError(t, err)
	if time.Now().Before(info.ActiveAt) {
		assert.Equal(t, kid1, signingKID(t, a))
	}
	assert.Eventually(t, func() bool { return slices.Contains(verificationKIDs(t, b), info.KID) },
		5*time.Second, 5*time.Millisecond, "b's background refresh brings the key")
	assert.Eventually(t, func() bool { return signingKID(t, a) == info.KID && signingKID(t, b) == info.KID },
		5*time.Second, 5*time.Millisecond, "the timer switches at ActiveAt")
	assert.False(t, time.Now().Before(info.ActiveAt))
	k2, err := a.SigningKey(t.Context())
	require.NoError(t, err)
	assert.Same(t, k2, func() *jose.JSONWebKey { k, _ := a.SigningKey(t.Context()); return k }())
}

func TestNewManagedKeysValidates(t *testing.T) {
	f := newMKFixture(t)
	tests := []struct {
		name string
		edit func(*m2mauth.ManagedKeysConfig)
		want string
	}{
		{"unknown algorithm", func(c *m2mauth.ManagedKeysConfig) { c.Algorithm = "none" }, "Algorithm"},
		{"negative propagation", func(c *m2mauth.ManagedKeysConfig) { c.PropagationDelay = -time.Second }, "PropagationDelay"},
		{"rotation within propagation", func(c *m2mauth.ManagedKeysConfig) { c.RotationInterval = 10 * time.Minute }, "RotationInterval"},
		{"rotation under the default propagation", func(c *m2mauth.ManagedKeysConfig) { c.RotationInterval = time.Minute }, "RotationInterval"},
		{"token TTL over 24h", func(c *m2mauth.ManagedKeysConfig) { c.MaxTokenTTL = 25 * time.Hour }, "MaxTokenTTL"},
		{"negative leeway", func(c *m2mauth.ManagedKeysConfig) { c.Leeway = -time.Second }, "Leeway"},
		{"refresh too often", func(c *m2mauth.ManagedKeysConfig) { c.RefreshInterval = time.Millisecond }, "RefreshInterval"},
		{"refresh after propagation", func(c *m2mauth.ManagedKeysConfig) { c.RefreshInterval = 10 * time.Minute }, "RefreshInterval"},
		{"negative timeout", func(c *m2mauth.ManagedKeysConfig) { c.Timeout = -time.Second }, "Timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mk, err := m2mauth.NewManagedKeys(t.Context(), f.store, f.sealer, f.config(tt.edit))
			require.ErrorContains(t, err, tt.want)
			assert.Nil(t, mk)
		})
	}
	_, err := m2mauth.NewManagedKeys(t.Context(), nil, f.sealer, f.config())
	require.ErrorContains(t, err, "KeyStore")
	_, err = m2mauth.NewManagedKeys(t.Context(), f.store, nil, f.config())
	require.ErrorContains(t, err, "KeySealer")
	rows, err := f.store.SigningKeys(t.Context())
	require.NoError(t, err)
	assert.Empty(t, rows, "nothing written by a refused configuration")
}

// TestManagedKeysKeyThatDoesNotOpen: a replica that meets a new key it
// cannot open (published by a replica with another KEK) leaves it out,
// keeps signing with the keys it holds, and says so.
func TestManagedKeysKeyThatDoesNotOpen(t *testing.T) {
	f := newMKFixture(t)
	a := f.replica(t)
	kid1 := signingKID(t, a)
	other := newSealer(t, newKEK(t), f.kek)
	b, err := m2mauth.NewManagedKeys(t.Context(), f.store, other, f.config())
	require.NoError(t, err)
	defer b.Close()
	info, err := b.Rotate(t.Context())
	require.NoError(t, err)

	err = a.Refresh(t.Context())
	require.Error(t, err)
	assert.Contains(t, err.Error(), info.KID)
	assert.Contains(t, err.Error(), other.KEKID())
	require.ErrorContains(t, a.Ping(t.Context()), other.KEKID())
	assert.Equal(t, []string{kid1}, verificationKIDs(t, a))
	f.advance(time.Hour)
	assert.Equal(t, kid1, signingKID(t, a), "the newest key it can open")
	assert.Equal(t, info.KID, signingKID(t, b))
	assert.Equal(t, 1, strings.Count(f.log(), "refreshing managed signing keys failed"))
}

// TestManagedKeysOldKEKKeepsOffTheSchedule: after a KEK rotation
// (ResealKeys), a server still running with the old KEK alone keeps
// signing with the key it holds, but does not publish the next key when
// it is due: sealed under the old KEK, it would undo the rotation, and
// the servers restarted with the new KEK alone could not open it. A
// server holding the new KEK publishes it.
func TestManagedKeysOldKEKKeepsOffTheSchedule(t *testing.T) {
	f := newMKFixture(t)
	old := f.replica(t, func(c *m2mauth.ManagedKeysConfig) { c.RotationInterval = time.Hour })
	kid := signingKID(t, old)

	newKEK := newKEK(t)
	both := newSealer(t, newKEK, f.kek)
	n, err := m2mauth.ResealKeys(t.Context(), f.store, both, both)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Error(t, old.Refresh(t.Context()), "the resealed key does not open with the old KEK")

	f.advance(time.Hour) // the next key is due
	require.Error(t, old.Refresh(t.Context()))
	assert.Equal(t, kid, signingKID(t, old), "it signs with the key it holds")
	rows, err := f.store.SigningKeys(t.Context())
	require.NoError(t, err)
	require.Len(t, rows, 1, "nothing published under the old KEK")

	restarted, err := m2mauth.NewManagedKeys(t.Context(), f.store, newSealer(t, newKEK), f.config(func(c *m2mauth.ManagedKeysConfig) { c.RotationInterval = time.Hour }))
	require.NoError(t, err, "the new KEK alone opens every key")
	t.Cleanup(func() { restarted.Close() })
	rows, err = f.store.SigningKeys(t.Context())
	require.NoError(t, err)
	require.Len(t, rows, 2, "the server with the new KEK published the next key")
	for _, r := range rows {
		_, err := newSealer(t, newKEK).Open(r.Sealed, []byte("m2mauth-key\x00"+r.KID+"\x00"+r.Algorithm+"\x00"+strconv.FormatInt(r.Generation, 10)))
		require.NoError(t, err, "generation %d under the new KEK", r.Generation)
	}
}

// TestManagedKeysRevokeActiveTakeover: revoking the active key lets the
// published key sign at once, ahead of its activation; it is listed as
// active since the revocation, not from its scheduled activation, and
// its key_activated event is dated then, once, on this replica and on
// one that sees the change at its next refresh.
func TestManagedKeysRevokeActiveTakeover(t *testing.T) {
	f := newMKFixture(t)
	mk := f.replica(t)
	other := f.replica(t)
	first := signingKID(t, mk)
	f.advance(time.Minute)
	next, err := mk.Rotate(t.Context()) // published; active after the propagation delay
	require.NoError(t, err)
	revokedAt := f.advance(time.Minute)
	require.True(t, revokedAt.Before(next.ActiveAt))
	require.NoError(t, mk.Revoke(t.Context(), first))
	require.Equal(t, next.KID, signingKID(t, mk), "the published key signs at once")

	f.advance(time.Second)
	require.NoError(t, other.Refresh(t.Context()))
	for _, r := range []*m2mauth.ManagedKeys{mk, other} {
		infos, err := r.Keys(t.Context())
		require.NoError(t, err)
		i := slices.IndexFunc(infos, func(k m2mauth.ManagedKeyInfo) bool { return k.KID == next.KID })
		require.GreaterOrEqual(t, i, 0)
		assert.Equal(t, m2mauth.KeyStateActive, infos[i].State)
		assert.Equal(t, revokedAt, infos[i].ActiveAt, "active since the revocation")
	}

	// Past its scheduled activation: nothing more to audit.
	f.advance(next.ActiveAt.Sub(f.clock()) + time.Second)
	require.NoError(t, mk.Refresh(t.Context()))
	require.NoError(t, other.Refresh(t.Context()))
	f.mu.Lock()
	defer f.mu.Unlock()
	var activated []time.Time
	for _, e := range f.events {
		if e.Type == m2mauth.EventKeyActivated && e.Reason == next.KID {
			activated = append(activated, e.Time)
		}
	}
	assert.Equal(t, []time.Time{revokedAt}, activated, "key_activated of the key that took over")
}
