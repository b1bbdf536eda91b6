package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cliResult is what one in-process command printed and returned.
type cliResult struct {
	stdout, stderr string
	err            error
}

// cli runs one command of the example in this process.
func cli(args ...string) cliResult {
	var stdout, stderr bytes.Buffer
	err := run(args, &stdout, &stderr)
	return cliResult{stdout.String(), stderr.String(), err}
}

// ok requires r to have succeeded and returns its stdout.
func (r cliResult) ok(t *testing.T) string {
	t.Helper()
	require.NoError(t, r.err, "stderr: %s", r.stderr)
	return r.stdout
}

// viewJSON is a clientView as read back from the command's output.
type viewJSON struct {
	ID              string            `json:"client_id"`
	Disabled        bool              `json:"disabled"`
	Grants          map[string]string `json:"grants"`
	TokenTTL        string            `json:"token_ttl"`
	CanIntrospect   bool              `json:"can_introspect"`
	TokensRevokedAt *time.Time        `json:"tokens_revoked_at"`
	Secrets         []struct {
		ID string `json:"id"`
	} `json:"secrets"`
}

// decodeView reads one JSON line of show, list or update and checks that
// it carries only the fields of a view: never a secret or a hash.
func decodeView(t *testing.T, line string) viewJSON {
	t.Helper()
	var fields map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(line), &fields), "%q", line)
	for k := range fields {
		assert.Contains(t, []string{"client_id", "disabled", "public", "grants", "token_ttl", "can_introspect", "tokens_revoked_at", "secrets", "created_at"}, k)
	}
	assert.NotContains(t, line, "$sha256$")
	assert.NotContains(t, line, "hash")
	var v viewJSON
	require.NoError(t, json.Unmarshal([]byte(line), &v))
	return v
}

// TestClientCommands runs the admin commands on every database, with no
// signing key configured: they need none. It checks show, update,
// remove-secret and list -id, and the mistakes a new user makes with
// -scopes.
func TestClientCommands(t *testing.T) {
	for _, b := range testDatabases() {
		t.Run(b.name, func(t *testing.T) {
			db := b.db(t)
			var suffix [4]byte
			rand.Read(suffix[:])
			id := "cli-" + hex.EncodeToString(suffix[:])
			c := func(args ...string) cliResult { return cli(append([]string{"-db", db, "client"}, args...)...) }
			t.Cleanup(func() { c("delete", "-id", id) })

			// -scopes mistakes are caught before anything is written.
			r := c("create", "-id", id)
			require.Error(t, r.err)
			assert.Equal(t, 2, exitCode(r.err))
			assert.Contains(t, r.stderr, `-scopes is required: the scopes the client may request, space-separated in one argument, e.g. -scopes "read:builders read:subcontractors"`)
			r = c("create", "-id", id, "-scopes", "read,write")
			require.Error(t, r.err)
			assert.Equal(t, 1, exitCode(r.err))
			assert.Equal(t, `-scopes "read,write": scopes are space-separated: -scopes "read write"`, r.err.Error())
			r = c("create", "-id", id, "-scopes", "read", "write", "-ttl", "1h")
			require.Error(t, r.err)
			assert.Equal(t, 2, exitCode(r.err))
			assert.Contains(t, r.stderr, `unexpected argument "write": scopes are space-separated in one argument, so quote them: -scopes "read write"`)
			r = c("show", "-id", id)
			require.Error(t, r.err, "nothing was created")
			assert.Equal(t, 1, exitCode(r.err))
			// Not even the SQLite file, when it is new.
			assert.Regexp(t, `client "`+id+`"|no such database file`, r.err.Error())

			var created struct {
				Secret string `json:"client_secret"`
			}
			out := c("create", "-id", id, "-scopes", " read:builders ", "-audience", "https://a.example", "-ttl", "15m").ok(t)
			require.NoError(t, json.Unmarshal([]byte(out), &created))
			require.NotEmpty(t, created.Secret)

			out = c("show", "-id", id).ok(t)
			assert.NotContains(t, out, created.Secret)
			v := decodeView(t, out)
			assert.Equal(t, id, v.ID)
			assert.Equal(t, map[string]string{"https://a.example": "read:builders"}, v.Grants)
			assert.Equal(t, "15m0s", v.TokenTTL)
			assert.False(t, v.CanIntrospect)
			assert.Nil(t, v.TokensRevokedAt, "no tokens revoked yet")
			require.Len(t, v.Secrets, 1)
			first := v.Secrets[0].ID

			// list -id filters: the same view, alone.
			assert.Equal(t, out, c("list", "-id", id).ok(t))
			assert.Empty(t, c("list", "-id", id+"-nobody").ok(t), "a filter that matches nothing")
			assert.Contains(t, c("list").ok(t), out)

			// update: the client's only audience, unless -audience says.
			require.NoError(t, c("disable", "-id", id).err)
			v = decodeView(t, c("update", "-id", id, "-scopes", "read:builders read:subcontractors").ok(t))
			assert.Equal(t, map[string]string{"https://a.example": "read:builders read:subcontractors"}, v.Grants)
			assert.Equal(t, "15m0s", v.TokenTTL, "left alone")
			assert.True(t, v.Disabled, "left alone")
			v = decodeView(t, c("update", "-id", id, "-ttl", "0").ok(t))
			assert.Empty(t, v.TokenTTL, "back to the server's")
			v = decodeView(t, c("update", "-id", id, "-audience", "https://b.example", "-scopes", "write:builders", "-ttl", "24h").ok(t))
			assert.Equal(t, map[string]string{"https://a.example": "read:builders read:subcontractors", "https://b.example": "write:builders"}, v.Grants)
			assert.Equal(t, "24h0m0s", v.TokenTTL)
			r = c("update", "-id", id, "-scopes", "read:builders")
			require.Error(t, r.err)
			assert.Contains(t, r.err.Error(), "has grants for 2 audiences (https://a.example, https://b.example): say which one -scopes is for with -audience")
			for _, bad := range []struct {
				args []string
				code int
				msg  string
			}{
				{[]string{"-ttl", "25h"}, 1, "-ttl 25h0m0s is longer than the 24h0m0s"},
				{[]string{"-ttl", "-1m"}, 1, "-ttl must not be negative"},
				{[]string{"-scopes", "a, b"}, 1, `scopes are space-separated: -scopes "a b"`},
				{[]string{"-scopes", `a"b`}, 1, `"a\"b" is not a scope`},
				{[]string{}, 2, ""},
				{[]string{"-audience", "https://c.example"}, 2, ""},
			} {
				r := c(append([]string{"update", "-id", id}, bad.args...)...)
				require.Error(t, r.err, "%v", bad.args)
				assert.Equal(t, bad.code, exitCode(r.err), "%v", bad.args)
				if bad.msg != "" {
					assert.Contains(t, r.err.Error(), bad.msg)
				}
			}
			r = c("update", "-id", id+"-nobody", "-ttl", "1h")
			require.Error(t, r.err)
			assert.Contains(t, r.err.Error(), `client "`+id+`-nobody"`)

			// -introspect: set, kept by other updates, taken away.
			v = decodeView(t, c("update", "-id", id, "-introspect").ok(t))
			assert.True(t, v.CanIntrospect)
			v = decodeView(t, c("update", "-id", id, "-ttl", "1h").ok(t))
			assert.True(t, v.CanIntrospect, "left alone")
			v = decodeView(t, c("update", "-id", id, "-introspect=false").ok(t))
			assert.False(t, v.CanIntrospect)

			// revoke-tokens sets the watermark that show prints.
			var revoked struct {
				ID string    `json:"client_id"`
				At time.Time `json:"tokens_revoked_at"`
			}
			before := time.Now().Add(-time.Second)
			require.NoError(t, json.Unmarshal([]byte(c("revoke-tokens", "-id", id).ok(t)), &revoked))
			assert.Equal(t, id, revoked.ID)
			assert.WithinRange(t, revoked.At, before, time.Now().Add(time.Second))
			v = decodeView(t, c("show", "-id", id).ok(t))
			require.NotNil(t, v.TokensRevokedAt)
			assert.True(t, revoked.At.Equal(*v.TokensRevokedAt), "%v, %v", revoked.At, *v.TokensRevokedAt)
			assert.True(t, v.Disabled, "revoking tokens leaves the client as it was")
			r = c("revoke-tokens", "-id", id+"-nobody")
			require.Error(t, r.err)
			assert.Equal(t, 1, exitCode(r.err))
			assert.Contains(t, r.err.Error(), `client "`+id+`-nobody"`)

			// remove-secret takes the ids that show lists.
			var rotated struct {
				SecretID string `json:"secret_id"`
			}
			out = c("rotate-secret", "-id", id, "-grace", "0s").ok(t)
			assert.NotContains(t, out, "tokens_revoked_at", "only with -revoke-tokens")
			require.NoError(t, json.Unmarshal([]byte(out), &rotated))
			v = decodeView(t, c("show", "-id", id).ok(t))
			require.Len(t, v.Secrets, 2)
			r = c("remove-secret", "-id", id, "-secret-id", first)
			assert.Empty(t, r.ok(t))
			assert.Empty(t, r.stderr, "a working secret is left")
			v = decodeView(t, c("show", "-id", id).ok(t))
			require.Len(t, v.Secrets, 1)
			assert.Equal(t, rotated.SecretID, v.Secrets[0].ID)
			r = c("remove-secret", "-id", id, "-secret-id", first)
			require.Error(t, r.err)
			assert.Equal(t, 1, exitCode(r.err))
			assert.Contains(t, r.err.Error(), `client "`+id+`" has no secret "`+first+`"`)
			r = c("remove-secret", "-id", id)
			require.Error(t, r.err)
			assert.Equal(t, 2, exitCode(r.err))
			assert.Contains(t, r.stderr, "-secret-id is required")
			r = c("remove-secret", "-id", id, "-secret-id", rotated.SecretID)
			r.ok(t)
			assert.Contains(t, r.stderr, `warning: client "`+id+`" has no working secret left`)
			assert.Empty(t, decodeView(t, c("show", "-id", id).ok(t)).Secrets)

			// rotate-secret -revoke-tokens moves the watermark on.
			var again struct {
				Secret string    `json:"client_secret"`
				At     time.Time `json:"tokens_revoked_at"`
			}
			out = c("rotate-secret", "-id", id, "-grace", "0s", "-revoke-tokens").ok(t)
			require.NoError(t, json.Unmarshal([]byte(out), &again))
			assert.NotEmpty(t, again.Secret)
			assert.False(t, again.At.Before(revoked.At), "%v, then %v", revoked.At, again.At)
			v = decodeView(t, c("show", "-id", id).ok(t))
			require.NotNil(t, v.TokensRevokedAt)
			assert.True(t, again.At.Equal(*v.TokensRevokedAt))
			assert.Len(t, v.Secrets, 1)
		})
	}
}

// TestClientUsage: the help of the client commands names every command,
// and each command's own help its flags.
func TestClientUsage(t *testing.T) {
	r := cli("client", "-h")
	require.Error(t, r.err)
	for cmd, synopsis := range clientSynopsis {
		assert.Contains(t, r.stderr, "client "+synopsis, cmd)
		assert.Contains(t, usage, "client "+synopsis, cmd)
		r := cli("client", cmd, "-h")
		require.Error(t, r.err)
		assert.True(t, strings.HasPrefix(r.stderr, "usage: example [global flags] client "+synopsis+"\n"), "%s", r.stderr)
	}
}

// TestClientUpdateRacesDisable runs "client update" and "client disable"
// on one client at once, again and again: the update reads the client,
// changes it and writes it back, and must not write back the client as
// enabled when the disable came in between.
func TestClientUpdateRacesDisable(t *testing.T) {
	clientRounds(t, 20, func(t *testing.T, i int, id string, c func(args ...string) cliResult) {
		var wg sync.WaitGroup
		var update, disable cliResult
		wg.Go(func() { update = c("update", "-id", id, "-scopes", "read write") })
		wg.Go(func() { disable = c("disable", "-id", id) })
		wg.Wait()
		update.ok(t)
		disable.ok(t)

		v := decodeView(t, c("show", "-id", id).ok(t))
		require.True(t, v.Disabled, "round %d: the update undid the disable", i)
		require.Equal(t, "read write", v.Grants[defaultAudience], "round %d", i)
	})
}

// clientRounds runs round on every database, rounds times, each with a
// new client (scope "read") and a function running client commands.
func clientRounds(t *testing.T, rounds int, round func(t *testing.T, i int, id string, c func(args ...string) cliResult)) {
	for _, b := range testDatabases() {
		t.Run(b.name, func(t *testing.T) {
			db := b.db(t)
			var suffix [4]byte
			rand.Read(suffix[:])
			c := func(args ...string) cliResult { return cli(append([]string{"-db", db, "client"}, args...)...) }
			for i := range rounds {
				id := fmt.Sprintf("race-%x-%d", suffix, i)
				t.Cleanup(func() { c("delete", "-id", id) })
				c("create", "-id", id, "-scopes", "read").ok(t)
				round(t, i, id, c)
			}
		})
	}
}

// TestClientRotateSecretRacesUrgent runs a routine "client rotate-secret
// -grace 24h" and an urgent one with no grace (a leaked secret) on one
// client at once: whichever commits last, the original secret must end
// at the urgent one's time, not a day later.
func TestClientRotateSecretRacesUrgent(t *testing.T) {
	clientRounds(t, 10, func(t *testing.T, i int, id string, c func(args ...string) cliResult) {
		leaked := decodeView(t, c("show", "-id", id).ok(t)).Secrets[0].ID

		var wg sync.WaitGroup
		var routine, urgent cliResult
		wg.Go(func() { routine = c("rotate-secret", "-id", id, "-grace", "24h") })
		wg.Go(func() { urgent = c("rotate-secret", "-id", id, "-grace", "0s") })
		wg.Wait()
		routine.ok(t)
		var out struct {
			Expire time.Time `json:"previous_secrets_expire_at"`
		}
		require.NoError(t, json.Unmarshal([]byte(urgent.ok(t)), &out))

		var v struct {
			Secrets []struct {
				ID        string     `json:"id"`
				ExpiresAt *time.Time `json:"expires_at"`
			} `json:"secrets"`
		}
		require.NoError(t, json.Unmarshal([]byte(c("show", "-id", id).ok(t)), &v))
		require.Len(t, v.Secrets, 3, "round %d", i)
		for _, s := range v.Secrets {
			if s.ID == leaked {
				require.NotNil(t, s.ExpiresAt, "round %d: the leaked secret does not expire", i)
				// The store keeps microseconds: the expiry printed is the
				// one kept, not a second earlier or later.
				require.False(t, s.ExpiresAt.After(out.Expire), "round %d: the leaked secret lives until %v, past %v", i, s.ExpiresAt, out.Expire)
				require.Less(t, out.Expire.Sub(*s.ExpiresAt), time.Microsecond, "round %d: printed %v, kept %v", i, out.Expire, s.ExpiresAt)
			}
		}
	})
}
