package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newKEK returns a new key-encryption key in base64, as
// "openssl rand -base64 32" makes one.
func newKEK(t *testing.T) string {
	t.Helper()
	kek := make([]byte, 32)
	rand.Read(kek)
	return base64.StdEncoding.EncodeToString(kek)
}

// TestKeySchedule: the defaults of the key schedule's flags follow
// -jwks-max-age, and a propagation delay shorter than a verifier may
// cache the key set, or a rotation sooner than the propagation, is
// refused naming the flags.
func TestKeySchedule(t *testing.T) {
	tests := []struct {
		name                             string
		args                             []string
		flagRefresh                      time.Duration // serve's -key-refresh
		maxAge, delay, rotation, refresh time.Duration // resolved
		err                              string
	}{
		{name: "defaults", maxAge: 5 * time.Minute, delay: 10 * time.Minute, rotation: 90 * 24 * time.Hour, refresh: 30 * time.Second},
		{name: "the delay follows the max-age", args: []string{"-jwks-max-age", "1h"},
			maxAge: time.Hour, delay: 2 * time.Hour, rotation: 90 * 24 * time.Hour, refresh: 30 * time.Second},
		{name: "a short delay refreshes sooner", args: []string{"-jwks-max-age", "1s"},
			maxAge: time.Second, delay: 2 * time.Second, rotation: 90 * 24 * time.Hour, refresh: 500 * time.Millisecond},
		{name: "all given", args: []string{"-jwks-max-age", "1s", "-key-propagation-delay", "2s", "-key-rotation-interval", "1h"}, flagRefresh: 100 * time.Millisecond,
			maxAge: time.Second, delay: 2 * time.Second, rotation: time.Hour, refresh: 100 * time.Millisecond},
		{name: "delay under the max-age", args: []string{"-key-propagation-delay", "1m"},
			err: "-key-propagation-delay 1m0s is shorter than -jwks-max-age 5m0s plus -key-refresh 15s"},
		{name: "delay under the max-age and the refresh", args: []string{"-jwks-max-age", "1s", "-key-propagation-delay", "2s"}, flagRefresh: time.Second + time.Millisecond,
			err: "-key-propagation-delay 2s is shorter than -jwks-max-age 1s plus -key-refresh 1.001s"},
		{name: "rotation within the delay", args: []string{"-key-rotation-interval", "10m"},
			err: "-key-rotation-interval 10m0s must be longer than -key-propagation-delay 10m0s"},
		{name: "a max-age of 0 is refused, not taken for the default", args: []string{"-jwks-max-age", "0s"}, err: "-jwks-max-age 0s: want from 1s to 24h0m0s"},
		{name: "a rotation interval of 0 is refused", args: []string{"-key-rotation-interval", "0s"}, err: "-key-rotation-interval 0s must be longer than -key-propagation-delay 10m0s"},
		{name: "max-age under a second", args: []string{"-jwks-max-age", "500ms"}, err: "-jwks-max-age 500ms: want from 1s to 24h0m0s"},
		{name: "max-age over a day", args: []string{"-jwks-max-age", "25h"}, err: "-jwks-max-age 25h0m0s: want from 1s to 24h0m0s"},
		{name: "negative delay", args: []string{"-key-propagation-delay", "-1s"}, err: "-key-propagation-delay must not be negative"},
		{name: "refresh too short", flagRefresh: time.Millisecond, err: "-key-refresh must be at least 10ms"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s keySchedule
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			s.addFlags(fs)
			require.NoError(t, fs.Parse(tc.args))
			s.refresh = tc.flagRefresh
			got, err := s.resolve()
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.maxAge, got.jwksMaxAge)
			assert.Equal(t, tc.delay, got.propagationDelay)
			assert.Equal(t, tc.rotation, got.rotationInterval)
			assert.Equal(t, tc.refresh, got.refresh)
		})
	}
}

// TestChooseKeys: $M2MAUTH_KEK makes serve manage its keys in a database,
// ES256 unless -signing-alg says otherwise; -db memory ignores it, with a
// warning; without it nothing changes.
func TestChooseKeys(t *testing.T) {
	spec := func(t *testing.T, db string) *dbSpec {
		t.Helper()
		d, err := parseDB(db)
		require.NoError(t, err)
		return d
	}
	sqlite := filepath.Join(t.TempDir(), "m.db")
	postgres := "postgres://postgres@127.0.0.1:1/test"

	t.Run("managed", func(t *testing.T) {
		t.Setenv(kekEnv, newKEK(t))
		for _, db := range []string{sqlite, postgres} {
			var log bytes.Buffer
			k, err := chooseKeys(spec(t, db), globals{alg: defaultAlg}, &log)
			require.NoError(t, err)
			assert.True(t, k.managed())
			assert.Equal(t, jose.ES256, k.alg, "ES256 unless -signing-alg is given")
			assert.Len(t, k.sealer.KEKID(), 16)
			assert.Empty(t, k.oldKEK)
			assert.Empty(t, log.String())
			_, err = os.Stat(defaultKeyFile(sqlite, defaultAlg))
			assert.ErrorIs(t, err, os.ErrNotExist, "no key file made")
		}
		k, err := chooseKeys(spec(t, sqlite), globals{alg: jose.EdDSA, algSet: true}, io.Discard)
		require.NoError(t, err)
		assert.Equal(t, jose.EdDSA, k.alg)
	})
	t.Run("managed, with the previous KEK", func(t *testing.T) {
		old := newKEK(t)
		t.Setenv(kekEnv, newKEK(t))
		t.Setenv(oldKEKEnv, old)
		k, err := chooseKeys(spec(t, sqlite), globals{alg: defaultAlg}, io.Discard)
		require.NoError(t, err)
		require.NotEmpty(t, k.oldKEK)
		assert.NotEqual(t, k.sealer.KEKID(), k.oldKEK)
		assert.Contains(t, k.describe(keySchedule{propagationDelay: 10 * time.Minute, rotationInterval: 90 * 24 * time.Hour}),
			"managed in the database, KEK "+k.sealer.KEKID()+" (and the previous KEK "+k.oldKEK+"), rotating every 2160h (90 days), propagation delay 10m, new keys ES256")
	})
	t.Run("memory ignores the KEK", func(t *testing.T) {
		t.Setenv(kekEnv, newKEK(t))
		var log bytes.Buffer
		k, err := chooseKeys(spec(t, "memory"), globals{alg: defaultAlg}, &log)
		require.NoError(t, err)
		assert.False(t, k.managed())
		require.NotNil(t, k.static)
		assert.Contains(t, log.String(), "warning: $M2MAUTH_KEK is ignored: -db memory keeps no signing keys between processes")
	})
	t.Run("no KEK: the configured key", func(t *testing.T) {
		file := newKeyFile(t)
		k, err := chooseKeys(spec(t, postgres), globals{alg: defaultAlg, keyFile: file}, io.Discard)
		require.NoError(t, err)
		assert.False(t, k.managed())
		require.NotNil(t, k.static)
	})
}

// TestServeManagedKeyErrors: serve stops at start-up, with exit status 1
// and before it connects to the database, when a KEK is not one, when
// $M2MAUTH_KEK comes with a key of its own, and when the key schedule
// cannot be kept. No message repeats a KEK.
func TestServeManagedKeyErrors(t *testing.T) {
	const db = "postgres://postgres@127.0.0.1:1/test" // nothing listens there
	good := newKEK(t)
	tests := []struct {
		name     string
		env      map[string]string
		args     []string // global flags
		serveArg []string
		msg      string
	}{
		{"KEK not base64", map[string]string{kekEnv: "not base64!"}, nil, nil, "$M2MAUTH_KEK: m2mauth: the KEK is not base64"},
		{"KEK too short", map[string]string{kekEnv: base64.StdEncoding.EncodeToString(make([]byte, 16))}, nil, nil, "$M2MAUTH_KEK: m2mauth: the KEK decodes to 16 bytes, not 32"},
		{"KEK of zeros", map[string]string{kekEnv: base64.StdEncoding.EncodeToString(make([]byte, 32))}, nil, nil, "$M2MAUTH_KEK: m2mauth: KEK is all zero bytes"},
		{"old KEK not base64", map[string]string{kekEnv: good, oldKEKEnv: "%%%"}, nil, nil, "$M2MAUTH_OLD_KEK: m2mauth: the KEK is not base64"},
		{"old KEK without a KEK", map[string]string{oldKEKEnv: good}, nil, nil, "$M2MAUTH_OLD_KEK is set without $M2MAUTH_KEK"},
		{"KEK and a key file", map[string]string{kekEnv: good}, []string{"-signing-key-file", "/nonexistent/key"}, nil,
			"both $M2MAUTH_KEK and -signing-key-file are given"},
		{"KEK and a key in the environment", map[string]string{kekEnv: good, "M2MAUTH_SIGNING_KEY": base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))}, nil, nil,
			"both $M2MAUTH_KEK and $M2MAUTH_SIGNING_KEY are given"},
		{"delay shorter than the JWKS is cached", map[string]string{kekEnv: good}, []string{"-key-propagation-delay", "1m"}, nil,
			"-key-propagation-delay 1m0s is shorter than -jwks-max-age 5m0s plus -key-refresh 15s"},
		{"refresh as long as the delay", map[string]string{kekEnv: good}, []string{"-jwks-max-age", "1s", "-key-propagation-delay", "2s"}, []string{"-key-refresh", "2s"},
			"-key-propagation-delay 2s is shorter than -jwks-max-age 1s plus -key-refresh 2s"},
		{"rotation within the delay", map[string]string{kekEnv: good}, []string{"-key-rotation-interval", "5m"}, nil,
			"-key-rotation-interval 5m0s must be longer than -key-propagation-delay 10m0s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := append(append([]string{"-db", db}, tc.args...), "serve", "-addr", "127.0.0.1:0")
			var stdout, stderr bytes.Buffer
			err := run(append(args, tc.serveArg...), &stdout, &stderr)
			require.Error(t, err)
			assert.Equal(t, 1, exitCode(err))
			assert.Contains(t, err.Error(), tc.msg)
			assert.NotContains(t, err.Error(), "connect", "refused before connecting")
			for _, v := range tc.env {
				assert.NotContains(t, err.Error(), v, "no KEK or key in the message")
				assert.NotContains(t, stderr.String(), v)
			}
			assert.Empty(t, stdout.String())
		})
	}
}
