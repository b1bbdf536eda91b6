package sqlstore_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// Tests of the revocations a Store records (RFC 7009 revokes through
// them) as replicas sharing one database see them. The storetest suite
// checks the contract of m2mauth.Revoker itself.

// countRows returns the number of rows in table (prefix included).
func (e *env) countRows(t *testing.T, table string) int {
	t.Helper()
	var n int
	require.NoError(t, e.db.QueryRowContext(t.Context(), "SELECT COUNT(*) FROM "+table).Scan(&n))
	return n
}

// TestRevocationsSharedByReplicas makes each kind of revocation through
// one Store and reads it through another, with a *sql.DB of its own, on
// the same tables, as two replicas would: every change increments the
// version in its own transaction, so the other replica's very next
// RevocationsSince returns it. A deleted client's watermark is a row of
// its own, which outlives the client's.
func TestRevocationsSharedByReplicas(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		a := e.newStore(t, sqlstore.Config{TablePrefix: prefix, Now: clock.Now})
		b, err := sqlstore.New(e.open(t), e.dialect, sqlstore.Config{TablePrefix: prefix, Now: clock.Now})
		require.NoError(t, err)
		t.Cleanup(func() { b.Close() })
		for _, id := range []string{"svc", "off", "gone"} {
			require.NoError(t, a.CreateClient(ctx, &m2mauth.Client{ID: id, Public: true}))
		}

		r, err := b.RevocationsSince(ctx, -1)
		require.NoError(t, err)
		require.NotNil(t, r)
		assert.Zero(t, r.Version, "Version of a new schema")
		assert.Zero(t, r.Len())
		version := r.Version
		exp := clock.Now().Add(time.Hour)

		steps := []struct {
			name   string
			change func() error
			check  func(t *testing.T, r *m2mauth.Revocations, at time.Time)
		}{
			{"RevokeToken", func() error { return a.RevokeToken(ctx, "svc", "jti-1", exp) },
				func(t *testing.T, r *m2mauth.Revocations, _ time.Time) {
					assert.Equal(t, exp, r.Tokens["jti-1"])
				}},
			{"RevokeClientTokens", func() error { return a.RevokeClientTokens(ctx, "svc") },
				func(t *testing.T, r *m2mauth.Revocations, at time.Time) { assert.Equal(t, at, r.Clients["svc"]) }},
			{"SetDisabled", func() error { return a.SetDisabled(ctx, "off", true) },
				func(t *testing.T, r *m2mauth.Revocations, at time.Time) { assert.Equal(t, at, r.Clients["off"]) }},
			{"DeleteClient", func() error { return a.DeleteClient(ctx, "gone") },
				func(t *testing.T, r *m2mauth.Revocations, at time.Time) { assert.Equal(t, at, r.Clients["gone"]) }},
			{"RevokeAllTokens", func() error { return a.RevokeAllTokens(ctx) },
				func(t *testing.T, r *m2mauth.Revocations, at time.Time) { assert.Equal(t, at, r.Before) }},
		}
		for _, step := range steps {
			at := clock.Now()
			got, err := b.RevocationsSince(ctx, version)
			require.NoError(t, err)
			require.Nil(t, got, "before %s: nothing changed", step.name)

			require.NoError(t, step.change(), step.name)
			got, err = b.RevocationsSince(ctx, version)
			require.NoError(t, err)
			require.NotNil(t, got, "%s: the other replica's next poll", step.name)
			assert.Greater(t, got.Version, version, step.name)
			step.check(t, got, at)
			version = got.Version
			clock.Advance(time.Second)
		}
		assert.Equal(t, 4, len(mustRevocations(t, a).Clients)+len(mustRevocations(t, a).Tokens))

		// The rows as stored: the deleted client's watermark is there,
		// its client row is not.
		var at int64
		require.NoError(t, e.db.QueryRowContext(ctx, "SELECT at FROM "+prefix+"revocations WHERE kind = 'client' AND id = "+e.placeholder(1), "gone").Scan(&at))
		assert.Equal(t, newFakeClock().Now().Add(3*time.Second).UnixMicro(), at)
		assert.Zero(t, e.countRows(t, prefix+"clients WHERE id = 'gone'"))
		// The other replica reads the watermark of a client with the
		// client, in its one query.
		off, err := b.Client(ctx, "off")
		require.NoError(t, err)
		assert.Equal(t, newFakeClock().Now().Add(2*time.Second), off.TokensRevokedAt)
	})
}

func mustRevocations(t *testing.T, s *sqlstore.Store) *m2mauth.Revocations {
	t.Helper()
	r, err := s.Revocations(t.Context())
	require.NoError(t, err)
	return r
}

// TestRevocationsRollBack refuses one statement of each revocation's
// transaction: the revocation rows, the client and the version are
// written together or not at all, so a poll never sees a new version
// without its change, nor a change without a new version.
func TestRevocationsRollBack(t *testing.T) {
	tests := []struct {
		name   string
		fail   string // the statement refused, without the table prefix
		change func(t *testing.T, s *sqlstore.Store) error
	}{
		{"RevokeToken", "UPDATE {p}revocation_state", func(t *testing.T, s *sqlstore.Store) error {
			return s.RevokeToken(t.Context(), "svc", "jti-2", time.Now().Add(time.Hour))
		}},
		{"RevokeClientTokens", "UPDATE {p}revocation_state", func(t *testing.T, s *sqlstore.Store) error {
			return s.RevokeClientTokens(t.Context(), "svc")
		}},
		{"SetDisabled", "INSERT INTO {p}revocations", func(t *testing.T, s *sqlstore.Store) error {
			return s.SetDisabled(t.Context(), "svc", true)
		}},
		{"UpdateClient", "UPDATE {p}revocation_state", func(t *testing.T, s *sqlstore.Store) error {
			return s.UpdateClient(t.Context(), &m2mauth.Client{ID: "svc", Disabled: true})
		}},
		{"DeleteClient", "DELETE FROM {p}clients", func(t *testing.T, s *sqlstore.Store) error {
			return s.DeleteClient(t.Context(), "svc")
		}},
		{"RevokeAllTokens", "UPDATE {p}revocation_state", func(t *testing.T, s *sqlstore.Store) error {
			return s.RevokeAllTokens(t.Context())
		}},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx := t.Context()
				prefix := e.newPrefix(t)
				setup := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				require.NoError(t, setup.CreateClient(ctx, &m2mauth.Client{ID: "svc", Public: true}))
				require.NoError(t, setup.RevokeToken(ctx, "svc", "jti-1", time.Now().Add(time.Hour)))
				client, err := setup.Client(ctx, "svc")
				require.NoError(t, err)
				revs := mustRevocations(t, setup)

				db, refuse := e.openRefusing(t)
				rec := &recorder{}
				s, err := sqlstore.New(db, e.dialect, sqlstore.Config{TablePrefix: prefix, Auditor: rec})
				require.NoError(t, err)
				t.Cleanup(func() { s.Close() })
				refuse.Store(strings.ReplaceAll(tt.fail, "{p}", prefix))

				require.ErrorIs(t, tt.change(t, s), errRefused)
				assert.Zero(t, rec.len(), "events of a change that rolled back")
				after, err := setup.Client(ctx, "svc")
				require.NoError(t, err)
				assert.Equal(t, client, after, "the client")
				assert.Equal(t, revs, mustRevocations(t, setup), "the revocations")
				got, err := setup.RevocationsSince(ctx, revs.Version)
				require.NoError(t, err)
				assert.Nil(t, got, "a new version")
			})
		}
	})
}

// insertTokenRows inserts the deny-list rows of tokens jti-<from> to
// jti-<to-1>, expiring at exp, as RevokeToken would, a few hundred per
// statement.
func (e *env) insertTokenRows(t *testing.T, prefix string, from, to int, exp time.Time) {
	t.Helper()
	const perStatement = 500
	for lo := from; lo < to; lo += perStatement {
		hi := min(lo+perStatement, to)
		var q strings.Builder
		q.WriteString("INSERT INTO " + prefix + "revocations (kind, id, at, expires_at) VALUES ")
		args := make([]any, 0, 3*(hi-lo))
		for i := lo; i < hi; i++ {
			if i > lo {
				q.WriteString(", ")
			}
			n := len(args)
			fmt.Fprintf(&q, "('token', %s, %s, %s)", e.placeholder(n+1), e.placeholder(n+2), e.placeholder(n+3))
			args = append(args, fmt.Sprintf("jti-%06d", i), exp.UnixMicro(), exp.Add(m2mauth.RevocationGrace).UnixMicro())
		}
		_, err := e.db.ExecContext(t.Context(), q.String(), args...)
		require.NoError(t, err)
	}
}

// TestRevocationsBounded fills the deny-list with revoked tokens whose
// expiry then passes: no read returns them, the polls' pruning deletes
// them a batch of 1000 at a time, and PruneRevocations empties the
// table. 100,000 tokens on SQLite; 5,000 on PostgreSQL and MySQL, to keep
// CI fast (pruning costs the same few statements per batch whatever the
// count). A hundred are revoked through RevokeToken, the rest written as
// the rows it writes: RevokeToken is one transaction each, which the
// storetest suite's ManyTokens goes through.
func TestRevocationsBounded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		n := 5000
		if e.dialect == sqlstore.SQLite {
			n = 100_000
		}
		const viaAPI, batch = 100, 1000
		ctx := t.Context()
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix, Now: clock.Now})
		exp := clock.Now().Add(time.Hour)
		for i := range viaAPI {
			require.NoError(t, s.RevokeToken(ctx, "busy", fmt.Sprintf("jti-%06d", i), exp))
		}
		e.insertTokenRows(t, prefix, viaAPI, n, exp)
		r, err := s.RevocationsSince(ctx, 0)
		require.NoError(t, err)
		require.NotNil(t, r)
		require.Len(t, r.Tokens, n)
		version := r.Version
		assert.EqualValues(t, viaAPI, version)

		clock.Advance(time.Hour + m2mauth.RevocationGrace + time.Second)
		for i := range 2 {
			// The first poll in a minute prunes a batch; a full batch
			// makes the next poll prune again.
			got, err := s.RevocationsSince(ctx, version)
			require.NoError(t, err)
			assert.Nil(t, got, "pruning changes no version")
			assert.Equal(t, n-(i+1)*batch, e.countRows(t, prefix+"revocations"), "rows after poll %d", i+1)
		}
		assert.Zero(t, mustRevocations(t, s).Len(), "live revocations")

		deleted, err := s.PruneRevocations(ctx)
		require.NoError(t, err)
		assert.Equal(t, n-2*batch, deleted)
		assert.Zero(t, e.countRows(t, prefix+"revocations"))

		got, err := s.RevocationsSince(ctx, 0)
		require.NoError(t, err)
		require.NotNil(t, got)
		assert.Zero(t, got.Len())
		assert.Equal(t, version, got.Version)
		deleted, err = s.PruneRevocations(ctx)
		require.NoError(t, err)
		assert.Zero(t, deleted)
	})
}
