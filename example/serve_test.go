package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// selfSignedCert writes a certificate for 127.0.0.1 and its ECDSA P-256
// key to PEM files, and returns them with a pool that trusts the
// certificate.
func selfSignedCert(t *testing.T) (certFile, keyFile string, roots *x509.CertPool) {
	return selfSignedCertFor(t, "127.0.0.1")
}

// selfSignedCertFor is selfSignedCert for host, an IP address or a DNS
// name (the certificate names no IP address then, as a real one for a
// host name does not).
func selfSignedCertFor(t *testing.T, host string) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "m2mauth example test"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)

	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}

// tokenRequest posts a client_credentials request with HTTP Basic
// credentials and returns the response, its body read.
func tokenRequest(t *testing.T, client *http.Client, base, id, secret string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/oauth/token", strings.NewReader("grant_type=client_credentials"))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

// TestServeTLS: with -tls-cert and -tls-key the server speaks HTTPS only
// (TLS 1.2 or later), prints https:// URLs, and the token endpoint sends
// Strict-Transport-Security.
func TestServeTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	certFile, keyFile, roots := selfSignedCert(t)
	dir := t.TempDir()
	global := []string{"-db", filepath.Join(dir, "m2mauth.db"), "-signing-key-file", newKeyFile(t)}
	var created struct {
		ID     string `json:"client_id"`
		Secret string `json:"client_secret"`
	}
	out := runCLI(t, bin, append(global, "client", "create", "-id", "tls-client", "-scopes", "read:builders")...)
	require.NoError(t, json.Unmarshal([]byte(out), &created))

	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}},
	}
	srv := startServerWith(t, bin, client, global, "-addr", "127.0.0.1:0", "-tls-cert", certFile, "-tls-key", keyFile)
	require.True(t, strings.HasPrefix(srv.base, "https://127.0.0.1:"), "banner URL %q", srv.base)

	resp, body := tokenRequest(t, client, srv.base, created.ID, created.Secret)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	assert.Equal(t, "max-age=31536000", resp.Header.Get("Strict-Transport-Security"))
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	require.NoError(t, json.Unmarshal(body, &tok))
	req, err := http.NewRequest(http.MethodGet, srv.base+"/api/builders", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err = client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "max-age=31536000", resp.Header.Get("Strict-Transport-Security"), "the API too")

	t.Run("plain HTTP is not served", func(t *testing.T) {
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Get("http://" + strings.TrimPrefix(srv.base, "https://") + "/healthz")
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "Go's answer to HTTP on a TLS port")
	})
	t.Run("TLS 1.1 is refused", func(t *testing.T) {
		old := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: roots, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11,
		}}}
		_, err := old.Get(srv.base + "/healthz")
		assert.Error(t, err)
	})
}

// TestServeAPIBehindProxy: behind a TLS-terminating proxy the demo API,
// like the token endpoint, takes a token only from a request the proxy
// says came over HTTPS ("HTTPS only"); a plain HTTP one is refused with
// 400 invalid_request and the token is not used.
func TestServeAPIBehindProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	db := filepath.Join(t.TempDir(), "m2mauth.db")
	var id, secret string
	for id, secret = range createClients(t, db, 1) {
	}
	global := []string{"-db", db, "-signing-key-file", newKeyFile(t)}
	srv := startServerWith(t, bin, http.DefaultClient, global, "-addr", "127.0.0.1:0", "-trusted-proxies", "127.0.0.1/32")
	forwarded := func(method, path, proto, authz, body string) (*http.Response, []byte) {
		req, err := http.NewRequest(method, srv.base+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("X-Forwarded-For", "203.0.113.5")
		req.Header.Set("X-Forwarded-Proto", proto)
		req.Header.Set("Authorization", authz)
		if body != "" {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, b
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+secret))
	resp, body := forwarded(http.MethodPost, tokenPath, "https", basic, "grant_type=client_credentials")
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	require.NoError(t, json.Unmarshal(body, &tok))

	resp, body = forwarded(http.MethodGet, "/api/builders", "https", "Bearer "+tok.AccessToken, "")
	assert.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	resp, body = forwarded(http.MethodGet, "/api/builders", "http", "Bearer "+tok.AccessToken, "")
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "%s", body)
	assert.Contains(t, string(body), "accepts only HTTPS")
	assert.NotContains(t, string(body), "Acme", "no data")
}

// TestServePlainHTTPOffLoopback: plain HTTP on an address other machines
// can reach is refused at start-up unless -insecure-http (loudly) or
// -trusted-proxies says why it is wanted.
func TestServePlainHTTPOffLoopback(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "m2mauth.db")
	global := []string{"-db", db, "-signing-key-file", newKeyFile(t)}

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, append(global, "serve", "-addr", "0.0.0.0:0")...).CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "the server must not start: %s", out)
	assert.Equal(t, 1, exit.ExitCode())
	assert.Contains(t, string(out), "refusing to serve plain HTTP on 0.0.0.0:0")
	assert.Contains(t, string(out), "-insecure-http")
	_, err = os.Stat(db)
	assert.ErrorIs(t, err, os.ErrNotExist, "refused before the database was opened")

	t.Run("-insecure-http", func(t *testing.T) {
		srv := startServerWith(t, bin, http.DefaultClient, global, "-addr", "0.0.0.0:0", "-insecure-http")
		assert.Regexp(t, `"level":"WARN","msg":"INSECURE: -insecure-http`, srv.stderr.String())
	})
	t.Run("-trusted-proxies", func(t *testing.T) {
		srv := startServerWith(t, bin, http.DefaultClient, global, "-addr", "0.0.0.0:0", "-trusted-proxies", "10.0.0.0/8")
		assert.NotContains(t, srv.stderr.String(), "INSECURE")
	})
}

// TestServeConcurrentTokenRequests sends many concurrent, legitimate token
// requests: each is answered 200, or 503 with Retry-After when the server
// is saturated, never 500 (an unbounded pool made PostgreSQL refuse
// connections, and those requests failed with 500). With SQLite it also
// saturates the server: one connection, one request at a time and a 1ms
// store timeout. It asserts no timing.
func TestServeConcurrentTokenRequests(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	backends := []struct {
		name     string
		db       func(t *testing.T) string
		saturate bool
	}{
		{"SQLite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "m2mauth.db") }, true},
		{"PostgreSQL", postgresDB, false},
	}
	const (
		clients  = 20
		requests = 300
	)
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			db := b.db(t)
			global := []string{"-db", db, "-signing-key-file", newKeyFile(t)}
			secrets := createClients(t, db, clients)
			type load struct {
				name string
				args []string // serve flags
			}
			loads := []load{{"defaults", nil}}
			if b.saturate {
				loads = append(loads, load{"saturated", []string{"-db-max-open", "1", "-db-max-idle", "1", "-max-concurrent", "1", "-store-timeout", "1ms"}})
			}
			for _, tc := range loads {
				t.Run(tc.name, func(t *testing.T) {
					client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: requests}}
					srv := startServerWith(t, bin, client, global, append([]string{"-addr", "127.0.0.1:0"}, tc.args...)...)
					type answer struct {
						status     int
						retryAfter string
						body       string
						err        error
					}
					answers := make([]answer, requests)
					ids := make([]string, 0, clients)
					for id := range secrets {
						ids = append(ids, id)
					}
					start := make(chan struct{})
					var wg sync.WaitGroup
					for i := range answers {
						wg.Go(func() {
							id := ids[i%len(ids)]
							req, err := http.NewRequest(http.MethodPost, srv.base+"/oauth/token", strings.NewReader("grant_type=client_credentials"))
							if err != nil {
								answers[i].err = err
								return
							}
							req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
							req.SetBasicAuth(id, secrets[id])
							<-start
							resp, err := client.Do(req)
							if err != nil {
								answers[i].err = err
								return
							}
							defer resp.Body.Close()
							body, err := io.ReadAll(resp.Body)
							answers[i] = answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), body: string(body), err: err}
						})
					}
					close(start)
					wg.Wait()

					counts := map[int]int{}
					for i, a := range answers {
						require.NoError(t, a.err, "request %d", i)
						counts[a.status]++
						switch a.status {
						case http.StatusOK:
						case http.StatusServiceUnavailable:
							assert.NotEmpty(t, a.retryAfter, "503 without Retry-After: %s", a.body)
							assert.Contains(t, a.body, `"error":"temporarily_unavailable"`)
						default:
							t.Errorf("request %d: %d %s", i, a.status, a.body)
						}
					}
					t.Logf("answers by status: %v", counts)
					if tc.args == nil {
						assert.Positive(t, counts[http.StatusOK], "an unsaturated server issues tokens")
					}
					var errs []string
					for line := range strings.Lines(srv.stderr.String()) {
						if strings.Contains(line, `"level":"ERROR"`) && len(errs) < 3 {
							errs = append(errs, line)
						}
					}
					assert.Empty(t, errs, "errors logged by the server (the first three)")
				})
			}
		})
	}
}

// TestServeRequireAudit: with -require-audit, token requests are answered
// 503 with Retry-After while the audit table cannot be written, and tokens
// are issued again once it can; no event of a token is lost on the way.
func TestServeRequireAudit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "m2mauth.db")
	global := []string{"-db", db, "-signing-key-file", newKeyFile(t)}
	var id, secret string
	for id, secret = range createClients(t, db, 1) {
	}
	srv := startServerWith(t, bin, http.DefaultClient, global, "-addr", "127.0.0.1:0", "-require-audit")
	issued := 0
	token := func() *http.Response {
		resp, body := tokenRequest(t, srv.client, srv.base, id, secret)
		if resp.StatusCode == http.StatusOK {
			issued++
		} else {
			require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s", body)
			require.NotEmpty(t, resp.Header.Get("Retry-After"))
		}
		return resp
	}
	require.Equal(t, http.StatusOK, token().StatusCode)

	sqlDB, err := sql.Open("sqlite", "file:"+db+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	defer sqlDB.Close()
	exec := func(q string) {
		t.Helper()
		_, err := sqlDB.ExecContext(t.Context(), q)
		require.NoError(t, err)
	}
	// The table goes away: the next writes fail, and the server stops
	// issuing tokens once it knows.
	exec("ALTER TABLE m2mauth_audit_events RENAME TO m2mauth_audit_events_away")
	refused := false
	for i := 0; i < 200 && !refused; i++ {
		refused = token().StatusCode == http.StatusServiceUnavailable
		if !refused {
			time.Sleep(50 * time.Millisecond)
		}
	}
	require.True(t, refused, "tokens still issued while the audit table is gone")

	// It comes back: the held events are written and tokens issued again.
	exec("ALTER TABLE m2mauth_audit_events_away RENAME TO m2mauth_audit_events")
	recovered := false
	for i := 0; i < 300 && !recovered; i++ {
		recovered = token().StatusCode == http.StatusOK
		if !recovered {
			time.Sleep(100 * time.Millisecond)
		}
	}
	require.True(t, recovered, "no token after the audit table came back; stderr: %s", srv.stderr)

	require.NoError(t, srv.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-srv.done:
		require.NoError(t, err, "clean exit; stderr: %s", srv.stderr)
	case <-time.After(30 * time.Second):
		t.Fatal("server did not stop on SIGTERM")
	}
	var rows int
	require.NoError(t, sqlDB.QueryRowContext(t.Context(),
		"SELECT COUNT(*) FROM m2mauth_audit_events WHERE event_type = 'token_issued' AND client_id = ?", id).Scan(&rows))
	assert.Equal(t, issued, rows, "one row per issued token")
	_, err = os.Stat(filepath.Join(dir, "m2mauth-audit.spill"))
	assert.ErrorIs(t, err, os.ErrNotExist, "the spill file beside the database is removed once empty")
}

// createClients registers n clients in the store at db, each granted
// read:builders on the default audience, and returns their secrets by id.
// Clients in a shared database are deleted when the test ends.
func createClients(t *testing.T, db string, n int) map[string]string {
	t.Helper()
	d, err := parseDB(db)
	require.NoError(t, err)
	b, err := openBackend(t.Context(), d, backendOptions{pool: defaultPool()})
	require.NoError(t, err)
	defer b.close()
	var suffix [4]byte
	rand.Read(suffix[:])
	prefix := "load-" + hex.EncodeToString(suffix[:]) + "-"
	scopes, err := m2mauth.ParseScopes("read:builders")
	require.NoError(t, err)
	secrets := make(map[string]string, n)
	for i := range n {
		plain, s, err := m2mauth.NewSecret(time.Now(), time.Time{})
		require.NoError(t, err)
		id := prefix + strconv.Itoa(i)
		require.NoError(t, b.store.CreateClient(t.Context(), &m2mauth.Client{
			ID: id, Secrets: []m2mauth.Secret{s}, Grants: map[string]m2mauth.Scopes{"https://api.example.com": scopes},
		}))
		secrets[id] = plain
	}
	if !strings.HasPrefix(b.kind, "SQLite") {
		t.Cleanup(func() {
			b, err := openBackend(context.Background(), d, backendOptions{pool: defaultPool()})
			if err != nil {
				t.Logf("deleting the test clients: %v", err)
				return
			}
			defer b.close()
			for id := range secrets {
				if err := b.store.DeleteClient(context.Background(), id); err != nil && !errors.Is(err, m2mauth.ErrClientNotFound) {
					t.Logf("deleting %s: %v", id, err)
				}
			}
		})
	}
	return secrets
}

func TestLoopbackOnly(t *testing.T) {
	tests := []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:8080", true},
		{"127.0.0.2:8080", true},
		{"[::1]:8080", true},
		{"localhost:8080", true},
		{"LocalHost:0", true},
		{":8080", false},
		{"0.0.0.0:8080", false},
		{"[::]:8080", false},
		{"10.0.0.5:8080", false},
		{"example.com:8080", false},
		{"127.0.0.1", false}, // no port: net.Listen refuses it anyway
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			assert.Equal(t, tc.want, loopbackOnly(tc.addr))
		})
	}
}

// TestBannerCommands: the commands the start-up banner prints carry the
// global flags in use (-db always, the others when not the default), and
// /bin/sh reads them into the arguments meant, whatever quotes the paths
// and values hold. Pasted, they get a token and make a client.
func TestBannerCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	assert.Equal(t, "-db 'm2mauth.db'", globals{db: defaultDB, issuer: defaultIssuer, audience: defaultAudience, alg: defaultAlg}.commandLine())
	assert.Equal(t, "-db 'm2mauth.db' -signing-alg ES256", globals{db: defaultDB, issuer: defaultIssuer, audience: defaultAudience, alg: jose.ES256}.commandLine())

	bin := buildExample(t)
	dir := filepath.Join(t.TempDir(), "it's here")
	require.NoError(t, os.Mkdir(dir, 0o700))
	db := filepath.Join(dir, "clients.db")
	keyFile := newKeyFile(t)
	const issuer, audience = "https://auth.example.com", "https://api.example.com/o'brien"
	global := []string{"-db", db, "-issuer", issuer, "-audience", audience, "-signing-key-file", keyFile}

	// The banner, once complete: its last line names /api/builders.
	banner := func(s *server) string {
		t.Helper()
		for i := 0; ; i++ {
			if out := s.stdout.String(); strings.Contains(out, "/api/builders") {
				return out
			}
			require.Less(t, i, 200, "banner: %s", s.stdout)
			time.Sleep(50 * time.Millisecond)
		}
	}
	// line is the line of out that starts with prefix, trimmed.
	line := func(out, prefix string) string {
		t.Helper()
		for l := range strings.Lines(out) {
			if l = strings.TrimSpace(l); strings.HasPrefix(l, prefix) {
				return l
			}
		}
		t.Fatalf("no line %q in the banner:\n%s", prefix, out)
		return ""
	}
	// curlArgs runs the two curl lines of the banner in /bin/sh, with a
	// curl that records its arguments and answers a token, and returns
	// the arguments of each call.
	curlArgs := func(out string) (first, second []string) {
		t.Helper()
		tmp := t.TempDir()
		script := `curl() {
	f="$TMP/1"; [ -e "$f" ] && f="$TMP/2"
	printf '%s\0' "$@" > "$f"
	printf '{"access_token":"t0k.e.n","token_type":"Bearer"}'
}
` + line(out, "TOKEN=$(curl") + "\n" + line(out, "curl -s -H") + "\n"
		cmd := exec.Command("/bin/sh", "-c", script)
		cmd.Env = append(os.Environ(), "TMP="+tmp)
		msg, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s\n%s", script, msg)
		read := func(name string) []string {
			raw, err := os.ReadFile(filepath.Join(tmp, name))
			require.NoError(t, err, "curl was not called twice:\n%s", script)
			return strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
		}
		return read("1"), read("2")
	}

	// First start: the demo client is created and its secret shown.
	srv := startServerWith(t, bin, http.DefaultClient, global, "-addr", "127.0.0.1:0")
	out := banner(srv)
	secret := strings.TrimSpace(strings.TrimPrefix(line(out, "client_secret:"), "client_secret:"))
	first, second := curlArgs(out)
	assert.Equal(t, []string{"-s", "-u", "demo-client:" + secret, "-d", "grant_type=client_credentials", srv.base + "/oauth/token"}, first)
	assert.Equal(t, []string{"-s", "-H", "Authorization: Bearer t0k.e.n", srv.base + "/api/builders"}, second, "the token that sed took from the answer")
	resp, body := tokenRequest(t, http.DefaultClient, srv.base, "demo-client", secret)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.NoError(t, srv.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-srv.done:
		require.NoError(t, err, "stderr: %s", srv.stderr)
	case <-time.After(30 * time.Second):
		t.Fatal("server did not stop on SIGTERM")
	}

	// Later starts: a placeholder for the secret, and how to make a client.
	srv = startServerWith(t, bin, http.DefaultClient, global, "-addr", "127.0.0.1:0")
	out = banner(srv)
	first, _ = curlArgs(out)
	assert.Equal(t, "demo-client:<the secret shown on the first start>", first[2])
	create := strings.TrimPrefix(line(out, "Make another client with:"), "Make another client with:")
	raw, err := exec.Command("/bin/sh", "-c", `go() { printf '%s\0' "$@"; }; `+create).Output()
	require.NoError(t, err, create)
	args := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
	require.Equal(t, append(append([]string{"run", "./example"}, global...),
		"client", "create", "-id", "my-client", "-scopes", "read:builders read:subcontractors"), args)
	runCLI(t, bin, args[2:]...)
	var v struct {
		Grants map[string]string `json:"grants"`
	}
	require.NoError(t, json.Unmarshal([]byte(runCLI(t, bin, append(global, "client", "show", "-id", "my-client")...)), &v))
	assert.Equal(t, map[string]string{audience: "read:builders read:subcontractors"}, v.Grants)
}

// TestDemoClientStaysDeleted: the demo client is created on the first
// start; once an operator deletes it, a restart does not bring it back
// with a new secret, even when no client is left.
func TestDemoClientStaysDeleted(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	db := filepath.Join(t.TempDir(), "m2mauth.db")
	global := []string{"-db", db, "-signing-key-file", newKeyFile(t)}
	banner := func() string {
		srv := startServerWith(t, bin, http.DefaultClient, global, "-addr", "127.0.0.1:0")
		var out string
		require.Eventually(t, func() bool {
			out = srv.stdout.String()
			return strings.Contains(out, "Call the protected API") || strings.Contains(out, "Make a client with")
		}, 30*time.Second, 10*time.Millisecond)
		stopServer(t, srv)
		return out
	}
	assert.Contains(t, banner(), "Created the demo client")
	assert.Contains(t, banner(), "Using the existing database")
	runCLI(t, bin, append(global, "client", "delete", "-id", demoClientID)...)
	assert.Contains(t, banner(), `No demo client: "demo-client" was deleted`, "deleted, and no client left")
	out, err := exec.Command(bin, append(global, "client", "show", "-id", demoClientID)...).CombinedOutput()
	require.Error(t, err, "%s", out)
	assert.Contains(t, string(out), "not found")
}

// bannerTokenCurl matches the banner's "Get a token" command: the demo
// client's credentials and the URL.
var bannerTokenCurl = regexp.MustCompile(`TOKEN=\$\(curl -s -u '([^':]*):([^']*)' -d grant_type=client_credentials '([^']*)'`)

// TestServeBannerCommands: the start-up banner's commands name the URL
// clients reach the server at. Served with a certificate for -issuer's
// host on every interface (-addr :PORT), the token command, run as
// printed, gets a token (the listener's https://[::]:PORT fails the
// certificate check); behind a TLS-terminating proxy (-trusted-proxies),
// it names -issuer, not the plain HTTP listener, which refuses token
// requests from elsewhere than loopback.
func TestServeBannerCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	certFile, keyFile, roots := selfSignedCertFor(t, "auth.example.com")
	tests := []struct {
		name  string
		tls   bool
		serve func(port string) []string
	}{
		{"TLS on every interface", true, func(port string) []string {
			return []string{"-addr", ":" + port, "-tls-cert", certFile, "-tls-key", keyFile}
		}},
		{"behind a TLS-terminating proxy", false, func(port string) []string {
			return []string{"-addr", "127.0.0.1:" + port, "-trusted-proxies", "127.0.0.1/32"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
			l.Close()
			issuer := "https://auth.example.com:" + port
			// As curl --resolve auth.example.com:PORT:127.0.0.1 would:
			// any host name reaches this server; the certificate check
			// decides.
			dialer := &net.Dialer{Timeout: 5 * time.Second}
			tlsConfig := &tls.Config{RootCAs: roots, ServerName: "auth.example.com", MinVersion: tls.VersionTLS12}
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
				TLSClientConfig: tlsConfig,
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return dialer.DialContext(ctx, network, "127.0.0.1:"+port)
				},
			}}
			global := []string{"-db", filepath.Join(t.TempDir(), "m2mauth.db"), "-signing-key-file", newKeyFile(t), "-issuer", issuer}
			srv := startServerWith(t, bin, client, global, tt.serve(port)...)
			m := bannerTokenCurl.FindStringSubmatch(waitOutput(t, srv, "/api/builders"))
			require.NotNil(t, m, "banner:\n%s", srv.stdout)
			require.Equal(t, issuer+"/oauth/token", m[3])
			if !tt.tls {
				return
			}
			client.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12} // the name the URL gives
			resp, body := tokenRequest(t, client, strings.TrimSuffix(m[3], "/oauth/token"), m[1], m[2])
			require.Equal(t, http.StatusOK, resp.StatusCode, "POST %s: %s", m[3], body)
		})
	}
}
