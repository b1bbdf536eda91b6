package main

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// webhookAlert is an alert as the webhook receiver got it, with whether
// its signature verified.
type webhookAlert struct {
	Rule      string `json:"rule"`
	Severity  string `json:"severity"`
	Recovered bool   `json:"recovered"`
	ClientID  string `json:"client_id"`
	Address   string `json:"address"`
	Count     int    `json:"count"`
	signed    bool
}

// alertReceiver is an httptest server that checks each alert's signature
// with secret, as the README tells receivers to, and passes the alerts on.
func alertReceiver(t *testing.T, secret string) (*httptest.Server, <-chan webhookAlert) {
	t.Helper()
	alerts := make(chan webhookAlert, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		ts := r.Header.Get(m2mauth.WebhookTimestampHeader)
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(ts + "."))
		mac.Write(body)
		want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
		sec, err := strconv.ParseInt(ts, 10, 64)
		fresh := err == nil && time.Since(time.Unix(sec, 0)).Abs() < 5*time.Minute
		var a webhookAlert
		if json.Unmarshal(body, &a) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		a.signed = fresh && hmac.Equal([]byte(want), []byte(r.Header.Get(m2mauth.WebhookSignatureHeader)))
		select {
		case alerts <- a:
		default:
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv, alerts
}

// forwardedTokenRequest asks for a token as a TLS-terminating proxy at
// 127.0.0.1 would forward a request from addr.
func forwardedTokenRequest(t *testing.T, base, addr, id, secret string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+tokenPath, strings.NewReader("grant_type=client_credentials"))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Forwarded-For", addr)
	req.Header.Set("X-Forwarded-Proto", "https")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// scrape reads GET /metrics and returns each sample's value by its line
// up to the value: name{labels}.
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain"), resp.Header.Get("Content-Type"))
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		require.Positive(t, i, "%q", line)
		v, err := strconv.ParseFloat(line[i+1:], 64)
		require.NoError(t, err, "%q", line)
		out[line[:i]] = v
	}
	require.NoError(t, sc.Err())
	return out
}

// sample sums the samples of the metric name whose labels include every
// one of labels (each as name="value").
func sample(samples map[string]float64, name string, labels ...string) (sum float64, found bool) {
	for k, v := range samples {
		n, rest, _ := strings.Cut(k, "{")
		if n != name {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(rest, l)
		}
		if ok {
			sum, found = sum+v, true
		}
	}
	return sum, found
}

// TestServeOperations runs the server with an alert webhook and checks,
// on every configured database, what an operator sees: 30 wrong secrets
// for one client, from 30 addresses behind a trusted proxy, raise a
// signed client_failures alert; a correct token request after the
// client's learning period, from a network it has not used, raises a
// new_address alert; /metrics counts the failures and the tokens; "client
// usage" and "audit tail" read them back from the audit table, with the
// admin commands' own changes. The learning period, 7 days by default, is
// cut to a second with -alert-learning-period.
func TestServeOperations(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	for _, tdb := range testDatabases() {
		t.Run(tdb.name, func(t *testing.T) {
			db := tdb.db(t)
			global := []string{"-db", db, "-signing-key-file", newKeyFile(t)}
			// An admin command, audited in the table.
			var created struct {
				ID     string `json:"client_id"`
				Secret string `json:"client_secret"`
			}
			id := "ops-" + strconv.FormatInt(time.Now().UnixNano(), 36)
			out := cli("-db", db, "client", "create", "-id", id, "-scopes", "read:builders").ok(t)
			require.NoError(t, json.Unmarshal([]byte(out), &created))
			t.Cleanup(func() { cli("-db", db, "client", "delete", "-id", id) })

			const webhookSecret = "test-webhook-secret-0123456789abcdefghij"
			const learning = time.Second
			recv, alerts := alertReceiver(t, webhookSecret)
			t.Setenv(webhookSecretEnv, webhookSecret)
			srv := startServerWith(t, bin, http.DefaultClient, global, "-addr", "127.0.0.1:0",
				"-trusted-proxies", "127.0.0.1/32", "-alert-webhook", recv.URL, "-alert-learning-period", learning.String())
			assert.NotContains(t, srv.stderr.String(), webhookSecret)

			for i := range 30 {
				addr := fmt.Sprintf("198.51.100.%d", i+1)
				require.Equal(t, http.StatusUnauthorized, forwardedTokenRequest(t, srv.base, addr, id, "wrong-secret"), "attempt %d", i)
			}
			deadline := time.After(5 * time.Second)
			var got webhookAlert
			for got.Rule != m2mauth.RuleClientFailures {
				select {
				case got = <-alerts:
				case <-deadline:
					t.Fatalf("no client_failures alert within 5s; stderr: %s", srv.stderr)
				}
			}
			assert.True(t, got.signed, "the signature verifies")
			assert.Equal(t, id, got.ClientID)
			assert.False(t, got.Recovered)
			assert.Equal(t, "warning", got.Severity)
			assert.GreaterOrEqual(t, got.Count, 20)

			// The client's first token starts its learning period; once
			// that has passed, a token from another network is unusual.
			require.Equal(t, http.StatusOK, forwardedTokenRequest(t, srv.base, "203.0.113.9", id, created.Secret))
			time.Sleep(learning + 200*time.Millisecond)
			require.Equal(t, http.StatusOK, forwardedTokenRequest(t, srv.base, "192.0.2.77", id, created.Secret))
			deadline = time.After(5 * time.Second)
			for got.Rule != m2mauth.RuleNewAddress {
				select {
				case got = <-alerts:
				case <-deadline:
					t.Fatalf("no new_address alert within 5s; stderr: %s", srv.stderr)
				}
			}
			assert.True(t, got.signed, "the signature verifies")
			assert.Equal(t, id, got.ClientID)
			assert.False(t, got.Recovered)
			assert.Contains(t, got.Address, "192.0.2.", "the new network")

			samples := scrape(t, srv.base)
			issued, ok := sample(samples, "m2mauth_tokens_issued_total", `m2mauth_client_id="`+id+`"`)
			require.True(t, ok, "no issued tokens of %s in %v", id, samples)
			assert.Equal(t, 2.0, issued)
			failed, ok := sample(samples, "m2mauth_auth_failures_total", `m2mauth_reason="bad_secret"`)
			require.True(t, ok, "no failures in %v", samples)
			assert.Equal(t, 30.0, failed)
			fired, ok := sample(samples, "m2mauth_alerts_total", `m2mauth_alert_rule="client_failures"`)
			require.True(t, ok, "no alerts in %v", samples)
			assert.Equal(t, 1.0, fired)
			fired, ok = sample(samples, "m2mauth_alerts_total", `m2mauth_alert_rule="new_address"`)
			require.True(t, ok, "no new_address alert in %v", samples)
			assert.Equal(t, 1.0, fired)

			stopServer(t, srv) // writes the queued audit rows

			var u struct {
				ClientID          string           `json:"client_id"`
				TokensIssued      int64            `json:"tokens_issued"`
				Failures          map[string]int64 `json:"failures"`
				DistinctAddresses int64            `json:"distinct_addresses"`
			}
			line := cli("-db", db, "client", "usage", "-id", id, "-since", "1h").ok(t)
			require.NoError(t, json.Unmarshal([]byte(line), &u), "%s", line)
			assert.Equal(t, id, u.ClientID)
			assert.Equal(t, int64(2), u.TokensIssued)
			assert.Equal(t, map[string]int64{m2mauth.ReasonBadSecret: 30}, u.Failures)
			assert.Equal(t, int64(32), u.DistinctAddresses)

			tail := strings.Split(strings.TrimSpace(cli("-db", db, "audit", "tail", "-client", id, "-n", "4").ok(t)), "\n")
			require.Len(t, tail, 4)
			for i, addr := range []string{"192.0.2.77", "203.0.113.9"} {
				var issued auditLine
				require.NoError(t, json.Unmarshal([]byte(tail[i]), &issued))
				assert.Equal(t, string(m2mauth.EventTokenIssued), issued.Type, "newest first")
				assert.Equal(t, addr, issued.RemoteIP)
			}
			for _, l := range tail[2:] {
				assert.Contains(t, l, `"event":"`+string(m2mauth.EventAuthFailed)+`"`)
			}
			for _, l := range tail {
				assert.NotContains(t, l, created.Secret)
				assert.NotContains(t, l, "wrong-secret")
			}

			admin := cli("-db", db, "audit", "tail", "-type", string(m2mauth.EventClientCreated), "-client", id).ok(t)
			assert.Contains(t, admin, `"client_id":"`+id+`"`)
			assert.Contains(t, admin, `"event":"client_created"`)
			assert.NotContains(t, admin, created.Secret)
		})
	}
}

// TestOperationsCLIErrors: usage and audit tail need a SQL database.
func TestOperationsCLIErrors(t *testing.T) {
	r := cli("-db", "memory", "client", "usage", "-id", "x")
	require.Error(t, r.err)
	assert.Contains(t, r.err.Error(), "memory")
	r = cli("-db", "memory", "audit", "tail")
	require.Error(t, r.err)
	assert.Contains(t, r.err.Error(), "memory")
	r = cli("-db", filepath.Join(t.TempDir(), "x.db"), "audit", "tail", "-n", "0")
	require.Error(t, r.err)
	for _, typ := range []string{"bogus", "TOKEN_ISSUED"} {
		r = cli("-db", filepath.Join(t.TempDir(), "x.db"), "audit", "tail", "-type", typ)
		require.Error(t, r.err, "-type %s", typ)
		assert.Contains(t, r.err.Error(), "is not an event type")
		assert.Contains(t, r.err.Error(), "tokens_revoked")
		assert.Empty(t, r.stdout)
	}
	r = cli("audit", "head")
	require.ErrorIs(t, r.err, errUsage)
}

// TestServeReadiness: /readyz answers 503 naming the store while its
// table cannot be read, and 200 again after; /healthz stays 200.
func TestServeReadiness(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	db := filepath.Join(t.TempDir(), "m2mauth.db")
	srv := startServer(t, bin, "-db", db, "-signing-key-file", newKeyFile(t))
	status := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.base + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	code, body := status("/readyz")
	require.Equal(t, http.StatusOK, code, body)
	assert.JSONEq(t, `{"status":"ready"}`, body)

	sqlDB, err := sql.Open("sqlite", "file:"+db+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	defer sqlDB.Close()
	exec := func(q string) {
		t.Helper()
		_, err := sqlDB.ExecContext(t.Context(), q)
		require.NoError(t, err)
	}
	waitFor := func(want int) string {
		t.Helper()
		for i := 0; ; i++ {
			code, body := status("/readyz")
			if code == want {
				return body
			}
			require.Less(t, i, 200, "readyz still %d: %s", code, body)
			time.Sleep(50 * time.Millisecond)
		}
	}
	exec("ALTER TABLE m2mauth_clients RENAME TO m2mauth_clients_away")
	body = waitFor(http.StatusServiceUnavailable)
	assert.JSONEq(t, `{"status":"not_ready","failed":{"store":"error"}}`, body)
	code, _ = status("/healthz")
	assert.Equal(t, http.StatusOK, code, "liveness does not ask the database")

	exec("ALTER TABLE m2mauth_clients_away RENAME TO m2mauth_clients")
	waitFor(http.StatusOK)
	stopServer(t, srv)
}

// TestServeAlertWebhookFlags: the webhook needs its secret, which is
// never repeated in errors, and an https URL off this machine.
func TestServeAlertWebhookFlags(t *testing.T) {
	const secret = "a-webhook-secret-of-at-least-32-bytes-0123"
	tests := []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"no secret", "", []string{"-alert-webhook", "https://alerts.example.com/hook"}, "needs a secret"},
		{"secret without webhook", "", []string{"-alert-webhook-secret", secret}, "without -alert-webhook"},
		{"short secret", "", []string{"-alert-webhook", "https://alerts.example.com/hook", "-alert-webhook-secret", "short"}, "32 bytes"},
		{"plain http off this machine", secret, []string{"-alert-webhook", "http://alerts.example.com/hook"}, "-alert-webhook"},
		{"no learning period", "", []string{"-alert-learning-period", "0s"}, "-alert-learning-period"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(webhookSecretEnv, tt.env)
			r := cli(append([]string{"-db", "memory", "serve", "-addr", "127.0.0.1:0"}, tt.args...)...)
			require.Error(t, r.err)
			assert.Contains(t, r.err.Error(), tt.want)
			assert.NotContains(t, r.err.Error()+r.stderr+r.stdout, secret)
		})
	}
}

// TestServeNewAddressAfterRestart: a server starting on a database
// learns from the audit table which networks its clients got tokens
// from, so a restart does not start the new_address rule's learning
// over: a client first seen 36h ago (before this server started, with a
// learning period of 24h) is past its learning, a network it used 2h
// ago is known, and a network it never used raises the alert at once.
func TestServeNewAddressAfterRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	for _, tdb := range testDatabases() {
		t.Run(tdb.name, func(t *testing.T) {
			db := tdb.db(t)
			id := newClientID("svc")
			secret := createClient(t, db, id)
			// What an earlier server recorded.
			d, err := parseDB(db)
			require.NoError(t, err)
			b, err := openBackend(t.Context(), d, backendOptions{pool: defaultPool(), existing: true})
			require.NoError(t, err)
			now := time.Now()
			for _, ago := range []time.Duration{36 * time.Hour, 2 * time.Hour} {
				b.auditor.Audit(t.Context(), m2mauth.AuditEvent{Time: now.Add(-ago), Type: m2mauth.EventTokenIssued, ClientID: id, RemoteIP: "203.0.113.9"})
			}
			require.NoError(t, b.close())

			const webhookSecret = "test-webhook-secret-0123456789abcdefghij"
			recv, alerts := alertReceiver(t, webhookSecret)
			t.Setenv(webhookSecretEnv, webhookSecret)
			srv := startServerWith(t, bin, http.DefaultClient, []string{"-db", db, "-signing-key-file", newKeyFile(t)}, "-addr", "127.0.0.1:0",
				"-trusted-proxies", "127.0.0.1/32", "-alert-webhook", recv.URL, "-alert-learning-period", "24h")
			require.Eventually(t, func() bool {
				return strings.Contains(srv.stderr.String(), "learnt the addresses clients used from the audit table")
			}, 10*time.Second, 20*time.Millisecond, "%s", srv.stderr)

			require.Equal(t, http.StatusOK, forwardedTokenRequest(t, srv.base, "203.0.113.10", id, secret)) // known network
			require.Equal(t, http.StatusOK, forwardedTokenRequest(t, srv.base, "192.0.2.77", id, secret))   // new network
			deadline := time.After(10 * time.Second)
			for {
				select {
				case a := <-alerts:
					if a.Rule != m2mauth.RuleNewAddress || a.ClientID != id {
						continue
					}
					assert.Equal(t, "192.0.2.0/24", a.Address)
					return
				case <-deadline:
					t.Fatalf("no new_address alert for %s from a network it never used; log: %s", id, srv.stderr)
				}
			}
		})
	}
}
