package m2mauth_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
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

// dsnError is a store failure whose text holds what must never reach a
// response.
var dsnError = errors.New("dial postgres://m2mauth:hunter2@db.internal:5432/auth: connection refused")

// pingStore is a store with a Ping; its lookups fail, so a passing
// check proves Ping was used.
type pingStore struct {
	ping    func(context.Context) error
	lookups atomic.Int64
}

func (s *pingStore) Client(context.Context, string) (*m2mauth.Client, error) {
	s.lookups.Add(1)
	return nil, errors.New("lookup must not be called")
}

func (s *pingStore) Ping(ctx context.Context) error { return s.ping(ctx) }

// keyFuncs is a KeyProvider made of two functions.
type keyFuncs struct {
	signing func() (*jose.JSONWebKey, error)
	set     func() (*jose.JSONWebKeySet, error)
}

func (k keyFuncs) SigningKey(context.Context) (*jose.JSONWebKey, error)          { return k.signing() }
func (k keyFuncs) VerificationKeys(context.Context) (*jose.JSONWebKeySet, error) { return k.set() }

// readinessKeys returns static HS256 keys for readiness tests.
func readinessKeys(t testing.TB) *m2mauth.StaticKeys {
	t.Helper()
	key, err := m2mauth.NewHS256Key("k1", benchKey)
	require.NoError(t, err)
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(t, err)
	return keys
}

// hang is a check that blocks until the test ends, whatever its context
// says, like a store stuck in a driver that ignores cancellation.
func hang(t testing.TB) (func(context.Context) error, *atomic.Int64) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var calls atomic.Int64
	return func(context.Context) error {
		calls.Add(1)
		<-release
		return nil
	}, &calls
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestReadinessHandler(t *testing.T) {
	keys := readinessKeys(t)
	sk, err := keys.SigningKey(context.Background())
	require.NoError(t, err)
	pub := *sk
	fail := func(context.Context) error { return dsnError }
	tests := []struct {
		name   string
		store  func(t *testing.T) m2mauth.ClientStore
		keys   m2mauth.KeyProvider
		checks map[string]func(context.Context) error
		method string
		status int
		body   string
		logged string // in the log when not ready; default: dsnError's password
		// timeout is the checks' timeout; default 100 ms.
		timeout time.Duration
	}{
		{name: "ready", status: http.StatusOK, body: `{"status":"ready"}`},
		{name: "store has the probe client", status: http.StatusOK, body: `{"status":"ready"}`,
			store: func(t *testing.T) m2mauth.ClientStore {
				return storeFunc(func(context.Context, string) (*m2mauth.Client, error) { return &m2mauth.Client{ID: "x"}, nil })
			}},
		{name: "no store on a resource server", status: http.StatusOK, body: `{"status":"ready"}`,
			store: func(*testing.T) m2mauth.ClientStore { return nil }},
		{name: "HEAD", method: http.MethodHead, status: http.StatusOK},
		{name: "store erroring", status: http.StatusServiceUnavailable,
			body: `{"status":"not_ready","failed":{"store":"error"}}`,
			store: func(*testing.T) m2mauth.ClientStore {
				return storeFunc(func(context.Context, string) (*m2mauth.Client, error) { return nil, dsnError })
			}},
		{name: "store answering nothing", status: http.StatusServiceUnavailable,
			body:   `{"status":"not_ready","failed":{"store":"error"}}`,
			logged: "neither a client nor ErrClientNotFound",
			store: func(*testing.T) m2mauth.ClientStore {
				return storeFunc(func(context.Context, string) (*m2mauth.Client, error) { return nil, nil })
			}},
		{name: "store hanging", status: http.StatusServiceUnavailable,
			body:   `{"status":"not_ready","failed":{"store":"timeout"}}`,
			logged: "did not answer in time",
			store: func(t *testing.T) m2mauth.ClientStore {
				h, _ := hang(t)
				return storeFunc(func(ctx context.Context, _ string) (*m2mauth.Client, error) { return nil, h(ctx) })
			}},
		// The check's cause is logged if it ends within the grace after
		// its deadline, a tenth of the timeout: 100 ms here, time enough
		// on a loaded machine for a goroutine to wake and return.
		{name: "store honouring its deadline", status: http.StatusServiceUnavailable, timeout: time.Second,
			body: `{"status":"not_ready","failed":{"store":"timeout"}}`,
			store: func(*testing.T) m2mauth.ClientStore {
				return storeFunc(func(ctx context.Context, _ string) (*m2mauth.Client, error) {
					<-ctx.Done()
					return nil, fmt.Errorf("query: %w (%v)", ctx.Err(), dsnError)
				})
			}},
		{name: "store pinging", status: http.StatusOK, body: `{"status":"ready"}`,
			store: func(*testing.T) m2mauth.ClientStore {
				return &pingStore{ping: func(context.Context) error { return nil }}
			}},
		{name: "store ping failing", status: http.StatusServiceUnavailable,
			body:  `{"status":"not_ready","failed":{"store":"error"}}`,
			store: func(*testing.T) m2mauth.ClientStore { return &pingStore{ping: fail} }},
		{name: "signing key failing", status: http.StatusServiceUnavailable,
			body: `{"status":"not_ready","failed":{"keys":"error"}}`,
			keys: keyFuncs{
				signing: func() (*jose.JSONWebKey, error) { return nil, dsnError },
				set:     func() (*jose.JSONWebKeySet, error) { return &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}}, nil },
			}},
		{name: "verification keys failing", status: http.StatusServiceUnavailable,
			body: `{"status":"not_ready","failed":{"keys":"error"}}`,
			keys: keyFuncs{
				signing: func() (*jose.JSONWebKey, error) { return &pub, nil },
				set: func() (*jose.JSONWebKeySet, error) {
					return nil, fmt.Errorf("%w: %v", m2mauth.ErrKeysUnavailable, dsnError)
				},
			}},
		{name: "no verification key", status: http.StatusServiceUnavailable,
			body:   `{"status":"not_ready","failed":{"keys":"error"}}`,
			logged: "no verification key",
			keys: keyFuncs{
				signing: func() (*jose.JSONWebKey, error) { return &pub, nil },
				set:     func() (*jose.JSONWebKeySet, error) { return &jose.JSONWebKeySet{}, nil },
			}},
		{name: "verify-only keys", status: http.StatusOK, body: `{"status":"ready"}`,
			keys: keyFuncs{
				signing: func() (*jose.JSONWebKey, error) { return nil, m2mauth.ErrNoSigningKey },
				set:     func() (*jose.JSONWebKeySet, error) { return &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}}, nil },
			}},
		{name: "extra check passing", status: http.StatusOK, body: `{"status":"ready"}`,
			checks: map[string]func(context.Context) error{"audit": func(context.Context) error { return nil }}},
		{name: "extra check failing", status: http.StatusServiceUnavailable,
			body:   `{"status":"not_ready","failed":{"audit":"error"}}`,
			checks: map[string]func(context.Context) error{"audit": fail, "cache": func(context.Context) error { return nil }}},
		{name: "everything failing", status: http.StatusServiceUnavailable,
			body: `{"status":"not_ready","failed":{"audit":"error","keys":"error","store":"error"}}`,
			store: func(*testing.T) m2mauth.ClientStore {
				return storeFunc(func(context.Context, string) (*m2mauth.Client, error) { return nil, dsnError })
			},
			keys: keyFuncs{
				signing: func() (*jose.JSONWebKey, error) { return nil, dsnError },
				set:     func() (*jose.JSONWebKeySet, error) { return nil, dsnError },
			},
			checks: map[string]func(context.Context) error{"audit": fail}},
		{name: "HEAD not ready", method: http.MethodHead, status: http.StatusServiceUnavailable, checks: map[string]func(context.Context) error{"audit": fail}},
		{name: "POST", method: http.MethodPost, status: http.StatusMethodNotAllowed, body: `{"status":"method_not_allowed"}`},
		{name: "DELETE", method: http.MethodDelete, status: http.StatusMethodNotAllowed, body: `{"status":"method_not_allowed"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var store m2mauth.ClientStore = memstore.New()
			if tt.store != nil {
				store = tt.store(t)
			}
			var kp m2mauth.KeyProvider = keys
			if tt.keys != nil {
				kp = tt.keys
			}
			var logs syncBuffer
			timeout := 100 * time.Millisecond
			if tt.timeout != 0 {
				timeout = tt.timeout
			}
			h, err := m2mauth.NewReadinessHandler(store, kp, m2mauth.ReadinessConfig{
				Timeout: timeout, Checks: tt.checks, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			})
			require.NoError(t, err)
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			w := httptest.NewRecorder()
			start := time.Now()
			h.ServeHTTP(w, httptest.NewRequest(method, "/readyz", nil))
			elapsed := time.Since(start)

			assert.Equal(t, tt.status, w.Code)
			assert.Equal(t, "no-store", w.Header().Get("Cache-Control"))
			assert.Equal(t, "application/json", w.Header().Get("Content-Type"))
			if tt.body == "" {
				assert.Empty(t, w.Body.String())
			} else {
				assert.JSONEq(t, tt.body, w.Body.String())
			}
			if tt.status == http.StatusMethodNotAllowed {
				assert.Equal(t, "GET, HEAD", w.Header().Get("Allow"))
			}
			assert.NotContains(t, w.Body.String(), "hunter2")
			assert.NotContains(t, w.Body.String(), "postgres")
			// Every check runs at once, each within the timeout; a
			// loaded machine may add scheduling delay, never another
			// timeout's worth per check.
			assert.Less(t, elapsed, timeout+time.Second)
			if tt.status == http.StatusServiceUnavailable {
				logged := tt.logged
				if logged == "" {
					logged = "hunter2"
				}
				assert.Contains(t, logs.String(), "readiness check failed")
				// A check that answers after its probe gave up on it (a
				// loaded machine) logs its cause when it ends.
				assert.Eventually(t, func() bool { return strings.Contains(logs.String(), logged) }, 10*time.Second, time.Millisecond,
					"the cause goes to the log: %s", &logs)
			} else {
				assert.Empty(t, logs.String())
			}
			if ps, ok := store.(*pingStore); ok {
				assert.Zero(t, ps.lookups.Load(), "Ping is used instead of a lookup")
			}
		})
	}
}

// TestReadinessHangingCheckRunsOnce checks that probes arriving while a
// check hangs wait for its run rather than start more.
func TestReadinessHangingCheckRunsOnce(t *testing.T) {
	check, calls := hang(t)
	h, err := m2mauth.NewReadinessHandler(nil, readinessKeys(t), m2mauth.ReadinessConfig{
		Timeout: 20 * time.Millisecond, Logger: discardLogger(),
		Checks: map[string]func(context.Context) error{"db": check},
	})
	require.NoError(t, err)
	for range 3 {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		assert.Equal(t, http.StatusServiceUnavailable, w.Code)
		assert.JSONEq(t, `{"status":"not_ready","failed":{"db":"timeout"}}`, w.Body.String())
	}
	assert.EqualValues(t, 1, calls.Load())
}

// TestReadinessLogs: each failed run of a check is logged once as
// "readiness check failed", with its cause, whether or not a probe still
// waits for it. A probe whose caller hangs up before the check answers (a
// Kubernetes probe's 1 s timeout is shorter than the default Timeout) is
// no failure of the check's: a check that then passes in time logs
// nothing, one that then fails logs its cause, and one that answers only
// after its Timeout logs that. A probe that gives up on a check reports
// the timeout, and the check's late error follows.
func TestReadinessLogs(t *testing.T) {
	const timeout = 100 * time.Millisecond
	for _, tt := range []struct {
		name    string
		hangUp  bool          // the probe's caller hangs up once the check runs
		honours bool          // the check returns once its context ends
		after   time.Duration // how long the check takes, at least
		err     error
		failed  int    // lines "readiness check failed"
		logged  string // in the log
	}{
		{name: "hang-up, the check passes", hangUp: true},
		{name: "hang-up, the check fails", hangUp: true, err: errors.New("audit table unreachable"), failed: 1, logged: "audit table unreachable"},
		{name: "hang-up, the check passes late", hangUp: true, after: 2 * timeout, failed: 1, logged: "did not answer in time"},
		{name: "the probe gives up, the check fails late", honours: true, after: 2 * timeout, err: errors.New("dial tcp 10.0.0.5:5432: i/o timeout"),
			failed: 1, logged: "dial tcp 10.0.0.5:5432: i/o timeout"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs syncBuffer
			started, answered, served := make(chan struct{}), make(chan struct{}), make(chan struct{})
			var runs atomic.Int32
			h, err := m2mauth.NewReadinessHandler(memstore.New(), readinessKeys(t), m2mauth.ReadinessConfig{
				Timeout: timeout, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
				Checks: map[string]func(context.Context) error{"audit": func(ctx context.Context) error {
					if runs.Add(1) > 1 {
						t.Error("the check ran twice")
						return nil
					}
					defer close(answered)
					begin := time.Now()
					close(started)
					if tt.hangUp {
						<-served // the probe has ended
					}
					if tt.honours {
						<-ctx.Done()
					}
					time.Sleep(tt.after - time.Since(begin))
					return tt.err
				}},
			})
			require.NoError(t, err)
			var hangUp <-chan struct{}
			if tt.hangUp {
				hangUp = started
			}
			resp, err := getHangingUp(t, h, "", hangUp, served)
			if tt.hangUp {
				require.ErrorIs(t, err, context.Canceled)
			} else {
				require.NoError(t, err)
				assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
			}
			<-answered
			// The run logs after the check answers; what it logs last
			// is what the case expects.
			if tt.logged != "" {
				require.Eventually(t, func() bool { return strings.Contains(logs.String(), tt.logged) }, 10*time.Second, time.Millisecond)
			}
			assert.Equal(t, tt.failed, strings.Count(logs.String(), "readiness check failed"), "%s", logs.String())
			assert.NotContains(t, logs.String(), "level=WARN msg=\"m2mauth: readiness probe ended")
		})
	}
}

// TestReadinessCheckRunsAgain checks that a check that answered runs
// again at the next probe: results are not cached.
func TestReadinessCheckRunsAgain(t *testing.T) {
	var healthy atomic.Bool
	h, err := m2mauth.NewReadinessHandler(memstore.New(), readinessKeys(t), m2mauth.ReadinessConfig{
		Logger: discardLogger(),
		Checks: map[string]func(context.Context) error{"audit": func(context.Context) error {
			if healthy.Load() {
				return nil
			}
			return errors.New("audit table unreachable")
		}},
	})
	require.NoError(t, err)
	for _, tt := range []struct {
		healthy bool
		status  int
	}{{false, http.StatusServiceUnavailable}, {true, http.StatusOK}, {false, http.StatusServiceUnavailable}} {
		healthy.Store(tt.healthy)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		assert.Equal(t, tt.status, w.Code)
	}
}

func TestNewReadinessHandlerValidates(t *testing.T) {
	keys := readinessKeys(t)
	ok := func(context.Context) error { return nil }
	tests := []struct {
		name string
		keys m2mauth.KeyProvider
		cfg  m2mauth.ReadinessConfig
		want string
	}{
		{"nil keys", nil, m2mauth.ReadinessConfig{}, "nil KeyProvider"},
		{"negative timeout", keys, m2mauth.ReadinessConfig{Timeout: -time.Second}, "Timeout"},
		{"tiny timeout", keys, m2mauth.ReadinessConfig{Timeout: time.Microsecond}, "Timeout"},
		{"empty check name", keys, m2mauth.ReadinessConfig{Checks: map[string]func(context.Context) error{"": ok}}, "empty name"},
		{"check named store", keys, m2mauth.ReadinessConfig{Checks: map[string]func(context.Context) error{"store": ok}}, "taken"},
		{"check named keys", keys, m2mauth.ReadinessConfig{Checks: map[string]func(context.Context) error{"keys": ok}}, "taken"},
		{"nil check", keys, m2mauth.ReadinessConfig{Checks: map[string]func(context.Context) error{"audit": nil}}, "nil check"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := m2mauth.NewReadinessHandler(memstore.New(), tt.keys, tt.cfg)
			assert.Nil(t, h)
			assert.ErrorContains(t, err, tt.want)
		})
	}
}

// ExampleReadinessHandler serves a readiness probe beside a liveness
// one, with an extra check of the audit trail.
func ExampleReadinessHandler() {
	key, err := m2mauth.NewHS256Key("2026-11", []byte("use-32-or-more-random-bytes-here"))
	if err != nil {
		log.Fatal(err)
	}
	keys, err := m2mauth.NewStaticKeys(key)
	if err != nil {
		log.Fatal(err)
	}
	var auditDown atomic.Bool // stands in for sqlstore's auditor
	auditHealth := func() error {
		if auditDown.Load() {
			return errors.New("audit table: connection refused")
		}
		return nil
	}

	ready, err := m2mauth.NewReadinessHandler(memstore.New(), keys, m2mauth.ReadinessConfig{
		Checks: map[string]func(context.Context) error{
			"audit": func(context.Context) error { return auditHealth() },
		},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /readyz", ready)
	// Liveness: the process answers; no dependency is asked.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	})

	probe := func() {
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		fmt.Println(w.Code, w.Body.String())
	}
	probe()
	auditDown.Store(true)
	probe()
	// Output:
	// 200 {"status":"ready"}
	// 503 {"status":"not_ready","failed":{"audit":"error"}}
}
