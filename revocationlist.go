package m2mauth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// RevocationListType is the JWT "typ" header of a signed revocation list
// (RFC 8725 §3.11): a [Validator] never takes one for an access token,
// whose typ must be at+jwt.
const RevocationListType = "revocations+jwt"

// contentTypeJWT is the media type of a JWT (RFC 7519 §10.3.1).
const contentTypeJWT = "application/jwt"

// RevocationListConfig holds the settings of a [RevocationListHandler].
// Issuer is required; every other zero value is a working default.
type RevocationListConfig struct {
	// Issuer is the "iss" of the list: the token handler's Issuer,
	// which resource servers already trust. Required.
	Issuer string
	// Validity is how long a signed list is accepted after it was
	// signed: its exp is its iat plus Validity. A list is signed again
	// when its revocations change, when the signing key changes, and
	// every half of Validity (at whole multiples of it since the Unix
	// epoch, the same on every replica), so whatever a resource server
	// fetches is valid for at least half of it. Between 1 minute and
	// 24 hours. Default: 5m.
	Validity time.Duration
	// MaxAge is how long shared caches may serve the list without
	// asking (Cache-Control max-age, whole seconds). It adds to the time
	// a revocation takes to reach resource servers behind such a cache,
	// so it is kept short; resource servers revalidate with
	// If-None-Match, which costs a 304 while nothing changes. Negative
	// means max-age=0. At most 1 minute. Default: 5s.
	MaxAge time.Duration
	// Logger receives the errors of the source and of the key provider,
	// which are never sent to clients. Default: [slog.Default].
	Logger *slog.Logger
	// Now is the clock behind iat and exp. Default: [time.Now].
	Now func() time.Time
}

const (
	defaultListValidity = 5 * time.Minute
	minListValidity     = time.Minute
	maxListValidity     = 24 * time.Hour
	defaultListMaxAge   = 5 * time.Second
	maxListMaxAge       = time.Minute
)

// RevocationListHandler publishes the revocations of a
// [RevocationSource] as a signed JWT, so that resource servers in other
// processes, in any language, can poll them with the keys they already
// fetch from the JWKS: in Go, [NewRemoteRevocations] under a
// [RevocationPoller]. Mount it with
//
//	mux.Handle("GET /oauth/revocations", h)
//
// (a GET pattern matches HEAD too; other methods get 405). Its answer is
// a JWS compact serialization (RFC 7515 §7.1), Content-Type
// application/jwt, signed with the key provider's current signing key,
// with the protected header {"alg", "kid", "typ":"revocations+jwt"} and
// the claims:
//
//	iss      the configured Issuer
//	iat      when it was signed, Unix seconds
//	exp      iat + Validity (5 minutes by default)
//	ver      the Version of the revocations: greater after every change
//	before   the store-wide watermark, Unix seconds; absent when none
//	clients  {client_id: watermark, Unix seconds}
//	jtis     {jti: the token's exp, Unix seconds}
//
// A token is revoked when its iat, in whole seconds, is at or before
// before or its client's watermark, or when its jti is listed (see
// [Revocations]). A consumer must check the signature, typ, iss and exp,
// and refuse a ver lower than the one it holds.
//
// The ETag is weak, W/"version.period.key" (RFC 9110 §8.8.3): a request
// whose If-None-Match matches it gets 304 Not Modified, so polling an
// unchanged list costs a few bytes, from any replica, as every replica
// signs the version in the same periods of half the Validity, aligned on
// the Unix epoch. A new version, a new signing key or a new period gives
// a new tag, so a client or a cache revalidating gets the list signed
// again, with its later exp, rather than a 304 for a list about to
// expire. Cache-Control is "public, max-age=5" by default (see
// [RevocationListConfig.MaxAge]). When the source is stale (its error
// wraps [ErrRevocationsStale]) the answer is 503 with a server_error:
// publishing revocations nobody can vouch for would let revoked tokens
// through. A failing key provider is a 500.
//
// The list is built and signed once per version, signing key and
// period; requests in between get the same bytes.
//
// A RevocationListHandler is safe for concurrent use.
type RevocationListHandler struct {
	src      RevocationSource
	keys     KeyProvider
	cfg      RevocationListConfig
	cache    string // Cache-Control
	validity int64  // seconds
	doc      atomic.Pointer[revocationListDoc]
	mu       sync.Mutex // one build at a time
}

// revocationListDoc is the list signed for one version with one key in
// one signing period (see RevocationListHandler.period).
type revocationListDoc struct {
	version int64
	key     *jose.JSONWebKey
	period  int64
	doc     *document
}

// NewRevocationListHandler returns a handler that publishes the
// revocations of src, signed with the signing key of keys. It checks
// that keys has a usable signing key now.
func NewRevocationListHandler(src RevocationSource, keys KeyProvider, cfg RevocationListConfig) (*RevocationListHandler, error) {
	if src == nil {
		return nil, errors.New("m2mauth: nil RevocationSource")
	}
	if keys == nil {
		return nil, errors.New("m2mauth: nil KeyProvider")
	}
	if cfg.Issuer == "" {
		return nil, errors.New("m2mauth: RevocationListConfig.Issuer is required")
	}
	switch {
	case cfg.Validity == 0:
		cfg.Validity = defaultListValidity
	case cfg.Validity < minListValidity || cfg.Validity > maxListValidity:
		return nil, fmt.Errorf("m2mauth: RevocationListConfig.Validity %v outside [%v, %v]", cfg.Validity, minListValidity, maxListValidity)
	}
	switch {
	case cfg.MaxAge == 0:
		cfg.MaxAge = defaultListMaxAge
	case cfg.MaxAge < 0:
		cfg.MaxAge = 0
	case cfg.MaxAge > maxListMaxAge:
		return nil, fmt.Errorf("m2mauth: RevocationListConfig.MaxAge %v exceeds %v", cfg.MaxAge, maxListMaxAge)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	k, err := keys.SigningKey(context.Background())
	if err != nil {
		return nil, fmt.Errorf("m2mauth: signing key: %w", err)
	}
	if k == nil {
		return nil, errors.New("m2mauth: KeyProvider returned a nil signing key")
	}
	if err := checkSigningKey(k); err != nil {
		return nil, err
	}
	return &RevocationListHandler{
		src: src, keys: keys, cfg: cfg,
		cache:    cacheControl(int64(cfg.MaxAge / time.Second)),
		validity: int64(cfg.Validity / time.Second),
	}, nil
}

// ServeHTTP answers GET and HEAD with the current signed list.
func (h *RevocationListHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !allowGetHead(w, r, "the revocation list") {
		return
	}
	revs, err := h.src.CurrentRevocations()
	if err != nil {
		h.cfg.Logger.ErrorContext(r.Context(), "m2mauth: revocation list unavailable", "error", err)
		e := WrapError(CodeServerError, "the revocation list is unavailable", err)
		e.Status = http.StatusServiceUnavailable
		w.Header().Set("Cache-Control", "no-store")
		writeError(w, e)
		return
	}
	if revs == nil {
		revs = &Revocations{}
	}
	doc, err := h.current(r.Context(), revs)
	if err != nil {
		h.cfg.Logger.ErrorContext(r.Context(), "m2mauth: revocation list cannot be signed", "error", err)
		w.Header().Set("Cache-Control", "no-store")
		writeError(w, WrapError(CodeServerError, "the revocation list is unavailable", err))
		return
	}
	doc.serve(w, r, h.cache)
}

// current returns the signed list of revs, signing it again when the
// version or the signing key changed or half its validity has passed.
func (h *RevocationListHandler) current(ctx context.Context, revs *Revocations) (*document, error) {
	key, err := h.keys.SigningKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: signing key: %w", err)
	}
	if key == nil {
		return nil, errors.New("m2mauth: KeyProvider returned a nil signing key")
	}
	fresh := func(d *revocationListDoc, now time.Time) bool {
		return d != nil && d.version == revs.Version && d.key == key && d.period == h.period(now)
	}
	if d := h.doc.Load(); fresh(d, h.cfg.Now()) {
		return d.doc, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.cfg.Now()
	if d := h.doc.Load(); fresh(d, now) {
		return d.doc, nil
	}
	body, err := signRevocationList(key, h.cfg.Issuer, revs, now, h.validity)
	if err != nil {
		return nil, err
	}
	doc := newDocument(contentTypeJWT, body)
	period := h.period(now)
	doc.etag = revocationListETag(revs.Version, period, key)
	h.doc.Store(&revocationListDoc{version: revs.Version, key: key, period: period, doc: doc})
	return doc, nil
}

// period returns the signing period of now: the number of whole halves
// of Validity since the Unix epoch. Every replica counts the same
// periods, so lists they sign in one period share an ETag.
func (h *RevocationListHandler) period(now time.Time) int64 {
	half := max(h.validity/2, 1)
	return now.Unix() / half
}

// revocationListETag is the weak entity tag of the lists of a version
// signed with key in a period (RFC 9110 §8.8.3): replicas sign their own
// bytes (an ES256 signature is random, iat differs), which are
// equivalent, not equal; and a list signed in another period, with a
// later exp, or with another key, gets another tag, so a client or a
// cache revalidating is never told that a list about to expire is
// current. A list signed in period p expires at or after the end of
// period p+1, so one answered 304 in period p is valid a half Validity
// more.
func revocationListETag(version, period int64, key *jose.JSONWebKey) string {
	sum := sha256.Sum256([]byte(key.Algorithm + "\x00" + key.KeyID))
	return `W/"` + strconv.FormatInt(version, 10) + "." + strconv.FormatInt(period, 10) + "." +
		base64.RawURLEncoding.EncodeToString(sum[:9]) + `"`
}

// signRevocationList returns the compact JWS of revs, issued by iss at
// now and valid for validity seconds.
func signRevocationList(key *jose.JSONWebKey, iss string, revs *Revocations, now time.Time, validity int64) ([]byte, error) {
	sig, err := newJWSSigner(key)
	if err != nil {
		return nil, err
	}
	hdr, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{key.Algorithm, key.KeyID, RevocationListType})
	if err != nil {
		return nil, err
	}
	iat := now.Unix()
	claims := make([]byte, 0, 128+48*revs.Len())
	claims = append(claims, `{"iss":`...)
	claims = appendJSONString(claims, iss)
	claims = append(claims, `,"iat":`...)
	claims = strconv.AppendInt(claims, iat, 10)
	claims = append(claims, `,"exp":`...)
	claims = strconv.AppendInt(claims, iat+validity, 10)
	claims = append(claims, `,"ver":`...)
	claims = strconv.AppendInt(claims, revs.Version, 10)
	if !revs.Before.IsZero() {
		claims = append(claims, `,"before":`...)
		claims = strconv.AppendInt(claims, revs.Before.Unix(), 10)
	}
	claims = appendUnixMap(append(claims, `,"clients":`...), revs.Clients)
	claims = appendUnixMap(append(claims, `,"jtis":`...), revs.Tokens)
	claims = append(claims, '}')

	out := make([]byte, 0, base64.RawURLEncoding.EncodedLen(len(hdr))+base64.RawURLEncoding.EncodedLen(len(claims))+600)
	out = base64.RawURLEncoding.AppendEncode(out, hdr)
	out = append(out, '.')
	out = base64.RawURLEncoding.AppendEncode(out, claims)
	return sig.appendSignature(append(out, '.'), out)
}

// appendUnixMap appends m as a JSON object of Unix seconds.
func appendUnixMap(dst []byte, m map[string]time.Time) []byte {
	dst = append(dst, '{')
	first := true
	for k, t := range m {
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendJSONString(dst, k)
		dst = append(dst, ':')
		dst = strconv.AppendInt(dst, t.Unix(), 10)
	}
	return append(dst, '}')
}

// RemoteRevocationsConfig holds the settings of a [RemoteRevocations].
// Issuer is required; every other zero value is a working default.
type RemoteRevocationsConfig struct {
	// Issuer is the exact "iss" the list must carry: the authorization
	// server's issuer, as in [ValidatorConfig.Issuer]. Required.
	Issuer string
	// HTTPClient makes the requests. Timeout, MaxBodyBytes, the https
	// rule and the refusal of redirects to another host apply whatever
	// client is given. Default: a client without cookie jar that reads
	// at most 64 KiB of response headers and follows at most 3
	// redirects, each to the same host, allowed by the https rule and
	// never from https down to http.
	HTTPClient *http.Client
	// Timeout bounds each request, body included. Default: 5s.
	Timeout time.Duration
	// MaxBodyBytes bounds each response body; a longer one is refused.
	// Each revoked token costs about 50 bytes of the signed list (its
	// jti and expiry, base64url-encoded), each client watermark a little
	// less, so the default holds some 160,000 entries. Default: 8 MiB.
	MaxBodyBytes int64
	// Leeway is the clock skew tolerated on the list's exp and iat.
	// Default: 30s. At most 5 minutes.
	Leeway time.Duration
	// AllowInsecureHTTP allows an http:// URL on any host. It is
	// insecure: whoever can alter the traffic can answer 304, or replay
	// an older list, and keep new revocations from arriving until the
	// list held expires (the list's signature still stops forged ones). By default only https is allowed, and http only on
	// loopback hosts (127.0.0.0/8, ::1 and "localhost"). Default: false.
	AllowInsecureHTTP bool
	// Now is the clock behind exp and iat. Default: [time.Now].
	Now func() time.Time
}

const defaultListMaxBodyBytes = 8 << 20

// RemoteRevocations is a [RevocationFeed] that reads the signed list a
// [RevocationListHandler] publishes, for resource servers in another
// process than the authorization server. Give it to a
// [RevocationPoller], and the poller to [ValidatorConfig.Revocations]:
//
//	keys, _ := m2mauth.NewRemoteKeys("https://auth.example.com/.well-known/jwks.json", m2mauth.RemoteKeysConfig{})
//	feed, _ := m2mauth.NewRemoteRevocations("https://auth.example.com/oauth/revocations", keys,
//		m2mauth.RemoteRevocationsConfig{Issuer: "https://auth.example.com"})
//	poller, _ := m2mauth.NewRevocationPoller(feed, m2mauth.RevocationPollerConfig{})
//	defer poller.Close()
//	v, _ := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
//		Issuer: "https://auth.example.com", Audience: "https://api.example.com",
//		Revocations: poller,
//	})
//
// Each RevocationsSince is one conditional GET: If-None-Match carries the
// ETag of the list held, and 304 Not Modified means unchanged. Once the
// list held has expired (its exp, within Leeway), the list is asked for
// whole, so a 304 cannot keep it in force. A 200
// is accepted only when it is a compact JWS whose signature verifies
// with one of keys' verification keys (the one its kid names; a kid
// none has makes one RefreshKeys call, when keys is a [KeyRefresher]),
// whose key's algorithm is the header's, whose typ is
// [RevocationListType], whose iss is the configured Issuer, whose exp has
// not passed and whose iat has come (both within Leeway), and whose ver
// is not lower than any version seen before. Anything else is an error,
// and the poller keeps its last good snapshot.
//
// Requests are bounded by Timeout (5s) and MaxBodyBytes (8 MiB), go
// over https except to loopback hosts or with AllowInsecureHTTP, and
// never follow a redirect to another host.
//
// A RemoteRevocations is safe for concurrent use.
type RemoteRevocations struct {
	url       string
	host      string
	keys      KeyProvider
	refresher KeyRefresher // keys, when it is one; else nil
	cfg       RemoteRevocationsConfig
	client    *http.Client

	mu      sync.Mutex // guards the fields below
	etag    string     // of the version below; "" when none was sent
	version int64      // the highest version accepted; -1 before any
	exp     int64      // the exp of the list etag names, Unix seconds
}

// NewRemoteRevocations returns a feed of the list published at listURL,
// verified with keys. listURL must be an absolute https URL (http only
// on a loopback host, or with AllowInsecureHTTP) without user
// information or fragment. It does no I/O.
func NewRemoteRevocations(listURL string, keys KeyProvider, cfg RemoteRevocationsConfig) (*RemoteRevocations, error) {
	if keys == nil {
		return nil, errors.New("m2mauth: nil KeyProvider")
	}
	if cfg.Issuer == "" {
		return nil, errors.New("m2mauth: RemoteRevocationsConfig.Issuer is required")
	}
	switch {
	case cfg.Timeout == 0:
		cfg.Timeout = defaultRemoteTimeout
	case cfg.Timeout < 0:
		return nil, fmt.Errorf("m2mauth: RemoteRevocationsConfig.Timeout %v is negative", cfg.Timeout)
	}
	switch {
	case cfg.MaxBodyBytes == 0:
		cfg.MaxBodyBytes = defaultListMaxBodyBytes
	case cfg.MaxBodyBytes < 0:
		return nil, fmt.Errorf("m2mauth: RemoteRevocationsConfig.MaxBodyBytes %d is negative", cfg.MaxBodyBytes)
	}
	switch {
	case cfg.Leeway == 0:
		cfg.Leeway = defaultLeeway
	case cfg.Leeway < 0 || cfg.Leeway > maxLeeway:
		return nil, fmt.Errorf("m2mauth: RemoteRevocationsConfig.Leeway %v outside [0, %v]", cfg.Leeway, maxLeeway)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	u, err := remoteCheckURL(listURL, cfg.AllowInsecureHTTP)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: revocation list URL: %w", err)
	}
	rr := &RemoteRevocations{url: u.String(), host: u.Host, keys: keys, cfg: cfg, version: -1}
	rr.refresher, _ = keys.(KeyRefresher)
	rr.client = rr.httpClient()
	return rr, nil
}

// httpClient returns the configured client, or the default one, with
// the redirect rule wrapped around its own policy.
func (rr *RemoteRevocations) httpClient() *http.Client {
	var c http.Client
	if rr.cfg.HTTPClient != nil {
		c = *rr.cfg.HTTPClient
	} else {
		c.Transport, c.Timeout = remoteTransport(), rr.cfg.Timeout
	}
	own := c.CheckRedirect
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.URL.Host != rr.host {
			return fmt.Errorf("redirect to another host (%s) refused", req.URL.Redacted())
		}
		if err := remoteAllowURL(req.URL, rr.cfg.AllowInsecureHTTP); err != nil {
			return fmt.Errorf("redirect refused: %w", err)
		}
		if via[len(via)-1].URL.Scheme == "https" && req.URL.Scheme != "https" {
			return fmt.Errorf("redirect from https to %q refused", req.URL.Redacted())
		}
		if own != nil {
			return own(req, via)
		}
		if len(via) > remoteMaxRedirects {
			return fmt.Errorf("stopped after %d redirects", remoteMaxRedirects)
		}
		return nil
	}
	return &c
}

// RevocationsSince implements [RevocationFeed]: it fetches the list and
// returns its revocations when its version differs from version, and
// (nil, nil) when the server answers 304 Not Modified or the version is
// the same. A list older than version, or than any list accepted before,
// is refused.
func (rr *RemoteRevocations) RevocationsSince(ctx context.Context, version int64) (*Revocations, error) {
	rr.mu.Lock()
	etag, floor := "", rr.version
	// A 304 vouches for the list held only while that list is valid
	// (RFC 7519 §4.1.4): once its exp has passed the list is asked for
	// whole, so whoever answers the URL (a cache, a proxy, a broken
	// server) cannot keep a list in force by answering 304 forever.
	if version >= 0 && version == rr.version && !rr.expired(rr.exp) {
		etag = rr.etag
	}
	rr.mu.Unlock()
	floor = max(floor, version)

	body, newTag, notModified, err := rr.get(ctx, etag)
	if err != nil {
		return nil, err
	}
	if notModified {
		return nil, nil
	}
	revs, exp, err := rr.verify(ctx, body)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: revocation list from %s refused: %w", rr.url, err)
	}
	if revs.Version < floor {
		return nil, fmt.Errorf("m2mauth: revocation list from %s refused: version %d is older than version %d, seen before", rr.url, revs.Version, floor)
	}
	rr.mu.Lock()
	if revs.Version >= rr.version {
		rr.version, rr.etag, rr.exp = revs.Version, newTag, exp
	}
	rr.mu.Unlock()
	if revs.Version == version {
		return nil, nil
	}
	return revs, nil
}

// get fetches the list, conditionally on etag when it is not empty. It
// returns the body and ETag of a 200, or notModified for a 304.
func (rr *RemoteRevocations) get(ctx context.Context, etag string) (body []byte, newTag string, notModified bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, rr.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rr.url, nil)
	if err != nil {
		return nil, "", false, fmt.Errorf("m2mauth: GET %s: %w", rr.url, err)
	}
	req.Header.Set("Accept", contentTypeJWT)
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := rr.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, "", false, fmt.Errorf("m2mauth: GET %s: %w", rr.url, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified && etag != "":
		return nil, "", true, nil
	case resp.StatusCode != http.StatusOK:
		return nil, "", false, fmt.Errorf("m2mauth: GET %s: status %s", rr.url, resp.Status)
	}
	body, err = io.ReadAll(io.LimitReader(resp.Body, rr.cfg.MaxBodyBytes+1))
	if err != nil {
		return nil, "", false, fmt.Errorf("m2mauth: GET %s: reading the body: %w", rr.url, err)
	}
	if int64(len(body)) > rr.cfg.MaxBodyBytes {
		return nil, "", false, fmt.Errorf("m2mauth: GET %s: body larger than %d bytes", rr.url, rr.cfg.MaxBodyBytes)
	}
	return body, resp.Header.Get("ETag"), false, nil
}

// revocationListClaims are the claims of a signed revocation list.
type revocationListClaims struct {
	Iss     *string          `json:"iss"`
	Iat     *int64           `json:"iat"`
	Exp     *int64           `json:"exp"`
	Ver     *int64           `json:"ver"`
	Before  *int64           `json:"before"`
	Clients map[string]int64 `json:"clients"`
	JTIs    map[string]int64 `json:"jtis"`
}

// maxUnixSeconds is the end of year 9999, the last instant a list may
// name, as for token dates.
const maxUnixSeconds = 253402300799

// expired reports whether a list whose exp is exp, in Unix seconds, has
// expired, within Leeway.
func (rr *RemoteRevocations) expired(exp int64) bool {
	return rr.cfg.Now().Unix()-int64(rr.cfg.Leeway/time.Second) >= exp
}

// verify checks a signed list and returns its revocations and its exp,
// in Unix seconds. Its errors never quote the body.
func (rr *RemoteRevocations) verify(ctx context.Context, body []byte) (*Revocations, int64, error) {
	raw := strings.TrimSpace(string(body))
	h64, rest, ok1 := strings.Cut(raw, ".")
	p64, s64, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.IndexByte(s64, '.') >= 0 {
		return nil, 0, errors.New("not a JWS compact serialization")
	}
	hdrJSON, err := decodePart(nil, []byte(h64))
	if err != nil {
		return nil, 0, errors.New("malformed header")
	}
	hdr, err := parseHeader(hdrJSON)
	if err != nil {
		return nil, 0, errors.New("malformed header")
	}
	alg := jose.SignatureAlgorithm(hdr.alg)
	if !isSupported(alg) {
		return nil, 0, fmt.Errorf("algorithm %q not allowed", hdr.alg)
	}
	if hdr.critical {
		return nil, 0, errors.New("unsupported critical header parameters")
	}
	if hdr.kid == nil {
		return nil, 0, errors.New("no kid")
	}
	kid := string(hdr.kid)
	key, err := rr.key(ctx, kid)
	if err != nil {
		return nil, 0, err
	}
	if jose.SignatureAlgorithm(key.Algorithm) != alg {
		// The key decides the algorithm, never the header (RFC 8725 §3.1).
		return nil, 0, fmt.Errorf("algorithm %q does not match key %q", hdr.alg, kid)
	}
	verifier, err := newJWSVerifier(key)
	if err != nil {
		return nil, 0, err
	}
	sig, err := decodePart(nil, []byte(s64))
	if err != nil || len(sig) != verifier.sigLen() || !verifier.verify([]byte(raw[:len(h64)+1+len(p64)]), sig) {
		return nil, 0, errors.New("invalid signature")
	}

	// The signature is good; now the header and claims are trusted input.
	if t := string(hdr.typ); !strings.EqualFold(t, RevocationListType) && !strings.EqualFold(t, "application/"+RevocationListType) {
		return nil, 0, fmt.Errorf("typ %q is not %q", t, RevocationListType)
	}
	payload, err := decodePart(nil, []byte(p64))
	if err != nil {
		return nil, 0, errors.New("malformed claims")
	}
	var c revocationListClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, 0, fmt.Errorf("malformed claims: %w", err)
	}
	switch {
	case c.Iss == nil || c.Iat == nil || c.Exp == nil || c.Ver == nil:
		return nil, 0, errors.New("iss, iat, exp or ver missing")
	case *c.Iss != rr.cfg.Issuer:
		return nil, 0, fmt.Errorf("issuer %q is not %q", *c.Iss, rr.cfg.Issuer)
	case *c.Ver < 0:
		return nil, 0, fmt.Errorf("negative version %d", *c.Ver)
	}
	now := rr.cfg.Now()
	leeway := int64(rr.cfg.Leeway / time.Second)
	switch {
	case !inUnixRange(*c.Iat) || !inUnixRange(*c.Exp):
		return nil, 0, errors.New("iat or exp out of range")
	case rr.expired(*c.Exp):
		return nil, 0, fmt.Errorf("expired at %s", time.Unix(*c.Exp, 0).UTC().Format(time.RFC3339))
	case *c.Iat > now.Unix()+leeway:
		return nil, 0, fmt.Errorf("issued in the future, at %s", time.Unix(*c.Iat, 0).UTC().Format(time.RFC3339))
	}
	revs := &Revocations{
		Version: *c.Ver,
		Clients: make(map[string]time.Time, len(c.Clients)),
		Tokens:  make(map[string]time.Time, len(c.JTIs)),
	}
	if c.Before != nil {
		if !inUnixRange(*c.Before) {
			return nil, 0, errors.New("before out of range")
		}
		revs.Before = time.Unix(*c.Before, 0)
	}
	for id, at := range c.Clients {
		if !inUnixRange(at) {
			return nil, 0, errors.New("a client watermark is out of range")
		}
		revs.Clients[id] = time.Unix(at, 0)
	}
	for jti, exp := range c.JTIs {
		if !inUnixRange(exp) {
			return nil, 0, errors.New("a token expiry is out of range")
		}
		revs.Tokens[jti] = time.Unix(exp, 0)
	}
	return revs, *c.Exp, nil
}

func inUnixRange(s int64) bool { return s >= 0 && s <= maxUnixSeconds }

// key returns the verification key named kid, refreshing the set once
// when keys is a KeyRefresher and the set held has no such key.
func (rr *RemoteRevocations) key(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	set, err := rr.keys.VerificationKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("verification keys: %w", err)
	}
	if k := findKey(set, kid); k != nil {
		return k, nil
	}
	if rr.refresher == nil {
		return nil, fmt.Errorf("signed by an unknown key %q", kid)
	}
	if set, err = rr.refresher.RefreshKeys(ctx, kid); err != nil {
		return nil, fmt.Errorf("refreshing verification keys: %w", err)
	}
	if k := findKey(set, kid); k != nil {
		return k, nil
	}
	return nil, fmt.Errorf("signed by an unknown key %q", kid)
}

// findKey returns the key of set with the given kid, or nil.
func findKey(set *jose.JSONWebKeySet, kid string) *jose.JSONWebKey {
	if set == nil {
		return nil
	}
	for i := range set.Keys {
		if set.Keys[i].KeyID == kid {
			return &set.Keys[i]
		}
	}
	return nil
}

var _ RevocationFeed = (*RemoteRevocations)(nil)
