package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// buildExample compiles the command once per test binary.
func buildExample(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "example")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
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
	base   string
	stderr *bytes.Buffer
	done   chan error
}

func startServer(t *testing.T, bin string, global ...string) *server {
	t.Helper()
	cmd := exec.Command(bin, append(global, "serve", "-addr", "127.0.0.1:0")...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	s := &server{cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = s.stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill() })

	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		s.done <- cmd.Wait()
	}()
	deadline := time.After(30 * time.Second)
	for s.base == "" {
		select {
		case line, ok := <-lines:
			require.True(t, ok, "server exited: %s", s.stderr)
			if _, rest, found := strings.Cut(line, "listening on "); found {
				s.base, _, _ = strings.Cut(rest, " ")
			}
		case <-deadline:
			t.Fatalf("server did not start: %s", s.stderr)
		}
	}
	go func() {
		for range lines { // keep draining stdout
		}
	}()
	for i := 0; ; i++ {
		resp, err := http.Get(s.base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
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
	backends := []struct {
		name string
		db   func(t *testing.T) string
	}{
		{"SQLite", func(t *testing.T) string { return filepath.Join(t.TempDir(), "m2mauth.db") }},
		{"PostgreSQL", func(t *testing.T) string {
			dsn := os.Getenv("M2MAUTH_TEST_POSTGRES_DSN")
			if dsn == "" {
				t.Skip("set M2MAUTH_TEST_POSTGRES_DSN to run against PostgreSQL")
			}
			return dsn
		}},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			db := b.db(t)
			global := []string{"-db", db, "-signing-key-file", filepath.Join(t.TempDir(), "key")}
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
			assert.Equal(t, `Bearer realm="m2mauth"`, challenge)

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

// TestCLIErrors: bad flags and bad commands print usage and exit non-zero.
func TestCLIErrors(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "m.db")
	tests := []struct {
		name string
		args []string
		code int
	}{
		{"unknown command", []string{"-db", db, "frobnicate"}, 2},
		{"unknown client command", []string{"-db", db, "client", "frobnicate"}, 2},
		{"missing id", []string{"-db", db, "client", "disable"}, 2},
		{"bad flag", []string{"-db", db, "-nope"}, 2},
		{"unknown client", []string{"-db", db, "client", "delete", "-id", "nobody"}, 1},
		{"bad scope", []string{"-db", db, "client", "create", "-id", "x", "-scopes", `a"b`}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(tc.args, &stdout, &stderr)
			require.Error(t, err)
			assert.Equal(t, tc.code, exitCode(err))
			assert.Empty(t, stdout.String())
		})
	}
}
