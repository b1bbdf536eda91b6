package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// binDir holds the command built for this test binary; see TestMain.
var binDir string

var build struct {
	once sync.Once
	path string
	err  error
}

func TestMain(m *testing.M) {
	// Each test configures its signing key, or none, itself: the one of
	// the environment would hide the errors of a missing key. Likewise
	// the KEKs of managed keys, which would make serve manage its keys.
	for _, name := range []string{"M2MAUTH_SIGNING_KEY", kekEnv, oldKEKEnv, newKEKEnv} {
		os.Unsetenv(name)
	}
	dir, err := os.MkdirTemp("", "m2mauth-example-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildExample compiles the command once per test binary.
func buildExample(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		bin := filepath.Join(binDir, "example")
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("go build: %v: %s", err, out)
			return
		}
		build.path = bin
	})
	require.NoError(t, build.err)
	return build.path
}

// newKeyFile writes a new signing key to a file of its own, mode 0600, as
// the command that the example's messages suggest would.
func newKeyFile(t testing.TB) string {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	file := filepath.Join(t.TempDir(), "signing.key")
	require.NoError(t, os.WriteFile(file, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600))
	return file
}

// testDatabase is a -db value for a test: a new SQLite file, or a shared
// server database whose tests use client ids of their own.
type testDatabase struct {
	name string
	db   func(t *testing.T) string // skips t when the database is not configured
}

func testDatabases() []testDatabase {
	return []testDatabase{
		{"SQLite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "m2mauth.db") }},
		{"PostgreSQL", postgresDB},
		{"MySQL", mysqlDB},
	}
}

// postgresDB is M2MAUTH_TEST_POSTGRES_DSN, a postgres:// URL.
func postgresDB(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("M2MAUTH_TEST_POSTGRES_DSN")
	if dsn == "" {
		t.Skip("set M2MAUTH_TEST_POSTGRES_DSN to run against PostgreSQL")
	}
	return dsn
}

// mysqlDB is M2MAUTH_TEST_MYSQL_DSN as a -db value: a mysql:// URL, given
// as one or converted from the go-sql-driver/mysql form.
func mysqlDB(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("M2MAUTH_TEST_MYSQL_DSN")
	if dsn == "" {
		t.Skip("set M2MAUTH_TEST_MYSQL_DSN to run against MySQL or MariaDB")
	}
	u, err := mysqlURL(dsn)
	require.NoError(t, err, "M2MAUTH_TEST_MYSQL_DSN")
	return u
}

// mysqlURL turns a go-sql-driver/mysql DSN, user:pass@tcp(host:port)/db?params,
// into the mysql://user:pass@host:port/db?params URL that -db takes; a
// mysql:// URL is returned as it is.
func mysqlURL(dsn string) (string, error) {
	if strings.HasPrefix(dsn, "mysql://") {
		return dsn, nil
	}
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return "", err
	}
	if cfg.Net != "tcp" {
		return "", fmt.Errorf("the DSN connects over %q: -db takes mysql:// URLs, which connect over TCP", cfg.Net)
	}
	u := url.URL{Scheme: "mysql", Host: cfg.Addr, Path: "/" + cfg.DBName}
	switch {
	case cfg.Passwd != "":
		u.User = url.UserPassword(cfg.User, cfg.Passwd)
	case cfg.User != "":
		u.User = url.User(cfg.User)
	}
	// The parameters as written (the driver has moved the ones it knows
	// into fields of cfg), found as the driver finds them: after the
	// last slash, which ends the address.
	if _, query, ok := strings.Cut(dsn[strings.LastIndex(dsn, "/")+1:], "?"); ok {
		u.RawQuery = query
	}
	return u.String(), nil
}

// runCLI runs one admin command and returns its stdout.
func runCLI(t *testing.T, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "%v: %s", args, stderr.String())
	return stdout.String()
}

// server is a running "example serve".
type server struct {
	cmd    *exec.Cmd
	base   string // the URL it printed, with 127.0.0.1 for an unspecified address
	client *http.Client
	stdout *syncBuffer // the banner
	stderr *syncBuffer
	done   chan error
	lines  chan string // stdout, line by line, until the server is up
}

// syncBuffer is a bytes.Buffer that a process writes while a test reads.
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

// startServer runs "serve -addr 127.0.0.1:0" with the global flags.
func startServer(t *testing.T, bin string, global ...string) *server {
	t.Helper()
	return startServerWith(t, bin, http.DefaultClient, global, "-addr", "127.0.0.1:0")
}

// startServerWith runs "serve" with the global and serve flags and waits,
// boundedly, until its health check answers to client.
func startServerWith(t *testing.T, bin string, client *http.Client, global []string, serveArgs ...string) *server {
	t.Helper()
	return startCommand(t, bin, client, append(append(slices.Clip(global), "serve"), serveArgs...)...)
}

// startCommand runs bin with args, a server that prints "listening on
// URL" on stdout and answers GET /healthz there, and waits, boundedly,
// until the health check answers to client. The process is killed when
// the test ends.
func startCommand(t *testing.T, bin string, client *http.Client, args ...string) *server {
	t.Helper()
	s := spawnCommand(t, bin, client, args...)
	s.await(t)
	return s
}

// spawnCommand starts what startCommand starts, without waiting for it.
func spawnCommand(t testing.TB, bin string, client *http.Client, args ...string) *server {
	t.Helper()
	return spawnLogging(t, bin, client, nil, args...)
}

// spawnLogging is spawnCommand with the server's log (its stderr) written
// to log, when log is not nil, rather than kept for the test to read.
func spawnLogging(t testing.TB, bin string, client *http.Client, log io.Writer, args ...string) *server {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = t.TempDir() // for files it makes in the working directory
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	s := &server{cmd: cmd, client: client, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1), lines: make(chan string, 64)}
	cmd.Stderr = s.stderr
	if log != nil {
		cmd.Stderr = log
	}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill() })

	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.stdout.Write([]byte(sc.Text() + "\n"))
			s.lines <- sc.Text()
		}
		close(s.lines)
		s.done <- cmd.Wait()
	}()
	return s
}

// await waits, boundedly, until the server spawned prints where it
// listens and its health check answers.
func (s *server) await(t testing.TB) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for s.base == "" {
		select {
		case line, ok := <-s.lines:
			require.True(t, ok, "server exited: %s", s.stderr)
			if _, rest, found := strings.Cut(line, "listening on "); found {
				s.base, _, _ = strings.Cut(rest, " ")
			}
		case <-deadline:
			t.Fatalf("server did not start: %s", s.stderr)
		}
	}
	go func() {
		for range s.lines { // keep draining stdout
		}
	}()
	s.base = strings.Replace(s.base, "://0.0.0.0:", "://127.0.0.1:", 1)
	s.base = strings.Replace(s.base, "://[::]:", "://127.0.0.1:", 1)
	for i := 0; ; i++ {
		resp, err := s.client.Get(s.base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		require.Less(t, i, 100, "healthz never answered: %v", err)
		time.Sleep(50 * time.Millisecond)
	}
}

func get(t *testing.T, url, token string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate"), string(body)
}

// TestExampleEndToEnd builds the command, registers a client with the
// admin CLI, serves, gets tokens with golang.org/x/oauth2, calls the
// protected API, rotates the secret, and stops the server with SIGTERM.
func TestExampleEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the example server")
	}
	bin := buildExample(t)
	backends := testDatabases()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			db := b.db(t)
			global := []string{"-db", db, "-signing-key-file", newKeyFile(t)}
			var suffix [4]byte
			rand.Read(suffix[:])
			id := "e2e-" + hex.EncodeToString(suffix[:])
			t.Cleanup(func() { exec.Command(bin, append(global, "client", "delete", "-id", id)...).Run() })

			var created struct{ ClientID, ClientSecret string }
			out := runCLI(t, bin, append(global, "client", "create", "-id", id, "-scopes", "read:builders")...)
			require.NoError(t, json.Unmarshal([]byte(out), &struct {
				ClientID     *string `json:"client_id"`
				ClientSecret *string `json:"client_secret"`
			}{&created.ClientID, &created.ClientSecret}))
			require.Equal(t, id, created.ClientID)
			require.Len(t, created.ClientSecret, 43)

			srv := startServer(t, bin, global...)
			token := func(secret string) (*oauth2.Token, error) {
				cfg := clientcredentials.Config{
					ClientID: id, ClientSecret: secret, TokenURL: srv.base + "/oauth/token",
					AuthStyle: oauth2.AuthStyleInHeader,
				}
				return cfg.Token(t.Context())
			}
			tok, err := token(created.ClientSecret)
			require.NoError(t, err)
			assert.Equal(t, "read:builders", tok.Extra("scope"))

			code, _, body := get(t, srv.base+"/api/builders", tok.AccessToken)
			assert.Equal(t, 200, code)
			assert.Contains(t, body, `"client_id":"`+id+`"`)

			code, challenge, body := get(t, srv.base+"/api/subcontractors", tok.AccessToken)
			assert.Equal(t, 403, code)
			assert.Contains(t, challenge, `error="insufficient_scope"`)
			assert.Contains(t, body, "insufficient_scope")

			code, challenge, _ = get(t, srv.base+"/api/builders", "")
			assert.Equal(t, 401, code)
			assert.Equal(t, `Bearer realm="m2mauth", resource_metadata="http://127.0.0.1:8080/.well-known/oauth-protected-resource"`, challenge)

			var rotated struct {
				ClientSecret string `json:"client_secret"`
			}
			out = runCLI(t, bin, append(global, "client", "rotate-secret", "-id", id, "-grace", "1h")...)
			require.NoError(t, json.Unmarshal([]byte(out), &rotated))
			require.NotEqual(t, created.ClientSecret, rotated.ClientSecret)
			for _, secret := range []string{created.ClientSecret, rotated.ClientSecret} {
				_, err := token(secret)
				assert.NoError(t, err, "both secrets work during the grace period")
			}

			list := runCLI(t, bin, append(global, "client", "list")...)
			assert.Contains(t, list, id)
			assert.NotContains(t, list, created.ClientSecret)
			assert.NotContains(t, list, "$sha256$", "no hashes in the listing")

			require.NoError(t, srv.cmd.Process.Signal(syscall.SIGTERM))
			select {
			case err := <-srv.done:
				assert.NoError(t, err, "clean exit; stderr: %s", srv.stderr)
			case <-time.After(15 * time.Second):
				t.Fatal("server did not stop on SIGTERM")
			}
			logs := srv.stderr.String()
			assert.Contains(t, logs, `"msg":"stopped"`)
			assert.Contains(t, logs, `"event":"token_issued"`)
			assert.NotContains(t, logs, created.ClientSecret)
			assert.NotContains(t, logs, tok.AccessToken)
		})
	}
}

// TestBadValuesChangeNothing: a value refused is refused before anything
// is opened or written: no database file created or migrated, no key
// file, no spill file. Read-only commands do not create a database at a
// mistyped path either.
func TestBadValuesChangeNothing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	const secret = "0123456789abcdef0123456789abcdef0123"
	tests := []struct {
		name string
		args []string // after the global -db and -signing-key-file
		msg  string
	}{
		{"webhook not http(s)", []string{"serve", "-alert-webhook", "ftp://127.0.0.1/x", "-alert-webhook-secret", secret}, "-alert-webhook"},
		{"webhook over http off this machine", []string{"serve", "-alert-webhook", "http://example.com/x", "-alert-webhook-secret", secret}, "-alert-webhook"},
		{"webhook secret too short", []string{"serve", "-alert-webhook", "https://example.com/x", "-alert-webhook-secret", "short"}, "-alert-webhook"},
		{"port out of range", []string{"serve", "-addr", "127.0.0.1:99999"}, "-addr"},
		{"address without a port", []string{"serve", "-addr", "127.0.0.1"}, `-addr "127.0.0.1": want host:port`},
		{"address in use", []string{"serve", "-addr", busy.Addr().String()}, "-addr"},
		{"spill file in a missing directory", []string{"serve", "-audit-spill", "/nonexistent-dir/x.spill"}, "-audit-spill"},
		{"empty issuer", []string{"-issuer=", "serve"}, "Issuer is required"},
		{"JWKS max-age of 0", []string{"-jwks-max-age", "0s", "serve"}, "-jwks-max-age 0s"},
		{"client show on a missing file", []string{"client", "show", "-id", "demo-client"}, "no such database file"},
		{"client list on a missing file", []string{"client", "list"}, "no such database file"},
		{"client usage on a missing file", []string{"client", "usage", "-id", "demo-client"}, "no such database file"},
		{"audit tail on a missing file", []string{"audit", "tail"}, "no such database file"},
		{"key list on a missing file", []string{"key", "list"}, "no such database file"},
		{"key revoke on a missing file", []string{"key", "revoke", "-kid", "nope"}, "no such database file"},
		{"client create with a bad id", []string{"client", "create", "-id", "bad\nid", "-scopes", "read"}, "-id: a client id"},
		{"client create with an audience holding a newline", []string{"client", "create", "-id", "svc", "-scopes", "read", "-audience", "https://x\n"}, "control character"},
		{"client create with an empty audience", []string{"client", "create", "-id", "svc", "-scopes", "read", "-audience", ""}, "-audience is empty"},
		{"client create with a bad scope", []string{"client", "create", "-id", "svc", "-scopes", "re\"ad"}, "scope"},
		{"a spill file is not looked at with -db memory", []string{"-db", "memory", "-issuer=", "serve", "-audit-spill", "/nonexistent-dir/x.spill"}, "Issuer is required"},
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	t.Setenv(kekEnv, base64.StdEncoding.EncodeToString(kek)) // for the key commands
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			args := append([]string{"-db", filepath.Join(dir, "m.db"), "-signing-key-file", filepath.Join(dir, "m.key")}, tc.args...)
			var stdout, stderr bytes.Buffer
			err := run(args, &stdout, &stderr)
			require.Error(t, err)
			assert.Equal(t, 1, exitCode(err))
			assert.Contains(t, err.Error(), tc.msg)
			files, err := os.ReadDir(dir)
			require.NoError(t, err)
			assert.Empty(t, files, "a refused value changed nothing")
		})
	}
}

// TestCLIErrors: bad flags and bad commands print usage and exit 2; bad
// values exit 1 with a message naming the flag.
func TestCLIErrors(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "m.db")
	tests := []struct {
		name string
		args []string
		code int
		msg  string // in the error, when set
	}{
		{"unknown command", []string{"-db", db, "frobnicate"}, 2, ""},
		{"unknown client command", []string{"-db", db, "client", "frobnicate"}, 2, ""},
		{"missing id", []string{"-db", db, "client", "disable"}, 2, ""},
		{"bad flag", []string{"-db", db, "-nope"}, 2, ""},
		{"unknown client", []string{"-db", db, "client", "delete", "-id", "nobody"}, 1, ""},
		{"bad scope", []string{"-db", db, "client", "create", "-id", "x", "-scopes", `a"b`}, 1, ""},
		{"ttl over a day", []string{"-db", db, "client", "create", "-id", "x", "-scopes", "a", "-ttl", "25h"}, 1, "-ttl 25h0m0s is longer than the 24h0m0s"},
		{"ttl of a year", []string{"-db", db, "client", "create", "-id", "x", "-scopes", "a", "-ttl", "10000h"}, 1, "-ttl 10000h0m0s is longer"},
		{"negative ttl", []string{"-db", db, "client", "create", "-id", "x", "-scopes", "a", "-ttl", "-1h"}, 1, "-ttl must not be negative"},
		{"tls cert without key", []string{"-db", db, "serve", "-tls-cert", filepath.Join(dir, "cert.pem")}, 2, ""},
		{"tls key without cert", []string{"-db", db, "serve", "-tls-key", filepath.Join(dir, "key.pem")}, 2, ""},
		{"unknown forwarded header", []string{"-db", db, "serve", "-forwarded-header", "X-Real-IP"}, 1, "-forwarded-header"},
		{"unbounded pool", []string{"-db", db, "serve", "-db-max-open", "0"}, 1, "-db-max-open must be at least 1"},
		{"no concurrency", []string{"-db", db, "serve", "-max-concurrent", "0"}, 1, "-max-concurrent"},
		{"plain HTTP on every interface", []string{"-db", db, "serve", "-addr", ":0"}, 1, "-insecure-http"},
		{"revocation refresh too short", []string{"-db", db, "serve", "-revocation-refresh", "1ms"}, 1, "-revocation-refresh must be at least 10ms"},
		{"revocations stale before a refresh", []string{"-db", db, "serve", "-revocation-refresh", "1s", "-revocation-max-stale", "1s"}, 1, "-revocation-max-stale 1s must be longer than -revocation-refresh 1s"},
		{"negative max stale", []string{"-db", db, "serve", "-revocation-max-stale", "-1s"}, 1, "-revocation-max-stale must not be negative"},
		{"revoke-tokens without id", []string{"-db", db, "client", "revoke-tokens"}, 2, ""},
		{"unknown signing algorithm", []string{"-db", db, "-signing-alg", "HS512", "serve"}, 2, ""},
		{"no signing algorithm", []string{"-db", db, "-signing-alg", "none", "serve"}, 2, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(tc.args, &stdout, &stderr)
			require.Error(t, err)
			assert.Equal(t, tc.code, exitCode(err))
			assert.Empty(t, stdout.String())
			if tc.msg != "" {
				assert.Contains(t, err.Error(), tc.msg)
			}
		})
	}
}
