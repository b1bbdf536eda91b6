package m2mauth

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// ErrNoSigningKey is returned by the SigningKey method of key providers
// that can only verify, such as [RemoteKeys]: the private keys stay with
// the authorization server that publishes the set.
var ErrNoSigningKey = errors.New("m2mauth: key provider has no signing key (it only verifies)")

// ErrKeysUnavailable is wrapped by the errors [RemoteKeys.VerificationKeys]
// and [RemoteKeys.RefreshKeys] return when no usable key set is held: none
// has been fetched yet, or the last good one is older than
// [RemoteKeysConfig.MaxStale] allows; or when the caller's context ended
// while it waited for a fetch of the set it holds, which has expired. A
// validator that gets it refuses every token (it fails closed); the
// fault is on the server side, not in the token.
var ErrKeysUnavailable = errors.New("m2mauth: no usable verification keys")

// RemoteKeysConfig holds the tunables of a [RemoteKeys]. Every zero value
// is a working default.
type RemoteKeysConfig struct {
	// HTTPClient makes the requests. Timeout, MaxBodyBytes and the https
	// rule for the configured URLs apply whatever client is given, but
	// redirects follow the given client's own policy. Default: a client
	// without cookie jar, limited to Timeout, that reads at most 64 KiB
	// of response headers and follows at most 3 redirects, only to URLs
	// allowed by the https rule (never from https down to http).
	HTTPClient *http.Client
	// Timeout bounds each request, body included. Default: 5s.
	Timeout time.Duration
	// MaxBodyBytes bounds each response body; a longer one is refused,
	// whatever its Content-Length says. Default: 64 KiB.
	MaxBodyBytes int64
	// RefreshCooldown is the least time between the starts of two
	// fetches of the key set asked for by tokens with unknown key ids,
	// or by anything after a failed fetch. The refresh of a set that a
	// successful fetch brought, when it is due, does not wait for it.
	// At least 1s. Default: 30s.
	RefreshCooldown time.Duration
	// MaxStale is how long past its expiry a key set is still served
	// while fetches fail. After that, VerificationKeys returns an error
	// wrapping [ErrKeysUnavailable] and tokens are refused. Negative
	// means a set is never served past its expiry. Default: 24h.
	MaxStale time.Duration
	// AllowInsecureHTTP allows http:// URLs on any host, for the JWKS,
	// the issuer and redirects. It is insecure: whoever can alter the
	// traffic can substitute keys and forge every token. By default
	// only https is allowed, and http only on loopback hosts (127.0.0.0/8,
	// ::1 and "localhost"). Default: false.
	AllowInsecureHTTP bool
	// Logger receives failed fetches and the keys left out of a fetched
	// set, never response bodies. Default: [slog.Default].
	Logger *slog.Logger
	// Now is the clock behind expiry, staleness and the cooldown.
	// Default: [time.Now].
	Now func() time.Time
}

const (
	defaultRemoteTimeout      = 5 * time.Second
	defaultRemoteMaxBodyBytes = 64 << 10
	defaultRemoteCooldown     = 30 * time.Second
	minRemoteCooldown         = time.Second
	defaultRemoteMaxStale     = 24 * time.Hour
	// The freshness lifetime of a fetched set: Cache-Control max-age
	// (less Age), or remoteDefaultMaxAge without one, clamped to
	// [remoteMinMaxAge, remoteMaxMaxAge].
	remoteDefaultMaxAge = 10 * time.Minute
	remoteMinMaxAge     = time.Second
	remoteMaxMaxAge     = 24 * time.Hour
	// A refresh may start this long before expiry, or a tenth of the
	// lifetime if shorter; but at least Timeout, and at most half the
	// lifetime, before it (see run).
	remoteRefreshMargin = time.Minute
	remoteMaxRedirects  = 3
	// remoteWellKnown is the RFC 8414 §3 well-known URI suffix.
	remoteWellKnown = "/.well-known/oauth-authorization-server"
)

// RemoteKeys is a [KeyProvider] for resource servers that verify tokens
// issued by an authorization server in another process: it fetches the
// server's JSON Web Key Set (RFC 7517 §5) from its jwks_uri and keeps it
// in memory. Make one with [NewRemoteKeys] or [DiscoverRemoteKeys] and
// give it to [NewValidator]. It also implements [KeyRefresher], so a key
// the server has started to sign with is picked up by the first token
// that names it, once the cooldown since the last fetch has passed.
//
// Guarantees:
//
//   - Nothing is fetched before the first VerificationKeys or RefreshKeys
//     call (the first token a validator sees makes one); that call waits
//     for the fetch, within its context and Timeout.
//   - Verifying does no I/O while the set held is fresh: VerificationKeys
//     is an atomic load and returns the same *jose.JSONWebKeySet until
//     the keys change (a refetch of identical keys keeps the pointer).
//   - At most one fetch per RefreshCooldown (30s by default) for tokens
//     naming a key the set lacks and after a failed fetch; concurrent
//     callers that need one share it. A flood of tokens with made-up key
//     ids costs the server at most that. A set that a successful fetch
//     brought is fetched again when it is due, whatever the cooldown:
//     at most one more fetch per lifetime of the set less its refresh
//     margin (below).
//   - A set is fresh for its Cache-Control max-age (less Age), clamped to
//     between 1 second and 24 hours; 10 minutes without one; no-store
//     and no-cache count as 0. Shortly before expiry (a minute, or a tenth
//     of the lifetime if shorter, but at least Timeout, and at most half
//     the lifetime) the first VerificationKeys call starts a refresh in
//     its own goroutine and returns at once; there is no other goroutine
//     and nothing to close. Until that refresh ends (within Timeout),
//     calls are served the set as it is, expired or not. So a verifier
//     that is busy waits for no fetch and holds no set longer than the
//     server's max-age allows (counted from the request that fetched it)
//     plus the time its refresh takes, and a key the server removed
//     (revoked) stops being trusted within that. A server slower to
//     answer than half its max-age makes some calls wait.
//   - A set past its expiry is not trusted while the server answers: the
//     first call after it (a verifier idle longer than the lifetime)
//     fetches the set again and waits for it, within its context and
//     Timeout, as do the calls that come while that fetch is under way.
//   - A failed fetch never replaces the last good set. It is served up to
//     MaxStale (24h by default) past its expiry, with each failure logged;
//     after that VerificationKeys fails with [ErrKeysUnavailable] and the
//     validator refuses tokens: it fails closed. While fetches fail, a
//     call is served the set at once, and starts the next fetch in the
//     background once the cooldown has passed; only after a quiet spell
//     (no call in the cooldown and Timeout after the last failed fetch or
//     the last call served: a server back since then may have removed
//     keys) does a call wait for a fetch, as after expiry, and so do the
//     calls that come while it is under way.
//   - A server that answers with a set that leaves nothing to trust (no
//     usable key, or private or secret key material published) is
//     believed: the set held before is dropped with it, and tokens are
//     refused until a fetch brings usable keys.
//   - Every request is bounded by Timeout (5s) and MaxBodyBytes (64 KiB)
//     and goes over https, except to loopback hosts or with
//     AllowInsecureHTTP.
//
// A fetched set is refused whole when it is not a JSON object with a
// "keys" array, holds no usable key, or holds any private or secret key
// material (d, p, q, dp, dq, qi, oth, k or priv, so symmetric "oct" keys
// too): a server that publishes those is broken, and its other keys are
// not trusted either. Within an accepted set, a key is kept only if it
// has a kid, its use is "sig" or absent, its key_ops (if any) include
// "verify", no earlier key has its kid, and it is one of: RSA of at
// least 2048 bits with alg RS256 or PS256; EC P-256 with alg ES256 or
// none (ES256 is then the only possibility); OKP Ed25519 with alg EdDSA
// or none. RSA keys without alg are left out, since RS256 and PS256 would
// both fit and guessing wrong fails every token. Left-out keys are logged.
//
// The Content-Type of the response is not relied upon (static hosts label
// JSON files in many ways); the body itself must be JSON.
//
// A RemoteKeys is safe for concurrent use.
type RemoteKeys struct {
	url    string
	cfg    RemoteKeysConfig
	client *http.Client

	// snap is the current set and its timing, nil until the first good
	// fetch. It is replaced, never modified.
	snap atomic.Pointer[remoteSnapshot]

	mu          sync.Mutex // guards the fields below and stores to snap
	flight      *remoteFlight
	lastAttempt time.Time
	lastErr     error
	// lastServed is when a set was last served while fetches fail (see
	// usable); failed mirrors lastErr != nil, for calls served a fresh
	// set without taking mu.
	lastServed time.Time
	failed     atomic.Bool
}

// remoteSnapshot is a good key set and the instants that govern it.
type remoteSnapshot struct {
	set        *jose.JSONWebKeySet
	fetched    time.Time
	expires    time.Time
	staleUntil time.Time
	// refreshAt is the earliest instant VerificationKeys starts a
	// background refresh: shortly before expiry, or, after a failed
	// fetch, once the cooldown of the last attempt has passed.
	refreshAt time.Time
}

// remoteFlight is one fetch in progress; done is closed when it ends.
type remoteFlight struct {
	done chan struct{}
	// stale: calls are served the set held while the fetch is under
	// way, as it began before the set's expiry, or while fetches failed
	// and no quiet spell had passed.
	stale bool
}

// RemoteKeysStatus describes the state of a [RemoteKeys], for health
// checks and metrics.
type RemoteKeysStatus struct {
	// FetchedAt is when the fetch of the key set held started (its age
	// counts from then); zero if none is held.
	FetchedAt time.Time
	// Expires is when that set stops being fresh.
	Expires time.Time
	// StaleUntil is when that set stops being served if no fetch
	// succeeds before.
	StaleUntil time.Time
	// KeyIDs lists the kids of the keys held.
	KeyIDs []string
	// LastAttempt is when the last fetch started; zero if none has.
	LastAttempt time.Time
	// LastError is why the last fetch failed, or nil if it succeeded.
	LastError error
}

// NewRemoteKeys returns a provider of the keys published at jwksURL, which
// must be an absolute https URL (http only on a loopback host, or with
// [RemoteKeysConfig.AllowInsecureHTTP]) without user information or
// fragment. It does no I/O: the first VerificationKeys call fetches.
func NewRemoteKeys(jwksURL string, cfg RemoteKeysConfig) (*RemoteKeys, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	u, err := remoteCheckURL(jwksURL, cfg.AllowInsecureHTTP)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: JWKS URL: %w", err)
	}
	return newRemoteKeys(u.String(), cfg, cfg.HTTPClient), nil
}

// DiscoverRemoteKeys reads the authorization server metadata of issuer
// (RFC 8414) and returns a provider of the keys at its jwks_uri. The
// metadata is fetched once, from the well-known URI RFC 8414 §3.1 derives
// from issuer ("https://a.example/tenant1" is looked up at
// "https://a.example/.well-known/oauth-authorization-server/tenant1"),
// within ctx, Timeout and MaxBodyBytes. Its "issuer" must equal issuer
// exactly (§3.3), and its "jwks_uri" must follow the same https rule as
// issuer, which must be https (or http on a loopback host, or with
// AllowInsecureHTTP) with no query or fragment. The keys themselves are
// fetched by the first VerificationKeys call.
func DiscoverRemoteKeys(ctx context.Context, issuer string, cfg RemoteKeysConfig) (*RemoteKeys, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	u, err := remoteCheckURL(issuer, cfg.AllowInsecureHTTP)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: issuer: %w", err)
	}
	if u.RawQuery != "" || u.ForceQuery {
		return nil, errors.New("m2mauth: issuer: must not have a query (RFC 8414 §2)")
	}
	// RFC 8414 §3.1: the well-known suffix goes between the host and the
	// issuer's path, without its terminating "/".
	wellKnown := u.Scheme + "://" + u.Host + remoteWellKnown + strings.TrimRight(u.EscapedPath(), "/")
	client := cfg.HTTPClient
	if client == nil {
		client = newRemoteHTTPClient(cfg)
	}
	body, _, err := remoteGet(ctx, client, wellKnown, cfg.Timeout, cfg.MaxBodyBytes, "application/json")
	if err != nil {
		return nil, fmt.Errorf("m2mauth: authorization server metadata: %w", err)
	}
	var md struct {
		Issuer  *string `json:"issuer"`
		JWKSURI *string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &md); err != nil {
		return nil, fmt.Errorf("m2mauth: authorization server metadata from %s is malformed: %w", wellKnown, err)
	}
	if md.Issuer == nil || *md.Issuer != issuer {
		got := "none"
		if md.Issuer != nil {
			got = strconv.Quote(*md.Issuer)
		}
		return nil, fmt.Errorf("m2mauth: authorization server metadata from %s names issuer %s, not %q (RFC 8414 §3.3)", wellKnown, got, issuer)
	}
	if md.JWKSURI == nil || *md.JWKSURI == "" {
		return nil, fmt.Errorf("m2mauth: authorization server metadata from %s has no jwks_uri", wellKnown)
	}
	ju, err := remoteCheckURL(*md.JWKSURI, cfg.AllowInsecureHTTP)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: jwks_uri in authorization server metadata: %w", err)
	}
	return newRemoteKeys(ju.String(), cfg, client), nil
}

// newRemoteKeys returns the provider; a nil client means the default one.
func newRemoteKeys(jwksURL string, cfg RemoteKeysConfig, client *http.Client) *RemoteKeys {
	if client == nil {
		client = newRemoteHTTPClient(cfg)
	}
	return &RemoteKeys{url: jwksURL, cfg: cfg, client: client}
}

// normalize checks cfg and fills in its defaults.
func (cfg *RemoteKeysConfig) normalize() error {
	switch {
	case cfg.Timeout == 0:
		cfg.Timeout = defaultRemoteTimeout
	case cfg.Timeout < 0:
		return fmt.Errorf("m2mauth: RemoteKeysConfig.Timeout %v is negative", cfg.Timeout)
	}
	switch {
	case cfg.MaxBodyBytes == 0:
		cfg.MaxBodyBytes = defaultRemoteMaxBodyBytes
	case cfg.MaxBodyBytes < 0:
		return fmt.Errorf("m2mauth: RemoteKeysConfig.MaxBodyBytes %d is negative", cfg.MaxBodyBytes)
	}
	switch {
	case cfg.RefreshCooldown == 0:
		cfg.RefreshCooldown = defaultRemoteCooldown
	case cfg.RefreshCooldown < minRemoteCooldown:
		return fmt.Errorf("m2mauth: RemoteKeysConfig.RefreshCooldown %v is under %v", cfg.RefreshCooldown, minRemoteCooldown)
	}
	switch {
	case cfg.MaxStale == 0:
		cfg.MaxStale = defaultRemoteMaxStale
	case cfg.MaxStale < 0:
		cfg.MaxStale = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return nil
}

// SigningKey returns [ErrNoSigningKey]: remote keys only verify.
func (r *RemoteKeys) SigningKey(context.Context) (*jose.JSONWebKey, error) {
	return nil, ErrNoSigningKey
}

// VerificationKeys returns the key set held, without I/O, while it is
// fresh; shortly before expiry the first call also starts a refresh in
// the background. Past its expiry, it fetches the set again and waits for
// it, within ctx; only while fetches fail is the last good set served,
// without waiting, up to MaxStale past its expiry. When no usable set is
// held (at first use, or after MaxStale), it fetches one and waits for
// it, within ctx, unless the cooldown since the last attempt has not
// passed; then, or when the fetch fails, it returns an error wrapping
// [ErrKeysUnavailable].
func (r *RemoteKeys) VerificationKeys(ctx context.Context) (*jose.JSONWebKeySet, error) {
	now := r.cfg.Now()
	if s := r.snap.Load(); s != nil && r.usable(s, now) {
		if !now.Before(s.refreshAt) {
			r.refreshInBackground(ctx, now)
		}
		return s.set, nil
	}
	return r.refresh(ctx, now)
}

// usable reports whether s may be served at now without waiting for a
// fetch: it is fresh; or it is within MaxStale of its expiry, and either
// the fetch under way lets it be (see remoteFlight.stale), or, with none
// under way, fetches fail (see failing).
func (r *RemoteKeys) usable(s *remoteSnapshot, now time.Time) bool {
	if now.Before(s.expires) {
		if r.failed.Load() {
			r.mu.Lock()
			r.lastServed = now
			r.mu.Unlock()
		}
		return true
	}
	if !now.Before(s.staleUntil) {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.flight != nil {
		return r.flight.stale
	}
	if r.failing(now) {
		r.lastServed = now
		return true
	}
	return false
}

// failing reports whether fetches fail at now: the last one failed, and
// no quiet spell has passed since it or since the last call served while
// it stood: the cooldown, after which the next fetch may start, and its
// Timeout. Past a quiet spell, the server may be back, and an expired
// set is not served before it is asked. r.mu must be held.
func (r *RemoteKeys) failing(now time.Time) bool {
	if r.lastErr == nil {
		return false
	}
	last := r.lastAttempt
	if r.lastServed.After(last) {
		last = r.lastServed
	}
	return now.Before(last.Add(r.cfg.RefreshCooldown + r.cfg.Timeout))
}

// due reports whether a fetch may start at now: the cooldown since the
// last attempt has passed, or that attempt succeeded and the set it
// brought is due for a refresh (or past it). r.mu must be held.
func (r *RemoteKeys) due(now time.Time) bool {
	if r.lastAttempt.IsZero() || !now.Before(r.lastAttempt.Add(r.cfg.RefreshCooldown)) {
		return true
	}
	s := r.snap.Load()
	return r.lastErr == nil && s != nil && !now.Before(s.refreshAt)
}

// RefreshKeys implements [KeyRefresher]. It returns the set held if it has
// kid; otherwise it fetches the set again, unless the cooldown since the
// last fetch has not passed, and returns the result, whether or not it
// has kid. Concurrent callers share one fetch. While a usable set is held,
// a failed or refused fetch returns that set, not an error.
func (r *RemoteKeys) RefreshKeys(ctx context.Context, kid string) (*jose.JSONWebKeySet, error) {
	now := r.cfg.Now()
	if s := r.snap.Load(); s != nil && r.usable(s, now) && remoteHasKid(s.set, kid) {
		return s.set, nil
	}
	return r.refresh(ctx, now)
}

// Status reports the set held and the outcome of the last fetch.
func (r *RemoteKeys) Status() RemoteKeysStatus {
	r.mu.Lock()
	st := RemoteKeysStatus{LastAttempt: r.lastAttempt, LastError: r.lastErr}
	r.mu.Unlock()
	if s := r.snap.Load(); s != nil {
		st.FetchedAt, st.Expires, st.StaleUntil = s.fetched, s.expires, s.staleUntil
		for _, k := range s.set.Keys {
			st.KeyIDs = append(st.KeyIDs, k.KeyID)
		}
	}
	return st
}

// refresh waits for the fetch in flight, or starts one if it is due,
// then returns the usable set or an error. A set that the last fetch
// brought and that is due for a refresh is fetched again whatever the
// cooldown: a healthy server is asked once per lifetime of its set, and
// never refused for a cooldown longer than that.
func (r *RemoteKeys) refresh(ctx context.Context, now time.Time) (*jose.JSONWebKeySet, error) {
	r.mu.Lock()
	f := r.flight
	if f == nil && r.due(now) {
		f = r.start(ctx, now)
	}
	r.mu.Unlock()
	if f != nil {
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting for the JWKS from %s: %w", ErrKeysUnavailable, r.url, ctx.Err())
		}
		now = r.cfg.Now()
	}
	if s := r.snap.Load(); s != nil && now.Before(s.staleUntil) {
		return s.set, nil
	}
	r.mu.Lock()
	last, at := r.lastErr, r.lastAttempt
	r.mu.Unlock()
	if last == nil {
		last = errors.New("waiting out the refresh cooldown")
	}
	if s := r.snap.Load(); s != nil {
		return nil, fmt.Errorf("%w: the JWKS from %s fetched at %s is stale since %s; last attempt at %s: %w",
			ErrKeysUnavailable, r.url, s.fetched.Format(time.RFC3339), s.staleUntil.Format(time.RFC3339), at.Format(time.RFC3339), last)
	}
	return nil, fmt.Errorf("%w: no JWKS from %s yet; next attempt after %s: %w",
		ErrKeysUnavailable, r.url, at.Add(r.cfg.RefreshCooldown).Format(time.RFC3339), last)
}

// refreshInBackground starts a fetch that nobody waits for, unless one is
// in flight or none is due.
func (r *RemoteKeys) refreshInBackground(ctx context.Context, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.flight == nil && r.due(now) {
		r.start(ctx, now)
	}
}

// start begins a fetch in its own goroutine, so that a caller giving up
// does not cancel it for the others. r.mu must be held.
func (r *RemoteKeys) start(ctx context.Context, now time.Time) *remoteFlight {
	f := &remoteFlight{done: make(chan struct{})}
	if s := r.snap.Load(); s != nil {
		f.stale = now.Before(s.expires) || now.Before(s.staleUntil) && r.failing(now)
	}
	r.flight = f
	r.lastAttempt = now
	if s := r.snap.Load(); s != nil {
		// No other background refresh within the cooldown.
		next := *s
		next.refreshAt = now.Add(r.cfg.RefreshCooldown)
		r.snap.Store(&next)
	}
	ctx = context.WithoutCancel(ctx)
	go r.run(ctx, f, now)
	return f
}

// run fetches the set and installs it, or records why it failed.
func (r *RemoteKeys) run(ctx context.Context, f *remoteFlight, started time.Time) {
	defer close(f.done)
	keys, lifetime, dropped, err := r.fetch(ctx)
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flight = nil
	r.lastErr = err
	r.failed.Store(err != nil)
	old := r.snap.Load()
	if u := (untrusted{}); errors.As(err, &u) && old != nil && now.Before(old.staleUntil) {
		// Refused, but answered: the server has withdrawn what it
		// published before, or shows it compromised.
		gone := *old
		gone.expires, gone.staleUntil = now, now
		r.snap.Store(&gone)
		r.cfg.Logger.ErrorContext(ctx, "m2mauth: JWKS refused; the last good set is dropped, tokens are refused",
			"url", r.url, "error", err, "fetched_at", old.fetched)
		return
	}
	if err != nil {
		switch {
		case old != nil && now.Before(old.staleUntil):
			r.cfg.Logger.WarnContext(ctx, "m2mauth: JWKS fetch failed; serving the last good set",
				"url", r.url, "error", err, "fetched_at", old.fetched, "stale_until", old.staleUntil)
		case old != nil:
			r.cfg.Logger.ErrorContext(ctx, "m2mauth: JWKS fetch failed; the last good set is too old, tokens are refused",
				"url", r.url, "error", err, "fetched_at", old.fetched, "stale_until", old.staleUntil)
		default:
			r.cfg.Logger.ErrorContext(ctx, "m2mauth: JWKS fetch failed; no keys yet, tokens are refused",
				"url", r.url, "error", err)
		}
		return
	}
	if len(dropped) > 0 {
		r.cfg.Logger.WarnContext(ctx, "m2mauth: JWKS keys left out", "url", r.url, "keys", dropped)
	}
	// Fresh for its lifetime from the request, not the answer (RFC 9111
	// §4.2.3 counts the response's delay in its age).
	s := &remoteSnapshot{set: &jose.JSONWebKeySet{Keys: keys}, fetched: started, expires: started.Add(lifetime)}
	if old != nil && remoteSameKeys(old.set.Keys, keys) {
		s.set = old.set // unchanged keys keep their pointer
	} else {
		kids := make([]string, len(keys))
		for i := range keys {
			kids[i] = keys[i].KeyID
		}
		r.cfg.Logger.InfoContext(ctx, "m2mauth: JWKS keys loaded", "url", r.url, "kids", kids)
	}
	s.staleUntil = s.expires.Add(r.cfg.MaxStale)
	// Early enough for a fetch that takes its Timeout to end before the
	// expiry, unless that is more than half the lifetime.
	s.refreshAt = s.expires.Add(-min(max(min(lifetime/10, remoteRefreshMargin), r.cfg.Timeout), lifetime/2))
	r.snap.Store(s)
}

// fetch gets and checks the key set. It returns the keys kept, their
// freshness lifetime, and why others were left out.
func (r *RemoteKeys) fetch(ctx context.Context) (keys []jose.JSONWebKey, lifetime time.Duration, dropped []string, err error) {
	body, header, err := remoteGet(ctx, r.client, r.url, r.cfg.Timeout, r.cfg.MaxBodyBytes, "application/jwk-set+json, application/json")
	if err != nil {
		return nil, 0, nil, err
	}
	keys, dropped, err = remoteParseKeySet(body)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("m2mauth: JWKS from %s refused: %w", r.url, err)
	}
	return keys, remoteLifetime(header), dropped, nil
}

// remoteGet fetches rawURL within timeout and returns at most maxBody
// bytes of a 2xx response, or an error that never quotes the body.
func remoteGet(ctx context.Context, client *http.Client, rawURL string, timeout time.Duration, maxBody int64, accept string) ([]byte, http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("m2mauth: GET %s: %w", rawURL, err)
	}
	req.Header.Set("Accept", accept)
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, nil, fmt.Errorf("m2mauth: GET %s: %w", rawURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, nil, fmt.Errorf("m2mauth: GET %s: status %s", rawURL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, nil, fmt.Errorf("m2mauth: GET %s: reading the body: %w", rawURL, err)
	}
	if int64(len(body)) > maxBody {
		return nil, nil, fmt.Errorf("m2mauth: GET %s: body larger than %d bytes", rawURL, maxBody)
	}
	return body, resp.Header, nil
}

// remoteParseKeySet checks a JWKS document and returns the keys accepted
// and why the others were left out. It refuses the whole set if any key
// holds private or secret material, or if no key is left.
func remoteParseKeySet(body []byte) ([]jose.JSONWebKey, []string, error) {
	var doc struct {
		Keys *[]json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, nil, fmt.Errorf(`not a JWK Set (a JSON object with a "keys" array): %w`, err)
	}
	if doc.Keys == nil {
		return nil, nil, errors.New(`no "keys" array`)
	}
	type member = json.RawMessage
	var keys []jose.JSONWebKey
	var dropped []string
	seen := make(map[string]bool)
	for i, raw := range *doc.Keys {
		var m struct {
			Kid    string    `json:"kid"`
			KeyOps *[]string `json:"key_ops"`
			// Private and secret members (RFC 7518 §6.2.2, §6.3.2, §6.4,
			// RFC 8037 §2; "priv" for AKP keys).
			D, P, Q, DP, DQ, QI, Oth, K, Priv member
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			dropped = append(dropped, fmt.Sprintf("#%d: not a JSON object", i))
			continue
		}
		if m.D != nil || m.P != nil || m.Q != nil || m.DP != nil || m.DQ != nil || m.QI != nil || m.Oth != nil || m.Priv != nil {
			return nil, nil, untrusted{fmt.Errorf("key #%d (kid %q) holds private key material", i, m.Kid)}
		}
		if m.K != nil {
			return nil, nil, untrusted{fmt.Errorf("key #%d (kid %q) is a symmetric key; its secret is published", i, m.Kid)}
		}
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil {
			dropped = append(dropped, fmt.Sprintf("#%d (kid %q): %v", i, m.Kid, err))
			continue
		}
		if !k.IsPublic() || !k.Valid() {
			// Not reached for the key types accepted below; kept as the
			// last word on private material.
			return nil, nil, untrusted{fmt.Errorf("key #%d (kid %q) is not a valid public key", i, m.Kid)}
		}
		reason := remoteCheckKey(&k)
		switch {
		case reason != "":
		case m.KeyOps != nil && !slices.Contains(*m.KeyOps, "verify"):
			reason = `key_ops without "verify"`
		case seen[k.KeyID]:
			reason = "kid already used by an earlier key"
		}
		if reason != "" {
			dropped = append(dropped, fmt.Sprintf("#%d (kid %q): %s", i, m.Kid, reason))
			continue
		}
		seen[k.KeyID] = true
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, dropped, untrusted{fmt.Errorf("no usable key among %d", len(*doc.Keys))}
	}
	return keys, dropped, nil
}

// untrusted is the refusal of a key set that leaves nothing to trust: no
// usable key, or keys whose private or secret parts are published. The
// server answered it: the set held before is dropped with it.
type untrusted struct{ error }

func (e untrusted) Unwrap() error { return e.error }

// remoteCheckKey decides whether a public key from a remote set is kept,
// setting its algorithm when only one fits, and returns why not if not.
// A remote set offers only public keys of asymmetric algorithms.
func remoteCheckKey(k *jose.JSONWebKey) string {
	if k.Algorithm == "" {
		alg, ok := inferAlgorithm(k.Key)
		if !ok {
			return fmt.Sprintf("%T key without alg", k.Key)
		}
		k.Algorithm = string(alg)
	}
	if jose.SignatureAlgorithm(k.Algorithm) == jose.HS256 {
		return "symmetric key"
	}
	if err := checkKey(k); err != nil {
		return err.Error()
	}
	return ""
}

// remoteSameKeys reports whether two accepted key lists are the same keys
// in the same order.
func remoteSameKeys(a, b []jose.JSONWebKey) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].KeyID != b[i].KeyID || a[i].Algorithm != b[i].Algorithm || a[i].Use != b[i].Use {
			return false
		}
		pa, ok := a[i].Key.(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !pa.Equal(b[i].Key) {
			return false
		}
	}
	return true
}

func remoteHasKid(set *jose.JSONWebKeySet, kid string) bool {
	for i := range set.Keys {
		if set.Keys[i].KeyID == kid {
			return true
		}
	}
	return false
}

// remoteLifetime is the freshness lifetime of a response: its
// Cache-Control max-age less its Age, clamped; no-store and no-cache
// count as 0. Without a valid max-age it is remoteDefaultMaxAge. Of
// several max-age directives the smallest counts.
func remoteLifetime(h http.Header) time.Duration {
	const maxSeconds = int64(remoteMaxMaxAge / time.Second)
	seconds, found := int64(0), false
	for _, line := range h.Values("Cache-Control") {
		for d := range strings.SplitSeq(line, ",") {
			name, value, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "no-store", "no-cache":
				seconds, found = 0, true
			case "max-age":
				n, ok := remoteDeltaSeconds(strings.Trim(strings.TrimSpace(value), `"`))
				if !ok {
					continue
				}
				if !found || n < seconds {
					seconds, found = n, true
				}
			}
		}
	}
	if !found {
		return remoteDefaultMaxAge
	}
	if age, ok := remoteDeltaSeconds(strings.TrimSpace(h.Get("Age"))); ok {
		seconds -= age
	}
	return min(max(time.Duration(min(seconds, maxSeconds))*time.Second, remoteMinMaxAge), remoteMaxMaxAge)
}

// remoteDeltaSeconds parses delta-seconds (RFC 9111 §1.2.2): digits only,
// saturating at a day and a half.
func remoteDeltaSeconds(s string) (int64, bool) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > 1<<17 {
		n = 1 << 17
	}
	return n, true
}

// remoteCheckURL parses an absolute URL and applies the https rule.
func remoteCheckURL(raw string, insecureHTTP bool) (*url.URL, error) {
	u, err := parseURL(raw)
	if err != nil {
		return nil, err
	}
	if err := remoteAllowURL(u, insecureHTTP); err != nil {
		return nil, err
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return nil, fmt.Errorf("%q has a fragment", raw)
	}
	return u, nil
}

// parseURL is url.Parse with an error that does not repeat the URL,
// which may hold a password: url.Parse's error names it whole.
func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("the URL does not parse: %w", err)
	}
	return u, nil
}

// remoteAllowURL is the https rule: https, or http on a loopback host or
// when insecureHTTP is set; a host and no user information.
func remoteAllowURL(u *url.URL, insecureHTTP bool) error {
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("%q is not an absolute URL with a host", u.Redacted())
	}
	if u.User != nil {
		return fmt.Errorf("%q carries user information", u.Redacted())
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if insecureHTTP || isLoopbackHost(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%q is not https (http is allowed only on loopback hosts, or with AllowInsecureHTTP)", u.Redacted())
	default:
		return fmt.Errorf("%q: scheme %q is not https", u.Redacted(), u.Scheme)
	}
}

// maxRemoteHeaderBytes bounds the response headers of the default
// clients' fetches (net/http's own bound is 1 MiB, which a hostile
// server fills at some 64 MiB of allocation per fetch). Key sets,
// revocation lists and webhook answers need a few hundred bytes.
const maxRemoteHeaderBytes = 64 << 10

// remoteTransport returns the transport of the default clients that
// fetch from other servers: http.DefaultTransport, as the program has set
// it up when the first such client is made, with the response headers
// bounded (see boundedTransport).
var remoteTransport = sync.OnceValue(func() http.RoundTripper { return boundedTransport(http.DefaultTransport) })

// boundedTransport returns a copy of base, with its proxy and TLS
// settings, that reads at most maxRemoteHeaderBytes of response headers.
// A base that is not an *http.Transport (a wrapper, say) is returned as
// it is.
func boundedTransport(base http.RoundTripper) http.RoundTripper {
	t, ok := base.(*http.Transport)
	if !ok {
		return base
	}
	t = t.Clone()
	if t.MaxResponseHeaderBytes <= 0 || t.MaxResponseHeaderBytes > maxRemoteHeaderBytes {
		t.MaxResponseHeaderBytes = maxRemoteHeaderBytes
	}
	return t
}

// newRemoteHTTPClient is the default client: no cookie jar, the timeout,
// bounded response headers, and at most remoteMaxRedirects redirects,
// each allowed by the https rule and never from https to http.
func newRemoteHTTPClient(cfg RemoteKeysConfig) *http.Client {
	return &http.Client{
		Transport: remoteTransport(),
		Timeout:   cfg.Timeout,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > remoteMaxRedirects {
				return fmt.Errorf("stopped after %d redirects", remoteMaxRedirects)
			}
			if err := remoteAllowURL(req.URL, cfg.AllowInsecureHTTP); err != nil {
				return fmt.Errorf("redirect refused: %w", err)
			}
			if via[len(via)-1].URL.Scheme == "https" && req.URL.Scheme != "https" {
				return fmt.Errorf("redirect from https to %q refused", req.URL.Redacted())
			}
			return nil
		},
	}
}

var _ KeyRefresher = (*RemoteKeys)(nil)
