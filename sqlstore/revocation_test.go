package sqlstore_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
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

		// What changes nothing makes no new version: a token revoked
		// again, and a watermark from a replica whose clock is behind,
		// which does not move the stored one back.
		late, err := sqlstore.New(e.open(t), e.dialect, sqlstore.Config{TablePrefix: prefix,
			Now: func() time.Time { return clock.Now().Add(-time.Minute) }})
		require.NoError(t, err)
		t.Cleanup(func() { late.Close() })
		require.NoError(t, a.RevokeToken(ctx, "svc", "jti-1", exp))
		require.NoError(t, late.RevokeClientTokens(ctx, "svc"))
		got, err := b.RevocationsSince(ctx, version)
		require.NoError(t, err)
		assert.Nil(t, got, "a new version without a change")
		svc, err := b.Client(ctx, "svc")
		require.NoError(t, err)
		assert.Equal(t, newFakeClock().Now().Add(time.Second), svc.TokensRevokedAt, "TokensRevokedAt after a late revocation")

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

// TestRevocationVersionAfterRestore: a database restored from a backup,
// or a standby promoted before it saw the last commits, goes back to an
// older version. The next change must not give again a version a
// poller holds for other revocations, or the poller would take the
// change as none and its revocation would never reach the validators.
func TestRevocationVersionAfterRestore(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, s *sqlstore.Store, now time.Time) error
	}{
		{"RevokeToken", func(t *testing.T, s *sqlstore.Store, now time.Time) error {
			return s.RevokeToken(t.Context(), "svc", "jti-after", now.Add(time.Hour))
		}},
		{"RevokeClientTokens", func(t *testing.T, s *sqlstore.Store, _ time.Time) error {
			return s.RevokeClientTokens(t.Context(), "other")
		}},
		{"RevokeAllTokens", func(t *testing.T, s *sqlstore.Store, _ time.Time) error {
			return s.RevokeAllTokens(t.Context())
		}},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx := t.Context()
				prefix := e.newPrefix(t)
				clock := newFakeClock()
				s := e.newStore(t, sqlstore.Config{TablePrefix: prefix, Now: clock.Now})
				require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{ID: "other", Public: true}))
				require.NoError(t, s.RevokeToken(ctx, "svc", "jti-1", clock.Now().Add(time.Hour)))
				backup := mustRevocations(t, s)

				clock.Advance(time.Minute)
				require.NoError(t, s.RevokeToken(ctx, "svc", "jti-lost", clock.Now().Add(time.Hour)))
				held := mustRevocations(t, s) // what the pollers hold
				require.Greater(t, held.Version, backup.Version)
				poller, err := m2mauth.NewRevocationPoller(s, m2mauth.RevocationPollerConfig{
					Interval: time.Hour, MaxStale: 2 * time.Hour, Now: clock.Now, Logger: slog.New(slog.DiscardHandler),
				})
				require.NoError(t, err)
				t.Cleanup(func() { poller.Close() })
				require.NoError(t, poller.Refresh(ctx))

				// The restore: the state as it was at the backup.
				_, err = e.db.ExecContext(ctx, "UPDATE "+prefix+"revocation_state SET version = "+e.placeholder(1)+" WHERE id = 1", backup.Version)
				require.NoError(t, err)
				_, err = e.db.ExecContext(ctx, "DELETE FROM "+prefix+"revocations WHERE id = 'jti-lost'")
				require.NoError(t, err)
				require.Equal(t, backup, mustRevocations(t, s))
				// The poller keeps what it held, and stays fresh.
				require.NoError(t, poller.Refresh(ctx))
				polled, err := poller.CurrentRevocations()
				require.NoError(t, err)
				require.True(t, polled.Revoked("svc", "jti-lost", clock.Now()))

				clock.Advance(time.Minute)
				require.NoError(t, tt.change(t, s, clock.Now()))
				got, err := s.RevocationsSince(ctx, held.Version)
				require.NoError(t, err)
				require.NotNil(t, got, "the change after the restore is news to a poller at version %d", held.Version)
				require.Greater(t, got.Version, held.Version)
				require.NoError(t, poller.Refresh(ctx))
				polled, err = poller.CurrentRevocations()
				require.NoError(t, err)
				require.Equal(t, got.Version, polled.Version, "the poller has the change")
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
// table. 100,000 tokens on SQLite (10,000 under the race detector, which
// slows the pure-Go SQLite twentyfold); 5,000 on PostgreSQL and MySQL, to
// keep CI fast (pruning costs the same few statements per batch whatever
// the count). A hundred are revoked through RevokeToken, the rest written
// as the rows it writes: RevokeToken is one transaction each, which the
// storetest suite's ManyTokens goes through.
func TestRevocationsBounded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		n := 5000 // PostgreSQL, MySQL
		switch {
		case e.dialect == sqlstore.SQLite && raceEnabled:
			n = 10_000
		case e.dialect == sqlstore.SQLite:
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
		// The first from the clock, each of the others one more on a
		// clock that stood still.
		assert.EqualValues(t, clock.Now().UnixMicro()+viaAPI-1, version)

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

// testKeys returns the keys newTokenHandler signs with.
func testKeys(t testing.TB) m2mauth.KeyProvider {
	t.Helper()
	key, err := m2mauth.NewHS256Key("k1", []byte("0123456789abcdef0123456789abcdef"))
	require.NoError(t, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(t, err)
	return keys
}

// newPoller returns a RevocationPoller of feed on clock that polls in
// the background once, at once, and then only when Refresh is called,
// and waits for that first poll.
func newPoller(t testing.TB, feed m2mauth.RevocationFeed, clock *fakeClock) *m2mauth.RevocationPoller {
	t.Helper()
	p, err := m2mauth.NewRevocationPoller(feed, m2mauth.RevocationPollerConfig{
		Interval: time.Hour, Now: clock.Now, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	require.NoError(t, p.Refresh(t.Context()))
	return p
}

// replica is one replica of a service: its own *sql.DB and Store on
// shared tables, a token endpoint, a revocation endpoint (RFC 7009) and
// an API behind a Validator whose revocations a RevocationPoller reads
// from the Store, served over loopback HTTP.
type replica struct {
	store  *sqlstore.Store
	poller *m2mauth.RevocationPoller
	srv    *httptest.Server
}

func newReplica(t *testing.T, e *env, prefix string, clock *fakeClock) *replica {
	t.Helper()
	s, err := sqlstore.New(e.open(t), e.dialect, sqlstore.Config{TablePrefix: prefix, Now: clock.Now})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	h := newTokenHandler(t, s, m2mauth.TokenHandlerConfig{Now: clock.Now})
	rh, err := h.RevocationHandler(s)
	require.NoError(t, err)
	p := newPoller(t, s, clock)
	v, err := m2mauth.NewValidator(testKeys(t), m2mauth.ValidatorConfig{
		Issuer: testIssuer, Audience: testAudience, Now: clock.Now, Revocations: p})
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("POST /oauth/token", h)
	mux.Handle("POST /oauth/revoke", rh)
	mux.Handle("GET /api", v.RequireScopes("read")(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &replica{store: s, poller: p, srv: srv}
}

// post sends a form to path with client_secret_basic credentials and
// returns the status and the body.
func (r *replica) post(t *testing.T, path, id, secret, form string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, r.srv.URL+path, strings.NewReader(form))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", basicAuth(id, secret))
	resp, err := r.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, body
}

// issue returns a token for id from the replica's token endpoint.
func (r *replica) issue(t *testing.T, id, secret string) string {
	t.Helper()
	status, body := r.post(t, "/oauth/token", id, secret, "grant_type=client_credentials&scope=read")
	require.Equal(t, http.StatusOK, status, "token response %s", body)
	var tok tokenResponse
	require.NoError(t, json.Unmarshal(body, &tok))
	return tok.AccessToken
}

// revoke revokes tok at the replica's revocation endpoint (RFC 7009 §2.1).
func (r *replica) revoke(t *testing.T, id, secret, tok string) {
	t.Helper()
	status, body := r.post(t, "/oauth/revoke", id, secret, "token="+url.QueryEscape(tok))
	require.Equal(t, http.StatusOK, status, "revocation response %s", body)
}

// call returns the status of a request to the replica's API with tok.
func (r *replica) call(t *testing.T, tok string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, r.srv.URL+"/api", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := r.srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// refresh makes the replica's poller read the store now.
func (r *replica) refresh(t *testing.T) {
	t.Helper()
	require.NoError(t, r.poller.Refresh(t.Context()))
}

// TestRevocationReplicas runs two replicas on one database, each with
// its own *sql.DB, Store, token handler, revocation endpoint and
// validator fed by its own RevocationPoller. A token revoked at replica
// A's RFC 7009 endpoint is refused by replica B once B's poller has
// polled, while another token of the same client still works; disabling
// the client through A refuses all its tokens on B; re-enabling it lets
// tokens issued afterwards work on both, and the old ones stay refused
// (RFC 6750 §3.1: invalid_token, 401). The clock is injected and the
// pollers are refreshed by hand, so nothing waits.
func TestRevocationReplicas(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		setup := e.newStore(t, sqlstore.Config{TablePrefix: prefix, Now: clock.Now})
		secret, _ := createClient(t, setup, "svc", clock.Now())
		a, b := newReplica(t, e, prefix, clock), newReplica(t, e, prefix, clock)
		both := []*replica{a, b}

		revoked := a.issue(t, "svc", secret)
		kept := b.issue(t, "svc", secret)
		for _, r := range both {
			require.Equal(t, http.StatusNoContent, r.call(t, revoked))
			require.Equal(t, http.StatusNoContent, r.call(t, kept))
		}

		a.revoke(t, "svc", secret, revoked)
		assert.Equal(t, http.StatusNoContent, b.call(t, revoked), "B before its poller has polled")
		b.refresh(t)
		assert.Equal(t, http.StatusUnauthorized, b.call(t, revoked), "the revoked token on B")
		assert.Equal(t, http.StatusNoContent, b.call(t, kept), "another token of the client on B")

		clock.Advance(time.Second)
		require.NoError(t, a.store.SetDisabled(ctx, "svc", true))
		b.refresh(t)
		assert.Equal(t, http.StatusUnauthorized, b.call(t, kept), "a token of the disabled client on B")
		status, _ := b.post(t, "/oauth/token", "svc", secret, "grant_type=client_credentials&scope=read")
		assert.Equal(t, http.StatusUnauthorized, status, "a token request of the disabled client on B")

		clock.Advance(time.Second)
		require.NoError(t, a.store.SetDisabled(ctx, "svc", false))
		clock.Advance(time.Second)
		fresh := []string{a.issue(t, "svc", secret), b.issue(t, "svc", secret)}
		for i, r := range both {
			r.refresh(t)
			for _, tok := range fresh {
				assert.Equal(t, http.StatusNoContent, r.call(t, tok), "a token issued after re-enabling, on replica %d", i)
			}
			for _, tok := range []string{revoked, kept} {
				assert.Equal(t, http.StatusUnauthorized, r.call(t, tok), "a token issued before disabling, on replica %d", i)
			}
		}
	})
}

// countingFeed counts the polls of a RevocationFeed that have returned.
type countingFeed struct {
	m2mauth.RevocationFeed
	polls atomic.Int64
}

func (f *countingFeed) RevocationsSince(ctx context.Context, version int64) (*m2mauth.Revocations, error) {
	defer f.polls.Add(1)
	return f.RevocationFeed.RevocationsSince(ctx, version)
}

// TestValidationQueries counts what reaches the database of a Store
// that a RevocationPoller reads for a Validator: nothing per validated
// request, whether the token is accepted or refused as revoked, and one
// small query per poll while nothing changes (two when something did).
func TestValidationQueries(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		setup := e.newStore(t, sqlstore.Config{TablePrefix: prefix, Now: clock.Now})
		secret, _ := createClient(t, setup, "svc", clock.Now())
		h := newTokenHandler(t, setup, m2mauth.TokenHandlerConfig{Now: clock.Now})
		issue := func() string {
			_, tok := serve(t, h, tokenRequest("192.0.2.1:1", "svc", secret))
			require.NotEmpty(t, tok.AccessToken)
			return tok.AccessToken
		}
		good, bad := issue(), issue()
		plain, err := m2mauth.NewValidator(testKeys(t), m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, Now: clock.Now})
		require.NoError(t, err)
		claims, err := plain.Validate(ctx, bad)
		require.NoError(t, err)
		require.NoError(t, setup.RevokeToken(ctx, "svc", claims.ID, claims.Expiry.Time()))

		counter := &tally{}
		cdb := sql.OpenDB(&countingConnector{drv: e.db.Driver(), dsn: e.dsn, n: counter})
		t.Cleanup(func() { cdb.Close() })
		cdb.SetMaxOpenConns(1) // statements are prepared once, on the one connection
		s, err := sqlstore.New(cdb, e.dialect, sqlstore.Config{TablePrefix: prefix, Now: clock.Now})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		feed := &countingFeed{RevocationFeed: s}
		p := newPoller(t, feed, clock)
		// The background's first poll and Refresh's, in either order.
		waitFor(t, "the poller's first polls", func() bool { return feed.polls.Load() >= 2 })
		v, err := m2mauth.NewValidator(testKeys(t), m2mauth.ValidatorConfig{
			Issuer: testIssuer, Audience: testAudience, Now: clock.Now, Revocations: p})
		require.NoError(t, err)
		srv := httptest.NewServer(v.RequireScopes("read")(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusNoContent)
		})))
		t.Cleanup(srv.Close)
		api := &replica{srv: srv}

		counter.reset()
		for range 50 {
			require.Equal(t, http.StatusNoContent, api.call(t, good))
			require.Equal(t, http.StatusUnauthorized, api.call(t, bad))
		}
		assert.Equal(t, counts{}, counter.snapshot(), "statements of 100 validations")

		require.NoError(t, p.Refresh(ctx))
		assert.Equal(t, counts{queries: 1}, counter.snapshot(), "statements of a poll with nothing new")

		require.NoError(t, setup.RevokeClientTokens(ctx, "svc"))
		counter.reset()
		require.NoError(t, p.Refresh(ctx))
		got := counter.snapshot()
		assert.Equal(t, int64(2), got.queries, "queries of a poll with a change")
		assert.Zero(t, got.execs+got.begins, "writes of a poll with a change")
		counter.reset()
		assert.Equal(t, http.StatusUnauthorized, api.call(t, good), "a token of the client, once its tokens are revoked")
		assert.Equal(t, counts{}, counter.snapshot(), "statements of a validation")
	})
}
