package m2mauth

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4/jwt"
)

// The JOSE header and the claims of an access token are flat JSON objects
// with a handful of known members. They are decoded here by a strict
// RFC 8259 scanner rather than by reflection: names match exactly (unlike
// encoding/json, which folds case), a known member given twice is refused
// (RFC 7515 §4 allows refusing duplicates), unknown members are checked for
// syntax and skipped, and nothing is allocated for what is not kept.

var errJSON = errors.New("m2mauth: malformed JSON")

// maxJSONDepth bounds the nesting of skipped values.
const maxJSONDepth = 16

// jsonObject calls member for each member of the JSON object that is the
// whole of data, with the member's name (escapes decoded only when present)
// and the raw bytes of its value, whose syntax has been checked.
func jsonObject(data []byte, member func(name, value []byte) error) error {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return errJSON
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		if skipSpace(data, i+1) != len(data) {
			return errJSON
		}
		return nil
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return errJSON
		}
		end, err := skipString(data, i)
		if err != nil {
			return err
		}
		name := data[i+1 : end-1]
		if hasEscape(name) {
			if name, err = unquote(nil, data[i:end]); err != nil {
				return err
			}
		}
		i = skipSpace(data, end)
		if i >= len(data) || data[i] != ':' {
			return errJSON
		}
		start := skipSpace(data, i+1)
		if end, err = skipValue(data, start, 0); err != nil {
			return err
		}
		if err := member(name, data[start:end]); err != nil {
			return err
		}
		i = skipSpace(data, end)
		if i >= len(data) {
			return errJSON
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			if skipSpace(data, i+1) != len(data) {
				return errJSON
			}
			return nil
		default:
			return errJSON
		}
	}
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

func hasEscape(b []byte) bool {
	for _, c := range b {
		if c == '\\' {
			return true
		}
	}
	return false
}

// skipValue returns the end of the JSON value starting at data[i].
func skipValue(data []byte, i, depth int) (int, error) {
	if i >= len(data) {
		return 0, errJSON
	}
	switch c := data[i]; {
	case c == '"':
		return skipString(data, i)
	case c == '{' || c == '[':
		if depth >= maxJSONDepth {
			return 0, errJSON
		}
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		i = skipSpace(data, i+1)
		if i < len(data) && data[i] == closing {
			return i + 1, nil
		}
		for {
			var err error
			if c == '{' {
				if i >= len(data) || data[i] != '"' {
					return 0, errJSON
				}
				if i, err = skipString(data, i); err != nil {
					return 0, err
				}
				i = skipSpace(data, i)
				if i >= len(data) || data[i] != ':' {
					return 0, errJSON
				}
				i = skipSpace(data, i+1)
			}
			if i, err = skipValue(data, i, depth+1); err != nil {
				return 0, err
			}
			i = skipSpace(data, i)
			if i >= len(data) {
				return 0, errJSON
			}
			if data[i] == closing {
				return i + 1, nil
			}
			if data[i] != ',' {
				return 0, errJSON
			}
			i = skipSpace(data, i+1)
		}
	case c == 't':
		return skipLiteral(data, i, "true")
	case c == 'f':
		return skipLiteral(data, i, "false")
	case c == 'n':
		return skipLiteral(data, i, "null")
	case c == '-' || '0' <= c && c <= '9':
		return skipNumber(data, i)
	}
	return 0, errJSON
}

func skipLiteral(data []byte, i int, lit string) (int, error) {
	if len(data)-i < len(lit) || string(data[i:i+len(lit)]) != lit {
		return 0, errJSON
	}
	return i + len(lit), nil
}

// skipNumber checks -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?.
func skipNumber(data []byte, i int) (int, error) {
	digits := func(i int) (int, bool) {
		j := i
		for j < len(data) && '0' <= data[j] && data[j] <= '9' {
			j++
		}
		return j, j > i
	}
	if data[i] == '-' {
		i++
	}
	if i < len(data) && data[i] == '0' {
		i++
	} else {
		var ok bool
		if i, ok = digits(i); !ok {
			return 0, errJSON
		}
	}
	if i < len(data) && data[i] == '.' {
		var ok bool
		if i, ok = digits(i + 1); !ok {
			return 0, errJSON
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		var ok bool
		if i, ok = digits(i); !ok {
			return 0, errJSON
		}
	}
	return i, nil
}

// skipString returns the end of the string starting with the quote at
// data[i], checking escapes, control characters and UTF-8.
func skipString(data []byte, i int) (int, error) {
	for i++; i < len(data); {
		c := data[i]
		switch {
		case c == '"':
			return i + 1, nil
		case c == '\\':
			if i+1 >= len(data) {
				return 0, errJSON
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) {
					return 0, errJSON
				}
				if _, err := strconv.ParseUint(string(data[i+2:i+6]), 16, 16); err != nil {
					return 0, errJSON
				}
				i += 6
			default:
				return 0, errJSON
			}
		case c < 0x20:
			return 0, errJSON
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && size == 1 {
				return 0, errJSON
			}
			i += size
		}
	}
	return 0, errJSON
}

// unquote appends the decoded contents of the checked JSON string s
// (quotes included) to dst.
func unquote(dst, s []byte) ([]byte, error) {
	s = s[1 : len(s)-1]
	for i := 0; i < len(s); {
		c := s[i]
		if c != '\\' {
			dst = append(dst, c)
			i++
			continue
		}
		switch e := s[i+1]; e {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := rune(hex4(s[i+2 : i+6]))
			i += 6
			if utf16.IsSurrogate(r) {
				r2 := utf8.RuneError
				if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
					r2 = utf16.DecodeRune(r, rune(hex4(s[i+2:i+6])))
					if r2 != utf8.RuneError {
						i += 6
					}
				}
				r = r2
			}
			dst = utf8.AppendRune(dst, r)
			continue
		default: // '"', '\\', '/'
			dst = append(dst, e)
		}
		i += 2
	}
	return dst, nil
}

func hex4(b []byte) uint16 {
	n, _ := strconv.ParseUint(string(b), 16, 16)
	return uint16(n)
}

// jsonSource makes strings of the member values of one JSON text that
// share a single copy of the text, so that decoding several string
// members costs one allocation rather than one each.
type jsonSource struct {
	data []byte
	text string // string(data), made when first needed
}

// str returns v as a string. When v is a slice of s.data (as the values
// jsonObject passes, and slices of them, are), the string shares s.text.
func (s *jsonSource) str(v []byte) string {
	if s == nil {
		return string(v)
	}
	// A slice of data starting at offset i has i less capacity.
	i := cap(s.data) - cap(v)
	if i < 0 || i+len(v) > len(s.data) || len(v) == 0 || &s.data[i] != &v[0] {
		return string(v)
	}
	if s.text == "" {
		s.text = string(s.data)
	}
	return s.text[i : i+len(v)]
}

// jsonString decodes a member value that must be a string; null reports
// absent. Unescaped strings come from src (which may be nil).
func jsonString(src *jsonSource, v []byte) (s string, present bool, err error) {
	switch {
	case string(v) == "null":
		return "", false, nil
	case len(v) < 2 || v[0] != '"':
		return "", false, errJSON
	case !hasEscape(v):
		return src.str(v[1 : len(v)-1]), true, nil
	}
	b, err := unquote(nil, v)
	return string(b), true, err
}

// maxNumericDate is the last second of year 9999 UTC, the latest
// NumericDate accepted. Any date up to it converts to a time.Time, and
// adding or subtracting a leeway to it does not overflow.
const maxNumericDate = 253402300799

// jsonNumericDate decodes a NumericDate (RFC 7519 §2): seconds since the
// epoch, possibly fractional or with an exponent, truncated to whole
// seconds. null reports absent. Dates outside [0, maxNumericDate] are
// malformed: a time.Time cannot hold the largest ones, and comparing them
// after a conversion that wrapped around would turn a far-future nbf or
// iat into a past one.
func jsonNumericDate(v []byte) (d jwt.NumericDate, present bool, err error) {
	if string(v) == "null" {
		return 0, false, nil
	}
	if len(v) == 0 || v[0] != '-' && (v[0] < '0' || v[0] > '9') {
		return 0, false, errJSON
	}
	if n, ok := wholeSeconds(v); ok {
		// The common case; anything else is left to strconv below.
		if n > maxNumericDate {
			return 0, false, errJSON
		}
		return jwt.NumericDate(n), true, nil
	}
	if n, err := strconv.ParseInt(string(v), 10, 64); err == nil {
		if n < 0 || n > maxNumericDate {
			return 0, false, errJSON
		}
		return jwt.NumericDate(n), true, nil
	}
	// Fractions, exponents, and integers too long for an int64.
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil || !(f >= 0 && f <= maxNumericDate) {
		return 0, false, errJSON
	}
	return jwt.NumericDate(f), true, nil
}

// jsonAudience decodes "aud": one string or an array of strings. A
// single string is returned in one, which the caller provides so that it
// costs no allocation of its own.
func jsonAudience(src *jsonSource, v []byte, one *[1]string) (jwt.Audience, error) {
	if string(v) == "null" {
		return nil, nil
	}
	if len(v) > 0 && v[0] == '"' {
		s, _, err := jsonString(src, v)
		one[0] = s
		return one[:], err
	}
	if len(v) < 2 || v[0] != '[' {
		return nil, errJSON
	}
	var aud jwt.Audience
	i := skipSpace(v, 1)
	if v[i] == ']' {
		return aud, nil
	}
	for {
		end, err := skipValue(v, i, 0)
		if err != nil {
			return nil, err
		}
		s, ok, err := jsonString(src, v[i:end])
		if err != nil || !ok {
			return nil, errJSON
		}
		aud = append(aud, s)
		i = skipSpace(v, end)
		switch v[i] {
		case ']':
			return aud, nil
		case ',':
			i = skipSpace(v, i+1)
		default:
			return nil, errJSON
		}
	}
}

// tokenHeader is what the validator reads of a JOSE header.
type tokenHeader struct {
	alg, kid, typ []byte // nil when absent; alias the decoded header
	critical      bool   // "crit" or "b64" present: extensions we do not implement
}

// parseHeader decodes a JOSE header. Known members must be strings and
// appear once.
func parseHeader(data []byte) (tokenHeader, error) {
	var h tokenHeader
	err := jsonObject(data, func(name, value []byte) error {
		var dst *[]byte
		switch string(name) {
		case "alg":
			dst = &h.alg
		case "kid":
			dst = &h.kid
		case "typ":
			dst = &h.typ
		case "crit", "b64":
			h.critical = true
			return nil
		default:
			return nil
		}
		if *dst != nil || len(value) < 2 || value[0] != '"' {
			return errJSON
		}
		if hasEscape(value) {
			// Escapes never occur in headers we issue; decode them
			// anyway. An escape yields at least one byte, so the result
			// is not nil.
			var err error
			*dst, err = unquote(nil, value)
			return err
		}
		*dst = value[1 : len(value)-1 : len(value)-1]
		return nil
	})
	return h, err
}

// tokenClaimsSet is the decoded claims of an access token.
type tokenClaimsSet struct {
	Claims
	exp, nbf, iat jwt.NumericDate
	scope         string
	hasClientID   bool
	hasScope      bool
	// aud and scopes back Claims.Audience and Claims.Scopes when they
	// fit, so that they cost no allocations of their own.
	aud    [1]string
	scopes [2]string
}

// parseClaims decodes the claims of an access token. Registered claims
// must have their RFC 7519 types; each known claim may appear once.
func parseClaims(data []byte) (*tokenClaimsSet, error) {
	c := new(tokenClaimsSet)
	src := &jsonSource{data: data}
	var seen uint16
	err := jsonObject(data, func(name, value []byte) error {
		var bit uint16
		var err error
		switch string(name) {
		case "iss":
			bit = 1
			c.Issuer, _, err = jsonString(src, value)
		case "sub":
			bit = 2
			c.Subject, _, err = jsonString(src, value)
		case "aud":
			bit = 4
			c.Audience, err = jsonAudience(src, value, &c.aud)
		case "exp":
			bit = 8
			c.Expiry, err = c.date(&c.exp, value)
		case "nbf":
			bit = 16
			c.NotBefore, err = c.date(&c.nbf, value)
		case "iat":
			bit = 32
			c.IssuedAt, err = c.date(&c.iat, value)
		case "jti":
			bit = 64
			c.ID, _, err = jsonString(src, value)
		case "client_id":
			bit = 128
			c.ClientID, c.hasClientID, err = jsonString(src, value)
		case "scope":
			bit = 256
			c.scope, c.hasScope, err = jsonString(src, value)
		default:
			return nil
		}
		if seen&bit != 0 {
			return errJSON
		}
		seen |= bit
		return err
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// date decodes a NumericDate into the set's own storage, so the three
// dates cost no allocation of their own.
func (c *tokenClaimsSet) date(dst *jwt.NumericDate, v []byte) (*jwt.NumericDate, error) {
	d, ok, err := jsonNumericDate(v)
	if !ok || err != nil {
		return nil, err
	}
	*dst = d
	return dst, nil
}

// parseScopes parses the scope claim, into the set's own storage when
// its scopes fit.
func (c *tokenClaimsSet) parseScopes() (Scopes, error) {
	switch n := strings.Count(c.scope, " ") + 1; {
	case c.scope == "":
		return nil, nil
	case n <= len(c.scopes):
		return appendScopes(c.scopes[:0:n], c.scope)
	}
	return ParseScopes(c.scope)
}

// decodeClaims decodes the claims of an access token: those written as a
// TokenHandler writes them quickly, any others with parseClaims.
func decodeClaims(data []byte) (*tokenClaimsSet, error) {
	if c, ok := parseIssuedClaims(data); ok {
		return c, nil
	}
	return parseClaims(data)
}

// parseIssuedClaims decodes claims written exactly as a TokenHandler
// writes them (appendClaimsJSON): the members iss, sub, client_id, aud,
// iat, nbf, exp, jti and optionally scope, in that order, without
// spaces, strings of printable ASCII without escapes, dates of at most
// 12 digits. It reports false for anything else, which parseClaims then
// decodes; on what it accepts, it returns what parseClaims returns.
func parseIssuedClaims(data []byte) (*tokenClaimsSet, bool) {
	p := issuedParser{data: data}
	iss := p.str(`{"iss":"`)
	sub := p.str(`","sub":"`)
	cid := p.str(`","client_id":"`)
	aud := p.str(`","aud":"`)
	iat := p.date(`","iat":`)
	nbf := p.date(`,"nbf":`)
	exp := p.date(`,"exp":`)
	jti := p.str(`,"jti":"`)
	scope, hasScope := [2]int{}, false
	if !p.lit(`"}`) {
		scope, hasScope = p.str(`","scope":"`), true
		p.bad = p.bad || !p.lit(`"}`)
	}
	if p.bad || p.i != len(data) {
		return nil, false
	}
	text := string(data)
	at := func(r [2]int) string { return text[r[0]:r[1]] }
	c := &tokenClaimsSet{exp: exp, nbf: nbf, iat: iat, hasClientID: true, hasScope: hasScope}
	c.Issuer, c.Subject, c.ClientID, c.ID = at(iss), at(sub), at(cid), at(jti)
	c.aud[0] = at(aud)
	c.Audience = c.aud[:]
	c.IssuedAt, c.NotBefore, c.Expiry = &c.iat, &c.nbf, &c.exp
	if hasScope {
		c.scope = at(scope)
	}
	return c, true
}

// issuedParser reads claims as a TokenHandler writes them. Once a read
// fails, bad is set and every later read fails too.
type issuedParser struct {
	data []byte
	i    int
	bad  bool
}

// lit consumes s if the data continues with it.
func (p *issuedParser) lit(s string) bool {
	if p.bad || len(p.data)-p.i < len(s) || string(p.data[p.i:p.i+len(s)]) != s {
		return false
	}
	p.i += len(s)
	return true
}

// str consumes the literal before, then a string body of printable ASCII
// other than '"' and '\\' up to the next quote, left unconsumed. It
// returns the body's bounds.
func (p *issuedParser) str(before string) [2]int {
	if !p.lit(before) {
		p.bad = true
		return [2]int{}
	}
	start := p.i
	rest := p.data[start:]
	n := 0
	for n < len(rest) && issuedStrByte[rest[n]] {
		n++
	}
	p.i += n
	if n == len(rest) || rest[n] != '"' {
		p.bad = true
	}
	return [2]int{start, p.i}
}

// issuedStrByte marks the bytes a string of the issued layout holds:
// those JSON holds as they are ([jsonSafe]), none of them beyond ASCII.
var issuedStrByte = func() (t [256]bool) {
	copy(t[:], jsonSafe[:])
	return t
}()

// date consumes the literal before, then a NumericDate of 1 to 12 digits
// without a leading zero, at most maxNumericDate.
func (p *issuedParser) date(before string) jwt.NumericDate {
	if !p.lit(before) {
		p.bad = true
		return 0
	}
	start := p.i
	for p.i < len(p.data) && '0' <= p.data[p.i] && p.data[p.i] <= '9' {
		p.i++
	}
	n, ok := wholeSeconds(p.data[start:p.i])
	if !ok || n > maxNumericDate {
		p.bad = true
	}
	return jwt.NumericDate(n)
}

// wholeSeconds reads v as a whole number of 1 to 12 digits without a
// leading zero, the form NumericDates take in practice.
func wholeSeconds(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 12 || v[0] == '0' && len(v) > 1 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
