package m2mauth

import (
	"encoding/base64"
	"encoding/binary"
	"slices"
)

// appendBase64URL appends the base64url encoding of src, without padding
// (RFC 4648 §5; RFC 7515 §2), to dst: what
// base64.RawURLEncoding.AppendEncode appends. Each six bytes become
// eight characters through a table of character pairs, half the lookups
// of encoding/base64; the last few go through encoding/base64. It encodes
// the payload and signature of every token issued.
func appendBase64URL(dst, src []byte) []byte {
	n := base64.RawURLEncoding.EncodedLen(len(src))
	start := len(dst)
	dst = slices.Grow(dst, n)[:start+n]
	out := dst[start:]
	i, j := 0, 0
	// Eight bytes are read for six, so the loop stops two short of the
	// end; out always has room for the eight characters written.
	for ; i+8 <= len(src); i, j = i+6, j+8 {
		v := binary.BigEndian.Uint64(src[i:])
		binary.LittleEndian.PutUint64(out[j:], uint64(base64URLPairs[v>>52])|
			uint64(base64URLPairs[v>>40&0xfff])<<16|
			uint64(base64URLPairs[v>>28&0xfff])<<32|
			uint64(base64URLPairs[v>>16&0xfff])<<48)
	}
	base64.RawURLEncoding.Encode(out[j:], src[i:])
	return dst
}

// base64URLPairs holds, for each 12 bits, their two base64url characters,
// the first in the low byte.
var base64URLPairs = func() *[4096]uint16 {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	t := new([4096]uint16)
	for i := range t {
		t[i] = uint16(alphabet[i>>6]) | uint16(alphabet[i&63])<<8
	}
	return t
}()
