package sqlstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// Tests of the token handler over sqlstore: a store, and a limiter, that
// several replicas share.

const (
	testIssuer   = "https://auth.example.com"
	testAudience = "https://api.example.com"
)

// newTokenHandler returns a token handler over store that signs with a
// fixed HS256 key. Issuer, DefaultAudience, Auditor (none) and Logger
// (discarded) default for tests.
func newTokenHandler(t testing.TB, store m2mauth.ClientStore, cfg m2mauth.TokenHandlerConfig) *m2mauth.TokenHandler {
	t.Helper()
	key, err := m2mauth.NewHS256Key("k1", []byte("0123456789abcdef0123456789abcdef"))
	require.NoError(t, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(t, err)
	if cfg.Issuer == "" {
		cfg.Issuer = testIssuer
	}
	if cfg.DefaultAudience == "" {
		cfg.DefaultAudience = testAudience
	}
	if cfg.Auditor == nil {
		cfg.Auditor = m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h, err := m2mauth.NewTokenHandler(store, keys, cfg)
	require.NoError(t, err)
	return h
}

// basicAuth returns the client_secret_basic Authorization value
// (RFC 6749 §2.3.1: each part form-urlencoded first).
func basicAuth(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

// tokenRequest returns a client credentials token request for scope read
// from the peer address addr ("192.0.2.1:4000", "[2001:db8::1]:443"), as
// received over TLS (the handler refuses plain HTTP from other machines).
func tokenRequest(addr, id, secret string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, testIssuer+"/oauth/token", strings.NewReader("grant_type=client_credentials&scope=read"))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Authorization", basicAuth(id, secret))
	r.RemoteAddr = addr
	return r
}

// tokenResponse is the JSON body of a token response or error.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	Error       string `json:"error"`
}

// serve runs r through h and returns the recorded response and its body.
func serve(t *testing.T, h http.Handler, r *http.Request) (*httptest.ResponseRecorder, tokenResponse) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var body tokenResponse
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &body), "body %q", w.Body)
	return w, body
}

// createClient stores a client granted read on testAudience with one
// secret, and returns the secret.
func createClient(t *testing.T, s *sqlstore.Store, id string, now time.Time) (string, m2mauth.Secret) {
	t.Helper()
	plain, sec, err := m2mauth.NewSecret(now, time.Time{})
	require.NoError(t, err)
	storeClient(t, s, id, sec)
	return plain, sec
}

// createArgon2idClient stores a client like createClient's, with its
// secret hashed by argon2id, and returns the secret.
func createArgon2idClient(t *testing.T, s *sqlstore.Store, id string, now time.Time) string {
	t.Helper()
	plain, err := m2mauth.GenerateSecret()
	require.NoError(t, err)
	hash, err := m2mauth.HashSecretArgon2id(plain)
	require.NoError(t, err)
	storeClient(t, s, id, m2mauth.Secret{ID: "argon2id-1", Hash: hash, CreatedAt: now})
	return plain
}

// storeClient stores a client granted read and write on testAudience,
// with one secret.
func storeClient(t *testing.T, s *sqlstore.Store, id string, sec m2mauth.Secret) {
	t.Helper()
	require.NoError(t, s.CreateClient(t.Context(), &m2mauth.Client{
		ID:      id,
		Secrets: []m2mauth.Secret{sec},
		Grants:  map[string]m2mauth.Scopes{testAudience: {"read", "write"}},
	}))
}

// TestLimiterSharedByReplicas runs two token handlers, each with its own
// *sql.DB, Store and Limiter on the same tables, as two replicas would:
// failures sent to one lock the client and address out of the other.
func TestLimiterSharedByReplicas(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		plain, _ := createClient(t, e.newStore(t, sqlstore.Config{TablePrefix: prefix}), "svc", clock.Now())
		replica := func() http.Handler {
			db := e.open(t)
			s, err := sqlstore.New(db, e.dialect, sqlstore.Config{TablePrefix: prefix})
			require.NoError(t, err)
			t.Cleanup(func() { s.Close() })
			l, err := sqlstore.NewLimiter(db, e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix, Now: clock.Now})
			require.NoError(t, err)
			t.Cleanup(func() { l.Close() })
			return newTokenHandler(t, s, m2mauth.TokenHandlerConfig{Limiter: l, Now: clock.Now})
		}
		h1, h2 := replica(), replica()

		for i := range 5 {
			w, body := serve(t, h1, tokenRequest("192.0.2.1:4000", "svc", "wrong"))
			require.Equal(t, http.StatusUnauthorized, w.Code, "failure %d", i)
			require.Equal(t, m2mauth.CodeInvalidClient, body.Error)
		}
		for name, h := range map[string]http.Handler{"other replica": h2, "same replica": h1} {
			w, body := serve(t, h, tokenRequest("192.0.2.1:5000", "svc", plain))
			assert.Equal(t, http.StatusTooManyRequests, w.Code, name)
			assert.Equal(t, "12", w.Header().Get("Retry-After"), name)
			assert.Equal(t, m2mauth.CodeTemporarilyUnavailable, body.Error, name)
			assert.Empty(t, body.AccessToken, name)
		}
		w, body := serve(t, h2, tokenRequest("192.0.2.2:5000", "svc", plain))
		require.Equal(t, http.StatusOK, w.Code, "another address with the right secret: %s", w.Body)
		assert.NotEmpty(t, body.AccessToken)

		clock.Advance(12 * time.Second)
		w, _ = serve(t, h2, tokenRequest("192.0.2.1:5000", "svc", plain))
		assert.Equal(t, http.StatusOK, w.Code, "one interval later")

		// The address's own bucket, filled through both replicas with ids
		// that do not exist, from addresses of one IPv6 /64.
		for i := range 20 {
			h := []http.Handler{h1, h2}[i%2]
			w, _ := serve(t, h, tokenRequest(fmt.Sprintf("[2001:db8::%x]:443", i+1), fmt.Sprint("guess-", i), "wrong"))
			require.Equal(t, http.StatusUnauthorized, w.Code, "guess %d", i)
		}
		w, _ = serve(t, h2, tokenRequest("[2001:db8::ffff]:443", "svc", plain))
		assert.Equal(t, http.StatusTooManyRequests, w.Code, "the whole /64 is locked out")
		assert.Equal(t, "3", w.Header().Get("Retry-After"))
		w, _ = serve(t, h1, tokenRequest("[2001:db8:0:1::1]:443", "svc", plain))
		assert.Equal(t, http.StatusOK, w.Code, "another /64")
	})
}

// TestLimiterKnownAndUnknownClientsAlike checks that the limiter answers a
// wrong secret of a real client, an unknown client and an impossible
// client id alike, so its answers reveal nothing about which exist.
func TestLimiterKnownAndUnknownClientsAlike(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		createClient(t, s, "svc", clock.Now())
		l := e.newLimiter(t, prefix, clock, sqlstore.LimiterConfig{})
		h := newTokenHandler(t, s, m2mauth.TokenHandlerConfig{Limiter: l, Now: clock.Now})

		type answer struct {
			status            int
			error, retryAfter string
		}
		run := func(addr, id string) []answer {
			var out []answer
			for range 6 {
				w, body := serve(t, h, tokenRequest(addr, id, "wrong"))
				out = append(out, answer{w.Code, body.Error, w.Header().Get("Retry-After")})
			}
			return out
		}
		want := run("192.0.2.1:1", "svc")
		require.Len(t, want, 6)
		assert.Equal(t, answer{http.StatusUnauthorized, m2mauth.CodeInvalidClient, ""}, want[4])
		assert.Equal(t, answer{http.StatusTooManyRequests, m2mauth.CodeTemporarilyUnavailable, "12"}, want[5])
		assert.Equal(t, want, run("192.0.2.2:1", "nobody"), "unknown client")
		assert.Equal(t, want, run("192.0.2.3:1", "bad\x01id"), "impossible client id")
		assert.Equal(t, want, run("192.0.2.4:1", strings.Repeat("x", 300)), "overlong client id")
	})
}

// TestTokenEndpointRotation requests tokens over HTTP from eight clients at
// once while the secret is rotated: a new secret is added and the old one
// set to expire. Every request with a valid secret must succeed; once the
// old secret has expired it is refused and the new one accepted.
func TestTokenEndpointRotation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := t.Context()
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix, Now: clock.Now})
		oldPlain, oldSec := createClient(t, s, "rotating", clock.Now())
		l := e.newLimiter(t, prefix, clock, sqlstore.LimiterConfig{ClientIPBurst: 1000000, IPBurst: 1000000})
		srv := httptest.NewServer(newTokenHandler(t, s, m2mauth.TokenHandlerConfig{Limiter: l, Now: clock.Now}))
		defer srv.Close()

		post := func(secret string) (int, tokenResponse, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/oauth/token",
				strings.NewReader("grant_type=client_credentials&scope=read"))
			if err != nil {
				return 0, tokenResponse{}, err
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", basicAuth("rotating", secret))
			resp, err := srv.Client().Do(req)
			if err != nil {
				return 0, tokenResponse{}, err
			}
			defer resp.Body.Close()
			var body tokenResponse
			raw, err := io.ReadAll(resp.Body)
			if err == nil {
				err = json.Unmarshal(raw, &body)
			}
			if resp.Header.Get("Cache-Control") != "no-store" {
				err = fmt.Errorf("Cache-Control %q", resp.Header.Get("Cache-Control"))
			}
			return resp.StatusCode, body, err
		}

		const workers, each, rotateAfter, waitAt = 8, 30, 40, 20
		var (
			current      atomic.Pointer[string]
			done         atomic.Int64
			usedOld      atomic.Int64
			usedNew      atomic.Int64
			startRotate  = make(chan struct{})
			rotated      = make(chan struct{})
			startOnce    sync.Once
			newPlain     string
			newSecret    m2mauth.Secret
			rotationErrs error
		)
		current.Store(&oldPlain)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					if i == waitAt {
						// Requests before this one raced the rotation;
						// those after it see the new secret.
						<-rotated
					}
					secret := *current.Load()
					status, body, err := post(secret)
					if assert.NoError(t, err, "worker %d request %d", w, i) {
						assert.Equal(t, http.StatusOK, status, "worker %d request %d: %+v", w, i, body)
						assert.Equal(t, "Bearer", body.TokenType)
						assert.NotEmpty(t, body.AccessToken)
					}
					if secret == oldPlain {
						usedOld.Add(1)
					} else {
						usedNew.Add(1)
					}
					if done.Add(1) == rotateAfter {
						startOnce.Do(func() { close(startRotate) })
					}
				}
			})
		}
		<-startRotate
		var err error
		newPlain, newSecret, err = m2mauth.NewSecret(clock.Now(), time.Time{})
		require.NoError(t, err)
		rotationErrs = s.AddSecret(ctx, "rotating", newSecret)
		current.Store(&newPlain)
		expiry := clock.Now().Add(time.Hour)
		if rotationErrs == nil {
			rotationErrs = s.ExpireSecret(ctx, "rotating", oldSec.ID, expiry)
		}
		close(rotated)
		wg.Wait()
		require.NoError(t, rotationErrs)
		assert.Equal(t, int64(workers*each), done.Load())
		assert.GreaterOrEqual(t, usedOld.Load(), int64(rotateAfter))
		assert.GreaterOrEqual(t, usedNew.Load(), int64(workers*(each-waitAt)))

		clock.Advance(time.Hour - time.Microsecond)
		status, _, err := post(oldPlain)
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, status, "the old secret works until its expiry")

		clock.Advance(time.Microsecond)
		status, body, err := post(oldPlain)
		require.NoError(t, err)
		assert.Equal(t, http.StatusUnauthorized, status, "the old secret has expired")
		assert.Equal(t, m2mauth.CodeInvalidClient, body.Error)
		status, body, err = post(newPlain)
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, status)
		assert.NotEmpty(t, body.AccessToken)
	})
}

// TestTokenHandlerDatabaseOutage checks that a database the handler cannot
// use, for the store or for the limiter, is a server_error: never an
// invalid_client, which would blame the client for an outage and count
// against its limits. A caller that goes away mid-request is no outage:
// it gets 503 temporarily_unavailable, and nothing is logged as an error.
func TestTokenHandlerDatabaseOutage(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		plain, _ := createClient(t, e.newStore(t, sqlstore.Config{TablePrefix: prefix}), "svc", clock.Now())
		healthy, err := sqlstore.New(e.db, e.dialect, sqlstore.Config{TablePrefix: prefix})
		require.NoError(t, err)
		t.Cleanup(func() { healthy.Close() })

		// closedDB returns a *sql.DB on the database, already closed.
		closedDB := func(t *testing.T) *sql.DB {
			db := e.open(t)
			require.NoError(t, db.Close())
			return db
		}
		tests := []struct {
			name string
			// handler returns the handler under test and the context
			// of its requests.
			handler func(t *testing.T, logs *bytes.Buffer) (http.Handler, context.Context)
			logged  string // "" for a canceled request
		}{
			{"StoreDBClosed", func(t *testing.T, logs *bytes.Buffer) (http.Handler, context.Context) {
				db := e.open(t)
				s, err := sqlstore.New(db, e.dialect, sqlstore.Config{TablePrefix: prefix})
				require.NoError(t, err)
				h := newTokenHandler(t, s, m2mauth.TokenHandlerConfig{Now: clock.Now, Logger: slog.New(slog.NewTextHandler(logs, nil))})
				w, _ := serve(t, h, tokenRequest("192.0.2.1:1", "svc", plain))
				require.Equal(t, http.StatusOK, w.Code, "before the outage")
				require.NoError(t, db.Close())
				return h, t.Context()
			}, "the client store is unavailable"},
			{"StoreNeverMigrated", func(t *testing.T, logs *bytes.Buffer) (http.Handler, context.Context) {
				s, err := sqlstore.New(e.db, e.dialect, sqlstore.Config{TablePrefix: e.newPrefix(t)})
				require.NoError(t, err)
				return newTokenHandler(t, s, m2mauth.TokenHandlerConfig{Now: clock.Now, Logger: slog.New(slog.NewTextHandler(logs, nil))}), t.Context()
			}, "the client store is unavailable"},
			{"StoreContextCancelled", func(t *testing.T, logs *bytes.Buffer) (http.Handler, context.Context) {
				h := newTokenHandler(t, healthy, m2mauth.TokenHandlerConfig{Now: clock.Now, Logger: slog.New(slog.NewTextHandler(logs, nil))})
				ctx, cancel := context.WithCancel(t.Context())
				cancel()
				return h, ctx
			}, ""},
			{"LimiterDBClosed", func(t *testing.T, logs *bytes.Buffer) (http.Handler, context.Context) {
				l, err := sqlstore.NewLimiter(closedDB(t), e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix, Now: clock.Now})
				require.NoError(t, err)
				return newTokenHandler(t, healthy, m2mauth.TokenHandlerConfig{
					Now: clock.Now, Limiter: l, Logger: slog.New(slog.NewTextHandler(logs, nil)),
				}), t.Context()
			}, "the rate limiter is unavailable"},
			{"LimiterNeverMigrated", func(t *testing.T, logs *bytes.Buffer) (http.Handler, context.Context) {
				l, err := sqlstore.NewLimiter(e.db, e.dialect, sqlstore.LimiterConfig{TablePrefix: e.newPrefix(t), Now: clock.Now})
				require.NoError(t, err)
				t.Cleanup(func() { l.Close() })
				return newTokenHandler(t, healthy, m2mauth.TokenHandlerConfig{
					Now: clock.Now, Limiter: l, Logger: slog.New(slog.NewTextHandler(logs, nil)),
				}), t.Context()
			}, "the rate limiter is unavailable"},
			{"LimiterContextCancelled", func(t *testing.T, logs *bytes.Buffer) (http.Handler, context.Context) {
				l, err := sqlstore.NewLimiter(e.db, e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix, Now: clock.Now})
				require.NoError(t, err)
				t.Cleanup(func() { l.Close() })
				h := newTokenHandler(t, healthy, m2mauth.TokenHandlerConfig{
					Now: clock.Now, Limiter: l, Logger: slog.New(slog.NewTextHandler(logs, nil)),
				})
				w, _ := serve(t, h, tokenRequest("192.0.2.1:1", "svc", plain))
				require.Equal(t, http.StatusOK, w.Code, "with a live context")
				ctx, cancel := context.WithCancel(t.Context())
				cancel()
				return h, ctx
			}, ""},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var logs bytes.Buffer
				h, ctx := tt.handler(t, &logs)
				status, code := http.StatusInternalServerError, m2mauth.CodeServerError
				if tt.logged == "" {
					status, code = http.StatusServiceUnavailable, m2mauth.CodeTemporarilyUnavailable
				}
				for _, c := range []struct{ id, secret string }{{"svc", plain}, {"svc", "wrong"}, {"nobody", "wrong"}} {
					w, body := serve(t, h, tokenRequest("192.0.2.9:1", c.id, c.secret).WithContext(ctx))
					assert.Equal(t, status, w.Code, "%s/%s: %s", c.id, c.secret, w.Body)
					assert.Equal(t, code, body.Error)
					assert.Empty(t, body.AccessToken)
					assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
					assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
					assert.Empty(t, w.Header().Get("WWW-Authenticate"))
					assert.Empty(t, w.Header().Get("Retry-After"))
				}
				if tt.logged == "" {
					assert.NotContains(t, logs.String(), "ERROR")
				} else {
					assert.Contains(t, logs.String(), tt.logged)
				}
			})
		}
	})
}

// TestTokenRequestQueries counts the statements one token request sends
// to the database: exactly one query when it succeeds with the in-memory
// limiter; with the database limiter, for a client known at the address
// that authenticates (the limiter's fast paths), two statements more and
// no transaction, or on PostgreSQL and MySQL one more, the lookup being
// part of the reservation's; a transaction for the release of a failure; and
// both transactions, after the fast paths found nothing to do, for a
// client's first request from an address.
func TestTokenRequestQueries(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		plain, _ := createClient(t, e.newStore(t, sqlstore.Config{TablePrefix: prefix}), "counted", clock.Now())

		counter := &tally{}
		cdb := sql.OpenDB(&countingConnector{drv: e.db.Driver(), dsn: e.dsn, n: counter})
		t.Cleanup(func() { cdb.Close() })
		cdb.SetMaxOpenConns(1) // statements are prepared once, on the one connection
		s, err := sqlstore.New(cdb, e.dialect, sqlstore.Config{TablePrefix: prefix})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		l, err := sqlstore.NewLimiter(cdb, e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix, Now: clock.Now})
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })

		// A fast path is one statement. Each transaction locks and reads
		// the rows (one query), and writes them (one statement). First,
		// on MySQL and SQLite it inserts or locks them, where
		// PostgreSQL's query does that, and on PostgreSQL it turns off
		// waiting for the commit to be flushed: one statement more on
		// every engine.
		tx := counts{queries: 1, execs: 2, begins: 1}
		add := func(cs ...counts) (sum counts) {
			for _, c := range cs {
				sum.queries += c.queries
				sum.execs += c.execs
				sum.begins += c.begins
			}
			return sum
		}
		lookup, fast := counts{queries: 1}, counts{execs: 1}
		// The reservation's fast path and the lookup: on PostgreSQL one
		// statement, that reads the client as it grants the attempt; on
		// MySQL one call of the procedure that does both.
		grant := add(lookup, fast)
		if e.dialect != sqlstore.SQLite {
			grant = counts{queries: 1}
		}
		tests := []struct {
			name    string
			limiter m2mauth.Limiter
			secret  string
			addr    string
			warm    int // requests before the one counted
			status  int
			want    counts
		}{
			{"InMemoryLimiter", nil, plain, "192.0.2.1:1", 2, http.StatusOK, lookup},
			{"DatabaseLimiter", l, plain, "192.0.2.1:1", 2, http.StatusOK, add(grant, fast)},
			{"DatabaseLimiterFailure", l, "wrong", "192.0.2.1:1", 0, http.StatusUnauthorized, add(grant, tx)},
			{"DatabaseLimiterNewAddress", l, plain, "192.0.2.2:1", 0, http.StatusOK, add(grant, tx, fast, tx)},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				h := newTokenHandler(t, s, m2mauth.TokenHandlerConfig{Limiter: tt.limiter, Now: clock.Now})
				// The first requests prepare the statements and insert the
				// limiter's rows, and the first release runs the first
				// cleanup, which deletes the address's row once the client
				// has authenticated.
				for range tt.warm {
					w, _ := serve(t, h, tokenRequest(tt.addr, "counted", tt.secret))
					require.Equal(t, tt.status, w.Code)
				}
				counter.reset()
				w, _ := serve(t, h, tokenRequest(tt.addr, "counted", tt.secret))
				require.Equal(t, tt.status, w.Code)
				assert.Equal(t, tt.want, counter.snapshot(), "statements that reached the driver")
			})
		}
	})
}

// TestGrantClientWithoutProcedure checks that on MySQL a Limiter that
// cannot call its procedure (not created yet, or a user without EXECUTE
// on it) sends the fast path and the lookup apart, says so once, and
// calls the procedure again a minute later, once it is there.
func TestGrantClientWithoutProcedure(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.MySQL {
			t.Skip("the procedure is MySQL's")
		}
		ctx := t.Context()
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		secret, _ := createClient(t, s, "counted", clock.Now())
		names := procedures(t, e.db, prefix)
		require.Len(t, names, 1)
		_, err := e.db.ExecContext(ctx, "DROP PROCEDURE "+names[0])
		require.NoError(t, err)

		counter := &tally{}
		h, logs := countedHandler(t, e, e.dsn, prefix, clock, counter)
		request := func(want counts) {
			t.Helper()
			counter.reset()
			w, _ := serve(t, h, tokenRequest("192.0.2.1:1", "counted", secret))
			require.Equal(t, http.StatusOK, w.Code, w.Body.String())
			assert.Equal(t, want, counter.snapshot(), "statements that reached the driver")
		}
		for range 2 { // the client becomes known at the address
			w, _ := serve(t, h, tokenRequest("192.0.2.1:1", "counted", secret))
			require.Equal(t, http.StatusOK, w.Code, w.Body.String())
		}
		// The fast path, the lookup, the release's fast path.
		request(counts{queries: 1, execs: 2})
		request(counts{queries: 1, execs: 2})
		require.Equal(t, 1, strings.Count(logs.String(), "cannot call its procedure"), logs.String())
		require.NotContains(t, logs.String(), secret)

		// Migrated again: the procedure is called once the minute is over.
		require.NoError(t, s.Migrate(ctx))
		require.Equal(t, names, procedures(t, e.db, prefix))
		request(counts{queries: 1, execs: 2})
		clock.Advance(time.Minute + time.Second)
		w, _ := serve(t, h, tokenRequest("192.0.2.1:1", "counted", secret)) // and the limiter's cleanup
		require.Equal(t, http.StatusOK, w.Code, w.Body.String())
		request(counts{queries: 1, execs: 1})
		request(counts{queries: 1, execs: 1})
	})
}

// TestProcedurePrivileges checks, on MySQL, a database user that may
// change tables but neither create nor execute routines: its Migrate
// succeeds without the procedure, and a server using it, with the
// procedure created by another user or not, issues tokens with the
// fast path and the lookup apart.
func TestProcedurePrivileges(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		if e.dialect != sqlstore.MySQL {
			t.Skip("the procedure is MySQL's")
		}
		ctx := t.Context()
		cfg, err := mysql.ParseDSN(e.dsn)
		require.NoError(t, err)
		b := make([]byte, 6)
		_, _ = rand.Read(b)
		user := "m2m" + hex.EncodeToString(b)
		_, err = e.db.ExecContext(ctx, "CREATE USER '"+user+"'@'%' IDENTIFIED BY 'pw'")
		require.NoError(t, err)
		t.Cleanup(func() { _, _ = e.db.Exec("DROP USER '" + user + "'@'%'") })
		_, err = e.db.ExecContext(ctx, "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP, REFERENCES ON `"+cfg.DBName+"`.* TO '"+user+"'@'%'")
		require.NoError(t, err)
		cfg.User, cfg.Passwd = user, "pw"
		dsn := cfg.FormatDSN()
		if db, err := sql.Open("mysql", dsn); err == nil {
			err = db.PingContext(ctx)
			db.Close()
			if err != nil { // e.g. MySQL 8's caching_sha2_password over plain TCP
				t.Skipf("cannot sign in as a new user on this server: %v", err)
			}
		}

		for _, byRoot := range []bool{false, true} {
			t.Run(fmt.Sprintf("created=%v", byRoot), func(t *testing.T) {
				prefix := e.newPrefix(t)
				clock := newFakeClock()
				if byRoot {
					e.newStore(t, sqlstore.Config{TablePrefix: prefix})
					require.Len(t, procedures(t, e.db, prefix), 1)
				}
				udb, err := sql.Open("mysql", dsn)
				require.NoError(t, err)
				t.Cleanup(func() { udb.Close() })
				us, err := sqlstore.New(udb, e.dialect, sqlstore.Config{TablePrefix: prefix})
				require.NoError(t, err)
				t.Cleanup(func() { us.Close() })
				require.NoError(t, us.Migrate(ctx))
				require.Len(t, procedures(t, e.db, prefix), map[bool]int{false: 0, true: 1}[byRoot])
				secret, _ := createClient(t, us, "counted", clock.Now())

				counter := &tally{}
				h, logs := countedHandler(t, e, dsn, prefix, clock, counter)
				for range 3 {
					w, _ := serve(t, h, tokenRequest("192.0.2.1:1", "counted", secret))
					require.Equal(t, http.StatusOK, w.Code, w.Body.String())
				}
				counter.reset()
				w, _ := serve(t, h, tokenRequest("192.0.2.1:1", "counted", secret))
				require.Equal(t, http.StatusOK, w.Code, w.Body.String())
				assert.Equal(t, counts{queries: 1, execs: 2}, counter.snapshot())
				require.Equal(t, 1, strings.Count(logs.String(), "cannot call its procedure"), logs.String())
			})
		}
	})
}

// countedHandler returns a token handler whose Store and Limiter use
// prefix through their own *sql.DB on dsn, which counts in counter what
// reaches the driver, and the Limiter's log.
func countedHandler(t *testing.T, e *env, dsn, prefix string, clock *fakeClock, counter *tally) (http.Handler, *syncBuffer) {
	t.Helper()
	cdb := sql.OpenDB(&countingConnector{drv: e.db.Driver(), dsn: dsn, n: counter})
	t.Cleanup(func() { cdb.Close() })
	cdb.SetMaxOpenConns(1) // statements are prepared once, on the one connection
	s, err := sqlstore.New(cdb, e.dialect, sqlstore.Config{TablePrefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	logs := &syncBuffer{}
	l, err := sqlstore.NewLimiter(cdb, e.dialect, sqlstore.LimiterConfig{TablePrefix: prefix, Now: clock.Now,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return newTokenHandler(t, s, m2mauth.TokenHandlerConfig{Limiter: l, Now: clock.Now}), logs
}

// replicaHandler returns a token handler with its own *sql.DB, Store and
// Limiter on the tables of prefix, as one replica of a service would
// have. Requests wait for the limiter and the store up to a minute, so
// that a loaded machine answers none of them 503.
func replicaHandler(t *testing.T, e *env, prefix string, clock *fakeClock) http.Handler {
	t.Helper()
	db := e.open(t)
	s, err := sqlstore.New(db, e.dialect, sqlstore.Config{TablePrefix: prefix})
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	l := e.replica(t, db, prefix, clock, sqlstore.LimiterConfig{})
	return newTokenHandler(t, s, m2mauth.TokenHandlerConfig{Limiter: l, Now: clock.Now, StoreTimeout: time.Minute})
}

// postAll sends n token requests for id and secret at once, request i to
// servers[i%len(servers)] over loopback HTTP, and returns how many got
// each status.
func postAll(t *testing.T, servers []*httptest.Server, n int, id, secret string) map[int]int {
	t.Helper()
	var mu sync.Mutex
	statuses := make(map[int]int)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		srv := servers[i%len(servers)]
		wg.Go(func() {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/oauth/token",
				strings.NewReader("grant_type=client_credentials&scope=read"))
			if !assert.NoError(t, err) {
				return
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", basicAuth(id, secret))
			<-start
			resp, err := srv.Client().Do(req)
			if !assert.NoError(t, err) {
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			mu.Lock()
			statuses[resp.StatusCode]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	return statuses
}

// TestSimultaneousGuesses sends 200 wrong secrets for one client from one
// address at once, to one replica or split between two sharing the
// database: at most the burst of five guesses is verified and answered
// invalid_client, every other is refused with 429 before its secret is
// looked at (RFC 6749 §2.3.1 and §10.10), whatever the cost of the hash.
func TestSimultaneousGuesses(t *testing.T) {
	tests := []struct {
		name     string
		replicas int
		argon2id bool
	}{
		{"OneReplica", 1, false},
		{"TwoReplicas", 2, false},
		{"OneReplicaArgon2id", 1, true},
		{"TwoReplicasArgon2id", 2, true},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				prefix := e.newPrefix(t)
				clock := newFakeClock()
				s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
				if tt.argon2id {
					createArgon2idClient(t, s, "svc", clock.Now())
				} else {
					createClient(t, s, "svc", clock.Now())
				}
				var servers []*httptest.Server
				for range tt.replicas {
					srv := httptest.NewServer(replicaHandler(t, e, prefix, clock))
					t.Cleanup(srv.Close)
					servers = append(servers, srv)
				}
				const guesses = 200
				got := postAll(t, servers, guesses, "svc", "wrong")
				assert.Equal(t, map[int]int{http.StatusUnauthorized: 5, http.StatusTooManyRequests: guesses - 5}, got)
			})
		}
	})
}

// TestSimultaneousClient sends 100 requests of one client with its
// secret from one address at once, to one replica or split between two:
// every one gets a token. Attempts in flight beyond the burst wait for
// those before them, they are not refused.
func TestSimultaneousClient(t *testing.T) {
	tests := []struct {
		name     string
		replicas int
	}{
		{"OneReplica", 1},
		{"TwoReplicas", 2},
	}
	forEachBackend(t, func(t *testing.T, e *env) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				prefix := e.newPrefix(t)
				clock := newFakeClock()
				plain, _ := createClient(t, e.newStore(t, sqlstore.Config{TablePrefix: prefix}), "busy", clock.Now())
				var servers []*httptest.Server
				for range tt.replicas {
					srv := httptest.NewServer(replicaHandler(t, e, prefix, clock))
					t.Cleanup(srv.Close)
					servers = append(servers, srv)
				}
				const requests = 100
				assert.Equal(t, map[int]int{http.StatusOK: requests}, postAll(t, servers, requests, "busy", plain))
			})
		}
	})
}

// TestNeighbours checks the exemption of clients known at an address
// through the token handler: guesses at one client from an address lock
// out of it the clients that never authenticated there, not those that
// did, and nobody from another address (RFC 6749 §10.10).
func TestNeighbours(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		plainA, _ := createClient(t, s, "client-a", clock.Now())
		plainB, _ := createClient(t, s, "client-b", clock.Now())
		plainC, _ := createClient(t, s, "client-c", clock.Now())
		h := replicaHandler(t, e, prefix, clock)
		const x, y = "203.0.113.7:40000", "198.51.100.20:40000"

		w, _ := serve(t, h, tokenRequest(x, "client-b", plainB))
		require.Equal(t, http.StatusOK, w.Code, "client B authenticates from X")
		for i := range 30 {
			w, body := serve(t, h, tokenRequest(x, "client-a", "wrong"))
			want := http.StatusUnauthorized
			if i >= 5 {
				want = http.StatusTooManyRequests
			}
			require.Equal(t, want, w.Code, "guess %d at client A from X: %+v", i, body)
		}

		tests := []struct {
			name, addr, id, secret string
			status                 int
			retryAfter             string
		}{
			{"KnownNeighbour", x, "client-b", plainB, http.StatusOK, ""},
			{"NewcomerFromX", x, "client-c", plainC, http.StatusTooManyRequests, "3"},
			{"TargetFromX", x, "client-a", plainA, http.StatusTooManyRequests, "12"},
			{"TargetFromY", y, "client-a", plainA, http.StatusOK, ""},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				w, body := serve(t, h, tokenRequest(tt.addr, tt.id, tt.secret))
				assert.Equal(t, tt.status, w.Code, "%+v", body)
				assert.Equal(t, tt.retryAfter, w.Header().Get("Retry-After"))
				assert.Equal(t, tt.status == http.StatusOK, body.AccessToken != "")
			})
		}
	})
}

// lockAfterLookup is a ClientStore whose lookup, when a hang-up is
// armed, has another connection take the lock the limiter's release
// needs (SQLite's write lock; the rate_limits rows elsewhere), as a
// concurrent writer would, then hangs the caller up while holding it.
type lockAfterLookup struct {
	m2mauth.ClientStore
	lock   func(t *testing.T) (unlock func())
	t      *testing.T
	hangUp atomic.Pointer[context.CancelFunc]
	done   chan struct{}
}

func (s *lockAfterLookup) Client(ctx context.Context, id string) (*m2mauth.Client, error) {
	c, err := s.ClientStore.Client(ctx, id)
	if cancel := s.hangUp.Swap(nil); cancel != nil {
		unlock := s.lock(s.t)
		go func() {
			defer close(s.done)
			time.Sleep(50 * time.Millisecond)
			(*cancel)()
			time.Sleep(100 * time.Millisecond)
			unlock()
		}()
	}
	return c, err
}

// TestHangUpDuringLimiterRelease: a caller that hangs up while the
// limiter's release waits for a lock leaves no reservation in flight.
// Its secret was checked, so the attempt is answered and counted as the
// check found; the client, back with its secret, is not locked out.
func TestHangUpDuringLimiterRelease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		prefix := e.newPrefix(t)
		clock := newFakeClock()
		s := e.newStore(t, sqlstore.Config{TablePrefix: prefix})
		plain, _ := createClient(t, s, "svc", clock.Now())
		l := e.newLimiter(t, prefix, clock, sqlstore.LimiterConfig{})
		other := e.open(t)
		ls := &lockAfterLookup{ClientStore: s, t: t, lock: func(t *testing.T) func() {
			if e.name == "SQLite" {
				conn, err := other.Conn(context.Background())
				require.NoError(t, err)
				_, err = conn.ExecContext(context.Background(), "BEGIN IMMEDIATE")
				require.NoError(t, err)
				return func() {
					conn.ExecContext(context.Background(), "COMMIT")
					conn.Close()
				}
			}
			tx, err := other.Begin()
			require.NoError(t, err)
			_, err = tx.Exec("SELECT 1 FROM " + prefix + "rate_limits FOR UPDATE")
			require.NoError(t, err)
			return func() { tx.Commit() }
		}}
		var logged syncBuffer
		var events []m2mauth.AuditEvent
		var mu sync.Mutex
		h := newTokenHandler(t, ls, m2mauth.TokenHandlerConfig{
			Limiter: l, Now: clock.Now, StoreTimeout: 5 * time.Second,
			Logger: slog.New(slog.NewTextHandler(&logged, nil)),
			Auditor: m2mauth.AuditorFunc(func(_ context.Context, ev m2mauth.AuditEvent) {
				mu.Lock()
				defer mu.Unlock()
				events = append(events, ev)
			}),
		})
		// The rows to lock exist once the client has been seen.
		w, _ := serve(t, h, tokenRequest("192.0.2.1:4000", "svc", plain))
		require.Equal(t, http.StatusOK, w.Code)
		for i := range 6 { // more than the burst of a client and address
			ctx, cancel := context.WithCancel(context.Background())
			ls.done = make(chan struct{})
			ls.hangUp.Store(&cancel)
			w, body := serve(t, h, tokenRequest("192.0.2.1:4000", "svc", plain).WithContext(ctx))
			<-ls.done
			require.Equal(t, http.StatusOK, w.Code, "hang-up %d: %s", i+1, body.Error)
			mu.Lock()
			require.Equal(t, m2mauth.EventTokenIssued, events[len(events)-1].Type)
			mu.Unlock()
		}
		require.NotContains(t, logged.String(), "ERROR")
		var pending int64
		require.NoError(t, e.db.QueryRow("SELECT COALESCE(SUM(pending), 0) FROM "+prefix+"rate_limits").Scan(&pending))
		require.Zero(t, pending, "reservations left in flight")
		w, body := serve(t, h, tokenRequest("192.0.2.1:4000", "svc", plain))
		require.Equal(t, http.StatusOK, w.Code, "the client, back with its secret: %s", body.Error)
	})
}
