package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
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
				_, err := signingKey(spec(t, s.db), jose.HS256, "", &log)
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
			got, err := signingKey(spec(t, s.db), jose.HS256, "", &bytes.Buffer{})
			require.NoError(t, err)
			assert.Equal(t, key, got.Key)
		}
	})
	t.Run("a server database with a key file", func(t *testing.T) {
		file := newKeyFile(t)
		for _, s := range servers {
			var log bytes.Buffer
			got, err := signingKey(spec(t, s.db), jose.HS256, file, &log)
			require.NoError(t, err)
			assert.Len(t, got.Key, 32)
			assert.Empty(t, log.String())
		}
	})
	t.Run("a -signing-key-file that does not exist", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "it's missing.key")
		for _, db := range []string{filepath.Join(t.TempDir(), "m.db"), "memory", servers[0].db} {
			_, err := signingKey(spec(t, db), jose.HS256, file, &bytes.Buffer{})
			require.Error(t, err, db)
			assert.Contains(t, err.Error(), "-signing-key-file "+file+" does not exist")
			assert.Contains(t, err.Error(), `(umask 077 && head -c 32 /dev/urandom | base64 > '`+strings.ReplaceAll(file, "'", `'\''`)+`')`)
			_, err = os.Stat(file)
			assert.ErrorIs(t, err, os.ErrNotExist, "no key generated")
		}
	})
	t.Run("the suggested command makes a key that is read", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "it's new.key")
		_, err := signingKey(spec(t, "memory"), jose.HS256, file, &bytes.Buffer{})
		require.Error(t, err)
		_, cmd, ok := strings.Cut(err.Error(), "create it with:\n  ")
		require.True(t, ok, err.Error())
		cmd, _, _ = strings.Cut(cmd, "\n")
		out, err := exec.Command("/bin/sh", "-c", cmd).CombinedOutput()
		require.NoError(t, err, "%s: %s", cmd, out)
		var log bytes.Buffer
		key, err := signingKey(spec(t, "memory"), jose.HS256, file, &log)
		require.NoError(t, err)
		assert.Len(t, key.Key, 32)
		assert.Empty(t, log.String(), "mode 0600: no warning")
	})
	t.Run("a key file that is not a key", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "short.key")
		require.NoError(t, os.WriteFile(file, []byte(base64.StdEncoding.EncodeToString([]byte("short"))), 0o600))
		_, err := signingKey(spec(t, "memory"), jose.HS256, file, &bytes.Buffer{})
		require.Error(t, err)
		assert.Contains(t, err.Error(), file+": want base64 of at least 32 bytes")
	})
	t.Run("the environment wins over the file", func(t *testing.T) {
		key := bytes.Repeat([]byte{9}, 32)
		t.Setenv("M2MAUTH_SIGNING_KEY", base64.StdEncoding.EncodeToString(key))
		var log bytes.Buffer
		got, err := signingKey(spec(t, "memory"), jose.HS256, "/nonexistent/key", &log)
		require.NoError(t, err)
		assert.Equal(t, key, got.Key)
		assert.Contains(t, log.String(), "M2MAUTH_SIGNING_KEY is set, so -signing-key-file /nonexistent/key is not read")
	})
	t.Run("SQLite keeps a generated key beside the file", func(t *testing.T) {
		db := filepath.Join(t.TempDir(), "clients.db")
		var log bytes.Buffer
		first, err := signingKey(spec(t, db), jose.HS256, "", &log)
		require.NoError(t, err)
		file := filepath.Join(filepath.Dir(db), "clients.key")
		assert.Contains(t, log.String(), "generated a new signing key and saved it to "+file)
		st, err := os.Stat(file)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
		log.Reset()
		again, err := signingKey(spec(t, db), jose.HS256, "", &log)
		require.NoError(t, err)
		assert.Equal(t, first, again, "restarts keep the key")
		assert.Empty(t, log.String())
	})
	t.Run("memory uses a key per process", func(t *testing.T) {
		var log bytes.Buffer
		key, err := signingKey(spec(t, "memory"), jose.HS256, "", &log)
		require.NoError(t, err)
		assert.Len(t, key.Key, 32)
		assert.Contains(t, log.String(), "for this process only")
	})
}

// TestServeKeyErrors: serve stops at start-up, with exit status 1 and
// before it opens the database, when the key is missing or made for
// another algorithm.
func TestServeKeyErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.key")
	es256, err := m2mauth.GenerateSigningKey(jose.ES256)
	require.NoError(t, err)
	pemData, err := m2mauth.MarshalKeyPEM(es256)
	require.NoError(t, err)
	es256File := filepath.Join(t.TempDir(), "es256.pem")
	require.NoError(t, os.WriteFile(es256File, pemData, 0o600))
	hs256File := newKeyFile(t)
	tests := []struct {
		name string
		args []string
		msg  string
	}{
		{"missing key file", []string{"-db", "memory", "-signing-key-file", missing, "serve", "-addr", "127.0.0.1:0"}, "-signing-key-file " + missing + " does not exist"},
		{"PostgreSQL without a key", []string{"-db", "postgres://postgres@127.0.0.1:1/test", "serve", "-addr", "127.0.0.1:0"}, "the servers on PostgreSQL at 127.0.0.1:1 must all sign with one key"},
		{"MySQL without a key", []string{"-db", "mysql://root@127.0.0.1:1/test", "serve", "-addr", "127.0.0.1:0"}, "the servers on MySQL at 127.0.0.1:1 must all sign with one key"},
		{"key file for another algorithm", []string{"-db", "postgres://postgres@127.0.0.1:1/test", "-signing-alg", "EdDSA", "-signing-key-file", es256File, "serve", "-addr", "127.0.0.1:0"},
			es256File + " holds a key for ES256, not for -signing-alg EdDSA: give -signing-alg ES256"},
		{"base64 key file for ES256", []string{"-db", "memory", "-signing-alg", "ES256", "-signing-key-file", hs256File, "serve", "-addr", "127.0.0.1:0"},
			hs256File + " holds a key for HS256, not for -signing-alg ES256"},
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

// TestParseKey: the formats a key comes in, and a key made for another
// algorithm than -signing-alg refused with a message naming both.
func TestParseKey(t *testing.T) {
	gen := func(alg jose.SignatureAlgorithm) jose.JSONWebKey {
		t.Helper()
		k, err := m2mauth.GenerateSigningKey(alg)
		require.NoError(t, err)
		return k
	}
	pemOf := func(k jose.JSONWebKey) []byte {
		t.Helper()
		b, err := m2mauth.MarshalKeyPEM(k)
		require.NoError(t, err)
		return b
	}
	jwkOf := func(k jose.JSONWebKey) []byte {
		t.Helper()
		b, err := json.Marshal(k)
		require.NoError(t, err)
		return b
	}
	es, ed, rs, hs := gen(jose.ES256), gen(jose.EdDSA), gen(jose.RS256), gen(jose.HS256)
	hsBase64 := []byte(base64.StdEncoding.EncodeToString(hs.Key.([]byte)) + "\n")
	tests := []struct {
		name string
		alg  jose.SignatureAlgorithm
		data []byte
		kid  string // of the key read
		err  string // the whole message, or the start of it
	}{
		{"ES256 PEM", jose.ES256, pemOf(es), es.KeyID, ""},
		{"ES256 JWK", jose.ES256, jwkOf(es), es.KeyID, ""},
		{"EdDSA PEM", jose.EdDSA, pemOf(ed), ed.KeyID, ""},
		{"RSA PEM for RS256", jose.RS256, pemOf(rs), rs.KeyID, ""},
		{"RSA PEM for PS256", jose.PS256, pemOf(rs), rs.KeyID, ""},
		{"HS256 base64", jose.HS256, hsBase64, hs.KeyID, ""},
		{"HS256 JWK", jose.HS256, jwkOf(hs), hs.KeyID, ""},

		{"ES256 PEM for EdDSA", jose.EdDSA, pemOf(es), "", "KEY holds a key for ES256, not for -signing-alg EdDSA: give -signing-alg ES256, or a key made for EdDSA"},
		{"RSA PEM for ES256", jose.ES256, pemOf(rs), "", "KEY holds a key for RS256 or PS256, not for -signing-alg ES256: give -signing-alg RS256, or a key made for ES256"},
		{"HS256 base64 for ES256", jose.ES256, hsBase64, "", "KEY holds a key for HS256, not for -signing-alg ES256"},
		{"ES256 PEM for HS256", jose.HS256, pemOf(es), "", "KEY holds a key for ES256, not for -signing-alg HS256"},
		{"EdDSA JWK for ES256", jose.ES256, jwkOf(ed), "", "KEY holds a key for EdDSA, not for -signing-alg ES256"},
		{"public key", jose.ES256, pemOf(es.Public()), "", "KEY holds a public key; the server signs with the private key"},
		{"public JWK", jose.EdDSA, jwkOf(ed.Public()), "", "KEY holds a public key"},
		{"not a key", jose.ES256, []byte("hello"), "", "KEY: want a private key for ES256, as PEM (PKCS #8, SEC 1 or PKCS #1) or as a JWK"},
		{"short secret", jose.HS256, []byte(base64.StdEncoding.EncodeToString([]byte("short"))), "", "KEY: want base64 of at least 32 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := parseKey(tc.alg, tc.data, "KEY")
			if tc.err != "" {
				require.Error(t, err)
				assert.True(t, strings.HasPrefix(err.Error(), tc.err), "got %q", err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, string(tc.alg), k.Algorithm)
			assert.Equal(t, tc.kid, k.KeyID, "the kid of the key as generated")
			assert.False(t, k.IsPublic())
		})
	}
}

// TestSigningKeyAlgorithms: keys of ES256, EdDSA, RS256 and PS256 come
// from where HS256 keys do, in PEM or JWK; a SQLite database keeps each
// algorithm's generated key in a PEM file of its own.
func TestSigningKeyAlgorithms(t *testing.T) {
	spec := func(t *testing.T, db string) *dbSpec {
		t.Helper()
		d, err := parseDB(db)
		require.NoError(t, err)
		return d
	}
	const postgres = "postgres://postgres@127.0.0.1:1/test?sslmode=disable"

	t.Run("SQLite keeps a generated key beside the file", func(t *testing.T) {
		db := filepath.Join(t.TempDir(), "clients.db")
		var log bytes.Buffer
		first, err := signingKey(spec(t, db), jose.ES256, "", &log)
		require.NoError(t, err)
		file := filepath.Join(filepath.Dir(db), "clients-es256.pem")
		assert.Contains(t, log.String(), "generated a new signing key and saved it to "+file+" (mode 0600)")
		st, err := os.Stat(file)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
		raw, err := os.ReadFile(file)
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(string(raw), "-----BEGIN PRIVATE KEY-----\n"), "PKCS #8 PEM")

		log.Reset()
		again, err := signingKey(spec(t, db), jose.ES256, "", &log)
		require.NoError(t, err)
		assert.Equal(t, first.KeyID, again.KeyID, "restarts keep the key")
		assert.Empty(t, log.String())

		// Another algorithm gets a file of its own, never this one.
		ed, err := signingKey(spec(t, db), jose.EdDSA, "", &log)
		require.NoError(t, err)
		assert.Equal(t, string(jose.EdDSA), ed.Algorithm)
		assert.FileExists(t, filepath.Join(filepath.Dir(db), "clients-eddsa.pem"))
	})
	t.Run("a server database needs a configured key", func(t *testing.T) {
		t.Chdir(t.TempDir())
		_, err := signingKey(spec(t, postgres), jose.ES256, "", &bytes.Buffer{})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "must all sign with one key")
		assert.Contains(t, err.Error(), `M2MAUTH_SIGNING_KEY="$(cat FILE)"`)
		assert.Contains(t, err.Error(), "(umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out FILE)")
	})
	t.Run("the key in the environment, as PEM or JWK", func(t *testing.T) {
		k, err := m2mauth.GenerateSigningKey(jose.PS256)
		require.NoError(t, err)
		p, err := m2mauth.MarshalKeyPEM(k)
		require.NoError(t, err)
		j, err := json.Marshal(k)
		require.NoError(t, err)
		for _, v := range []string{string(p), string(j)} {
			t.Setenv("M2MAUTH_SIGNING_KEY", v)
			got, err := signingKey(spec(t, postgres), jose.PS256, "", &bytes.Buffer{})
			require.NoError(t, err)
			assert.Equal(t, k.KeyID, got.KeyID)
		}
		_, err = signingKey(spec(t, postgres), jose.ES256, "", &bytes.Buffer{})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "M2MAUTH_SIGNING_KEY holds a key for PS256, not for -signing-alg ES256", "the JWK names its algorithm")
	})
	t.Run("a -signing-key-file that does not exist", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "missing.pem")
		_, err := signingKey(spec(t, "memory"), jose.EdDSA, file, &bytes.Buffer{})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "-signing-key-file "+file+" does not exist; create it with:\n  (umask 077 && openssl genpkey -algorithm ED25519 -out '"+file+"')")
	})
	t.Run("the suggested commands make keys that are read", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			t.Skipf("openssl is not installed: %v", err)
		}
		for _, alg := range []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA, jose.RS256} {
			file := filepath.Join(t.TempDir(), "it's "+string(alg)+".pem")
			_, err := signingKey(spec(t, "memory"), alg, file, &bytes.Buffer{})
			require.Error(t, err)
			_, cmd, ok := strings.Cut(err.Error(), "create it with:\n  ")
			require.True(t, ok, err.Error())
			cmd, _, _ = strings.Cut(cmd, "\n")
			out, err := exec.Command("/bin/sh", "-c", cmd).CombinedOutput()
			require.NoError(t, err, "%s: %s", cmd, out)
			var log bytes.Buffer
			key, err := signingKey(spec(t, "memory"), alg, file, &log)
			require.NoError(t, err, alg)
			assert.Equal(t, string(alg), key.Algorithm)
			assert.Empty(t, log.String(), "mode 0600: no warning")
		}
	})
	t.Run("memory uses a key per process", func(t *testing.T) {
		k, err := signingKey(spec(t, "memory"), jose.RS256, "", &bytes.Buffer{})
		require.NoError(t, err)
		assert.Equal(t, string(jose.RS256), k.Algorithm)
	})
}

// TestSigningKeyFirstStartTogether: servers started at once on a new
// SQLite database each find no key, generate one and save it; they must
// all end up with the one saved first, and none may read the file before
// it is whole.
func TestSigningKeyFirstStartTogether(t *testing.T) {
	const rounds, servers = 50, 4
	for _, alg := range []jose.SignatureAlgorithm{jose.HS256, jose.ES256} {
		t.Run(string(alg), func(t *testing.T) {
			for i := range rounds {
				d, err := parseDB(filepath.Join(t.TempDir(), "m.db"))
				require.NoError(t, err)
				keys := make([]jose.JSONWebKey, servers)
				errs := make([]error, servers)
				var wg sync.WaitGroup
				for j := range servers {
					wg.Go(func() { keys[j], errs[j] = signingKey(d, alg, "", &bytes.Buffer{}) })
				}
				wg.Wait()
				for j := range servers {
					require.NoError(t, errs[j], "round %d, server %d", i, j)
					require.Equal(t, keys[0].KeyID, keys[j].KeyID, "round %d, server %d", i, j)
				}
				left, err := filepath.Glob(filepath.Join(filepath.Dir(d.file), ".*.tmp"))
				require.NoError(t, err)
				require.Empty(t, left, "temporary files left behind")
			}
		})
	}
}
