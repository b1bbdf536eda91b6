package m2mauth

import (
	"errors"
	"strings"
)

// Scopes is a set of OAuth 2.0 scope tokens (RFC 6749 §3.3), kept in the
// order first seen with duplicates removed. Scope tokens are case-sensitive
// and matched exactly.
//
// Build Scopes with [ParseScopes] or [NewScopes], which validate the syntax;
// a Scopes value is read-only by convention and safe for concurrent reads.
type Scopes []string

// errInvalidScope is the cause behind every scope syntax error.
var errInvalidScope = errors.New("m2mauth: scope token must be one or more characters %x21 / %x23-5B / %x5D-7E")

// ParseScopes parses a space-delimited scope string as sent in the "scope"
// parameter (RFC 6749 §3.3). Tokens are separated by single spaces; a
// leading, trailing or doubled space, or a character outside NQCHAR, is an
// error. Repeated tokens are folded into one. The empty string yields an
// empty set.
func ParseScopes(s string) (Scopes, error) {
	if s == "" {
		return nil, nil
	}
	return appendScopes(make(Scopes, 0, strings.Count(s, " ")+1), s)
}

// appendScopes appends the scopes of the non-empty scope string s to out,
// as ParseScopes parses them.
func appendScopes(out Scopes, s string) (Scopes, error) {
	for {
		tok, rest, more := strings.Cut(s, " ")
		if !validScopeToken(tok) {
			return nil, errInvalidScope
		}
		if !out.Has(tok) {
			out = append(out, tok)
		}
		if !more {
			return out, nil
		}
		s = rest
	}
}

// NewScopes builds Scopes from individual tokens, validating each and
// folding duplicates.
func NewScopes(tokens ...string) (Scopes, error) {
	out := make(Scopes, 0, len(tokens))
	for _, tok := range tokens {
		if !validScopeToken(tok) {
			return nil, errInvalidScope
		}
		if !out.Has(tok) {
			out = append(out, tok)
		}
	}
	return out, nil
}

// validScopeToken reports whether tok is 1*NQCHAR (RFC 6749 §3.3):
// %x21 / %x23-5B / %x5D-7E, i.e. printable ASCII except space, '"' and '\'.
func validScopeToken(tok string) bool {
	if tok == "" {
		return false
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// String returns the space-delimited form used in the "scope" parameter
// and claim.
func (s Scopes) String() string { return strings.Join(s, " ") }

// Has reports whether s contains the scope token tok.
func (s Scopes) Has(tok string) bool {
	for _, t := range s {
		if t == tok {
			return true
		}
	}
	return false
}

// HasAll reports whether s contains every token of want. It is true when
// want is empty.
func (s Scopes) HasAll(want Scopes) bool {
	for _, t := range want {
		if !s.Has(t) {
			return false
		}
	}
	return true
}

// HasAny reports whether s contains at least one token of want. It is
// false when want is empty.
func (s Scopes) HasAny(want Scopes) bool {
	for _, t := range want {
		if s.Has(t) {
			return true
		}
	}
	return false
}

// Missing returns the tokens of want that s does not contain, or nil.
func (s Scopes) Missing(want Scopes) Scopes {
	var out Scopes
	for _, t := range want {
		if !s.Has(t) {
			out = append(out, t)
		}
	}
	return out
}

// Clone returns a copy of s that shares no memory with it.
func (s Scopes) Clone() Scopes {
	if s == nil {
		return nil
	}
	return append(make(Scopes, 0, len(s)), s...)
}
