package main

import (
	"bytes"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSigningKey: where the key comes from for each kind of -db, and the
// errors that say how to make one.
func TestSigningKey(t *testing.T) {
	spec := func(t *testing.T, db string) *dbSpec {
		t.Helper()
		d, err := parseDB(db)
		require.NoError(t, err)
		return d
	}
	servers := []struct{ name, db string }{
		// Nothing listens there: the key is settled before connecting.
		{"PostgreSQL", "postgres://postgres@127.0.0.1:1/test?sslmode=disable"},
		{"MySQL", "mysql://root@127.0.0.1:1/test"},
	}

	t.Run("a server database needs a configured key", func(t *testing.T) {
		t.Chdir(t.TempDir())
		for _, s := range servers {
			t.Run(s.name, func(t *testing.T) {
				var log bytes.Buffer
				_, err := signingKey(spec(t, s.db), "", &log)
				require.Error(t, err)
				msg := err.Error()
				assert.Contains(t, msg, s.name+" at 127.0.0.1:1")
				assert.Contains(t, msg, "must all sign with one key, or tokens issued by one are refused by the others")
				assert.Contains(t, msg, "head -c 32 /dev/urandom | base64")
				assert.Contains(t, msg, "M2MAUTH_SIGNING_KEY")
				assert.Contains(t, msg, "-signing-key-file")
				assert.NotContains(t, msg, "127.0.0.1:1/test", "no DSN in the message")
				assert.Empty(t, log.String())
				_, err = os.Stat("m2mauth.key")
				assert.ErrorIs(t, err, os.ErrNotExist, "no key written to the working directory")
			})
		}
	})
	t.Run("a server database with the key in the environment", func(t *testing.T) {
		key := bytes.Repeat([]byte{7}, 32)
		t.Setenv("M2MAUTH_SIGNING_KEY", base64.StdEncoding.EncodeToString(key))
		for _, s := range servers {
			got, err := signingKey(spec(t, s.db), "", &bytes.Buffer{})
			require.NoError(t, err)
			assert.Equal(t, key, got)
		}
	})
	t.Run("a server database with a key file", func(t *testing.T) {
		file := newKeyFile(t)
		for _, s := range servers {
			var log bytes.Buffer
			got, err := signingKey(spec(t, s.db), file, &log)
			require.NoError(t, err)
			assert.Len(t, got, 32)
			assert.Empty(t, log.String())
		}
	})
	t.Run("a -signing-key-file that does not exist", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "it's missing.key")
		for _, db := range []string{filepath.Join(t.TempDir(), "m.db"), "memory", servers[0].db} {
			_, err := signingKey(spec(t, db), file, &bytes.Buffer{})
			require.Error(t, err, db)
			assert.Contains(t, err.Error(), "-signing-key-file "+file+" does not exist")
			assert.Contains(t, err.Error(), `(umask 077 && head -c 32 /dev/urandom | base64 > '`+strings.ReplaceAll(file, "'", `'\''`)+`')`)
			_, err = os.Stat(file)
			assert.ErrorIs(t, err, os.ErrNotExist, "no key generated")
		}
	})
	t.Run("the suggested command makes a key that is read", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "it's new.key")
		_, err := signingKey(spec(t, "memory"), file, &bytes.Buffer{})
		require.Error(t, err)
		_, cmd, ok := strings.Cut(err.Error(), "create it with:\n  ")
		require.True(t, ok, err.Error())
		cmd, _, _ = strings.Cut(cmd, "\n")
		out, err := exec.Command("/bin/sh", "-c", cmd).CombinedOutput()
		require.NoError(t, err, "%s: %s", cmd, out)
		var log bytes.Buffer
		key, err := signingKey(spec(t, "memory"), file, &log)
		require.NoError(t, err)
		assert.Len(t, key, 32)
		assert.Empty(t, log.String(), "mode 0600: no warning")
	})
	t.Run("a key file that is not a key", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "short.key")
		require.NoError(t, os.WriteFile(file, []byte(base64.StdEncoding.EncodeToString([]byte("short"))), 0o600))
		_, err := signingKey(spec(t, "memory"), file, &bytes.Buffer{})
		require.Error(t, err)
		assert.Contains(t, err.Error(), file+": want base64 of at least 32 bytes")
	})
	t.Run("the environment wins over the file", func(t *testing.T) {
		key := bytes.Repeat([]byte{9}, 32)
		t.Setenv("M2MAUTH_SIGNING_KEY", base64.StdEncoding.EncodeToString(key))
		var log bytes.Buffer
		got, err := signingKey(spec(t, "memory"), "/nonexistent/key", &log)
		require.NoError(t, err)
		assert.Equal(t, key, got)
		assert.Contains(t, log.String(), "M2MAUTH_SIGNING_KEY is set, so -signing-key-file /nonexistent/key is not read")
	})
	t.Run("SQLite keeps a generated key beside the file", func(t *testing.T) {
		db := filepath.Join(t.TempDir(), "clients.db")
		var log bytes.Buffer
		first, err := signingKey(spec(t, db), "", &log)
		require.NoError(t, err)
		file := filepath.Join(filepath.Dir(db), "clients.key")
		assert.Contains(t, log.String(), "generated a new signing key and saved it to "+file)
		st, err := os.Stat(file)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
		log.Reset()
		again, err := signingKey(spec(t, db), "", &log)
		require.NoError(t, err)
		assert.Equal(t, first, again, "restarts keep the key")
		assert.Empty(t, log.String())
	})
	t.Run("memory uses a key per process", func(t *testing.T) {
		var log bytes.Buffer
		key, err := signingKey(spec(t, "memory"), "", &log)
		require.NoError(t, err)
		assert.Len(t, key, 32)
		assert.Contains(t, log.String(), "for this process only")
	})
}

// TestServeKeyErrors: serve stops at start-up, with exit status 1 and
// before it opens the database, when the key is missing.
func TestServeKeyErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.key")
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"missing key file", []string{"-db", "memory", "-signing-key-file", missing, "serve", "-addr", "127.0.0.1:0"}, "-signing-key-file " + missing + " does not exist"},
		{"PostgreSQL without a key", []string{"-db", "postgres://postgres@127.0.0.1:1/test", "serve", "-addr", "127.0.0.1:0"}, "the servers on PostgreSQL at 127.0.0.1:1 must all sign with one key"},
		{"MySQL without a key", []string{"-db", "mysql://root@127.0.0.1:1/test", "serve", "-addr", "127.0.0.1:0"}, "the servers on MySQL at 127.0.0.1:1 must all sign with one key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(tc.args, &stdout, &stderr)
			require.Error(t, err)
			assert.Equal(t, 1, exitCode(err))
			assert.Contains(t, err.Error(), tc.msg)
			assert.NotContains(t, err.Error(), "connect", "refused before connecting")
			assert.Empty(t, stdout.String())
		})
	}
}
