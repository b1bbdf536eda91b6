package sqlstore_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"fmt"
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
