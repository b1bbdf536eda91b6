package m2mauth_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// newKEK returns a random key-encryption key.
func newKEK(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, m2mauth.KEKSize)
	_, err := rand.Read(k)
	require.NoError(t, err)
	return k
}

// newSealer returns an AESKeySealer over kek and previous.
func newSealer(t testing.TB, kek []byte, previous ...[]byte) *m2mauth.AESKeySealer {
	t.Helper()
	s, err := m2mauth.NewAESKeySealer(kek, previous...)
	require.NoError(t, err)
	return s
}

// assertNoKEK fails if s holds kek in any common encoding.
func assertNoKEK(t *testing.T, s string, kek []byte) {
	t.Helper()
	for _, enc := range []string{
		string(kek), hex.EncodeToString(kek),
		base64.StdEncoding.EncodeToString(kek), base64.RawURLEncoding.EncodeToString(kek),
	} {
		assert.NotContains(t, s, enc)
	}
}

func TestAESKeySealerRoundTrip(t *testing.T) {
	kek := newKEK(t)
	s := newSealer(t, kek)
	plain := []byte(`{"kty":"oct","k":"secret material"}`)
	ad := []byte("m2mauth-key\x00kid-1\x00HS256\x001")

	ct, err := s.Seal(plain, ad)
	require.NoError(t, err)
	assert.NotContains(t, string(ct), "secret material")
	assert.Len(t, ct, 1+8+12+len(plain)+16, "version, KEK id, nonce, ciphertext, tag")
	assert.Equal(t, byte(1), ct[0], "version")
	assert.Equal(t, s.KEKID(), hex.EncodeToString(ct[1:9]), "the ciphertext names its KEK")
	assertNoKEK(t, string(ct), kek)
	assertNoKEK(t, s.KEKID(), kek)

	ct2, err := s.Seal(plain, ad)
	require.NoError(t, err)
	assert.NotEqual(t, ct, ct2, "a fresh nonce each time")

	got, err := s.Open(ct, ad)
	require.NoError(t, err)
	assert.Equal(t, plain, got)

	same := newSealer(t, append([]byte(nil), kek...))
	assert.Equal(t, s.KEKID(), same.KEKID(), "the KEK id depends on the KEK only")
	got, err = same.Open(ct, ad)
	require.NoError(t, err)
	assert.Equal(t, plain, got)
}

func TestAESKeySealerRefuses(t *testing.T) {
	kek := newKEK(t)
	s := newSealer(t, kek)
	ad := []byte("m2mauth-key\x00kid-1\x00ES256\x001")
	ct, err := s.Seal([]byte("private key"), ad)
	require.NoError(t, err)

	other := newSealer(t, newKEK(t))
	flip := func(i int) []byte {
		b := bytes.Clone(ct)
		b[i] ^= 1
		return b
	}
	tests := []struct {
		name   string
		sealer *m2mauth.AESKeySealer
		ct     []byte
		ad     []byte
		want   []string // in the error
	}{
		{"another KEK", other, ct, ad, []string{s.KEKID(), other.KEKID(), "not configured"}},
		{"another kid", s, ct, []byte("m2mauth-key\x00kid-2\x00ES256\x001"), []string{"altered", s.KEKID()}},
		{"another generation", s, ct, []byte("m2mauth-key\x00kid-1\x00ES256\x002"), []string{"altered"}},
		{"no additional data", s, ct, nil, []string{"altered"}},
		{"altered ciphertext", s, flip(len(ct) - 20), ad, []string{"altered"}},
		{"altered tag", s, flip(len(ct) - 1), ad, []string{"altered"}},
		{"altered nonce", s, flip(10), ad, []string{"altered"}},
		{"altered KEK id", s, flip(3), ad, []string{"not configured"}},
		{"unknown version", s, flip(0), ad, []string{"version"}},
		{"truncated", s, ct[:30], ad, []string{"too short"}},
		{"empty", s, nil, ad, []string{"too short"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.sealer.Open(tt.ct, tt.ad)
			require.Error(t, err)
			assert.Nil(t, got)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.NotContains(t, err.Error(), "private key")
			assertNoKEK(t, err.Error(), kek)
		})
	}
}

func TestAESKeySealerPreviousKEKs(t *testing.T) {
	old1, old2, cur := newKEK(t), newKEK(t), newKEK(t)
	ad := []byte("ad")
	ct1, err := newSealer(t, old1).Seal([]byte("one"), ad)
	require.NoError(t, err)
	ct2, err := newSealer(t, old2).Seal([]byte("two"), ad)
	require.NoError(t, err)

	s := newSealer(t, cur, old1, old2, cur, old1) // repeats are ignored
	for ct, want := range map[*[]byte]string{&ct1: "one", &ct2: "two"} {
		got, err := s.Open(*ct, ad)
		require.NoError(t, err)
		assert.Equal(t, want, string(got))
	}
	ct3, err := s.Seal([]byte("three"), ad)
	require.NoError(t, err)
	assert.Equal(t, s.KEKID(), newSealer(t, cur).KEKID(), "seals under the first KEK")
	_, err = newSealer(t, old1).Open(ct3, ad)
	require.Error(t, err)
	got, err := newSealer(t, cur).Open(ct3, ad)
	require.NoError(t, err)
	assert.Equal(t, "three", string(got))
}

func TestNewAESKeySealerInvalid(t *testing.T) {
	good := newKEK(t)
	tests := []struct {
		name     string
		kek      []byte
		previous [][]byte
		want     string
	}{
		{"nil", nil, nil, "0 bytes"},
		{"short", good[:31], nil, "31 bytes"},
		{"long", append(bytes.Clone(good), 0), nil, "33 bytes"},
		{"zero", make([]byte, 32), nil, "all zero"},
		{"short previous", good, [][]byte{good[:16]}, "previous KEK 1 is 16 bytes"},
		{"zero previous", good, [][]byte{newKEK(t), make([]byte, 32)}, "previous KEK 2 is all zero"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := m2mauth.NewAESKeySealer(tt.kek, tt.previous...)
			require.Error(t, err)
			assert.Nil(t, s)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestParseKEK(t *testing.T) {
	kek := newKEK(t)
	kek[0], kek[1] = 0xfb, 0xff // '+' and '/' in the standard alphabet, '-' and '_' in the URL one
	tests := []struct {
		name string
		in   string
		want []byte
		err  string
	}{
		{"standard padded", base64.StdEncoding.EncodeToString(kek), kek, ""},
		{"standard unpadded", base64.RawStdEncoding.EncodeToString(kek), kek, ""},
		{"URL padded", base64.URLEncoding.EncodeToString(kek), kek, ""},
		{"URL unpadded", base64.RawURLEncoding.EncodeToString(kek), kek, ""},
		{"trailing newline", base64.StdEncoding.EncodeToString(kek) + "\n", kek, ""},
		{"empty", "", nil, "empty"},
		{"blank", "  \n", nil, "empty"},
		{"16 bytes", base64.StdEncoding.EncodeToString(kek[:16]), nil, "16 bytes, not 32"},
		{"64 bytes", base64.StdEncoding.EncodeToString(append(bytes.Clone(kek), kek...)), nil, "64 bytes, not 32"},
		{"not base64", "this is not base64 at all!", nil, "not base64"},
		{"hex", hex.EncodeToString(kek), nil, "48 bytes, not 32"},
		{"mixed alphabets", "+-" + base64.RawStdEncoding.EncodeToString(kek)[2:], nil, "not base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := m2mauth.ParseKEK(tt.in)
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				if len(tt.in) > 8 {
					assert.NotContains(t, err.Error(), tt.in, "the KEK is never repeated")
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			_, err = m2mauth.NewAESKeySealer(got)
			assert.NoError(t, err)
		})
	}
}
