package main

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// revocationRefresh is the -revocation-refresh of the tests' servers:
// short, so that the tests are quick; they wait for a revocation with a
// deadline far longer, so that a loaded machine does not fail them.
const revocationRefresh = "200ms"

// revocationDeadline bounds the wait for a revocation to take effect.
const revocationDeadline = 15 * time.Second

// newClientID returns a client id no other test uses, even in a shared
// database.
func newClientID(prefix string) string {
	var suffix [4]byte
	rand.Read(suffix[:])
	return prefix + "-" + hex.EncodeToString(suffix[:])
}

// createClient registers id with "client create" and the extra flags,
// and returns its secret. The client is deleted when the test ends.
func createClient(t *testing.T, db, id string, flags ...string) string {
	t.Helper()
	out := cli(append([]string{"-db", db, "client", "create", "-id", id, "-scopes", "read:builders"}, flags...)...).ok(t)
	t.Cleanup(func() { cli("-db", db, "client", "delete", "-id", id) })
	var created struct {
		Secret string `json:"client_secret"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &created))
	require.NotEmpty(t, created.Secret)
	return created.Secret
}

// waitStatus calls url with token until it answers want, within
// revocationDeadline, and returns the body of that answer.
func waitStatus(t *testing.T, url, token string, want int) string {
	t.Helper()
	deadline := time.Now().Add(revocationDeadline)
	for {
		code, _, body := get(t, url, token)
		if code == want {
			return body
		}
		require.True(t, time.Now().Before(deadline), "%s still answers %d, not %d, after %v: %s", url, code, want, revocationDeadline, body)
		time.Sleep(50 * time.Millisecond)
	}
}

// postToken POSTs token to the endpoint as the client id, with HTTP
// Basic authentication (RFC 6749 §2.3.1), and returns the status and the
// body.
func postToken(t *testing.T, endpoint, id, secret, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(url.Values{"token": {token}}.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, body
}

// introspect asks the server at base about token, as the client id.
func introspect(t *testing.T, base, id, secret, token string) (int, map[string]any) {
	t.Helper()
	code, body := postToken(t, base+introspectPath, id, secret, token)
	var out map[string]any
	require.NoError(t, json.Unmarshal(body, &out), "%s", body)
	return code, out
}

// TestRevocationFlags: -revocation-max-stale defaults to six refreshes,
// and at least 30s, so that a short refresh makes revocations arrive
// sooner without making the server give up sooner.
func TestRevocationFlags(t *testing.T) {
	tests := []struct {
		args              []string
		refresh, maxStale time.Duration
	}{
		{nil, 5 * time.Second, 30 * time.Second},
		{[]string{"-revocation-refresh", "200ms"}, 200 * time.Millisecond, 30 * time.Second},
		{[]string{"-revocation-refresh", "1m"}, time.Minute, 6 * time.Minute},
		{[]string{"-revocation-refresh", "1s", "-revocation-max-stale", "2s"}, time.Second, 2 * time.Second},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stderr strings.Builder
			f, err := parseServeFlags(tc.args, &stderr)
			require.NoError(t, err, stderr.String())
			assert.Equal(t, tc.refresh, f.revocationRefresh)
			assert.Equal(t, tc.maxStale, f.revocationMaxStale)
		})
	}
}

// TestServeRevocation takes tokens back on a running server, on every
// database, and checks that the demo API refuses them within
// -revocation-refresh while new tokens work: "client revoke-tokens";
// one token revoked by its client at POST /oauth/revoke (RFC 7009);
// "client disable" then "client enable". Introspection (RFC 7662) sees
// the same revocations, and answers only the clients allowed to ask.
func TestServeRevocation(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	for _, tdb := range testDatabases() {
		t.Run(tdb.name, func(t *testing.T) {
			db := tdb.db(t)
			id := newClientID("rev")
			secret := createClient(t, db, id)
			checker := newClientID("checker")
			checkerSecret := createClient(t, db, checker, "-introspect")
			srv := startServerWith(t, bin, http.DefaultClient, []string{"-db", db, "-signing-key-file", newKeyFile(t)},
				"-addr", "127.0.0.1:0", "-revocation-refresh", revocationRefresh)
			assert.Contains(t, waitOutput(t, srv, "-revocation-refresh"), "refused within 200ms (-revocation-refresh)")
			api := srv.base + "/api/builders"
			client := func(args ...string) string {
				t.Helper()
				return cli(append([]string{"-db", db, "client"}, args...)...).ok(t)
			}

			first := accessToken(t, srv.base, id, secret)
			code, _, body := get(t, api, first)
			require.Equal(t, http.StatusOK, code, body)

			// Every token of the client, from the admin CLI, while the
			// server runs.
			client("revoke-tokens", "-id", id)
			body = waitStatus(t, api, first, http.StatusUnauthorized)
			assert.JSONEq(t, `{"error":"invalid_token","error_description":"token has been revoked"}`, body)
			second := accessToken(t, srv.base, id, secret)
			code, _, body = get(t, api, second)
			assert.Equal(t, http.StatusOK, code, "a token issued after the revocation works: %s", body)

			// One token, by its client (RFC 7009 §2.1); the others of the
			// client still work.
			third := accessToken(t, srv.base, id, secret)
			code, raw := postToken(t, srv.base+revokePath, id, secret, second)
			require.Equal(t, http.StatusOK, code, "%s", raw)
			assert.JSONEq(t, `{}`, string(raw))
			waitStatus(t, api, second, http.StatusUnauthorized)
			code, _, body = get(t, api, third)
			assert.Equal(t, http.StatusOK, code, "another token of the client: %s", body)

			// Introspection (RFC 7662 §2.2): the members of an active
			// token, and only "active" for a revoked one.
			code, md := introspect(t, srv.base, checker, checkerSecret, third)
			require.Equal(t, http.StatusOK, code, "%v", md)
			assert.Equal(t, true, md["active"])
			assert.Equal(t, id, md["client_id"])
			assert.Equal(t, id, md["sub"])
			assert.Equal(t, "read:builders", md["scope"])
			assert.Equal(t, "Bearer", md["token_type"])
			assert.Equal(t, defaultIssuer, md["iss"])
			assert.Contains(t, []any{defaultAudience, []any{defaultAudience}}, md["aud"])
			assert.NotEmpty(t, md["jti"])
			for _, claim := range []string{"exp", "iat", "nbf"} {
				assert.IsType(t, float64(0), md[claim], claim)
			}
			for _, tok := range []string{first, second, "not-a-token"} {
				code, md = introspect(t, srv.base, checker, checkerSecret, tok)
				assert.Equal(t, http.StatusOK, code)
				assert.Equal(t, map[string]any{"active": false}, md)
			}
			// A client without -introspect may not ask about another
			// client's token: it is inactive to it (RFC 7662 §2.2).
			checkerToken := accessToken(t, srv.base, checker, checkerSecret)
			code, md = introspect(t, srv.base, id, secret, checkerToken)
			assert.Equal(t, http.StatusOK, code)
			assert.Equal(t, map[string]any{"active": false}, md)
			// Nor may the checker, once "client update" takes it away.
			client("update", "-id", checker, "-introspect=false")
			code, md = introspect(t, srv.base, checker, checkerSecret, third)
			assert.Equal(t, http.StatusOK, code)
			assert.Equal(t, map[string]any{"active": false}, md)

			// Disabling revokes the tokens; enabling lets the client get
			// new ones, and the old stay refused.
			client("disable", "-id", id)
			waitStatus(t, api, third, http.StatusUnauthorized)
			resp, raw := tokenRequest(t, http.DefaultClient, srv.base, id, secret)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "a disabled client gets no token: %s", raw)
			client("enable", "-id", id)
			fourth := accessToken(t, srv.base, id, secret)
			code, _, body = get(t, api, fourth)
			assert.Equal(t, http.StatusOK, code, body)
			code, _, _ = get(t, api, third)
			assert.Equal(t, http.StatusUnauthorized, code, "revoked when the client was disabled")

			v := decodeView(t, client("show", "-id", id))
			assert.False(t, v.CanIntrospect)
			require.NotNil(t, v.TokensRevokedAt, "disable set the watermark")
			assert.WithinDuration(t, time.Now(), *v.TokensRevokedAt, time.Minute)

			// The admin commands' revocations are in the audit table, with
			// their reasons.
			var reasons []string
			for _, line := range strings.Split(strings.TrimSpace(cli("-db", db, "audit", "tail", "-client", id, "-type", string(m2mauth.EventTokensRevoked)).ok(t)), "\n") {
				var e auditLine
				require.NoError(t, json.Unmarshal([]byte(line), &e), "%s", line)
				reasons = append(reasons, e.Reason)
			}
			assert.Equal(t, []string{"disabled", "revoke"}, reasons, "newest first")
			logs := srv.stderr.String()
			for _, tok := range []string{first, second, third, fourth, checkerToken} {
				assert.NotContains(t, logs, tok, "no token in the log")
			}
			assert.NotContains(t, logs, secret)
		})
	}
}

// TestServeReplicasRevocation: two servers sharing one database, as
// replicas behind a load balancer would. A token one of them issued and
// its client revoked there (RFC 7009) is refused by the other within
// -revocation-refresh; the client's other token still works on both.
func TestServeReplicasRevocation(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	for _, tdb := range testDatabases() {
		t.Run(tdb.name, func(t *testing.T) {
			db := tdb.db(t)
			id := newClientID("replica")
			secret := createClient(t, db, id)
			global := []string{"-db", db, "-signing-key-file", newKeyFile(t)}
			replica := func() *server {
				// Each process keeps its own audit spill file.
				return startServerWith(t, bin, http.DefaultClient, global, "-addr", "127.0.0.1:0",
					"-revocation-refresh", revocationRefresh, "-audit-spill", filepath.Join(t.TempDir(), "audit.spill"))
			}
			a, b := replica(), replica()

			revoked := accessToken(t, a.base, id, secret)
			kept := accessToken(t, a.base, id, secret)
			code, _, body := get(t, b.base+"/api/builders", revoked)
			require.Equal(t, http.StatusOK, code, "the replicas share the key: %s", body)

			code, raw := postToken(t, a.base+revokePath, id, secret, revoked)
			require.Equal(t, http.StatusOK, code, "%s", raw)
			waitStatus(t, b.base+"/api/builders", revoked, http.StatusUnauthorized)
			waitStatus(t, a.base+"/api/builders", revoked, http.StatusUnauthorized)
			for _, s := range []*server{a, b} {
				code, _, body := get(t, s.base+"/api/builders", kept)
				assert.Equal(t, http.StatusOK, code, body)
			}
		})
	}
}

// TestServeReplicasStartTogether starts three servers at once on a
// database without the demo client: every one comes up, one of them
// creates the demo client and shows its secret, the others use it, and
// the secret gets a token from each.
func TestServeReplicasStartTogether(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	for _, tdb := range testDatabases() {
		t.Run(tdb.name, func(t *testing.T) {
			db := tdb.db(t)
			global := []string{"-db", db, "-signing-key-file", newKeyFile(t)}
			// On a shared database the demo client of an earlier test may
			// exist; it may also not. Deleted, and its deletion forgotten
			// (a deleted demo client is not created again), it is as on a
			// new database.
			_ = exec.Command(bin, append(slices.Clip(global), "client", "delete", "-id", "demo-client")...).Run()
			forgetDemoDeletion(t, db)
			var servers []*server
			for range 3 {
				servers = append(servers, spawnCommand(t, bin, http.DefaultClient, append(slices.Clip(global), "serve", "-addr", "127.0.0.1:0",
					"-audit-spill", filepath.Join(t.TempDir(), "audit.spill"))...))
			}
			var secrets []string
			for _, s := range servers {
				s.await(t)
				if secret, ok := demoSecret(t, s); ok {
					secrets = append(secrets, secret)
				} else {
					require.Contains(t, s.stdout.String(), "Using the existing database")
				}
			}
			require.Len(t, secrets, 1, "one server creates the demo client")
			for _, s := range servers {
				accessToken(t, s.base, "demo-client", secrets[0])
			}
		})
	}
}

// forgetDemoDeletion removes from the audit table of db the record that
// the demo client was deleted.
func forgetDemoDeletion(t *testing.T, db string) {
	t.Helper()
	d, err := parseDB(db)
	require.NoError(t, err)
	if !d.server() {
		return // a new file
	}
	conn, err := sql.Open(d.driver, d.dsn)
	require.NoError(t, err)
	defer conn.Close()
	q := "DELETE FROM m2mauth_audit_events WHERE client_id = ? AND event_type = ?"
	if d.dialect == sqlstore.Postgres {
		q = "DELETE FROM m2mauth_audit_events WHERE client_id = $1 AND event_type = $2"
	}
	_, err = conn.ExecContext(t.Context(), q, demoClientID, string(m2mauth.EventClientDeleted))
	require.NoError(t, err)
}

// TestServeStaleRevocations: a server that cannot read the revocations
// for -revocation-max-stale refuses every token with 503 (it cannot tell
// a revoked token from a good one) and leaves the rotation (/readyz),
// and serves again once it can read them.
func TestServeStaleRevocations(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	db := filepath.Join(t.TempDir(), "m2mauth.db")
	id := newClientID("stale")
	secret := createClient(t, db, id)
	srv := startServerWith(t, bin, http.DefaultClient, []string{"-db", db, "-signing-key-file", newKeyFile(t)},
		"-addr", "127.0.0.1:0", "-revocation-refresh", "100ms", "-revocation-max-stale", "1s")
	api := srv.base + "/api/builders"
	tok := accessToken(t, srv.base, id, secret)
	waitStatus(t, api, tok, http.StatusOK)

	sqlDB, err := sql.Open("sqlite", "file:"+db+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	defer sqlDB.Close()
	exec := func(q string) {
		t.Helper()
		_, err := sqlDB.ExecContext(t.Context(), q)
		require.NoError(t, err)
	}
	exec("ALTER TABLE m2mauth_revocation_state RENAME TO m2mauth_revocation_state_away")
	body := waitStatus(t, api, tok, http.StatusServiceUnavailable)
	assert.Contains(t, body, `"error":"server_error"`)
	waitStatus(t, srv.base+"/readyz", "", http.StatusServiceUnavailable)
	code, _, body := get(t, srv.base+"/readyz", "")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, `"revocations":"error"`)

	exec("ALTER TABLE m2mauth_revocation_state_away RENAME TO m2mauth_revocation_state")
	waitStatus(t, api, tok, http.StatusOK)
	waitStatus(t, srv.base+"/readyz", "", http.StatusOK)
	stopServer(t, srv)
}

// TestServeRevokedAtOnce: on a database, a token its client revoked at
// POST /oauth/revoke is refused by the server that answered the
// revocation from its next request on, with the default
// -revocation-refresh of 5s: the API answers 401 and introspection
// {"active":false} (RFC 7009 §2.2: 200 once "the token has been revoked";
// RFC 7662 §2.2), while the client's other token stays active.
func TestServeRevokedAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	for _, tdb := range testDatabases() {
		t.Run(tdb.name, func(t *testing.T) {
			db := tdb.db(t)
			id := newClientID("rev")
			secret := createClient(t, db, id)
			checker := newClientID("checker")
			checkerSecret := createClient(t, db, checker, "-introspect")
			srv := startServerWith(t, bin, http.DefaultClient, []string{"-db", db, "-signing-key-file", newKeyFile(t)},
				"-addr", "127.0.0.1:0")
			assert.Contains(t, waitOutput(t, srv, "-revocation-refresh"), "refused within 5s (-revocation-refresh)")
			api := srv.base + "/api/builders"

			revoked := accessToken(t, srv.base, id, secret)
			kept := accessToken(t, srv.base, id, secret)
			for _, tok := range []string{revoked, kept} {
				code, md := introspect(t, srv.base, checker, checkerSecret, tok)
				require.Equal(t, http.StatusOK, code)
				require.Equal(t, true, md["active"])
			}
			code, raw := postToken(t, srv.base+revokePath, id, secret, revoked)
			require.Equal(t, http.StatusOK, code, "%s", raw)

			code, _, body := get(t, api, revoked)
			assert.Equal(t, http.StatusUnauthorized, code, body)
			code, md := introspect(t, srv.base, checker, checkerSecret, revoked)
			assert.Equal(t, http.StatusOK, code)
			assert.Equal(t, map[string]any{"active": false}, md)
			code, _, body = get(t, api, kept)
			assert.Equal(t, http.StatusOK, code, body)
			code, md = introspect(t, srv.base, checker, checkerSecret, kept)
			assert.Equal(t, http.StatusOK, code)
			assert.Equal(t, true, md["active"])
		})
	}
}

// TestServeRevocationMemory: with -db memory the API reads the store's
// own revocations, so a token revoked at POST /oauth/revoke (RFC 7009
// §2.1) is refused by the very next request.
func TestServeRevocationMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	srv := startServer(t, bin, "-db", "memory")
	out := waitOutput(t, srv, "/api/builders")
	assert.Contains(t, out, "refused at once")
	_, secret, ok := strings.Cut(out, "client_secret: ")
	require.True(t, ok, out)
	secret, _, _ = strings.Cut(strings.TrimSpace(secret), "\n")
	api := srv.base + "/api/builders"

	revoked := accessToken(t, srv.base, demoClientID, secret)
	kept := accessToken(t, srv.base, demoClientID, secret)
	code, _, body := get(t, api, revoked)
	require.Equal(t, http.StatusOK, code, body)
	code, raw := postToken(t, srv.base+revokePath, demoClientID, secret, revoked)
	require.Equal(t, http.StatusOK, code, "%s", raw)
	code, _, body = get(t, api, revoked)
	assert.Equal(t, http.StatusUnauthorized, code, body)
	code, _, body = get(t, api, kept)
	assert.Equal(t, http.StatusOK, code, body)
	code, md := introspect(t, srv.base, demoClientID, secret, kept)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, map[string]any{"active": false}, md, "the demo client may not introspect: the token is inactive to it (RFC 7662 §2.2)")
}
