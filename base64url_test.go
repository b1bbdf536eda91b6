package m2mauth

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAppendBase64URL: the pair table encodes every length, every byte
// value at every position, and appends after what dst holds, exactly as
// encoding/base64 does (RFC 4648 §5, no padding).
func TestAppendBase64URL(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	all := make([]byte, 512)
	for i := range all {
		all[i] = byte(i) // every byte value, at positions of each residue mod 6
	}
	tests := []struct {
		name string
		src  []byte
	}{
		{"empty", nil},
		{"every byte value", all},
		{"all ones", bytes.Repeat([]byte{0xff}, 100)},
		{"all zeros", make([]byte, 100)},
	}
	for n := range 300 {
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(r.Uint32())
		}
		tests = append(tests, struct {
			name string
			src  []byte
		}{"random", src})
	}
	for _, tt := range tests {
		for n := range len(tt.src) + 1 {
			want := base64.RawURLEncoding.AppendEncode([]byte("prefix."), tt.src[:n])
			got := appendBase64URL([]byte("prefix."), tt.src[:n])
			require.Equal(t, string(want), string(got), "%s, %d bytes", tt.name, n)
		}
	}
}

// FuzzAppendBase64URL holds appendBase64URL to encoding/base64.
func FuzzAppendBase64URL(f *testing.F) {
	f.Add([]byte("{\"iss\":\"https://auth.example.com\"}"), 3)
	f.Fuzz(func(t *testing.T, src []byte, prefix int) {
		dst := make([]byte, prefix&63, 64)
		want := base64.RawURLEncoding.AppendEncode(bytes.Clone(dst), src)
		require.Equal(t, want, appendBase64URL(dst, src))
	})
}

// BenchmarkAppendBase64URL encodes a token's payload of 250 bytes.
func BenchmarkAppendBase64URL(b *testing.B) {
	src := bytes.Repeat([]byte(`{"iss":"https://auth.example.com","sub":"x"}`), 6)[:250]
	dst := make([]byte, 0, 512)
	b.Run("encoding/base64", func(b *testing.B) {
		for b.Loop() {
			dst = base64.RawURLEncoding.AppendEncode(dst[:0], src)
		}
	})
	b.Run("pairs", func(b *testing.B) {
		for b.Loop() {
			dst = appendBase64URL(dst[:0], src)
		}
	})
}
