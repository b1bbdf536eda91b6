package m2mauth

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TokenType is the JWT "typ" header of access tokens (RFC 9068 §2.1).
const TokenType = "at+jwt"

// Claims are the claims of an m2mauth access token, the JWT profile of
// RFC 9068 §2.2 for the client credentials grant: the registered claims
// (iss, sub, aud, exp, nbf, iat, jti) plus client_id and scope. Subject
// equals ClientID, since the client acts on its own behalf.
//
// Claims returned by a [Validator] may be shared between requests (the
// verified-token cache hands out the same value for the same token), so
// they are read-only: safe for concurrent reads, never to be modified.
type Claims struct {
	jwt.Claims
	// ClientID is the "client_id" claim.
	ClientID string `json:"client_id"`
	// Scopes are the granted scopes, the "scope" claim.
	Scopes Scopes `json:"-"`
}

// jtiBytes is the number of random bytes in a jti: 128 bits.
const jtiBytes = 16

// tokenSigner signs JWS compact serializations with one key. The
// protected header is fixed per key, so it is encoded once; the
// algorithm's work is the jwsSigner's (jws.go).
type tokenSigner struct {
	jwk    *jose.JSONWebKey
	header string // base64url(header) + "."
	sig    jwsSigner
}

func newTokenSigner(k *jose.JSONWebKey) (*tokenSigner, error) {
	sig, err := newJWSSigner(k)
	if err != nil {
		return nil, err
	}
	hdr, err := encodedHeader(k.Algorithm, k.KeyID)
	if err != nil {
		return nil, err
	}
	return &tokenSigner{jwk: k, header: hdr + ".", sig: sig}, nil
}

// encodedHeader returns the protected header of the tokens signed with
// the key of algorithm alg and id kid, base64url-encoded as they carry it.
func encodedHeader(alg, kid string) (string, error) {
	hdr, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{alg, kid, TokenType})
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(hdr), nil
}

// appendToken appends header.payload.signature to dst, where payload is
// the base64url encoding of the JSON claims.
func (s *tokenSigner) appendToken(dst, claimsJSON []byte) ([]byte, error) {
	start := len(dst)
	dst = append(dst, s.header...)
	dst = appendBase64URL(dst, claimsJSON)
	input := dst[start:]
	return s.sig.appendSignature(append(dst, '.'), input)
}

// tokenClaims are the values an issued token carries.
type tokenClaims struct {
	issuer, clientID, audience, jti, scope string
	issuedAt, expiry                       time.Time
}

// appendClaimsJSON appends the JSON payload of an access token. The field
// set is fixed, so it is written directly rather than by reflection.
func appendClaimsJSON(dst []byte, c *tokenClaims) []byte {
	iat := c.issuedAt.Unix()
	dst = append(dst, `{"iss":`...)
	dst = appendJSONString(dst, c.issuer)
	dst = append(dst, `,"sub":`...)
	dst = appendJSONString(dst, c.clientID)
	dst = append(dst, `,"client_id":`...)
	dst = appendJSONString(dst, c.clientID)
	dst = append(dst, `,"aud":`...)
	dst = appendJSONString(dst, c.audience)
	dst = append(dst, `,"iat":`...)
	dst = strconv.AppendInt(dst, iat, 10)
	dst = append(dst, `,"nbf":`...)
	dst = strconv.AppendInt(dst, iat, 10)
	dst = append(dst, `,"exp":`...)
	dst = strconv.AppendInt(dst, c.expiry.Unix(), 10)
	dst = append(dst, `,"jti":`...)
	dst = appendJSONString(dst, c.jti)
	if c.scope != "" {
		dst = append(dst, `,"scope":`...)
		dst = appendJSONString(dst, c.scope)
	}
	return append(dst, '}')
}

// newJTI returns a token id of 128 random bits, base64url-encoded.
func newJTI() (string, error) {
	var b [jtiBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// appendJSONString appends s as a JSON string literal, escaped as
// encoding/json escapes it.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	dst = appendJSONEscaped(dst, s, &jsonSafeHTML)
	return append(dst, '"')
}

// jsonSafe marks the ASCII bytes a JSON string holds as they are;
// jsonSafeHTML leaves out '<', '>' and '&' too, as encoding/json does.
var jsonSafe, jsonSafeHTML = func() (t, html [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
		html[c] = t[c] && c != '<' && c != '>' && c != '&'
	}
	return t, html
}()

// appendJSONEscaped appends s escaped for a JSON string: the ASCII bytes
// safe does not mark as \", \\, \n, \r, \t or \u00XX; invalid UTF-8 as
// \ufffd; U+2028 and U+2029 as \u2028 and \u2029 (as encoding/json and
// log/slog do, for JavaScript's sake).
func appendJSONEscaped(dst []byte, s string, safe *[utf8.RuneSelf]bool) []byte {
	const hex = "0123456789abcdef"
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if safe[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(dst, s[start:]...)
}
