package main

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// keyLine is a line of "key list", "key rotate" or "key revoke".
type keyLine struct {
	KID        string     `json:"kid"`
	Alg        string     `json:"alg"`
	Generation int64      `json:"generation"`
	State      string     `json:"state"`
	Published  time.Time  `json:"published_at"`
	Active     time.Time  `json:"active_at"`
	Retire     *time.Time `json:"retire_at"`
	Delete     *time.Time `json:"delete_at"`
	Revoked    *time.Time `json:"revoked_at"`
	ActiveIn   string     `json:"active_in"`
}

// decodeKeys reads the JSON lines of a key command and checks that they
// carry only the documented fields: never key material.
func decodeKeys(t *testing.T, out string) []keyLine {
	t.Helper()
	var keys []keyLine
	for line := range strings.Lines(out) {
		var fields map[string]json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(line), &fields), "%q", line)
		for k := range fields {
			assert.Contains(t, []string{"kid", "alg", "generation", "state", "published_at", "active_at", "retire_at", "delete_at", "revoked_at", "active_in"}, k, "in %s", line)
		}
		var k keyLine
		require.NoError(t, json.Unmarshal([]byte(line), &k))
		keys = append(keys, k)
	}
	return keys
}

// keyCLI runs a key command with the global flags in this process and
// returns its lines.
func keyCLI(t *testing.T, global []string, args ...string) []keyLine {
	t.Helper()
	return decodeKeys(t, cli(append(append(slices.Clip(global), "key"), args...)...).ok(t))
}

// TestKeyCommands administers the managed keys of a SQLite database
// without a server: list leaves a database without keys alone; rotate
// makes the first key and publishes the next; revoke; every change is in
// the audit table; and rotate-kek reseals every key under the new KEK,
// after which the old KEK alone no longer opens them.
func TestKeyCommands(t *testing.T) {
	db := filepath.Join(t.TempDir(), "m2mauth.db")
	kekA, kekB := newKEK(t), newKEK(t)
	t.Setenv(kekEnv, kekA)

	r := cli("-db", db, "key", "list")
	require.ErrorContains(t, r.err, "no such database file", "a mistyped path is not a new database")
	assert.NoFileExists(t, db)
	createClients(t, db, 1)
	r = cli("-db", db, "key", "list")
	require.NoError(t, r.err)
	assert.Empty(t, r.stdout)
	assert.Contains(t, r.stderr, "no managed signing keys yet")
	assert.Empty(t, keyCLI(t, []string{"-db", db}, "list"), "listing makes no key")

	rotated := keyCLI(t, []string{"-db", db}, "rotate")
	require.Len(t, rotated, 1)
	next := rotated[0]
	assert.Equal(t, int64(2), next.Generation, "the first key is made, then the next published")
	assert.Equal(t, "published", next.State)
	assert.Equal(t, "ES256", next.Alg)
	assert.Equal(t, 10*time.Minute, next.Active.Sub(next.Published), "2 × the default -jwks-max-age")
	assert.Equal(t, "10m0s", next.ActiveIn)

	keys := keyCLI(t, []string{"-db", db}, "list")
	require.Len(t, keys, 2)
	first := keys[0]
	assert.Equal(t, int64(1), first.Generation)
	assert.Equal(t, "active", first.State)
	require.NotNil(t, first.Retire)
	assert.Equal(t, next.Active, *first.Retire, "retires when the next key signs")
	require.NotNil(t, first.Delete)
	assert.Equal(t, next.Active.Add(24*time.Hour+5*time.Minute), *first.Delete, "once every token it signed has expired")
	assert.Nil(t, first.Revoked)
	assert.Equal(t, next.KID, keys[1].KID)
	assert.Empty(t, keys[1].ActiveIn, "only rotate says when")

	revoked := keyCLI(t, []string{"-db", db}, "revoke", "-kid", next.KID)
	require.Len(t, revoked, 1)
	assert.Equal(t, "revoked", revoked[0].State)
	require.NotNil(t, revoked[0].Revoked)

	events := cli("-db", db, "audit", "tail", "-type", "key_revoked").ok(t)
	assert.Contains(t, events, `"reason":"`+next.KID+`"`, "the admin commands are audited")
	events = cli("-db", db, "audit", "tail", "-type", "key_published").ok(t)
	assert.Equal(t, 2, strings.Count(events, `"event":"key_published"`), events)

	// The KEK rotation.
	t.Setenv(newKEKEnv, kekB)
	r = cli("-db", db, "key", "rotate-kek")
	require.NoError(t, r.err, r.stderr)
	var resealed struct {
		N        int    `json:"resealed"`
		KEK      string `json:"kek"`
		Previous string `json:"previous_kek"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &resealed), r.stdout)
	assert.Equal(t, 2, resealed.N, "the revoked key too, since it opens")
	assert.Len(t, resealed.KEK, 16)
	assert.Len(t, resealed.Previous, 16)
	assert.NotEqual(t, resealed.KEK, resealed.Previous)
	assert.Contains(t, r.stderr, "resealed 2 signing keys under KEK "+resealed.KEK)
	for _, kek := range []string{kekA, kekB} {
		assert.NotContains(t, r.stdout+r.stderr, kek)
	}

	t.Setenv(newKEKEnv, "")
	r = cli("-db", db, "key", "list")
	require.Error(t, r.err, "the old KEK alone opens nothing")
	assert.Contains(t, r.err.Error(), "with KEK "+resealed.Previous+" from $M2MAUTH_KEK")
	assert.Contains(t, r.err.Error(), "key sealed under KEK "+resealed.KEK+", which is not configured")

	t.Setenv(kekEnv, kekB)
	keys = keyCLI(t, []string{"-db", db}, "list")
	require.Len(t, keys, 2)
	assert.Equal(t, first.KID, keys[0].KID, "the same keys")
	t.Setenv(oldKEKEnv, kekA)
	assert.Len(t, keyCLI(t, []string{"-db", db}, "list"), 2, "the new KEK with the old one as previous")
}

// TestKeyCommandErrors: mistakes print usage and exit 2; a missing
// database, KEK or key exits 1 with a message saying what to do.
func TestKeyCommandErrors(t *testing.T) {
	db := filepath.Join(t.TempDir(), "m.db")
	createClients(t, db, 1)
	kek := newKEK(t)
	tests := []struct {
		name string
		env  map[string]string
		args []string
		code int
		msg  string
	}{
		{"no command", nil, []string{"-db", db, "key"}, 2, ""},
		{"unknown command", nil, []string{"-db", db, "key", "frobnicate"}, 2, ""},
		{"revoke without a kid", map[string]string{kekEnv: kek}, []string{"-db", db, "key", "revoke"}, 2, ""},
		{"a stray argument", map[string]string{kekEnv: kek}, []string{"-db", db, "key", "list", "all"}, 2, ""},
		{"no KEK", nil, []string{"-db", db, "key", "list"}, 1, "$M2MAUTH_KEK is not set"},
		{"a bad KEK", map[string]string{kekEnv: "c2hvcnQ="}, []string{"-db", db, "key", "rotate"}, 1, "$M2MAUTH_KEK: m2mauth: the KEK decodes to 5 bytes, not 32"},
		{"memory", map[string]string{kekEnv: kek}, []string{"-db", "memory", "key", "list"}, 1, "-db memory keeps none"},
		{"an unknown kid", map[string]string{kekEnv: kek}, []string{"-db", db, "key", "revoke", "-kid", "nope"}, 1, `no signing key "nope": "key list" shows the kids`},
		{"rotate-kek without the new KEK", map[string]string{kekEnv: kek}, []string{"-db", db, "key", "rotate-kek"}, 1, "reads the new KEK from $M2MAUTH_NEW_KEK"},
		{"rotate-kek to the same KEK", map[string]string{kekEnv: kek, newKEKEnv: kek}, []string{"-db", db, "key", "rotate-kek"}, 1, "$M2MAUTH_NEW_KEK holds the KEK that $M2MAUTH_KEK holds"},
		{"rotate-kek to a bad KEK", map[string]string{kekEnv: kek, newKEKEnv: "nope"}, []string{"-db", db, "key", "rotate-kek"}, 1, "$M2MAUTH_NEW_KEK: m2mauth:"},
		{"a delay shorter than the JWKS is cached", map[string]string{kekEnv: kek}, []string{"-db", db, "-key-propagation-delay", "1s", "key", "rotate"}, 1, "-key-propagation-delay 1s is shorter than -jwks-max-age 5m0s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			r := cli(tc.args...)
			require.Error(t, r.err)
			assert.Equal(t, tc.code, exitCode(r.err))
			assert.Empty(t, r.stdout)
			if tc.msg != "" {
				assert.Contains(t, r.err.Error(), tc.msg)
			}
			assert.NotContains(t, r.err.Error()+r.stderr, kek)
		})
	}
	t.Setenv(kekEnv, kek)
	// A schedule that a server accepts with a short -key-refresh (a
	// serve flag) is accepted by the key commands, as the banner prints
	// them.
	r := cli("-db", db, "-key-propagation-delay", "5m10s", "key", "list")
	require.NoError(t, r.err, "%s", r.stderr)

	// None of them wrote a key: a database without keys is left so.
	r = cli("-db", db, "key", "list")
	require.NoError(t, r.err)
	assert.Empty(t, r.stdout)
	assert.Contains(t, r.stderr, "no managed signing keys yet")
}

// resetManagedKeys deletes the managed keys of a shared test database,
// before the test and after it, so that keys sealed under another
// test's KEK do not stop its servers. db must be migrated.
func resetManagedKeys(t *testing.T, db string) {
	t.Helper()
	d, err := parseDB(db)
	require.NoError(t, err)
	conn, err := sql.Open(d.driver, d.dsn)
	require.NoError(t, err)
	reset := func() error {
		for _, table := range []string{"m2mauth_key_events", "m2mauth_signing_keys"} {
			if _, err := conn.Exec("DELETE FROM " + table); err != nil {
				return err
			}
		}
		return nil
	}
	require.NoError(t, reset())
	t.Cleanup(func() {
		assert.NoError(t, reset())
		conn.Close()
	})
}

// jwksKIDs returns the kids of the key set the server at base publishes.
func jwksKIDs(t *testing.T, base string) []string {
	t.Helper()
	_, body := fetch(t, base+jwksPath, nil)
	var set jose.JSONWebKeySet
	require.NoError(t, json.Unmarshal(body, &set), "%s", body)
	var kids []string
	for _, k := range set.Keys {
		require.True(t, k.IsPublic(), "no private material in the JWKS")
		kids = append(kids, k.KeyID)
	}
	return kids
}

// verifiedBy checks tok with the key the server at base publishes under
// its kid, and returns the kid.
func verifiedBy(t *testing.T, base, tok string) string {
	t.Helper()
	kid, _ := tokenHeader(t, tok)["kid"].(string)
	_, body := fetch(t, base+jwksPath, nil)
	var set jose.JSONWebKeySet
	require.NoError(t, json.Unmarshal(body, &set))
	keys := set.Key(kid)
	require.Len(t, keys, 1, "kid %s in %s", kid, body)
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256})
	require.NoError(t, err)
	var claims jwt.Claims
	require.NoError(t, parsed.Claims(keys[0].Key, &claims), "the published key verifies the token")
	return kid
}

// tokenKID gets a token from the server at base and returns it and the
// kid that signed it.
func tokenKID(t *testing.T, base, id, secret string) (string, string) {
	t.Helper()
	tok := accessToken(t, base, id, secret)
	kid, _ := tokenHeader(t, tok)["kid"].(string)
	return tok, kid
}

// waitUntil polls cond, boundedly, until it holds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(revocationDeadline)
	for !cond() {
		require.True(t, time.Now().Before(deadline), "%s: not within %v", what, revocationDeadline)
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServeManagedKeys runs servers with $M2MAUTH_KEK on every database,
// as replicas sharing it: they sign with the one key "key list" shows as
// active and publish it in the JWKS; a key from "key rotate" is in every
// JWKS within -key-refresh but signs only from its activation, after
// -key-propagation-delay, while tokens of the old key still verify; a
// revoked key leaves the JWKS and its tokens are refused. Then the KEK
// is rotated without downtime: a server with the new KEK and the old one
// as previous, "key rotate-kek", and a server with the new KEK alone,
// which signs and verifies with the same keys; the old KEK alone stops
// serve, naming it.
func TestServeManagedKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	for _, tdb := range testDatabases() {
		t.Run(tdb.name, func(t *testing.T) {
			db := tdb.db(t)
			id := newClientID("keys")
			secret := createClient(t, db, id) // and migrates
			resetManagedKeys(t, db)
			kekA, kekB := newKEK(t), newKEK(t)
			t.Setenv(kekEnv, kekA)
			global := []string{"-db", db, "-jwks-max-age", "1s", "-key-propagation-delay", "2s"}
			replica := func() *server {
				return startServerWith(t, bin, http.DefaultClient, global, "-addr", "127.0.0.1:0",
					"-key-refresh", "100ms", "-audit-spill", filepath.Join(t.TempDir(), "audit.spill"))
			}
			a, b := replica(), replica()
			out := waitOutput(t, a, "Signing keys: ")
			assert.Contains(t, out, "Signing keys: managed in the database, KEK ")
			assert.Contains(t, out, ", rotating every 2160h (90 days), propagation delay 2s, new keys ES256.")
			assert.Contains(t, a.stderr.String(), `"msg":"signing keys: managed in the database, KEK `)

			keys := keyCLI(t, global, "list")
			require.Len(t, keys, 1)
			first := keys[0]
			assert.Equal(t, "active", first.State)
			tokA, kid := tokenKID(t, a.base, id, secret)
			assert.Equal(t, first.KID, kid, "the active key signs")
			_, kid = tokenKID(t, b.base, id, secret)
			assert.Equal(t, first.KID, kid, "the replicas sign with the same key")
			assert.Equal(t, first.KID, verifiedBy(t, b.base, tokA))
			code, _, body := get(t, b.base+"/api/builders", tokA)
			assert.Equal(t, http.StatusOK, code, body)

			// Publish before sign.
			rotated := keyCLI(t, global, "rotate")
			require.Len(t, rotated, 1)
			next := rotated[0]
			assert.Equal(t, "published", next.State)
			assert.Equal(t, 2*time.Second, next.Active.Sub(next.Published))
			for _, s := range []*server{a, b} {
				waitUntil(t, "the new key in the JWKS", func() bool { return slices.Contains(jwksKIDs(t, s.base), next.KID) })
				_, kid := tokenKID(t, s.base, id, secret)
				if time.Now().Before(next.Active) {
					assert.Equal(t, first.KID, kid, "the new key does not sign before its activation")
				}
			}
			var tokNext string
			for _, s := range []*server{a, b} {
				waitUntil(t, "the new key signing", func() bool {
					tok, kid := tokenKID(t, s.base, id, secret)
					if kid != next.KID {
						assert.Equal(t, first.KID, kid)
						return false
					}
					assert.False(t, time.Now().Before(next.Active), "signed with the new key only from its activation")
					tokNext = tok
					return true
				})
			}
			assert.Equal(t, next.KID, verifiedBy(t, a.base, tokNext))
			assert.Equal(t, first.KID, verifiedBy(t, a.base, tokA), "the retired key still verifies")
			for _, s := range []*server{a, b} {
				code, _, body := get(t, s.base+"/api/builders", tokA)
				assert.Equal(t, http.StatusOK, code, "a token of the retired key: %s", body)
			}
			keys = keyCLI(t, global, "list")
			require.Len(t, keys, 2)
			assert.Equal(t, []string{"retired", "active"}, []string{keys[0].State, keys[1].State})

			// Emergency revocation.
			revoked := keyCLI(t, global, "revoke", "-kid", first.KID)
			require.Len(t, revoked, 1)
			assert.Equal(t, "revoked", revoked[0].State)
			for _, s := range []*server{a, b} {
				waitUntil(t, "the revoked key out of the JWKS", func() bool { return !slices.Contains(jwksKIDs(t, s.base), first.KID) })
				waitStatus(t, s.base+"/api/builders", tokA, http.StatusUnauthorized)
				code, _, body := get(t, s.base+"/api/builders", tokNext)
				assert.Equal(t, http.StatusOK, code, body)
			}

			// The KEK rotation: a server with both KEKs, the keys
			// resealed, then the new KEK alone.
			stopServer(t, b)
			t.Setenv(kekEnv, kekB)
			t.Setenv(oldKEKEnv, kekA)
			c := replica()
			assert.Contains(t, waitOutput(t, c, "Signing keys: "), "(and the previous KEK ")
			_, kid = tokenKID(t, c.base, id, secret)
			assert.Equal(t, next.KID, kid)

			t.Setenv(kekEnv, kekA)
			t.Setenv(oldKEKEnv, "")
			t.Setenv(newKEKEnv, kekB)
			var resealed struct {
				N int `json:"resealed"`
			}
			require.NoError(t, json.Unmarshal([]byte(cli(append(global, "key", "rotate-kek")...).ok(t)), &resealed))
			assert.Equal(t, 2, resealed.N)
			// A server that has the old KEK only keeps signing with the
			// keys it holds, but leaves the rotation: it cannot open them.
			waitStatus(t, a.base+"/readyz", "", http.StatusServiceUnavailable)
			_, _, body = get(t, a.base+"/readyz", "")
			assert.Contains(t, body, `"signing_keys":"error"`)
			code, _, body = get(t, c.base+"/readyz", "")
			assert.Equal(t, http.StatusOK, code, body)
			stopServer(t, a)
			stopServer(t, c)

			t.Setenv(kekEnv, kekB)
			t.Setenv(newKEKEnv, "")
			d := replica()
			_, kid = tokenKID(t, d.base, id, secret)
			assert.Equal(t, next.KID, kid, "the same key, under the new KEK")
			code, _, body = get(t, d.base+"/api/builders", tokNext)
			assert.Equal(t, http.StatusOK, code, body)
			stopServer(t, d)

			t.Setenv(kekEnv, kekA)
			cmd := exec.Command(bin, append(global, "serve", "-addr", "127.0.0.1:0", "-audit-spill", "none")...)
			cmd.Dir = t.TempDir()
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			require.Error(t, err, "the old KEK alone: %s", stdout.String())
			msg := stderr.String()
			assert.Contains(t, msg, "with KEK ")
			assert.Contains(t, msg, "from $M2MAUTH_KEK")
			assert.Contains(t, msg, "does not open")
			assert.NotContains(t, msg, kekA)
			assert.NotContains(t, stdout.String(), "listening on")
			t.Setenv(kekEnv, kekB)
			assert.Len(t, keyCLI(t, global, "list"), 2, "no key made")
		})
	}
}

// TestKeyCommandsTakeServersSchedules: a schedule that serve runs with a
// -key-refresh of its own is accepted by the key commands, given the
// same flags but that one, as the banner prints them; their own refresh
// is under the propagation delay.
func TestKeyCommandsTakeServersSchedules(t *testing.T) {
	tests := []struct{ maxAge, delay time.Duration }{
		{10 * time.Second, 12 * time.Second}, // too short for serve's default refresh, 3s
		{20 * time.Second, 25 * time.Second},
		{20 * time.Second, 30 * time.Second},
		{time.Minute, 70 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.maxAge.String()+"/"+tt.delay.String(), func(t *testing.T) {
			served := keySchedule{jwksMaxAge: tt.maxAge, propagationDelay: tt.delay, rotationInterval: defaultRotationInterval, refresh: time.Second}
			_, err := served.resolve()
			require.NoError(t, err, "serve -key-refresh 1s takes the schedule")
			db := filepath.Join(t.TempDir(), "m.db")
			createClients(t, db, 1)
			t.Setenv(kekEnv, newKEK(t))
			global := []string{"-db", db, "-jwks-max-age", tt.maxAge.String(), "-key-propagation-delay", tt.delay.String()}
			for _, cmd := range [][]string{{"key", "rotate"}, {"key", "list"}} {
				r := cli(append(global, cmd...)...)
				require.NoError(t, r.err, "%v: %s", cmd, r.stderr)
			}
		})
	}
}
