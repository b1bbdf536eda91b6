package m2mauth

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// ValidatorConfig holds the settings of a [Validator]. Issuer and Audience
// are required; every other zero value is a working default.
type ValidatorConfig struct {
	// Issuer is the exact "iss" tokens must carry: the token handler's
	// Issuer. Required.
	Issuer string
	// Audience is the audience this API answers to; a token's "aud" must
	// contain it. Required.
	Audience string
	// Algorithms lists the signature algorithms accepted, among
	// [SupportedAlgorithms]; keys of other algorithms are ignored. Each
	// key verifies only tokens whose header names the key's own
	// algorithm (RFC 8725 §3.1), so allowing them all is safe: a token
	// cannot pick an algorithm its key was not made for. Unknown names
	// and "none" are refused. Default: every supported algorithm.
	Algorithms []jose.SignatureAlgorithm
	// Leeway is the clock skew tolerated on exp, nbf and iat.
	// Default: 30s. Negative means none. At most 5 minutes.
	Leeway time.Duration
	// CacheSize is the number of verified tokens remembered, so a token
	// presented again skips signature verification and parsing (its expiry
	// and the scopes are still checked). Negative disables the cache.
	// Default: 10000. At most 16,777,216.
	CacheSize int
	// Realm is the realm of the "WWW-Authenticate: Bearer" challenge.
	// Default: "m2mauth".
	Realm string
	// ResourceMetadataURL, if set, is the URL of this API's protected
	// resource metadata (RFC 9728 §3), sent as the resource_metadata
	// parameter of every Bearer challenge (RFC 9728 §5.1) so clients can
	// discover which authorization server to ask. It must be an absolute
	// https URL, or http on a loopback host. Default: none.
	ResourceMetadataURL string
	// Auditor, if set, receives a token_rejected event for every refused
	// token and a scope_denied event for every 403. Default: none.
	Auditor Auditor
	// ErrorHandler, if set, renders refusals instead of the default JSON
	// body (none for a request without a bearer token, RFC 6750 §3.1).
	// The WWW-Authenticate header is already set when it is called; it
	// must write the status (err.Status) and a body. A request without a
	// bearer token comes as invalid_token, described "missing bearer
	// token".
	ErrorHandler func(w http.ResponseWriter, r *http.Request, err *Error)
	// Now is the clock. Default: the system clock, read as
	// [TokenHandlerConfig.Now] says.
	Now func() time.Time
	// TrustedProxies and ForwardedHeader name the reverse proxies in
	// front of the API and the one header they write, so that audit
	// events record the client's address rather than the proxy's; they
	// mean what they mean in [TokenHandlerConfig]. Default: none; the
	// connection's peer is the client.
	TrustedProxies  []netip.Prefix
	ForwardedHeader string
	// RequireHTTPS refuses, in RequireScopes and RequireAnyScope, a
	// request that did not arrive over TLS (directly, or at a trusted
	// proxy that says so) unless it comes from a loopback address, as the
	// token endpoint does: 400 invalid_request, a token_rejected event
	// with Reason [ReasonInsecureTransport], and the token never looked
	// at. This comes first, so a request without credentials gets it
	// too, rather than a challenge inviting it to send a token in the
	// clear. Requests over TLS get Strict-Transport-Security. Sending a
	// bearer token over plain HTTP is the client's fault (RFC 6750 §5.3),
	// but the token has then crossed the network in the clear; refusing
	// it tells the client's owner. Default: false, so that a host that
	// terminates TLS in front of the API without naming the proxy keeps
	// working; set it when TLS ends here or at TrustedProxies.
	RequireHTTPS bool
	// Revocations, if set, is checked for every token, those answered
	// from the verified-token cache included: a revoked token is refused
	// with 401 invalid_token "token has been revoked", and a
	// token_rejected event with Reason [ReasonTokenRevoked], the
	// ClientID and the JTI. The check reads an in-memory snapshot and
	// does no I/O, so a revoked token stops being accepted within the
	// source's refresh interval: at once with a source that is the store
	// itself (memstore), within [RevocationPollerConfig.Interval] with a
	// [RevocationPoller].
	//
	// When the source cannot vouch for its snapshot (its error wraps
	// [ErrRevocationsStale]), every token is refused with 503 and a
	// server_error: the fault is on the server's side, not in the token,
	// so the answer carries no Bearer challenge. Default: none; tokens
	// are valid until they expire.
	Revocations RevocationSource
	// InsecureAcceptStaleRevocations keeps accepting tokens while
	// Revocations fails: the snapshot the source returns with its error,
	// or else the last one it returned without, is still applied, and a
	// token revoked since then passes until the source recovers. It
	// trades revocation for availability; only for deployments that
	// would rather serve revoked tokens than no one. Default: false.
	InsecureAcceptStaleRevocations bool
}

// Validator checks access tokens issued by a [TokenHandler] (RFC 9068 §4,
// RFC 8725) and guards routes with [Validator.RequireScopes] and
// [Validator.RequireAnyScope]. It is safe for concurrent use.
type Validator struct {
	addrs     *addrPolicy // the client's address, for audit events
	keys      KeyProvider
	refresher KeyRefresher // keys, when it is one; else nil
	cfg       ValidatorConfig
	algs      map[jose.SignatureAlgorithm]bool
	challenge string // `Bearer realm="..."[, resource_metadata="..."]`
	index     atomic.Pointer[keyIndex]
	cache     *tokenCache // nil when disabled
	// lastRevs is the last snapshot the revocation source returned
	// without an error, kept only with InsecureAcceptStaleRevocations.
	lastRevs atomic.Pointer[Revocations]
	// anyAudience accepts tokens for any audience: the authorization
	// server's own view, for introspection.
	anyAudience bool
	// sysClock is set when cfg.Now is the system clock, which a cache
	// hit then reads in Unix nanoseconds without making a time.Time.
	sysClock bool
}

const (
	defaultLeeway    = 30 * time.Second
	maxLeeway        = 5 * time.Minute
	maxCacheSize     = 1 << 24
	defaultCacheSize = 10000
	// maxTokenLen bounds the tokens looked at; ours are a few hundred bytes.
	maxTokenLen = 4096
)

// NewValidator returns a validator that verifies tokens with the
// verification keys of keys. It checks cfg and the current key set now.
//
// When keys is also a [KeyRefresher], a token whose kid none of the keys
// has makes the validator call RefreshKeys once for that token and
// verify with the set it returns; the provider's VerificationKeys should
// return that set from then on. Such a provider (like [RemoteKeys]) is not
// asked for keys now, so a resource server can start while the
// authorization server is down; it refuses tokens with a server error
// until keys arrive.
func NewValidator(keys KeyProvider, cfg ValidatorConfig) (*Validator, error) {
	if keys == nil {
		return nil, errors.New("m2mauth: nil KeyProvider")
	}
	if cfg.Issuer == "" {
		return nil, errors.New("m2mauth: ValidatorConfig.Issuer is required")
	}
	if cfg.Audience == "" {
		return nil, errors.New("m2mauth: ValidatorConfig.Audience is required")
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = SupportedAlgorithms()
	}
	v := &Validator{keys: keys, algs: make(map[jose.SignatureAlgorithm]bool)}
	v.refresher, _ = keys.(KeyRefresher)
	for _, a := range cfg.Algorithms {
		if !isSupported(a) {
			return nil, fmt.Errorf("m2mauth: unsupported algorithm %q (supported: %v)", a, SupportedAlgorithms())
		}
		v.algs[a] = true
	}
	switch {
	case cfg.Leeway == 0:
		cfg.Leeway = defaultLeeway
	case cfg.Leeway < 0:
		cfg.Leeway = 0
	case cfg.Leeway > maxLeeway:
		return nil, fmt.Errorf("m2mauth: Leeway %v exceeds %v", cfg.Leeway, maxLeeway)
	}
	switch {
	case cfg.CacheSize == 0:
		cfg.CacheSize = defaultCacheSize
	case cfg.CacheSize > maxCacheSize:
		return nil, fmt.Errorf("m2mauth: CacheSize %d exceeds %d", cfg.CacheSize, maxCacheSize)
	}
	if cfg.Realm == "" {
		cfg.Realm = defaultRealm
	}
	if !validRealm(cfg.Realm) {
		return nil, errors.New("m2mauth: Realm must be printable ASCII without quotes or backslashes")
	}
	if err := checkResourceMetadataURL(cfg.ResourceMetadataURL); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = systemClock.Now
		v.sysClock = true
	}
	if cfg.InsecureAcceptStaleRevocations && cfg.Revocations == nil {
		return nil, errors.New("m2mauth: InsecureAcceptStaleRevocations is set without Revocations")
	}
	v.cfg = cfg
	addrs, err := newAddrPolicy(cfg.TrustedProxies, cfg.ForwardedHeader, 0, nil)
	if err != nil {
		return nil, err
	}
	v.addrs = addrs
	v.challenge = `Bearer realm="` + cfg.Realm + `"`
	if cfg.ResourceMetadataURL != "" {
		v.challenge += `, resource_metadata="` + cfg.ResourceMetadataURL + `"`
	}
	if cfg.CacheSize > 0 {
		v.cache = newTokenCache(cfg.CacheSize)
	}
	if _, remote := keys.(KeyRefresher); remote {
		// Keys fetched from elsewhere arrive with the first token: a
		// resource server starts even while the authorization server is
		// down, and refuses tokens until keys arrive.
		return v, nil
	}
	idx, err := v.keyIndex(context.Background())
	if err != nil {
		return nil, err
	}
	if len(idx.keys) == 0 {
		return nil, errors.New("m2mauth: KeyProvider has no usable verification key")
	}
	return v, nil
}

// checkResourceMetadataURL checks a ValidatorConfig.ResourceMetadataURL:
// empty, or an absolute https URL (http on a loopback host) that can be
// sent in a quoted-string (RFC 9110 §5.6.4) as it is.
func checkResourceMetadataURL(s string) error {
	if s == "" {
		return nil
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '"' || c == '\\' {
			return errors.New("m2mauth: ResourceMetadataURL must be printable ASCII without spaces, quotes or backslashes")
		}
	}
	u, err := parseURL(s)
	if err != nil {
		return fmt.Errorf("m2mauth: ResourceMetadataURL: %w", err)
	}
	host := u.Hostname()
	loopback := isLoopbackHost(host)
	if host == "" || u.User != nil || u.Fragment != "" || u.Scheme != "https" && (u.Scheme != "http" || !loopback) {
		return fmt.Errorf("m2mauth: ResourceMetadataURL %q must be an absolute https URL (http only on a loopback host) without user info or fragment", u.Redacted())
	}
	return nil
}

// verifyKey is one verification key, prepared for its algorithm.
type verifyKey struct {
	alg jose.SignatureAlgorithm
	sig jwsVerifier
}

// keyIndex is the provider's key set indexed by kid. It is rebuilt when
// the provider returns a different set; cache entries remember the index
// they were verified under, so removing a key also drops its tokens from
// the cache.
type keyIndex struct {
	set  *jose.JSONWebKeySet
	keys map[string]*verifyKey
	// byHeader finds a key by the encoded header of the tokens a
	// TokenHandler signs with it. Such a header names the key's own
	// algorithm and kid and the type at+jwt: a token that carries it
	// needs no header decoded to find its key.
	byHeader map[string]*verifyKey
}

func (v *Validator) keyIndex(ctx context.Context) (*keyIndex, error) {
	set, err := v.keys.VerificationKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: verification keys: %w", err)
	}
	return v.indexOf(set)
}

// indexOf returns the index of set, building it when set is not the one
// indexed last.
func (v *Validator) indexOf(set *jose.JSONWebKeySet) (*keyIndex, error) {
	if set == nil {
		return nil, errors.New("m2mauth: KeyProvider returned a nil key set")
	}
	if idx := v.index.Load(); idx != nil && idx.set == set {
		return idx, nil
	}
	idx := &keyIndex{set: set, keys: make(map[string]*verifyKey, len(set.Keys)), byHeader: make(map[string]*verifyKey, len(set.Keys))}
	for i := range set.Keys {
		k := &set.Keys[i]
		// Keys that are malformed, or of an algorithm not allowed here,
		// are left out: they can verify nothing.
		if !v.algs[jose.SignatureAlgorithm(k.Algorithm)] {
			continue
		}
		sv, err := newJWSVerifier(k)
		if err != nil {
			continue
		}
		idx.keys[k.KeyID] = &verifyKey{alg: jose.SignatureAlgorithm(k.Algorithm), sig: sv}
	}
	for kid, k := range idx.keys {
		if h, err := encodedHeader(string(k.alg), kid); err == nil {
			idx.byHeader[h] = k
		}
	}
	v.index.Store(idx)
	return idx, nil
}

// refreshIndex asks the provider, a KeyRefresher, for keys it may not
// have had, in the hope of finding kid, and returns their index.
func (v *Validator) refreshIndex(ctx context.Context, kid string) (*keyIndex, error) {
	set, err := v.refresher.RefreshKeys(ctx, kid)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: refreshing verification keys: %w", err)
	}
	return v.indexOf(set)
}

// Reasons given in [AuditEvent.Reason] for a token_rejected event.
const (
	ReasonTokenMalformed     = "malformed"
	ReasonTokenAlgorithm     = "algorithm_not_allowed"
	ReasonTokenUnknownKey    = "unknown_key"
	ReasonTokenSignature     = "bad_signature"
	ReasonTokenType          = "wrong_type"
	ReasonTokenIssuer        = "wrong_issuer"
	ReasonTokenAudience      = "wrong_audience"
	ReasonTokenExpired       = "expired"
	ReasonTokenNotYetValid   = "not_yet_valid"
	ReasonTokenIssuedFuture  = "issued_in_future"
	ReasonTokenMissingClaims = "missing_claims"
)

// tokenFault is the internal cause behind an invalid_token error: the
// reason, and the client and token ids when the claims could be read, for
// the audit trail; kid is the unknown key id of an unknown_key fault.
type tokenFault struct{ reason, clientID, jti, kid string }

func (f *tokenFault) Error() string { return "m2mauth: token rejected: " + f.reason }

// unknownKID returns the kid of an unknown_key error, or "".
func unknownKID(err error) string {
	var f *tokenFault
	if errors.As(err, &f) {
		return f.kid
	}
	return ""
}

// reject builds the invalid_token error for a reason.
func reject(reason, description string) *Error {
	return WrapError(CodeInvalidToken, description, &tokenFault{reason: reason})
}

// RejectionReason returns the audit reason of an error from
// [Validator.Validate] (one of the ReasonToken constants), or "".
func RejectionReason(err error) string {
	var f *tokenFault
	if errors.As(err, &f) {
		return f.reason
	}
	return ""
}

// Validate verifies raw, a JWT access token, and returns its claims. Any
// failure is an *[Error] with code invalid_token, except a failing
// [KeyProvider] (or [KeyRefresher]), which is a server_error (status
// 500), and a stale [ValidatorConfig.Revocations] source, a server_error
// with status 503. The returned Claims may be shared with other callers
// and must not be modified.
func (v *Validator) Validate(ctx context.Context, raw string) (*Claims, error) {
	return v.check(ctx, raw, false)
}

// check is Validate. With bearer set, raw is the credentials of an
// Authorization: Bearer header, whose token68 syntax (RFC 6750 §2.1) is
// checked, but only when the token is not in the cache: a cached token
// was verified, so it is a JWS compact serialization, which is token68.
func (v *Validator) check(ctx context.Context, raw string, bearer bool) (*Claims, error) {
	c, err := v.validate(ctx, raw, bearer)
	if err != nil || v.cfg.Revocations == nil {
		return c, err
	}
	if err := v.checkRevoked(c); err != nil {
		return nil, err
	}
	return c, nil
}

// checkRevoked refuses c when the revocation source says its token is
// revoked, or cannot say. The accepting path does not allocate.
func (v *Validator) checkRevoked(c *Claims) error {
	revs, err := v.cfg.Revocations.CurrentRevocations()
	if v.cfg.InsecureAcceptStaleRevocations {
		switch {
		case err == nil:
			if revs != nil && v.lastRevs.Load() != revs {
				v.lastRevs.Store(revs)
			}
		case revs == nil:
			revs = v.lastRevs.Load()
		}
		err = nil
	}
	if err != nil {
		e := WrapError(CodeServerError, "token revocations are unavailable", err)
		e.Status = http.StatusServiceUnavailable
		return e
	}
	if revs.Revoked(c.ClientID, c.ID, c.IssuedAt.Time()) {
		return WrapError(CodeInvalidToken, "token has been revoked",
			&tokenFault{reason: ReasonTokenRevoked, clientID: auditString(c.ClientID), jti: auditString(c.ID)})
	}
	return nil
}

// validate is check without the revocation check.
func (v *Validator) validate(ctx context.Context, raw string, bearer bool) (*Claims, error) {
	idx, err := v.keyIndex(ctx)
	if err != nil {
		return nil, WrapError(CodeServerError, "token verification keys are unavailable", err)
	}
	if len(raw) > maxTokenLen {
		// Refused before the cache hashes it.
		if bearer && !isToken68(raw) {
			return nil, errMalformedBearer()
		}
		return nil, reject(ReasonTokenMalformed, "token too long")
	}
	var now time.Time
	var nowNs int64
	if v.sysClock {
		nowNs = systemClock.unixNano()
	} else {
		now = v.cfg.Now()
		nowNs = unixNanos(now)
	}
	if v.cache != nil {
		if c, ok := v.cache.get(raw, idx, nowNs); ok {
			return c, nil
		}
	}
	if v.sysClock {
		now = time.Unix(0, nowNs)
	}
	c, err := v.verify(idx, raw, now)
	// A token that verifies is made of base64url parts and dots, hence
	// token68; only one that does not needs the syntax scan, which
	// decides between a malformed request and an invalid token.
	if err != nil && bearer && !isToken68(raw) {
		return nil, errMalformedBearer()
	}
	if err != nil && v.refresher != nil {
		if kid := unknownKID(err); kid != "" {
			// A kid none of the keys has: perhaps a key published
			// since the set was fetched. One refresh per token,
			// whatever it brings.
			if idx, err = v.refreshIndex(ctx, kid); err != nil {
				return nil, WrapError(CodeServerError, "token verification keys are unavailable", err)
			}
			c, err = v.verify(idx, raw, now)
		}
	}
	if err != nil {
		var f *tokenFault
		if c != nil && errors.As(err, &f) {
			f.clientID, f.jti = auditString(c.ClientID), auditString(c.ID)
		}
		return nil, err
	}
	if v.cache != nil {
		e := cacheEntry{claims: c, keys: idx, from: math.MinInt64, until: unixNanos(c.Expiry.Time().Add(v.cfg.Leeway))}
		if c.NotBefore != nil {
			e.from = unixNanos(c.NotBefore.Time().Add(-v.cfg.Leeway))
		}
		v.cache.put(raw, e, nowNs)
	}
	return c, nil
}

// verifyScratch holds the buffers of one verification, reused through
// scratchPool so a verification allocates only what it returns.
type verifyScratch struct {
	in, hdr, payload, sig []byte
}

var scratchPool = sync.Pool{New: func() any { return new(verifyScratch) }}

// header decodes the JOSE header h64 of a token whose header is not one
// a TokenHandler writes for a key of idx, and checks it names an allowed
// algorithm, no critical extension and a kid.
func (v *Validator) header(sc *verifyScratch, h64 []byte) (tokenHeader, error) {
	hdrJSON, err := decodePart(sc.hdr[:0], h64)
	sc.hdr = hdrJSON
	if err != nil {
		return tokenHeader{}, reject(ReasonTokenMalformed, "malformed token header")
	}
	hdr, err := parseHeader(hdrJSON)
	if err != nil {
		return tokenHeader{}, reject(ReasonTokenMalformed, "malformed token header")
	}
	if !v.algs[jose.SignatureAlgorithm(hdr.alg)] {
		return tokenHeader{}, reject(ReasonTokenAlgorithm, "token algorithm not allowed")
	}
	if hdr.critical {
		return tokenHeader{}, reject(ReasonTokenMalformed, "token uses unsupported critical header parameters")
	}
	if hdr.kid == nil {
		return tokenHeader{}, reject(ReasonTokenUnknownKey, "token signed by an unknown key")
	}
	return hdr, nil
}

// verify checks everything about raw from scratch. On failure it returns
// the claims too when they could be read, for the audit trail.
func (v *Validator) verify(idx *keyIndex, raw string, now time.Time) (*Claims, error) {
	// Not deferred: verifyIn has too many returns for the compiler to
	// open-code a defer, and one it does not open-code costs every token
	// more than the Put itself.
	sc := scratchPool.Get().(*verifyScratch)
	c, err := v.verifyIn(sc, idx, raw, now)
	scratchPool.Put(sc)
	return c, err
}

// verifyIn is verify with sc for its buffers.
func (v *Validator) verifyIn(sc *verifyScratch, idx *keyIndex, raw string, now time.Time) (*Claims, error) {
	h64, rest, ok1 := strings.Cut(raw, ".")
	p64, s64, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.IndexByte(s64, '.') >= 0 {
		return nil, reject(ReasonTokenMalformed, "token is not a JWS compact serialization")
	}

	sc.in = append(sc.in[:0], raw...)
	signingInput := sc.in[:len(h64)+1+len(p64)]
	// A header found in byHeader is known to name the key's algorithm,
	// its kid and the type at+jwt; any other is decoded and checked.
	key := idx.byHeader[h64]
	decoded := key == nil
	var hdr tokenHeader
	if decoded {
		var err error
		if hdr, err = v.header(sc, signingInput[:len(h64)]); err != nil {
			return nil, err
		}
		if key = idx.keys[string(hdr.kid)]; key == nil {
			return nil, WrapError(CodeInvalidToken, "token signed by an unknown key",
				&tokenFault{reason: ReasonTokenUnknownKey, kid: string(hdr.kid)})
		}
		if key.alg != jose.SignatureAlgorithm(hdr.alg) {
			// The key decides the algorithm, never the header (RFC 8725 §3.1).
			return nil, reject(ReasonTokenAlgorithm, "token algorithm does not match its key")
		}
	}

	// Every algorithm has signatures of one length for a given key; a
	// token whose signature has another is refused before decoding.
	n := key.sig.sigLen()
	if len(s64) != base64.RawURLEncoding.EncodedLen(n) {
		return nil, reject(ReasonTokenSignature, "invalid token signature")
	}
	sig, err := decodePart(sc.sig[:0], sc.in[len(signingInput)+1:])
	sc.sig = sig
	if err != nil || len(sig) != n || !key.sig.verify(signingInput, sig) {
		return nil, reject(ReasonTokenSignature, "invalid token signature")
	}

	// The signature is good; now the header and claims are trusted input.
	if t := string(hdr.typ); decoded && !strings.EqualFold(t, TokenType) && !strings.EqualFold(t, "application/"+TokenType) {
		return nil, reject(ReasonTokenType, "token is not an access token (typ must be at+jwt)")
	}
	payload, err := decodePart(sc.payload[:0], signingInput[len(h64)+1:])
	sc.payload = payload
	if err != nil {
		return nil, reject(ReasonTokenMalformed, "malformed token claims")
	}
	p, err := decodeClaims(payload)
	if err != nil {
		return nil, reject(ReasonTokenMalformed, "malformed token claims")
	}
	c := &p.Claims
	if !p.hasClientID || c.ClientID == "" || c.Subject == "" || c.Expiry == nil || c.IssuedAt == nil || c.ID == "" {
		return c, reject(ReasonTokenMissingClaims, "token lacks a required claim")
	}
	if p.hasScope {
		if c.Scopes, err = p.parseScopes(); err != nil {
			return c, reject(ReasonTokenMalformed, "token scope claim is malformed")
		}
	}
	want := jwt.Expected{Issuer: v.cfg.Issuer, AnyAudience: jwt.Audience{v.cfg.Audience}, Time: now}
	if v.anyAudience {
		want.AnyAudience = nil
	}
	err = c.Claims.ValidateWithLeeway(want, v.cfg.Leeway)
	exp := c.Expiry.Time()
	switch {
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return c, reject(ReasonTokenIssuer, "token issuer is not trusted")
	case errors.Is(err, jwt.ErrInvalidAudience):
		return c, reject(ReasonTokenAudience, "token is not for this audience")
	case errors.Is(err, jwt.ErrNotValidYet):
		return c, reject(ReasonTokenNotYetValid, "token is not valid yet")
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return c, reject(ReasonTokenIssuedFuture, "token issued in the future")
	case err != nil || !now.Add(-v.cfg.Leeway).Before(exp):
		// RFC 7519 §4.1.4: valid only before exp.
		return c, reject(ReasonTokenExpired, "token expired")
	}
	return c, nil
}

// strictBase64URL decodes base64url without padding and refuses a final
// character whose unused bits are not zero (RFC 4648 §3.5).
var strictBase64URL = base64.RawURLEncoding.Strict()

var errNotBase64URL = errors.New("m2mauth: not canonical base64url")

// decodePart appends the bytes of src, one part of a JWS compact
// serialization, to dst. Each part is base64url without padding
// (RFC 7515 §2) and only its canonical spelling is accepted: anything
// outside the alphabet, '=' padding, and non-zero unused bits in the last
// character are refused. Otherwise a signature would have three other
// spellings that verify too (RFC 7515 §7.1), each a different token string
// to the cache and to anything that counts or logs tokens by their string.
func decodePart(dst, src []byte) ([]byte, error) {
	// encoding/base64 skips CR and LF, even in strict mode.
	if bytes.IndexByte(src, '\n') >= 0 || bytes.IndexByte(src, '\r') >= 0 {
		return dst, errNotBase64URL
	}
	return strictBase64URL.AppendDecode(dst, src)
}

// claimsKey is the context key of the verified claims.
type claimsKey struct{}

// ClaimsFromContext returns the claims of the access token that
// [Validator.RequireScopes] or [Validator.RequireAnyScope] accepted for
// this request. The claims are shared and must not be modified.
func ClaimsFromContext(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok
}

// ContextWithClaims returns a copy of ctx carrying c, as the middleware
// passes it to the handler behind it, so that [ClaimsFromContext] finds
// it. It is meant for tests of such handlers (see the m2mauthtest
// package); in production, claims come only from a validated token.
// A nil c leaves ctx as it is.
func ContextWithClaims(ctx context.Context, c *Claims) context.Context {
	if c == nil {
		return ctx
	}
	return &claimsContext{ctx, c}
}

// withClaims returns a shallow copy of r whose context carries c, as
// r.WithContext(ContextWithClaims(r.Context(), c)) does, with the copy
// and its context in one allocation. WithContext is inlined and its own
// copy, which goes no further than this function, stays on the stack.
func withClaims(r *http.Request, c *Claims) *http.Request {
	h := new(handoff)
	h.ctx = claimsContext{r.Context(), c}
	h.req = *r.WithContext(&h.ctx)
	return &h.req
}

// handoff is a request and the context it carries, allocated together.
type handoff struct {
	req http.Request
	ctx claimsContext
}

// claimsContext is ctx carrying claims: what context.WithValue would
// make, in half the memory, for every request the middleware lets
// through.
type claimsContext struct {
	context.Context
	claims *Claims
}

// Value returns the claims for claimsKey, and asks the parent context
// for any other key.
func (c *claimsContext) Value(key any) any {
	if _, ok := key.(claimsKey); ok {
		return c.claims
	}
	return c.Context.Value(key)
}

// String describes the context, as context.WithValue's does.
func (c *claimsContext) String() string {
	return fmt.Sprint(c.Context) + ".WithValue(m2mauth claims)"
}

// RequireScopes returns middleware that lets a request through only with a
// valid bearer token (RFC 6750 §2.1, Authorization header only: tokens in
// the query string or body are never read) carrying every one of scopes.
// The next handler finds the claims with [ClaimsFromContext].
//
// Refusals follow RFC 6750 §3: no token is 401 with a bare Bearer
// challenge; a malformed Authorization header is 400 invalid_request; a bad
// token is 401 invalid_token; a token lacking a scope is 403
// insufficient_scope naming the required scopes. Keys or revocations that
// are unavailable are a server_error (500, or 503 for stale revocations)
// without a challenge; a request whose caller went away while it waited
// for keys is a 503 temporarily_unavailable audited as [ReasonCanceled].
//
// A client must send its token by one method only (RFC 6750 §2), so a
// bearer Authorization header together with an access_token parameter in
// the query string or in an application/x-www-form-urlencoded body is 400
// invalid_request. To find one in a body, the middleware reads at most its
// first 64 KiB, where the parameter's name and "=" must lie to be seen,
// and puts them back: the next handler reads the body unchanged.
//
// RequireScopes panics if a scope is not a valid scope token
// (RFC 6749 §3.3): that is a programming error found when routes are set
// up, as with [regexp.MustCompile].
func (v *Validator) RequireScopes(scopes ...string) func(http.Handler) http.Handler {
	return v.require(mustScopes(scopes), Scopes.HasAll)
}

// RequireAnyScope is [Validator.RequireScopes] satisfied by any one of
// scopes. Its insufficient_scope challenge names all of them, as RFC 6750
// §3's scope attribute has no way to say "any one of": a client that asks
// for all gets a token that passes, and one with any of them passes too.
func (v *Validator) RequireAnyScope(scopes ...string) func(http.Handler) http.Handler {
	s := mustScopes(scopes)
	if len(s) == 0 {
		panic("m2mauth: RequireAnyScope needs at least one scope")
	}
	return v.require(s, Scopes.HasAny)
}

// validRealm reports whether realm can be sent as the realm of a
// challenge (RFC 7235 §2.2) as it is: printable ASCII, without the
// quotes and backslashes a quoted-string would have to escape.
func validRealm(realm string) bool {
	for i := 0; i < len(realm); i++ {
		if c := realm[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

func mustScopes(scopes []string) Scopes {
	s, err := NewScopes(scopes...)
	if err != nil {
		panic(fmt.Sprintf("m2mauth: invalid required scope in %q: %v", scopes, err))
	}
	return s
}

func (v *Validator) require(want Scopes, ok func(have, want Scopes) bool) func(http.Handler) http.Handler {
	insufficient := fmt.Sprintf(`%s, error="insufficient_scope", error_description="the access token lacks a required scope", scope="%s"`, v.challenge, want)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if v.cfg.RequireHTTPS {
				if err := transport(w, v.addrs.resolve(r), false); err != nil {
					v.refuse(w, r, WrapError(CodeInvalidRequest, "this API accepts only HTTPS requests (RFC 6750 section 5.3)",
						&tokenFault{reason: ReasonInsecureTransport}))
					return
				}
			}
			raw, e := bearerToken(r.Header["Authorization"])
			if e == nil && otherTokenMethod(r) {
				e = NewError(CodeInvalidRequest, "more than one method used to send the access token")
			}
			if e != nil {
				v.refuse(w, r, e)
				return
			}
			c, err := v.check(r.Context(), raw, true)
			if err != nil {
				v.refuse(w, r, canceledAs(r, asError(err)))
				return
			}
			if !ok(c.Scopes, want) {
				w.Header().Set("WWW-Authenticate", insufficient)
				if v.cfg.Auditor != nil {
					ev := v.event(r, EventScopeDenied, CodeInsufficientScope)
					ev.ClientID, ev.JTI, ev.Scopes = auditString(c.ClientID), auditString(c.ID), want
					v.cfg.Auditor.Audit(r.Context(), ev)
				}
				v.render(w, r, NewError(CodeInsufficientScope, "the access token lacks a required scope: "+want.String()))
				return
			}
			next.ServeHTTP(w, withClaims(r, c))
		})
	}
}

// otherTokenMethod reports whether r, which has a bearer Authorization
// header, also has an access_token parameter in its query string
// (RFC 6750 §2.3) or form body (§2.2). A request without a query string
// or a form body costs nothing here.
func otherTokenMethod(r *http.Request) bool {
	return r.URL.RawQuery != "" && hasAccessToken(r.URL.RawQuery) || formHasAccessToken(r)
}

// maxFormPrefix bounds the part of an application/x-www-form-urlencoded
// body read to look for an access_token parameter.
const maxFormPrefix = 64 << 10

// formHasAccessToken reports whether r has an
// application/x-www-form-urlencoded body with an access_token parameter
// among its first maxFormPrefix bytes (RFC 6750 §2.2). What it reads is put
// back in front of the rest of r.Body.
func formHasAccessToken(r *http.Request) bool {
	if r.Body == nil || r.Body == http.NoBody {
		return false
	}
	ct := r.Header["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	mt, _, _ := strings.Cut(ct[0], ";")
	if !strings.EqualFold(strings.TrimSpace(mt), "application/x-www-form-urlencoded") {
		return false
	}
	// A read error is left for the next handler to meet: it reads what was
	// read here, then the body again.
	prefix, _ := io.ReadAll(io.LimitReader(r.Body, maxFormPrefix))
	r.Body = replayedBody{io.MultiReader(bytes.NewReader(prefix), r.Body), r.Body}
	form := string(prefix)
	if len(prefix) == maxFormPrefix {
		// The last parameter may be cut short: look at it only if its
		// name is whole.
		last := strings.LastIndexAny(form, "&;") + 1
		if !strings.Contains(form[last:], "=") {
			form = form[:last]
		}
	}
	return hasAccessToken(form)
}

// replayedBody is a request body whose start was read and put back.
type replayedBody struct {
	io.Reader
	io.Closer
}

// hasAccessToken reports whether the URL-encoded form q (a query string
// or a form body) has a parameter named access_token, with any value and
// with its name escaped or not. Both '&' and ';' separate parameters, as
// some servers and proxies split on either.
func hasAccessToken(q string) bool {
	for q != "" {
		var param string
		if i := strings.IndexAny(q, "&;"); i >= 0 {
			param, q = q[:i], q[i+1:]
		} else {
			param, q = q, ""
		}
		name, _, _ := strings.Cut(param, "=")
		if n, err := formUnescape(name); err == nil && n == "access_token" {
			return true
		}
	}
	return false
}

// errNoToken marks a request without bearer credentials: RFC 6750 §3.1
// says to answer it with no error code in the challenge.
var errNoToken = errors.New("m2mauth: no bearer token")

// bearerToken extracts the token from the Authorization header values
// (RFC 6750 §2.1): exactly one header, scheme Bearer in any case, then a
// token68.
func bearerToken(values []string) (string, *Error) {
	switch len(values) {
	case 0:
		return "", WrapError(CodeInvalidToken, "missing bearer token", errNoToken)
	case 1:
	default:
		return "", NewError(CodeInvalidRequest, "more than one Authorization header")
	}
	v := values[0]
	if len(v) > 7 && v[:7] == "Bearer " && v[7] != ' ' {
		// The usual spelling, with one space.
		return v[7:], nil
	}
	scheme, tok, _ := strings.Cut(v, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", WrapError(CodeInvalidToken, "missing bearer token", errNoToken)
	}
	// Its token68 syntax is checked by Validator.check, once the cache
	// has not answered.
	return strings.TrimLeft(tok, " "), nil
}

// errMalformedBearer is the error of bearer credentials that are not
// token68 (RFC 6750 §2.1).
func errMalformedBearer() *Error {
	return NewError(CodeInvalidRequest, "malformed bearer token")
}

// token68Chars marks the bytes allowed before the padding of a token68
// (RFC 7235 §2.1): ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/".
var token68Chars = func() (t [256]bool) {
	for c := range 256 {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~+/", byte(c)) >= 0
	}
	return t
}()

// isToken68 reports whether s matches token68 (RFC 7235 §2.1):
// 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
func isToken68(s string) bool {
	i := 0
	for i < len(s) && token68Chars[s[i]] {
		i++
	}
	if i == 0 {
		return false
	}
	for ; i < len(s); i++ {
		if s[i] != '=' {
			return false
		}
	}
	return true
}

// canceledAs returns e, or, for a server_error that the caller's going
// away caused, the error the token handler answers such a request with:
// a wait for keys that the caller interrupted reports the cancellation
// as its own failure, which it is not. It is audited as
// [ReasonCanceled], and counted as a canceled request, not a validation.
// A server_error with another cause (stale revocations, a key server's
// error) stays one, canceled request or not.
func canceledAs(r *http.Request, e *Error) *Error {
	if e.Code != CodeServerError || !errors.Is(e, context.Canceled) || !errors.Is(r.Context().Err(), context.Canceled) {
		return e
	}
	c := WrapError(CodeTemporarilyUnavailable, "the request was canceled", &tokenFault{reason: ReasonCanceled})
	c.Status = http.StatusServiceUnavailable
	return c
}

// refuse answers a request whose token was missing or refused.
func (v *Validator) refuse(w http.ResponseWriter, r *http.Request, e *Error) {
	switch {
	case errors.Is(e, errNoToken):
		w.Header().Set("WWW-Authenticate", v.challenge)
	case e.Code == CodeServerError || e.Code == CodeTemporarilyUnavailable:
		// Not the client's fault: no challenge.
	default:
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`%s, error="%s", error_description="%s"`, v.challenge, e.Code, safeDescription(e.Description)))
	}
	if !errors.Is(e, errNoToken) && v.cfg.Auditor != nil {
		ev := v.event(r, EventTokenRejected, e.Code)
		var f *tokenFault
		if errors.As(e, &f) {
			ev.Reason, ev.ClientID, ev.JTI = f.reason, f.clientID, f.jti
		}
		v.cfg.Auditor.Audit(r.Context(), ev)
	}
	v.render(w, r, e)
}

func (v *Validator) render(w http.ResponseWriter, r *http.Request, e *Error) {
	if v.cfg.ErrorHandler != nil {
		v.cfg.ErrorHandler(w, r, e)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if errors.Is(e, errNoToken) {
		// A request without credentials is told only how to
		// authenticate, by the challenge: no error code or other error
		// information (RFC 6750 §3.1), in the body either.
		w.WriteHeader(e.Status)
		return
	}
	writeError(w, e)
}

// event starts an audit event about r.
func (v *Validator) event(r *http.Request, typ AuditEventType, code string) AuditEvent {
	ev := AuditEvent{
		Time: v.cfg.Now(), Type: typ, UserAgent: auditString(r.UserAgent()),
		Audience: v.cfg.Audience, Error: code,
	}
	if a := v.addrs.resolve(r).addr; a.IsValid() {
		ev.RemoteIP = a.String()
	}
	return ev
}

// CacheStats reports the verified-token cache's counters; all zero when
// the cache is disabled.
func (v *Validator) CacheStats() CacheStats {
	if v.cache == nil {
		return CacheStats{}
	}
	return v.cache.stats()
}
