package m2mauth

import (
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestParseHeader checks the JOSE header decoder (RFC 7515 §4): exact
// names, strings only, no duplicates, unknown members skipped, crit and
// b64 flagged.
func TestParseHeader(t *testing.T) {
	tests := []struct {
		name          string
		in            string
		alg, kid, typ string
		critical      bool
		wantErr       bool
	}{
		{name: "ours", in: `{"alg":"HS256","kid":"k1","typ":"at+jwt"}`, alg: "HS256", kid: "k1", typ: "at+jwt"},
		{name: "spaces and unknown members", in: " {\n \"x\" : [1, {\"y\": null}, true, -2.5e3] , \"alg\" : \"HS256\" , \"kid\":\"k\" }\t", alg: "HS256", kid: "k"},
		{name: "escapes", in: `{"alg":"HS\u0032\u00356","kid":"a\/b\"c"}`, alg: "HS256", kid: `a/b"c`},
		{name: "escaped name", in: `{"\u0061lg":"HS256"}`, alg: "HS256"},
		{name: "names are case-sensitive", in: `{"ALG":"none","alg":"HS256"}`, alg: "HS256"},
		{name: "crit", in: `{"alg":"HS256","crit":["exp"]}`, alg: "HS256", critical: true},
		{name: "b64", in: `{"alg":"HS256","b64":false}`, alg: "HS256", critical: true},
		{name: "empty object", in: `{}`},
		{name: "duplicate alg, RFC 7515 §4", in: `{"alg":"HS256","alg":"none"}`, wantErr: true},
		{name: "alg not a string", in: `{"alg":256}`, wantErr: true},
		{name: "alg null", in: `{"alg":null}`, wantErr: true},
		{name: "trailing comma", in: `{"alg":"HS256",}`, wantErr: true},
		{name: "trailing data", in: `{"alg":"HS256"}x`, wantErr: true},
		{name: "two objects", in: `{}{}`, wantErr: true},
		{name: "array", in: `["alg"]`, wantErr: true},
		{name: "unterminated", in: `{"alg":"HS256"`, wantErr: true},
		{name: "bad escape", in: `{"alg":"\x"}`, wantErr: true},
		{name: "short unicode escape", in: `{"alg":"\u12"}`, wantErr: true},
		{name: "control character", in: "{\"alg\":\"a\x01\"}", wantErr: true},
		{name: "invalid UTF-8", in: "{\"alg\":\"\xff\"}", wantErr: true},
		{name: "single quotes", in: `{'alg':'HS256'}`, wantErr: true},
		{name: "leading zero", in: `{"x":01}`, wantErr: true},
		{name: "bare minus", in: `{"x":-}`, wantErr: true},
		{name: "bad literal", in: `{"x":tru}`, wantErr: true},
		{name: "too deep", in: `{"x":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}`, wantErr: true},
		{name: "BOM", in: "\ufeff{}", wantErr: true},
		{name: "empty", in: ``, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := parseHeader([]byte(tc.in))
			if tc.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.alg, string(h.alg))
			assert.Equal(t, tc.kid, string(h.kid))
			assert.Equal(t, tc.typ, string(h.typ))
			assert.Equal(t, tc.critical, h.critical)
		})
	}
}

// TestParseClaims checks the claims decoder against RFC 7519 §4.1 types.
func TestParseClaims(t *testing.T) {
	c, err := parseClaims([]byte(`{"iss":"https://i","sub":"s","client_id":"c","aud":["a","b"],` +
		`"exp":1700000000,"nbf":1699999999.9,"iat":1.6e9,"jti":"j","scope":"read write","extra":{"k":[1,2]}}`))
	require.NoError(t, err)
	assert.Equal(t, "https://i", c.Issuer)
	assert.Equal(t, "s", c.Subject)
	assert.Equal(t, "c", c.ClientID)
	assert.Equal(t, jwt.Audience{"a", "b"}, c.Audience)
	assert.Equal(t, jwt.NumericDate(1700000000), *c.Expiry)
	assert.Equal(t, jwt.NumericDate(1699999999), *c.NotBefore)
	assert.Equal(t, jwt.NumericDate(1600000000), *c.IssuedAt)
	assert.Equal(t, "j", c.ID)
	assert.Equal(t, "read write", c.scope)
	assert.True(t, c.hasScope && c.hasClientID)

	c, err = parseClaims([]byte(`{"aud":"one","nbf":null,"scope":null}`))
	require.NoError(t, err)
	assert.Equal(t, jwt.Audience{"one"}, c.Audience)
	assert.Nil(t, c.NotBefore)
	assert.False(t, c.hasScope)

	// The scopes and a single audience live in the set's own storage:
	// what a caller appends to them must not write over anything.
	for _, tc := range []struct {
		scope string
		want  Scopes
	}{
		{"read", Scopes{"read"}},
		{"read write", Scopes{"read", "write"}},
		{"read read", Scopes{"read"}},
		{"a b c", Scopes{"a", "b", "c"}},
		{"", nil},
	} {
		c, err := parseClaims([]byte(`{"aud":"one","scope":"` + tc.scope + `"}`))
		require.NoError(t, err)
		got, err := c.parseScopes()
		require.NoError(t, err)
		require.Equal(t, tc.want, got, tc.scope)
		_ = append(got, "x")
		_ = append(c.Audience, "x")
		again, err := c.parseScopes()
		require.NoError(t, err)
		require.Equal(t, tc.want, again, tc.scope)
		require.Equal(t, jwt.Audience{"one"}, c.Audience)
	}
	for _, bad := range []string{"read  write", " read", `re\\ad`} {
		c, err := parseClaims([]byte(`{"scope":"` + bad + `"}`))
		require.NoError(t, err)
		_, err = c.parseScopes()
		require.Error(t, err, bad)
	}

	for _, bad := range []string{
		`{"exp":"1700000000"}`, `{"exp":true}`, `{"exp":1e400}`, `{"aud":1}`, `{"aud":["a",2]}`,
		`{"scope":["read"]}`, `{"client_id":7}`, `{"iss":"a","iss":"a"}`, `{"exp":1,"exp":2}`,
		`{"sub":{}}`, `{"jti":"x"`, `{"aud":[}`,
	} {
		_, err := parseClaims([]byte(bad))
		assert.Error(t, err, bad)
	}
}

// TestJSONNumericDate checks NumericDate decoding (RFC 7519 §2): integer,
// fractional and exponent forms, truncated to whole seconds, within
// [0, 253402300799] (the epoch to the end of year 9999) so that no date
// overflows time.Time or its arithmetic; anything else is malformed.
func TestJSONNumericDate(t *testing.T) {
	tests := []struct {
		in      string
		want    jwt.NumericDate
		absent  bool
		wantErr bool
	}{
		{in: "1700000000", want: 1700000000},
		{in: "0", want: 0},
		{in: "-0", want: 0},
		{in: "-0.0", want: 0},
		{in: "1.5", want: 1},
		{in: "1699999999.999", want: 1699999999},
		{in: "1.7e9", want: 1700000000},
		{in: "17E8", want: 1700000000},
		{in: "1700000000e0", want: 1700000000},
		{in: "253402300799", want: 253402300799},
		{in: "253402300799.0", want: 253402300799},
		{in: "2.53402300799e11", want: 253402300799},
		{in: "null", absent: true},

		{in: "1", want: 1},
		{in: "999999999", want: 999999999},

		{in: "253402300800", wantErr: true},
		{in: "999999999999", wantErr: true},
		{in: "253402300799.5", wantErr: true},
		{in: "2.534023008e11", wantErr: true},
		{in: "9223372036854775807", wantErr: true},
		{in: "9223372036854775808", wantErr: true},
		{in: "-9223372036854775808", wantErr: true},
		{in: "1e30", wantErr: true},
		{in: "1e400", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "-0.5", wantErr: true},
		{in: "-1e-9", wantErr: true},
		{in: "-1e30", wantErr: true},
		{in: `"1700000000"`, wantErr: true},
		{in: "true", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			d, present, err := jsonNumericDate([]byte(tc.in))
			if tc.wantErr {
				require.Error(t, err)
				assert.False(t, present)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, !tc.absent, present)
			assert.Equal(t, tc.want, d)
		})
	}
}

// FuzzJSONObject holds the scanner to encoding/json: whatever it accepts
// is valid JSON, and the strings it decodes are the ones encoding/json
// decodes.
func FuzzJSONObject(f *testing.F) {
	for _, s := range []string{
		`{"alg":"HS256","kid":"k1","typ":"at+jwt"}`, `{"a":"\ud83d\ude00\u00e9\n"}`, `{"a":[1,{"b":null}],"c":-0.5E-3}`,
		`{"a":"\ud800"}`, `{}`, `{"a":}`, ` { "a" : "b" } `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got := map[string]string{}
		src := &jsonSource{data: data}
		err := jsonObject(data, func(name, value []byte) error {
			if len(value) > 0 && value[0] == '"' {
				s, _, err := jsonString(src, value)
				if err != nil {
					return err
				}
				got[string(name)] = s
			}
			return nil
		})
		if err != nil {
			return
		}
		if !json.Valid(data) || !utf8.Valid(data) {
			t.Fatalf("accepted invalid JSON %q", data)
		}
		var want map[string]any
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("accepted %q that encoding/json refuses: %v", data, err)
		}
		for k, v := range got {
			// encoding/json keeps the last of duplicate names.
			if w, ok := want[k].(string); ok && w != v && countName(data, k) == 1 {
				t.Fatalf("member %q: got %q, encoding/json %q", k, v, w)
			}
		}
	})
}

func countName(data []byte, name string) int {
	n := 0
	jsonObject(data, func(nm, _ []byte) error {
		if string(nm) == name {
			n++
		}
		return nil
	})
	return n
}

// TestJSONSourceStrings: strings of unescaped members share one copy of
// the text, escaped ones are decoded, and bytes that are not a slice of
// the text are copied.
func TestJSONSourceStrings(t *testing.T) {
	data := []byte(`{"a":"plain","b":"esc\u00e9","c":["x","y"]}`)
	src := &jsonSource{data: data}
	got := map[string]any{}
	require.NoError(t, jsonObject(data, func(name, value []byte) error {
		var err error
		if string(name) == "c" {
			got[string(name)], err = jsonAudience(src, value, new([1]string))
		} else {
			got[string(name)], _, err = jsonString(src, value)
		}
		return err
	}))
	require.Equal(t, map[string]any{"a": "plain", "b": "esc\u00e9", "c": jwt.Audience{"x", "y"}}, got)
	data[6] = 'P' // the strings were copied out of data, once
	require.Equal(t, "plain", got["a"])
	require.Equal(t, "plain", src.text[6:11])

	other := []byte(`"plain"`)
	s, ok, err := jsonString(src, other)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "plain", s)
	s, _, err = jsonString(nil, other)
	require.NoError(t, err)
	require.Equal(t, "plain", s)
	require.Equal(t, "", src.str(data[3:3]))
}

// BenchmarkDecodeClaims decodes the claims of a token as a TokenHandler
// writes them, and the same claims in another order, which take the
// general decoder.
func BenchmarkDecodeClaims(b *testing.B) {
	for _, tc := range []struct{ name, data string }{
		{"issued", `{"iss":"https://auth.example.com","sub":"bench-client","client_id":"bench-client","aud":"https://api.example.com","iat":1796060400,"nbf":1796060400,"exp":1796064000,"jti":"Yw3NhUq0m8YfJm1N6Yp9Ag","scope":"read"}`},
		{"reordered", `{"aud":"https://api.example.com","client_id":"bench-client","exp":1796064000,"iat":1796060400,"iss":"https://auth.example.com","jti":"Yw3NhUq0m8YfJm1N6Yp9Ag","nbf":1796060400,"scope":"read","sub":"bench-client"}`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			data := []byte(tc.data)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decodeClaims(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestAppendJSONString: the strings of an issued token's claims are
// escaped as encoding/json escapes them (RFC 8259 §7).
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{
		"", "plain", "q\"b\\s/", "\x00\x1f\x7f\n\r\t", "<>&", "\u2028\u2029", "\xff\xc3", "é\U0001F600",
		"https://auth.example.com/x?a=1&b=<2>",
	} {
		want, err := json.Marshal(s)
		require.NoError(t, err)
		require.Equal(t, string(want), string(appendJSONString(nil, s)), "%q", s)
	}
}

// issuedClaimsSamples are claims as a TokenHandler writes them, and near
// misses that the fast decoder must leave to parseClaims.
var issuedClaimsSamples = []string{
	`{"iss":"https://auth.example.com","sub":"svc","client_id":"svc","aud":"https://api.example.com","iat":1796060400,"nbf":1796060400,"exp":1796064000,"jti":"Yw3NhUq0m8YfJm1N6Yp9Ag","scope":"read write"}`,
	`{"iss":"https://auth.example.com","sub":"svc","client_id":"svc","aud":"https://api.example.com","iat":1796060400,"nbf":1796060400,"exp":1796064000,"jti":"j"}`,
	`{"iss":"i","sub":"","client_id":"","aud":"","iat":0,"nbf":0,"exp":253402300799,"jti":"","scope":""}`,
	`{"iss":"i","sub":"s","client_id":"c","aud":"a","iat":0,"nbf":0,"exp":253402300800,"jti":"j"}`,
	`{"iss":"i","sub":"s","client_id":"c","aud":"a","iat":01,"nbf":0,"exp":1,"jti":"j"}`,
	`{"iss":"i","sub":"s","client_id":"c","aud":"a","iat":1.5,"nbf":0,"exp":1,"jti":"j"}`,
	`{"iss":"i","sub":"s","client_id":"c","aud":"a","iat":1,"nbf":0,"exp":1,"jti":"j","scope":"r"} `,
	`{"iss":"i","sub":"s","client_id":"c","aud":"a","iat":1,"nbf":0,"exp":1,"jti":"j","scope":"r","x":1}`,
	`{"iss":"i\u0041","sub":"s","client_id":"c","aud":"a","iat":1,"nbf":0,"exp":1,"jti":"j"}`,
	`{"iss":"é","sub":"s","client_id":"c","aud":"a","iat":1,"nbf":0,"exp":1,"jti":"j"}`,
	`{"iss":"i","sub":"s","client_id":"c","aud":["a"],"iat":1,"nbf":0,"exp":1,"jti":"j"}`,
	`{"iss":"i","sub":"s","client_id":"c","aud":"a","iat":1,"nbf":0,"exp":1,"jti":"j","jti":"k"}`,
	`{"iss":"i","sub":"s","client_id":"c","aud":"a","iat":1234567890123,"nbf":0,"exp":1,"jti":"j"}`,
}

// TestParseIssuedClaims: claims written as a TokenHandler writes them are
// decoded by the fast decoder into exactly what parseClaims returns, and
// every near miss is left to parseClaims.
func TestParseIssuedClaims(t *testing.T) {
	for i, s := range issuedClaimsSamples {
		fast, ok := parseIssuedClaims([]byte(s))
		require.Equal(t, i < 3, ok, s)
		if ok {
			slow, err := parseClaims([]byte(s))
			require.NoError(t, err)
			require.Equal(t, slow, fast, s)
		}
	}
	// What a TokenHandler writes, whatever its strings.
	for _, c := range []tokenClaims{
		{issuer: "https://i", clientID: "svc", audience: "https://a", jti: "j", scope: "read write",
			issuedAt: time.Unix(1796060400, 0), expiry: time.Unix(1796064000, 0)},
		{issuer: "https://i", clientID: "weird:id+1", audience: "https://a", jti: "j", issuedAt: time.Unix(0, 0), expiry: time.Unix(1, 0)},
		{issuer: "https://i", clientID: `q"b\s<>&`, audience: "https://a", jti: "j", issuedAt: time.Unix(5, 0), expiry: time.Unix(6, 0)},
	} {
		data := appendClaimsJSON(nil, &c)
		slow, err := parseClaims(data)
		require.NoError(t, err)
		got, err := decodeClaims(data)
		require.NoError(t, err)
		require.Equal(t, slow, got, string(data))
	}
}

// FuzzParseIssuedClaims holds the fast decoder to parseClaims: whatever
// it accepts, parseClaims accepts and decodes to the same claims.
func FuzzParseIssuedClaims(f *testing.F) {
	for _, s := range issuedClaimsSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := parseIssuedClaims(data)
		if !ok {
			return
		}
		slow, err := parseClaims(data)
		require.NoError(t, err, "%q", data)
		require.Equal(t, slow, fast, "%q", data)
	})
}

// BenchmarkAppendClaimsJSON is the payload of a typical token, written.
func BenchmarkAppendClaimsJSON(b *testing.B) {
	now := time.Unix(1796060400, 0)
	c := tokenClaims{
		issuer: "https://auth.example.com", clientID: "billing-service", audience: "https://api.example.com",
		jti: "Yw3NhUq0m8YfJm1N6Yp9Ag", scope: "read write", issuedAt: now, expiry: now.Add(time.Hour),
	}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendClaimsJSON(buf[:0], &c)
	}
}
