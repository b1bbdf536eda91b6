package m2mauth

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// JWKSConfig holds the tunables of a [JWKSHandler]. The zero value is a
// working configuration.
type JWKSConfig struct {
	// MaxAge is how long verifiers and shared caches may reuse the key
	// set without asking again (Cache-Control max-age, in whole seconds).
	// When the provider implements [KeySchedule], the max-age sent never
	// reaches past its next key change. A verifier that meets an unknown
	// kid refetches anyway, so a new key is found at once; MaxAge bounds
	// how long a removed key stays trusted by caching verifiers. Negative
	// means max-age=0: caches revalidate before every use, which costs a
	// 304 Not Modified while the set is unchanged. At most 24h.
	// Default: 5m.
	MaxAge time.Duration
	// Logger receives the errors of the key provider, whose details are
	// never sent to clients. Default: [slog.Default].
	Logger *slog.Logger
	// Now is the clock, compared with the provider's [KeySchedule].
	// Default: [time.Now].
	Now func() time.Time
}

// JWKSHandler serves the public verification keys of a [KeyProvider] as
// a JWK Set (RFC 7517 §5), for resource servers that verify tokens with
// asymmetric keys. Mount it with
//
//	mux.Handle("GET /.well-known/jwks.json", h)
//
// (a GET pattern matches HEAD too) and name its URL as jwks_uri in
// [AuthorizationServerMetadataConfig].
//
// Only public keys are published: each private key of the provider's set
// (a [crypto.Signer] such as a KMS handle included) is served as its
// public half, with "kid", "kty", "alg", "use":"sig" and the public
// parameters (RFC 7518 §6: "crv", "x", "y" for EC; "n", "e" for RSA;
// RFC 8037: "crv", "x" for OKP). Symmetric keys (HS256) are never
// served, so a provider with only HS256 keys yields {"keys":[]}; keys
// without a kid or an algorithm, or with a "use" other than "sig", are
// left out too. A key whose JSON would still hold a private member is
// refused with an error rather than served.
//
// Responses are application/jwk-set+json with a strong ETag and
// "Cache-Control: public, max-age=N" (see [JWKSConfig.MaxAge]); a request
// whose If-None-Match matches the current set gets 304 Not Modified.
// Methods other than GET and HEAD get 405. The body is built once per key
// set the provider returns, so a provider that returns the same
// *jose.JSONWebKeySet while its keys do not change (as [KeyProvider]
// asks) costs no marshalling per request.
//
// A JWKSHandler is safe for concurrent use.
type JWKSHandler struct {
	keys     KeyProvider
	schedule KeySchedule // nil unless keys implements it
	cfg      JWKSConfig
	maxAge   int64  // seconds
	cache    string // Cache-Control for maxAge
	doc      atomic.Pointer[jwksDocument]
}

// jwksDocument is the JWK Set served for one key set of the provider.
type jwksDocument struct {
	set *jose.JSONWebKeySet
	doc *document
}

const (
	defaultJWKSMaxAge = 5 * time.Minute
	// maxDocumentMaxAge bounds the max-age of every published document.
	maxDocumentMaxAge = 24 * time.Hour
	// contentTypeJWKSet is the media type of RFC 7517 §8.5.1.
	contentTypeJWKSet = "application/jwk-set+json"
)

// NewJWKSHandler returns a handler that publishes the public keys among
// the verification keys of keys. It reads the current key set now, so a
// failing provider or a key that cannot be published fails here rather
// than at the first request.
func NewJWKSHandler(keys KeyProvider, cfg JWKSConfig) (*JWKSHandler, error) {
	if keys == nil {
		return nil, errors.New("m2mauth: nil KeyProvider")
	}
	maxAge, err := documentMaxAge("JWKSConfig.MaxAge", cfg.MaxAge, defaultJWKSMaxAge)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &JWKSHandler{keys: keys, cfg: cfg, maxAge: maxAge, cache: cacheControl(maxAge)}
	h.schedule, _ = keys.(KeySchedule)
	if _, err := h.current(context.Background()); err != nil {
		return nil, err
	}
	return h, nil
}

// ServeHTTP answers GET and HEAD with the current JWK Set.
func (h *JWKSHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !allowGetHead(w, r, "the JWK Set") {
		return
	}
	doc, err := h.current(r.Context())
	if err != nil {
		h.cfg.Logger.ErrorContext(r.Context(), "m2mauth: JWK Set unavailable", "error", err)
		w.Header().Set("Cache-Control", "no-store")
		writeError(w, WrapError(CodeServerError, "the key set is unavailable", err))
		return
	}
	doc.serve(w, r, h.cacheControl(r.Context()))
}

// current returns the document for the provider's current key set,
// building it when the provider returns a set not seen last time.
func (h *JWKSHandler) current(ctx context.Context) (*document, error) {
	set, err := h.keys.VerificationKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: verification keys: %w", err)
	}
	if set == nil {
		return nil, errors.New("m2mauth: KeyProvider returned a nil key set")
	}
	if d := h.doc.Load(); d != nil && d.set == set {
		return d.doc, nil
	}
	body, err := publicJWKSet(set)
	if err != nil {
		return nil, err
	}
	// Two requests meeting a new set at once both build it; either
	// result is the same document.
	d := &jwksDocument{set: set, doc: newDocument(contentTypeJWKSet, body)}
	h.doc.Store(d)
	return d.doc, nil
}

// cacheControl returns the Cache-Control of a response sent now: MaxAge,
// shortened so that no cache keeps the set past a planned key change.
func (h *JWKSHandler) cacheControl(ctx context.Context) string {
	if h.schedule == nil {
		return h.cache
	}
	next, ok := h.schedule.NextKeyChange(ctx)
	if !ok {
		return h.cache
	}
	left := int64(next.Sub(h.cfg.Now()) / time.Second) // rounded down
	if left >= h.maxAge {
		return h.cache
	}
	return cacheControl(max(left, 0))
}

// publicJWKSet returns the JSON JWK Set of the public keys in set. A key
// that would reveal secret material is an error, never published.
func publicJWKSet(set *jose.JSONWebKeySet) ([]byte, error) {
	body := []byte(`{"keys":[`)
	n := 0
	for i := range set.Keys {
		k := &set.Keys[i]
		if _, symmetric := k.Key.([]byte); symmetric || k.Key == nil {
			continue
		}
		if k.KeyID == "" || k.Algorithm == "" || (k.Use != "" && k.Use != "sig") {
			continue
		}
		pub := k.Public()
		if signer, ok := k.Key.(crypto.Signer); ok && !pub.Valid() {
			// A signer go-jose does not know, such as a KMS handle.
			pub = *k
			pub.Key = signer.Public()
		}
		if !pub.Valid() || !pub.IsPublic() {
			continue // a key type go-jose cannot make public
		}
		pub.Use = "sig"
		b, err := json.Marshal(pub)
		if err != nil {
			return nil, fmt.Errorf("m2mauth: key %q: %w", k.KeyID, err)
		}
		if err := checkPublicJWK(b); err != nil {
			return nil, fmt.Errorf("m2mauth: key %q: %w", k.KeyID, err)
		}
		if n > 0 {
			body = append(body, ',')
		}
		body = append(body, b...)
		n++
	}
	return append(body, "]}"...), nil
}

// checkPublicJWK makes sure the JSON of a key holds none of the members
// that carry secret key material: RFC 7518 §6.2.2 (EC), §6.3.2 (RSA),
// §6.4 (oct), RFC 8037 §2 (OKP) and RFC 9964 (AKP).
func checkPublicJWK(b []byte) error {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(b, &members); err != nil {
		return err
	}
	for _, m := range [...]string{"d", "p", "q", "dp", "dq", "qi", "oth", "k", "priv"} {
		if _, ok := members[m]; ok {
			return fmt.Errorf("refusing to publish a key with the private member %q", m)
		}
	}
	if string(members["kty"]) == `"oct"` {
		return errors.New("refusing to publish a symmetric key")
	}
	return nil
}

// document is a prepared response body with its strong validator.
type document struct {
	body        []byte
	etag        string
	contentType string
	length      string
}

func newDocument(contentType string, body []byte) *document {
	sum := sha256.Sum256(body)
	return &document{
		body:        body,
		etag:        `"` + base64.RawURLEncoding.EncodeToString(sum[:16]) + `"`,
		contentType: contentType,
		length:      strconv.Itoa(len(body)),
	}
}

// serve writes d with the given Cache-Control, or 304 Not Modified when
// the request's If-None-Match matches it (RFC 9110 §13.1.2). A 304
// carries the same ETag and Cache-Control (RFC 9110 §15.4.5).
func (d *document) serve(w http.ResponseWriter, r *http.Request, cacheControl string) {
	hdr := w.Header()
	hdr.Set("ETag", d.etag)
	hdr.Set("Cache-Control", cacheControl)
	if inm := r.Header.Values("If-None-Match"); len(inm) > 0 && etagListMatches(inm, d.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hdr.Set("Content-Type", d.contentType)
	hdr.Set("Content-Length", d.length)
	hdr.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(d.body)
	}
}

// etagListMatches reports whether the If-None-Match field values match
// etag under the weak comparison of RFC 9110 §8.8.3.2: "*" matches any
// current representation, and W/"x" and "x" match each other. Parsing stops at the
// first malformed member; what came before it still counts.
func etagListMatches(values []string, etag string) bool {
	etag = strings.TrimPrefix(etag, "W/")
	for _, v := range values {
		for {
			v = strings.TrimLeft(v, " \t,")
			if v == "" {
				break
			}
			if v[0] == '*' {
				return true
			}
			v = strings.TrimPrefix(v, "W/")
			if v == "" || v[0] != '"' {
				break
			}
			end := strings.IndexByte(v[1:], '"')
			if end < 0 {
				break
			}
			if v[:end+2] == etag {
				return true
			}
			v = v[end+2:]
		}
	}
	return false
}

// allowGetHead answers 405 Method Not Allowed, with Allow, to a request
// that is neither GET nor HEAD, and reports whether r may proceed.
func allowGetHead(w http.ResponseWriter, r *http.Request, what string) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	e := NewError(CodeInvalidRequest, what+" accepts only GET and HEAD")
	e.Status = http.StatusMethodNotAllowed
	writeError(w, e)
	return false
}

// documentMaxAge checks a configured max-age and returns it in seconds:
// def when zero, 0 when negative, and at most 24h.
func documentMaxAge(name string, d, def time.Duration) (int64, error) {
	switch {
	case d == 0:
		d = def
	case d < 0:
		d = 0
	case d > maxDocumentMaxAge:
		return 0, fmt.Errorf("m2mauth: %s %v exceeds %v", name, d, maxDocumentMaxAge)
	}
	return int64(d / time.Second), nil
}

func cacheControl(seconds int64) string {
	return "public, max-age=" + strconv.FormatInt(seconds, 10)
}
