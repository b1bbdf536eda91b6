package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// TestNewDiscovery: the documents' URLs come from -issuer and -audience,
// and a flag that cannot be published leaves its documents out, with a
// warning, rather than stop the server.
func TestNewDiscovery(t *testing.T) {
	tests := []struct {
		name             string
		issuer, audience string
		origin           string
		asPath, prPath   string
		prSlash          string
		warning          string // in the log, when set
	}{
		{"defaults", defaultIssuer, defaultAudience,
			"http://127.0.0.1:8080", "/.well-known/oauth-authorization-server", "/.well-known/oauth-protected-resource", "", ""},
		{"paths", "https://auth.example.com/tenant1/", "https://api.example.com/builders",
			"https://auth.example.com", "/.well-known/oauth-authorization-server/tenant1", "/.well-known/oauth-protected-resource/builders", "", ""},
		{"plain HTTP issuer off loopback", "http://10.0.0.5:8080", defaultAudience,
			"", "", "", "", "-issuer must be an https URL"},
		{"issuer with a query", "https://auth.example.com?x=1", defaultAudience,
			"", "", "", "", "-issuer must be an https URL"},
		{"audience that is not a URL", defaultIssuer, "builders-api",
			"http://127.0.0.1:8080", "/.well-known/oauth-authorization-server", "", "", "-audience must be an https URL"},
		{"audience path a mux cannot route", defaultIssuer, "https://api.example.com/a/../b",
			"http://127.0.0.1:8080", "/.well-known/oauth-authorization-server", "", "", `empty, \".\" or \"..\" segments`},
		// RFC 9728 §3.1, read with the path's trailing slash dropped and kept.
		{"audience path ending in a slash", defaultIssuer, "https://api.example.com/builders/",
			"http://127.0.0.1:8080", "/.well-known/oauth-authorization-server", "/.well-known/oauth-protected-resource/builders",
			"/.well-known/oauth-protected-resource/builders/", ""},
		{"audience of a host and a slash", defaultIssuer, "https://api.example.com/",
			"http://127.0.0.1:8080", "/.well-known/oauth-authorization-server", "/.well-known/oauth-protected-resource", "", ""},
		{"audience path ending in two slashes", defaultIssuer, "https://api.example.com/builders//",
			"http://127.0.0.1:8080", "/.well-known/oauth-authorization-server", "/.well-known/oauth-protected-resource/builders", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var log bytes.Buffer
			d := newDiscovery(globals{issuer: tc.issuer, audience: tc.audience, alg: jose.ES256}, slog.New(slog.NewJSONHandler(&log, nil)))
			assert.Equal(t, tc.origin, d.origin)
			assert.Equal(t, tc.asPath, d.asPath)
			assert.Equal(t, tc.prPath, d.prPath)
			assert.Equal(t, tc.prSlash, d.prSlash)
			if tc.prPath != "" {
				assert.Equal(t, tc.origin+tc.prPath, d.resourceMetadataURL())
			} else {
				assert.Empty(t, d.resourceMetadataURL(), "no challenge names a document that is not served")
			}
			if tc.warning == "" {
				assert.Empty(t, log.String())
			} else {
				assert.Contains(t, log.String(), `"level":"WARN"`)
				assert.Contains(t, log.String(), tc.warning)
			}
		})
	}
}

// TestServeDiscovery: with each -signing-alg the server signs with a key
// of that algorithm, generated beside the SQLite file; publishes its
// public half, and nothing else, as a cacheable JWK Set that verifies the
// tokens; serves the RFC 8414 and RFC 9728 metadata derived from -issuer
// and -audience; names the latter in the API's challenges; and prints
// the URLs in its banner. HS256 publishes no key.
func TestServeDiscovery(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	tests := []struct {
		alg      jose.SignatureAlgorithm
		issuer   string // default when empty
		origin   string
		asPath   string
		kty, crv string // of the published key; none for HS256
	}{
		{jose.ES256, "", "http://127.0.0.1:8080", "/.well-known/oauth-authorization-server", "EC", "P-256"},
		{jose.EdDSA, "", "http://127.0.0.1:8080", "/.well-known/oauth-authorization-server", "OKP", "Ed25519"},
		{jose.RS256, "", "http://127.0.0.1:8080", "/.well-known/oauth-authorization-server", "RSA", ""},
		{jose.HS256, "https://auth.example.com/tenant1", "https://auth.example.com", "/.well-known/oauth-authorization-server/tenant1", "", ""},
	}
	for _, tc := range tests {
		t.Run(string(tc.alg), func(t *testing.T) {
			issuer := cmp.Or(tc.issuer, defaultIssuer)
			db := filepath.Join(t.TempDir(), "m2mauth.db")
			var id, secret string
			for id, secret = range createClients(t, db, 1) {
			}
			global := []string{"-db", db, "-signing-alg", string(tc.alg)}
			if tc.issuer != "" {
				global = append(global, "-issuer", tc.issuer)
			}
			srv := startServer(t, bin, global...)

			tok := accessToken(t, srv.base, id, secret)
			header := tokenHeader(t, tok)
			assert.Equal(t, string(tc.alg), header["alg"])
			assert.Equal(t, "at+jwt", header["typ"])
			kid, _ := header["kid"].(string)
			require.NotEmpty(t, kid)

			t.Run("JWKS", func(t *testing.T) {
				resp, body := fetch(t, srv.base+"/.well-known/jwks.json", nil)
				require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
				assert.Equal(t, "application/jwk-set+json", resp.Header.Get("Content-Type"))
				assert.Contains(t, resp.Header.Get("Cache-Control"), "max-age=")
				etag := resp.Header.Get("ETag")
				require.NotEmpty(t, etag)
				var raw struct {
					Keys []map[string]any `json:"keys"`
				}
				require.NoError(t, json.Unmarshal(body, &raw), "%s", body)
				if tc.alg == jose.HS256 {
					assert.JSONEq(t, `{"keys":[]}`, string(body), "a secret key is never published")
				} else {
					require.Len(t, raw.Keys, 1, "%s", body)
					k := raw.Keys[0]
					assert.Equal(t, kid, k["kid"], "the key that signed the token")
					assert.Equal(t, string(tc.alg), k["alg"])
					assert.Equal(t, "sig", k["use"])
					assert.Equal(t, tc.kty, k["kty"])
					if tc.crv != "" {
						assert.Equal(t, tc.crv, k["crv"])
					}
					for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"} {
						assert.NotContains(t, k, private)
					}
					var set jose.JSONWebKeySet
					require.NoError(t, json.Unmarshal(body, &set))
					require.True(t, set.Keys[0].IsPublic())
					parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{tc.alg})
					require.NoError(t, err)
					var claims jwt.Claims
					require.NoError(t, parsed.Claims(set.Keys[0].Key, &claims), "the published key verifies the token")
					assert.Equal(t, issuer, claims.Issuer)
				}
				resp, body = fetch(t, srv.base+"/.well-known/jwks.json", http.Header{"If-None-Match": {etag}})
				assert.Equal(t, http.StatusNotModified, resp.StatusCode)
				assert.Empty(t, body)
				assert.Equal(t, etag, resp.Header.Get("ETag"))
			})

			t.Run("authorization server metadata", func(t *testing.T) {
				md := fetchJSON(t, srv.base+tc.asPath)
				assert.Equal(t, issuer, md["issuer"], "exactly the issuer (RFC 8414 §3.3)")
				assert.Equal(t, tc.origin+"/oauth/token", md["token_endpoint"])
				assert.Equal(t, tc.origin+"/oauth/revoke", md["revocation_endpoint"], "RFC 8414 §2")
				assert.Equal(t, tc.origin+"/oauth/introspect", md["introspection_endpoint"], "RFC 8414 §2")
				assert.Contains(t, md["revocation_endpoint_auth_methods_supported"], "client_secret_basic")
				assert.Contains(t, md["introspection_endpoint_auth_methods_supported"], "client_secret_basic")
				if tc.alg == jose.HS256 {
					assert.NotContains(t, md, "jwks_uri", "no key to publish")
				} else {
					assert.Equal(t, tc.origin+"/.well-known/jwks.json", md["jwks_uri"])
				}
				assert.Equal(t, []any{"client_credentials"}, md["grant_types_supported"])
				assert.Contains(t, md, "response_types_supported")
				assert.Contains(t, md["token_endpoint_auth_methods_supported"], "client_secret_basic")
			})

			prURL := tc.origin + "/.well-known/oauth-protected-resource"
			t.Run("protected resource metadata", func(t *testing.T) {
				md := fetchJSON(t, srv.base+"/.well-known/oauth-protected-resource")
				assert.Equal(t, defaultAudience, md["resource"])
				assert.Equal(t, []any{issuer}, md["authorization_servers"])
				assert.Equal(t, []any{"header"}, md["bearer_methods_supported"])
				assert.Equal(t, []any{"read:builders", "read:subcontractors"}, md["scopes_supported"])
			})

			t.Run("challenges name the metadata", func(t *testing.T) {
				code, challenge, _ := get(t, srv.base+"/api/builders", "")
				assert.Equal(t, http.StatusUnauthorized, code)
				assert.Equal(t, `Bearer realm="m2mauth", resource_metadata="`+prURL+`"`, challenge)
				code, challenge, _ = get(t, srv.base+"/api/subcontractors", tok)
				assert.Equal(t, http.StatusForbidden, code, "the client holds read:builders only")
				assert.Contains(t, challenge, `resource_metadata="`+prURL+`"`)
				code, _, body := get(t, srv.base+"/api/builders", tok)
				assert.Equal(t, http.StatusOK, code, body)
			})

			t.Run("banner", func(t *testing.T) {
				out := waitOutput(t, srv, "Protected resource metadata:")
				assert.Contains(t, out, "signed with "+string(tc.alg))
				assert.Contains(t, out, "JWKS:                          "+tc.origin+"/.well-known/jwks.json")
				assert.Contains(t, out, "Authorization server metadata: "+tc.origin+tc.asPath+"\n")
				assert.Contains(t, out, "Protected resource metadata:   "+prURL+"\n")
				assert.Contains(t, out, "Revocation list:               "+tc.origin+"/oauth/revocations\n")
				assert.Contains(t, out, "Clients revoke their tokens at "+tc.origin+"/oauth/revoke (RFC 7009) and introspect tokens at "+tc.origin+"/oauth/introspect (RFC 7662).\n")
				assert.Contains(t, out, "(URLs under -issuer "+issuer+", where other services reach this server; it listens on "+srv.base+")")
			})

			keyFile := defaultKeyFile(db, tc.alg)
			st, err := os.Stat(keyFile)
			require.NoError(t, err, "the key is kept beside the database")
			assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
		})
	}
}

// TestServeKeepsSigningKey: a generated ES256 key is kept as PKCS #8 PEM
// beside the SQLite file, so a restart publishes the same key (same kid)
// and tokens issued before it stay valid; the file, given to a server
// with another -signing-alg, is refused.
func TestServeKeepsSigningKey(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	db := filepath.Join(t.TempDir(), "clients.db")
	var id, secret string
	for id, secret = range createClients(t, db, 1) {
	}
	global := []string{"-db", db, "-signing-alg", "ES256"}
	keyFile := filepath.Join(filepath.Dir(db), "clients-es256.pem")

	srv := startServer(t, bin, global...)
	tok := accessToken(t, srv.base, id, secret)
	kid := publishedKeyID(t, srv.base)
	assert.Equal(t, kid, tokenHeader(t, tok)["kid"])
	assert.Contains(t, srv.stderr.String(), "generated a new signing key and saved it to "+keyFile+" (mode 0600)")
	raw, err := os.ReadFile(keyFile)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(raw), "-----BEGIN PRIVATE KEY-----\n"), "PKCS #8 PEM")
	k, err := m2mauth.ParseKeyPEM(jose.ES256, "", raw)
	require.NoError(t, err)
	assert.Equal(t, kid, k.KeyID)
	stopServer(t, srv)

	srv = startServer(t, bin, global...)
	assert.Equal(t, kid, publishedKeyID(t, srv.base), "the same key after a restart")
	code, _, body := get(t, srv.base+"/api/builders", tok)
	assert.Equal(t, http.StatusOK, code, "a token of the first run: %s", body)
	assert.NotContains(t, srv.stderr.String(), "generated a new signing key")
	stopServer(t, srv)

	var stdout, stderr bytes.Buffer
	err = run([]string{"-db", db, "-signing-alg", "EdDSA", "-signing-key-file", keyFile, "serve", "-addr", "127.0.0.1:0"}, &stdout, &stderr)
	require.Error(t, err)
	assert.Equal(t, 1, exitCode(err))
	assert.Equal(t, keyFile+" holds a key for ES256, not for -signing-alg EdDSA: give -signing-alg ES256, or a key made for EdDSA", err.Error())
	assert.Empty(t, stdout.String())
}

// TestRemoteResourceServer: a resource server in another process, which
// knows only the example's issuer URL (it discovers the JWKS from the
// issuer's metadata and holds no key), accepts the example's ES256
// tokens over HTTP and refuses tokens signed by any other key, whether
// the token names a key id of its own or the example's. It polls the
// example's signed revocation list, so it refuses a token revoked at the
// example (RFC 7009) within its -revocation-refresh.
func TestRemoteResourceServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	rsBin := buildResourceServer(t)
	db := filepath.Join(t.TempDir(), "m2mauth.db")
	var id, secret string
	for id, secret = range createClients(t, db, 1) {
	}
	addr := freeLoopbackAddr(t)
	issuer := "http://" + addr
	srv := startServerWith(t, bin, http.DefaultClient, []string{"-db", db, "-issuer", issuer, "-signing-alg", "ES256"},
		"-addr", addr, "-revocation-refresh", revocationRefresh)
	require.Equal(t, issuer, srv.base)
	assert.NotContains(t, waitOutput(t, srv, "Protected resource metadata:"), "URLs under -issuer", "-issuer is where it listens")
	rs := startCommand(t, rsBin, http.DefaultClient, "-issuer", issuer, "-audience", defaultAudience, "-addr", "127.0.0.1:0",
		"-revocation-refresh", revocationRefresh)

	tok := accessToken(t, srv.base, id, secret)
	code, _, body := get(t, rs.base+"/api/builders", tok)
	require.Equal(t, http.StatusOK, code, "%s; resource server: %s", body, rs.stderr)
	assert.JSONEq(t, `{"client_id":"`+id+`","builders":["Acme Building","Northside Construction"]}`, body)

	other, err := m2mauth.GenerateSigningKey(jose.ES256)
	require.NoError(t, err)
	impostor, err := m2mauth.NewSignerKey(jose.ES256, tokenHeader(t, tok)["kid"].(string), other.Key.(crypto.Signer))
	require.NoError(t, err)
	for name, key := range map[string]jose.JSONWebKey{"another key": other, "another key under the example's kid": impostor} {
		t.Run(name, func(t *testing.T) {
			forged := mintToken(t, key, issuer, id)
			assert.Equal(t, key.KeyID, tokenHeader(t, forged)["kid"])
			code, challenge, body := get(t, rs.base+"/api/builders", forged)
			assert.Equal(t, http.StatusUnauthorized, code, body)
			assert.Contains(t, challenge, `error="invalid_token"`)
		})
	}
	code, _, body = get(t, rs.base+"/api/builders", tok)
	assert.Equal(t, http.StatusOK, code, "the real token still works: %s", body)

	// The list is a JWT signed with the published key.
	resp, list := fetch(t, srv.base+"/oauth/revocations", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", list)
	assert.Equal(t, "application/jwt", resp.Header.Get("Content-Type"))
	assert.Equal(t, tokenHeader(t, tok)["kid"], tokenHeader(t, string(list))["kid"])

	kept := accessToken(t, srv.base, id, secret)
	code, raw := postToken(t, srv.base+revokePath, id, secret, tok)
	require.Equal(t, http.StatusOK, code, "%s", raw)
	body = waitStatus(t, rs.base+"/api/builders", tok, http.StatusUnauthorized)
	assert.Contains(t, body, "token has been revoked")
	code, _, body = get(t, rs.base+"/api/builders", kept)
	assert.Equal(t, http.StatusOK, code, "another token of the client: %s", body)
	assert.NotContains(t, rs.stderr.String(), tok)
}

// TestNodeJoseVerifies: a Node.js service verifies the example's ES256
// tokens with the jose package, through the JWKS URL alone, and refuses
// tokens signed by another key, under a kid of its own or the example's.
// It installs jose from the npm registry,
// so it runs only when M2MAUTH_TEST_NODE=1.
func TestNodeJoseVerifies(t *testing.T) {
	if os.Getenv("M2MAUTH_TEST_NODE") != "1" {
		t.Skip("set M2MAUTH_TEST_NODE=1 to verify tokens with Node.js and jose from the npm registry")
	}
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: %v", tool, err)
		}
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"private":true,"type":"module"}`), 0o600))
	install := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "jose@6")
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		t.Skipf("npm install jose failed (is the npm registry reachable?): %v: %s", err, out)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "verify.mjs"), []byte(nodeVerifier), 0o600))

	bin := buildExample(t)
	db := filepath.Join(t.TempDir(), "m2mauth.db")
	var id, secret string
	for id, secret = range createClients(t, db, 1) {
	}
	addr := freeLoopbackAddr(t)
	issuer := "http://" + addr
	srv := startServerWith(t, bin, http.DefaultClient, []string{"-db", db, "-issuer", issuer, "-signing-alg", "ES256"}, "-addr", addr)
	tok := accessToken(t, srv.base, id, secret)
	other, err := m2mauth.GenerateSigningKey(jose.ES256)
	require.NoError(t, err)
	impostor, err := m2mauth.NewSignerKey(jose.ES256, tokenHeader(t, tok)["kid"].(string), other.Key.(crypto.Signer))
	require.NoError(t, err)

	verify := func(token string) map[string]any {
		t.Helper()
		cmd := exec.CommandContext(ctx, "node", "verify.mjs", issuer+"/.well-known/jwks.json", issuer, defaultAudience, token)
		cmd.Dir = dir
		out, err := cmd.Output()
		require.NoError(t, err, "%s", out)
		var res map[string]any
		require.NoError(t, json.Unmarshal(out, &res), "%s", out)
		return res
	}
	assert.Equal(t, map[string]any{"ok": true, "client_id": id, "alg": "ES256"}, verify(tok))
	assert.Equal(t, map[string]any{"ok": false, "code": "ERR_JWKS_NO_MATCHING_KEY"}, verify(mintToken(t, other, issuer, id)))
	assert.Equal(t, map[string]any{"ok": false, "code": "ERR_JWS_SIGNATURE_VERIFICATION_FAILED"}, verify(mintToken(t, impostor, issuer, id)))
}

// nodeVerifier is the README's Node.js snippet, printing the outcome as
// JSON: node verify.mjs JWKS_URL ISSUER AUDIENCE TOKEN.
const nodeVerifier = `import { createRemoteJWKSet, jwtVerify } from 'jose';

const [jwksURL, issuer, audience, token] = process.argv.slice(2);
const jwks = createRemoteJWKSet(new URL(jwksURL), {
  cacheMaxAge: 5 * 60 * 1000,
});
try {
  const { payload, protectedHeader } = await jwtVerify(token, jwks, {
    issuer,
    audience,
    typ: 'at+jwt',
    algorithms: ['ES256'],
  });
  console.log(JSON.stringify({ ok: true, client_id: payload.client_id, alg: protectedHeader.alg }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, code: err.code }));
}
`

// buildResourceServer compiles ./internal/resourceserver once per test
// binary.
func buildResourceServer(t *testing.T) string {
	t.Helper()
	rsBuild.once.Do(func() {
		bin := filepath.Join(binDir, "resourceserver")
		out, err := exec.Command("go", "build", "-o", bin, "./internal/resourceserver").CombinedOutput()
		if err != nil {
			rsBuild.err = fmt.Errorf("go build: %v: %s", err, out)
			return
		}
		rsBuild.path = bin
	})
	require.NoError(t, rsBuild.err)
	return rsBuild.path
}

var rsBuild struct {
	once sync.Once
	path string
	err  error
}

// freeLoopbackAddr returns 127.0.0.1 with a port that was free a moment
// ago, for a server whose -issuer must name its own address.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// stopServer stops srv with SIGTERM and waits, boundedly, for a clean exit.
func stopServer(t *testing.T, srv *server) {
	t.Helper()
	require.NoError(t, srv.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-srv.done:
		require.NoError(t, err, "clean exit; stderr: %s", srv.stderr)
	case <-time.After(30 * time.Second):
		t.Fatal("server did not stop on SIGTERM")
	}
}

// waitOutput waits, boundedly, until srv has printed want on stdout, and
// returns what it printed.
func waitOutput(t testing.TB, srv *server, want string) string {
	t.Helper()
	for i := 0; ; i++ {
		if out := srv.stdout.String(); strings.Contains(out, want) {
			return out
		}
		require.Less(t, i, 200, "no %q in: %s", want, srv.stdout)
		time.Sleep(50 * time.Millisecond)
	}
}

// demoSecret returns the demo client's secret, which a server that
// created the demo client prints in its banner, and false if srv did not
// create it.
func demoSecret(t testing.TB, srv *server) (string, bool) {
	t.Helper()
	out := waitOutput(t, srv, "Call the protected API")
	_, rest, ok := strings.Cut(out, "client_secret: ")
	secret, _, _ := strings.Cut(rest, "\n")
	return strings.TrimSpace(secret), ok
}

// accessToken gets a token from the server at base.
func accessToken(t *testing.T, base, id, secret string) string {
	t.Helper()
	resp, body := tokenRequest(t, http.DefaultClient, base, id, secret)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	require.NoError(t, json.Unmarshal(body, &tok))
	return tok.AccessToken
}

// tokenHeader decodes the JOSE header of a token.
func tokenHeader(t *testing.T, tok string) map[string]any {
	t.Helper()
	enc, _, _ := strings.Cut(tok, ".")
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	require.NoError(t, err)
	var h map[string]any
	require.NoError(t, json.Unmarshal(raw, &h))
	return h
}

// publishedKeyID is the kid of the one key the server at base publishes.
func publishedKeyID(t *testing.T, base string) string {
	t.Helper()
	_, body := fetch(t, base+"/.well-known/jwks.json", nil)
	var set jose.JSONWebKeySet
	require.NoError(t, json.Unmarshal(body, &set), "%s", body)
	require.Len(t, set.Keys, 1)
	return set.Keys[0].KeyID
}

// fetch GETs url with header, and returns the response, its body read.
func fetch(t *testing.T, url string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

// fetchJSON GETs the metadata document at url.
func fetchJSON(t *testing.T, url string) map[string]any {
	t.Helper()
	resp, body := fetch(t, url, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var md map[string]any
	require.NoError(t, json.Unmarshal(body, &md), "%s", body)
	return md
}

// mintToken returns a token for clientID (read:builders on the default
// audience) issued under issuer by a token handler, in process, that
// signs with key: what a forger holding key would make.
func mintToken(t *testing.T, key jose.JSONWebKey, issuer, clientID string) string {
	t.Helper()
	keys, err := m2mauth.NewStaticKeys(key)
	require.NoError(t, err)
	scopes, err := m2mauth.ParseScopes("read:builders")
	require.NoError(t, err)
	plain, hashed, err := m2mauth.NewSecret(time.Now(), time.Time{})
	require.NoError(t, err)
	store := memstore.New()
	require.NoError(t, store.CreateClient(t.Context(), &m2mauth.Client{
		ID: clientID, Secrets: []m2mauth.Secret{hashed}, Grants: map[string]m2mauth.Scopes{defaultAudience: scopes},
	}))
	h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer: issuer, DefaultAudience: defaultAudience,
		Auditor: m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {}),
	})
	require.NoError(t, err)
	req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1/oauth/token", strings.NewReader("grant_type=client_credentials"))
	req.RemoteAddr = "127.0.0.1:40000"
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(clientID, plain)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &tok))
	return tok.AccessToken
}

// TestServeResourceMetadataTrailingSlash: for an -audience whose path
// ends in "/", the protected resource metadata is served both where
// m2mauth.ProtectedResourceMetadataPath puts it (the slash dropped, as
// RFC 8414 §3.1 drops the issuer's) and with the slash kept, as clients
// that read RFC 9728 §3.1 literally (oauth4webapi) ask for it; nothing
// below that path is.
func TestServeResourceMetadataTrailingSlash(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	const audience = "https://api.example.com/builders/"
	srv := startServer(t, bin, "-db", filepath.Join(t.TempDir(), "m2mauth.db"), "-audience", audience)
	var bodies []string
	for _, p := range []string{"/.well-known/oauth-protected-resource/builders", "/.well-known/oauth-protected-resource/builders/"} {
		resp, body := fetch(t, srv.base+p, nil)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", p, body)
		var md map[string]any
		require.NoError(t, json.Unmarshal(body, &md))
		assert.Equal(t, audience, md["resource"], p)
		bodies = append(bodies, string(body))
	}
	assert.Equal(t, bodies[0], bodies[1])
	resp, _ := fetch(t, srv.base+"/.well-known/oauth-protected-resource/builders/other", nil)
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}
