package sqlstore_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
	"github.com/m2mauth/m2mauth/storetest"
)

// Tests of the managed signing keys a Store keeps, shared by the replicas
// on one database. The storetest suite checks the contract of
// m2mauth.KeyStore itself.

// TestKeyStore runs the contract on one set of tables per backend,
// emptied for each subtest, which saves a migration each.
func TestKeyStore(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		storetest.RunKeyStore(t, func(t *testing.T) m2mauth.KeyStore {
			for _, table := range []string{"signing_keys", "key_events"} {
				_, err := e.db.ExecContext(t.Context(), "DELETE FROM "+prefix+table)
				require.NoError(t, err)
			}
			return s
		})
	})
}

// replicas returns n Stores on one set of fresh tables, each with a
// *sql.DB of its own, as n replicas would have.
func (e *env) replicas(t *testing.T, n int) []*sqlstore.Store {
	t.Helper()
	prefix := e.newPrefix(t)
	out := []*sqlstore.Store{e.newStore(t, sqlstore.Config{TablePrefix: prefix})}
	for len(out) < n {
		s, err := sqlstore.New(e.open(t), e.dialect, sqlstore.Config{TablePrefix: prefix})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		out = append(out, s)
	}
	return out
}

// TestSigningKeyRaceAcrossReplicas has replicas with a connection pool
// each race to publish the same generations and to claim the same events:
// for each, exactly one of them wins, and the table holds the winner's
// key.
func TestSigningKeyRaceAcrossReplicas(t *testing.T) {
	const racers, rounds = 8, 3
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		stores := e.replicas(t, 2)
		start := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
		for gen := int64(1); gen <= rounds; gen++ {
			added := make([]bool, racers)
			claimed := make([]bool, racers)
			errs := make([]error, 2*racers)
			var wg sync.WaitGroup
			for i := range racers {
				s := stores[i%len(stores)]
				wg.Go(func() {
					k := m2mauth.StoredKey{
						KID: fmt.Sprintf("gen%d-racer%d", gen, i), Algorithm: "ES256", Generation: gen,
						Sealed: []byte{byte(i)}, PublishedAt: start, ActiveAt: start.Add(10 * time.Minute),
					}
					added[i], errs[i] = s.AddSigningKey(ctx, k)
					claimed[i], errs[racers+i] = s.ClaimKeyEvent(ctx, fmt.Sprintf("gen%d", gen), m2mauth.EventKeyActivated)
				})
			}
			wg.Wait()
			for i, err := range errs {
				require.NoError(t, err, "generation %d, call %d", gen, i)
			}
			winner := -1
			for i, ok := range added {
				if ok {
					require.Equal(t, -1, winner, "generation %d added twice: %v", gen, added)
					winner = i
				}
			}
			require.NotEqual(t, -1, winner, "generation %d: no AddSigningKey returned true", gen)
			assert.Equal(t, 1, count(claimed), "generation %d: claims won: %v", gen, claimed)

			for _, s := range stores {
				keys, err := s.SigningKeys(ctx)
				require.NoError(t, err)
				require.Len(t, keys, int(gen))
				assert.Equal(t, fmt.Sprintf("gen%d-racer%d", gen, winner), keys[gen-1].KID)
				assert.Equal(t, []byte{byte(winner)}, keys[gen-1].Sealed)
			}
		}
	})
}

func count(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// TestDeleteSigningKeyClaims checks that deleting a key deletes its
// claims, in the same transaction, and no other key's.
func TestDeleteSigningKeyClaims(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		at := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
		for i, kid := range []string{"one", "two"} {
			added, err := s.AddSigningKey(ctx, m2mauth.StoredKey{KID: kid, Algorithm: "EdDSA", Generation: int64(i + 1),
				Sealed: []byte("x"), PublishedAt: at, ActiveAt: at})
			require.NoError(t, err)
			require.True(t, added)
			for _, typ := range []m2mauth.AuditEventType{m2mauth.EventKeyPublished, m2mauth.EventKeyActivated} {
				first, err := s.ClaimKeyEvent(ctx, kid, typ)
				require.NoError(t, err)
				require.True(t, first)
			}
		}
		require.Equal(t, 4, e.countRows(t, prefix+"key_events"))

		deleted, err := s.DeleteSigningKey(ctx, "one")
		require.NoError(t, err)
		require.True(t, deleted)
		assert.Equal(t, 2, e.countRows(t, prefix+"key_events"), "the claims of the other key are kept")
		first, err := s.ClaimKeyEvent(ctx, "two", m2mauth.EventKeyActivated)
		require.NoError(t, err)
		assert.False(t, first)
		first, err = s.ClaimKeyEvent(ctx, "one", m2mauth.EventKeyActivated)
		require.NoError(t, err)
		assert.True(t, first, "a claim outlived its key")
	})
}

// TestKeyEventTypeBounds checks that an event type the key_events table
// cannot hold is refused before any SQL runs.
func TestKeyEventTypeBounds(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		s := e.newStore(t, sqlstore.Config{})
		for name, typ := range map[string]m2mauth.AuditEventType{
			"Empty":      "",
			"TooLong":    m2mauth.AuditEventType(bytes.Repeat([]byte("x"), 65)),
			"NotASCII":   "clé",
			"Control":    "a\nb",
			"Longest":    m2mauth.AuditEventType(bytes.Repeat([]byte("x"), 64)),
			"KeyRevoked": m2mauth.EventKeyRevoked,
		} {
			t.Run(name, func(t *testing.T) {
				first, err := s.ClaimKeyEvent(t.Context(), "kid", typ)
				if name == "Longest" || name == "KeyRevoked" {
					require.NoError(t, err)
					assert.True(t, first)
					return
				}
				require.Error(t, err)
				assert.False(t, first)
			})
		}
	})
}

// newSealer returns an AES sealer under a random KEK.
func newSealer(t *testing.T) *m2mauth.AESKeySealer {
	t.Helper()
	kek := make([]byte, m2mauth.KEKSize)
	_, _ = rand.Read(kek)
	s, err := m2mauth.NewAESKeySealer(kek)
	require.NoError(t, err)
	return s
}

// TestSigningKeysStoredSealed reads the key table directly and checks that
// no column holds the key material, raw or in any base64, of an ES256
// private key (its JWK, as a provider seals it) or an HS256 secret.
func TestSigningKeysStoredSealed(t *testing.T) {
	sealer := newSealer(t)
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ecJWK, err := jose.JSONWebKey{Key: ec, KeyID: "ec", Algorithm: "ES256", Use: "sig"}.MarshalJSON()
	require.NoError(t, err)
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	d := ec.D.FillBytes(make([]byte, 32))
	plaintexts := map[string][]byte{"ec": ecJWK, "hs": secret}
	var forbidden [][]byte
	for _, b := range [][]byte{d, secret} {
		forbidden = append(forbidden, b,
			[]byte(base64.StdEncoding.EncodeToString(b)),
			[]byte(base64.RawStdEncoding.EncodeToString(b)),
			[]byte(base64.URLEncoding.EncodeToString(b)),
			[]byte(base64.RawURLEncoding.EncodeToString(b)))
	}

	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		at := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
		for i, k := range []m2mauth.StoredKey{
			{KID: "ec", Algorithm: "ES256", Generation: 1, PublishedAt: at, ActiveAt: at},
			{KID: "hs", Algorithm: "HS256", Generation: 2, PublishedAt: at, ActiveAt: at.Add(time.Hour)},
		} {
			k.Sealed, err = sealer.Seal(plaintexts[k.KID], []byte(k.KID))
			require.NoError(t, err)
			added, err := s.AddSigningKey(ctx, k)
			require.NoError(t, err)
			require.True(t, added, "key %d", i)
		}

		rows := e.rawRows(t, "SELECT * FROM "+prefix+"signing_keys")
		require.Len(t, rows, 2)
		for _, row := range rows {
			for col, v := range row {
				for _, f := range forbidden {
					assert.False(t, bytes.Contains(v, f), "column %s holds key material", col)
				}
			}
		}

		// What is stored opens to the key.
		keys, err := s.SigningKeys(ctx)
		require.NoError(t, err)
		for _, k := range keys {
			plain, err := sealer.Open(k.Sealed, []byte(k.KID))
			require.NoError(t, err)
			assert.Equal(t, plaintexts[k.KID], plain)
		}
	})
}

// rawRows runs query and returns every row as its columns' bytes, by
// column name.
func (e *env) rawRows(t *testing.T, query string) []map[string][]byte {
	t.Helper()
	rows, err := e.db.QueryContext(t.Context(), query)
	require.NoError(t, err)
	defer rows.Close()
	cols, err := rows.Columns()
	require.NoError(t, err)
	var out []map[string][]byte
	for rows.Next() {
		vals := make([]any, len(cols))
		for i := range vals {
			vals[i] = new(sql.RawBytes)
		}
		require.NoError(t, rows.Scan(vals...))
		row := make(map[string][]byte, len(cols))
		for i, c := range cols {
			row[c] = bytes.Clone(*vals[i].(*sql.RawBytes))
		}
		out = append(out, row)
	}
	require.NoError(t, rows.Err())
	return out
}

// keyReplica is one replica signing with managed keys kept in the
// shared tables: its own *sql.DB and Store, its ManagedKeys, and a token
// endpoint and an API behind a Validator over those keys, served over
// loopback HTTP.
type keyReplica struct {
	store *sqlstore.Store
	keys  *m2mauth.ManagedKeys
	srv   *httptest.Server
}

// keyShow is what the replicas of TestManagedKeysAcrossReplicas share.
type keyShow struct {
	e      *env
	prefix string
	clock  *fakeClock
	cfg    m2mauth.ManagedKeysConfig
	secret string // of the client "svc"
}

// start starts a replica whose keys are opened by sealer, or returns
// the error of NewManagedKeys.
func (k *keyShow) start(t *testing.T, sealer m2mauth.KeySealer) (*keyReplica, error) {
	t.Helper()
	s, err := sqlstore.New(k.e.open(t), k.e.dialect, sqlstore.Config{TablePrefix: k.prefix, Now: k.clock.Now})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	mk, err := m2mauth.NewManagedKeys(t.Context(), s, sealer, k.cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { mk.Close() })
	h, err := m2mauth.NewTokenHandler(s, mk, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience, Now: k.clock.Now, Logger: k.cfg.Logger})
	require.NoError(t, err)
	v, err := m2mauth.NewValidator(mk, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, Now: k.clock.Now})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", h)
	mux.Handle("GET /api", v.RequireScopes("read")(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &keyReplica{store: s, keys: mk, srv: srv}, nil
}

// token returns a token from the replica's token endpoint, and the kid
// that signed it.
func (r *keyReplica) token(t *testing.T, secret string) (tok, kid string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, r.srv.URL+"/oauth/token",
		strings.NewReader("grant_type=client_credentials&scope=read"))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", basicAuth("svc", secret))
	resp, err := r.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var body tokenResponse
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	header, _, _ := strings.Cut(body.AccessToken, ".")
	raw, err := base64.RawURLEncoding.DecodeString(header)
	require.NoError(t, err)
	var h struct {
		KID string `json:"kid"`
	}
	require.NoError(t, json.Unmarshal(raw, &h))
	return body.AccessToken, h.KID
}

// call calls the replica's API with tok and returns the status.
func (r *keyReplica) call(t *testing.T, tok string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, r.srv.URL+"/api", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := r.srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// signing returns the kid the replica signs with now.
func (r *keyReplica) signing(t *testing.T) string {
	t.Helper()
	k, err := r.keys.SigningKey(t.Context())
	require.NoError(t, err)
	return k.KeyID
}

// verifying returns the kids of the replica's verification keys now.
func (r *keyReplica) verifying(t *testing.T) []string {
	t.Helper()
	set, err := r.keys.VerificationKeys(t.Context())
	require.NoError(t, err)
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.KeyID)
	}
	return kids
}

func (r *keyReplica) refresh(t *testing.T) {
	t.Helper()
	require.NoError(t, r.keys.Refresh(t.Context()))
}

// TestManagedKeysAcrossReplicas runs m2mauth.ManagedKeys on each
// database as a fleet would: replicas with a *sql.DB each, starting at
// once, rotating, retiring and deleting a key, and rotating the KEK,
// with tokens issued and checked over HTTP all along and a clock the
// test moves.
func TestManagedKeysAcrossReplicas(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		k := &keyShow{e: e, prefix: e.newPrefix(t), clock: newFakeClock()}
		events := &recorder{}
		k.cfg = m2mauth.ManagedKeysConfig{
			PropagationDelay: 10 * time.Minute,
			MaxTokenTTL:      time.Hour, // the token endpoint's default TTL
			Leeway:           5 * time.Minute,
			RefreshInterval:  9 * time.Minute, // of the real clock: the test refreshes
			Auditor:          events,
			Logger:           slog.New(slog.DiscardHandler),
			Now:              k.clock.Now,
		}
		admin := e.newStore(t, sqlstore.Config{TablePrefix: k.prefix, Now: k.clock.Now})
		plain, sec, err := m2mauth.NewSecret(k.clock.Now(), time.Time{})
		require.NoError(t, err)
		require.NoError(t, admin.CreateClient(ctx, &m2mauth.Client{ID: "svc", Secrets: []m2mauth.Secret{sec},
			Grants: map[string]m2mauth.Scopes{testAudience: {"read"}}}))
		k.secret = plain
		oldKEK := make([]byte, m2mauth.KEKSize)
		_, _ = rand.Read(oldKEK)
		sealer, err := m2mauth.NewAESKeySealer(oldKEK)
		require.NoError(t, err)
		table := k.prefix + "signing_keys"

		// Two replicas start at once on an empty table: one key between
		// them, which both sign with.
		var a, b *keyReplica
		var errA, errB error
		var wg sync.WaitGroup
		wg.Go(func() { a, errA = k.start(t, sealer) })
		wg.Go(func() { b, errB = k.start(t, sealer) })
		wg.Wait()
		require.NoError(t, errA)
		require.NoError(t, errB)
		require.Equal(t, 1, e.countRows(t, table))
		kid1 := a.signing(t)
		assert.Equal(t, kid1, b.signing(t))

		// The table holds the key sealed: not its private scalar, in
		// any encoding.
		priv, err := a.keys.SigningKey(ctx)
		require.NoError(t, err)
		ec, ok := priv.Key.(*ecdsa.PrivateKey)
		require.True(t, ok, "an ES256 key, by default: %T", priv.Key)
		d := ec.D.FillBytes(make([]byte, 32))
		for _, row := range e.rawRows(t, "SELECT * FROM "+table) {
			for col, v := range row {
				for _, f := range []string{string(d), base64.RawURLEncoding.EncodeToString(d), base64.StdEncoding.EncodeToString(d)} {
					assert.False(t, bytes.Contains(v, []byte(f)), "column %s holds the private key", col)
				}
			}
		}

		// A replica with another KEK refuses to start, and creates
		// nothing.
		other := newSealer(t)
		_, err = k.start(t, other)
		require.Error(t, err, "a replica started with the wrong KEK")
		assert.Equal(t, 1, e.countRows(t, table))

		tok1, signer := a.token(t, k.secret)
		assert.Equal(t, kid1, signer)
		assert.Equal(t, http.StatusNoContent, b.call(t, tok1))

		// Rotation on one replica: once both have refreshed, the new key
		// verifies on both at once, and signs on neither until its
		// propagation delay has passed.
		k.clock.Advance(time.Minute)
		info, err := a.keys.Rotate(ctx)
		require.NoError(t, err)
		kid2 := info.KID
		require.NotEqual(t, kid1, kid2)
		retireAt := k.clock.Now().Add(k.cfg.PropagationDelay)
		assert.Equal(t, retireAt, info.ActiveAt.UTC())
		a.refresh(t)
		b.refresh(t)
		require.Equal(t, 2, e.countRows(t, table))
		for _, r := range []*keyReplica{a, b} {
			assert.ElementsMatch(t, []string{kid1, kid2}, r.verifying(t))
			assert.Equal(t, kid1, r.signing(t))
		}
		k.clock.Advance(k.cfg.PropagationDelay - time.Second)
		tokLast, signer := b.token(t, k.secret)
		assert.Equal(t, kid1, signer, "a token a second before the new key activates")

		k.clock.Advance(time.Second)
		a.refresh(t)
		b.refresh(t)
		for _, r := range []*keyReplica{a, b} {
			assert.Equal(t, kid2, r.signing(t))
			_, signer := r.token(t, k.secret)
			assert.Equal(t, kid2, signer)
			assert.Equal(t, http.StatusNoContent, r.call(t, tok1), "a token of the retired key")
			assert.Equal(t, http.StatusNoContent, r.call(t, tokLast), "a token of the retired key")
		}

		// The retired key verifies its tokens until they expire, and
		// leaves the key set once they cannot be valid any more.
		k.clock.Advance(k.cfg.MaxTokenTTL - 2*time.Second)
		for _, r := range []*keyReplica{a, b} {
			assert.Equal(t, http.StatusNoContent, r.call(t, tokLast), "the last token of the retired key, before it expires")
			assert.Contains(t, r.verifying(t), kid1)
		}
		k.clock.Advance(k.cfg.Leeway + 2*time.Second) // retirement + MaxTokenTTL + Leeway
		for _, r := range []*keyReplica{a, b} {
			assert.Equal(t, []string{kid2}, r.verifying(t))
		}
		require.Equal(t, 2, e.countRows(t, table), "deleted by a refresh, not before")
		a.refresh(t)
		b.refresh(t)
		assert.Equal(t, 1, e.countRows(t, table))

		// KEK rotation, with a key published and not yet active: every
		// key is resealed, the old KEK alone no longer opens them, and a
		// replica with the new KEK alone signs and verifies as the
		// others do.
		info, err = a.keys.Rotate(ctx)
		require.NoError(t, err)
		kid3 := info.KID
		b.refresh(t)
		tok2, _ := b.token(t, k.secret)
		newKEK := make([]byte, m2mauth.KEKSize)
		_, _ = rand.Read(newKEK)
		both, err := m2mauth.NewAESKeySealer(newKEK, oldKEK)
		require.NoError(t, err)
		n, err := m2mauth.ResealKeys(ctx, admin, both, both)
		require.NoError(t, err)
		assert.Equal(t, 2, n)
		_, err = k.start(t, sealer)
		require.Error(t, err, "a replica started with the old KEK alone")
		newOnly, err := m2mauth.NewAESKeySealer(newKEK)
		require.NoError(t, err)
		c, err := k.start(t, newOnly)
		require.NoError(t, err)
		assert.Equal(t, kid2, c.signing(t))
		assert.ElementsMatch(t, []string{kid2, kid3}, c.verifying(t))
		assert.Equal(t, http.StatusNoContent, c.call(t, tok2), "a token signed before the KEK rotation")
		tok3, _ := c.token(t, k.secret)
		assert.Equal(t, http.StatusNoContent, a.call(t, tok3))
		k.clock.Advance(k.cfg.PropagationDelay)
		_, signer = c.token(t, k.secret)
		assert.Equal(t, kid3, signer, "the key published before the KEK rotation, once active")

		// Each transition was audited once, by whichever replica saw it
		// first.
		events.mu.Lock()
		defer events.mu.Unlock()
		seen := map[string]int{}
		for _, ev := range events.events {
			seen[string(ev.Type)+" "+ev.Reason]++
		}
		for _, want := range []string{
			"key_published " + kid1, "key_activated " + kid1, "key_retired " + kid1, "key_deleted " + kid1,
			"key_published " + kid2, "key_activated " + kid2, "key_published " + kid3,
		} {
			assert.Equal(t, 1, seen[want], "audit events %q", want)
		}
		for ev, n := range seen {
			assert.Equal(t, 1, n, "audit events %q", ev)
		}
	})
}
