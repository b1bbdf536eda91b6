package m2mauth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Reasons given in [AuditEvent.Reason] for requests refused before any
// client was authenticated.
const (
	// ReasonInsecureTransport: the request did not arrive over TLS.
	ReasonInsecureTransport = "insecure_transport"
	// ReasonAuditUnavailable: the auditor could not record events and
	// [TokenHandlerConfig.RequireAudit] is set.
	ReasonAuditUnavailable = "audit_unavailable"
	// ReasonOverloaded: too many requests were in flight, or a shared
	// store did not answer in time.
	ReasonOverloaded = "overloaded"
	// ReasonCanceled: the caller went away (closed its connection)
	// before it was answered. Whatever step it interrupted, nothing
	// failed on the server's side: the refusal is answered 503
	// temporarily_unavailable, and is neither logged as an error nor
	// audited as a server_error.
	ReasonCanceled = "canceled"
)

// hstsValue is the Strict-Transport-Security header sent over TLS: a
// year, as RFC 6797 §11.2 suggests for a stable service. The slice is
// shared by every response and never modified.
var hstsValue = []string{"max-age=31536000"}

// clientAuth authenticates clients with client_secret_basic or
// client_secret_post (RFC 6749 §2.3.1). It is the one piece every endpoint
// that takes client credentials uses: it reserves each attempt with the
// limiter before the store or a hasher is touched, verifies the secret at
// a cost that does not depend on whether the client exists, rations slow
// hashes, and releases the reservation with the outcome.
type clientAuth struct {
	store ClientStore
	// client looks a client up to read it: the store's SharedClient
	// when it has one.
	client  func(ctx context.Context, id string) (*Client, error)
	limiter Limiter
	logger  *slog.Logger
	timeout time.Duration
	// dummy is verified against when no known client's hashes are at hand.
	dummy string
	// profile holds the secret hashes of the last client found, so that
	// an unknown client id costs what a typical known one does.
	profile atomic.Pointer[[]string]
	slow    *slowGate
}

// clientAuthMethods returns the client authentication methods (RFC 8414
// §2, RFC 7591 §2) that clientAuth accepts, for every endpoint that
// takes client credentials: keep it in step with parseBasic and the body
// parameters.
func clientAuthMethods() []string {
	return []string{"client_secret_basic", "client_secret_post"}
}

// credentials are the client credentials of one request.
type credentials struct {
	id, secret string
	// basic is true when the client used the Authorization header.
	basic bool
}

func newClientAuth(store ClientStore, limiter Limiter, logger *slog.Logger, timeout time.Duration, slow int) (*clientAuth, error) {
	dummy, err := GenerateSecret()
	if err != nil {
		return nil, err
	}
	a := &clientAuth{store: store, client: clientReader(store), limiter: limiter, logger: logger, timeout: timeout, slow: newSlowGate(slow)}
	if a.dummy, err = HashSecret(dummy); err != nil {
		return nil, err
	}
	return a, nil
}

// authenticate finds and authenticates the client of cr, from the address
// whose limiter key is ip. Unknown clients, wrong or expired secrets,
// disabled and public clients all yield the same invalid_client error
// after comparable work; only ev.Reason tells them apart.
func (a *clientAuth) authenticate(ctx context.Context, cr *credentials, ip string, now time.Time, ev *AuditEvent) (*Client, error) {
	if cr.id == "" {
		// A body client_secret without client_id is a malformed request;
		// HTTP Basic with an empty user-id, which RFC 7617 allows, is a
		// failed authentication (RFC 6749 §5.2: 401 with a challenge).
		if cr.secret != "" && !cr.basic {
			return nil, NewError(CodeInvalidRequest, "client_secret requires client_id")
		}
		ev.Reason = ReasonNoCredentials
		return nil, NewError(CodeInvalidClient, "client authentication failed")
	}
	if cr.secret == "" {
		// Nothing to guess with: refused the same way for every id,
		// without a lookup.
		ev.Reason = ReasonNoCredentials
		return nil, NewError(CodeInvalidClient, "client authentication failed")
	}
	limitID := cr.id
	if !ValidClientID(limitID) {
		limitID = LimiterInvalidClientID
		ev.invalidClient = true
	}
	// A store or limiter that answers from memory never looks at the
	// deadline, so it is armed only when one does.
	lp := withLazyTimeouts(ctx, a.timeout)
	defer lp.release()
	ctx = &lp.req
	var (
		wait time.Duration
		pre  prefetched
		err  error
	)
	if cl, ok := a.limiter.(ClientLimiter); ok && ValidClientID(cr.id) {
		wait, pre.c, pre.err, err = cl.ReserveClient(ctx, a.store, cr.id, ip)
		pre.done = true
	} else {
		wait, err = a.limiter.Reserve(ctx, limitID, ip)
	}
	if err != nil {
		return nil, unavailable(ctx, "the rate limiter is unavailable", err)
	}
	if wait > 0 {
		e := WrapError(CodeTemporarilyUnavailable, "too many failed authentication attempts; retry later", retryLater{wait})
		e.Status = http.StatusTooManyRequests
		return nil, e
	}
	c, outcome, err := a.verify(ctx, cr, ip, now, ev, pre)
	// The reservation must end even when the caller hangs up or the
	// request runs out of time, before the release or while it waits
	// (for a database's lock, say): a reservation left in flight would
	// hold the client's attempts until its lease ran out, and the guess
	// in it would go uncounted. The release gets a time of its own.
	rctx := lp.detach(a.timeout)
	if rerr := a.limiter.Release(rctx, limitID, ip, outcome); rerr != nil {
		// Fail closed: an outcome that may not have been counted gets no
		// answer that would tell it.
		return nil, unavailable(rctx, "the rate limiter is unavailable", rerr)
	}
	return c, err
}

// prefetched is the result of a client lookup that a [ClientLimiter]
// made with its reservation, when done.
type prefetched struct {
	c    *Client
	err  error
	done bool
}

// verify looks the client up, unless pre holds the lookup already, and
// checks its secret, and says how the attempt ended for the limiter.
func (a *clientAuth) verify(ctx context.Context, cr *credentials, addr string, now time.Time, ev *AuditEvent, pre prefetched) (*Client, Outcome, error) {
	fail := func(reason string) (*Client, Outcome, error) {
		ev.Reason = reason
		return nil, OutcomeFailed, NewError(CodeInvalidClient, "client authentication failed")
	}
	if !ValidClientID(cr.id) {
		if err := a.dummyVerify(ctx, cr.id, cr.secret); err != nil {
			return nil, OutcomeAbandoned, err
		}
		return fail(ReasonUnknownClient)
	}
	c, err := pre.c, pre.err
	if !pre.done {
		c, err = a.client(ctx, cr.id)
	}
	switch {
	case errors.Is(err, ErrClientNotFound):
		if err := a.dummyVerify(ctx, cr.id, cr.secret); err != nil {
			return nil, OutcomeAbandoned, err
		}
		return fail(ReasonUnknownClient)
	case err != nil:
		return nil, OutcomeAbandoned, unavailable(ctx, "the client store is unavailable", err)
	case c.Public:
		// Answered like an unknown client, so public client ids cannot
		// be told from unused ones.
		if err := a.dummyVerify(ctx, cr.id, cr.secret); err != nil {
			return nil, OutcomeAbandoned, err
		}
		return fail(ReasonPublicClient)
	}
	a.remember(c.Secrets)
	if len(c.Secrets) == 0 {
		if err := a.dummyVerify(ctx, cr.id, cr.secret); err != nil {
			return nil, OutcomeAbandoned, err
		}
		return fail(ReasonBadSecret)
	}
	slow := false
	for _, s := range c.Secrets {
		slow = slow || slowHash(s.Hash)
	}
	if slow {
		known := a.slow.isKnown(cr.id, addr, cr.secret, now)
		if err := a.slow.enter(ctx, cr.id, known); err != nil {
			return nil, OutcomeAbandoned, err
		}
		defer a.slow.leave(cr.id, known)
	}
	matched, expired := -1, false
	for i, s := range c.Secrets {
		ok, err := VerifySecret(s.Hash, cr.secret)
		if err != nil {
			a.logger.ErrorContext(ctx, "m2mauth: unreadable secret hash", "client_id", c.ID, "secret_id", s.ID, "error", err)
			continue
		}
		if ok {
			if s.ActiveAt(now) {
				matched = i
			} else {
				expired = true
			}
		}
	}
	switch {
	case matched < 0 && expired:
		return fail(ReasonExpiredSecret)
	case matched < 0:
		return fail(ReasonBadSecret)
	case c.Disabled:
		return fail(ReasonClientDisabled)
	}
	ev.SecretID = c.Secrets[matched].ID
	if slow {
		a.slow.remember(cr.id, addr, cr.secret, now)
	}
	return c, OutcomeAuthenticated, nil
}

// recheck reads the authenticated client c again, at now, for a request
// that waited since it authenticated with the secret ev.SecretID. It
// returns the client as it is now if it may still get a token: present,
// confidential, enabled and holding that secret, active at now. Otherwise
// it answers as verify would have, had the change come first.
func (a *clientAuth) recheck(ctx context.Context, c *Client, now time.Time, ev *AuditEvent) (*Client, error) {
	hash := ""
	for _, s := range c.Secrets {
		if s.ID == ev.SecretID {
			hash = s.Hash
		}
	}
	lctx := withLazyTimeout(ctx, a.timeout)
	defer lctx.release()
	c, err := a.client(lctx, c.ID)
	reason := ""
	switch {
	case errors.Is(err, ErrClientNotFound):
		reason = ReasonUnknownClient
	case err != nil:
		return nil, unavailable(lctx, "the client store is unavailable", err)
	case c.Public:
		reason = ReasonPublicClient
	case c.Disabled:
		reason = ReasonClientDisabled
	default:
		reason = ReasonBadSecret
		for _, s := range c.Secrets {
			if hash != "" && s.Hash == hash {
				if s.ActiveAt(now) {
					return c, nil
				}
				reason = ReasonExpiredSecret
			}
		}
	}
	ev.Reason, ev.SecretID = reason, ""
	return nil, NewError(CodeInvalidClient, "client authentication failed")
}

// remember keeps the hashes of a client found in the store as the profile
// of a typical client, when they cost differently from the profile's.
func (a *clientAuth) remember(secrets []Secret) {
	if len(secrets) == 0 {
		return
	}
	if p := a.profile.Load(); p != nil && len(*p) == len(secrets) {
		same := true
		for i, s := range secrets {
			if hashCost(s.Hash) != hashCost((*p)[i]) {
				same = false
				break
			}
		}
		if same {
			return
		}
	}
	hashes := make([]string, len(secrets))
	for i, s := range secrets {
		hashes[i] = s.Hash
	}
	a.profile.Store(&hashes)
}

// dummyVerify spends on secret what verifying a typical known client's
// secrets costs, and discards the result.
func (a *clientAuth) dummyVerify(ctx context.Context, id, secret string) error {
	hashes := []string{a.dummy}
	if p := a.profile.Load(); p != nil {
		hashes = *p
	}
	slow := false
	for _, h := range hashes {
		slow = slow || slowHash(h)
	}
	if slow {
		if err := a.slow.enter(ctx, id, false); err != nil {
			return err
		}
		defer a.slow.leave(id, false)
	}
	for _, h := range hashes {
		VerifySecret(h, secret)
	}
	return nil
}

// unavailable is the error for a shared store or limiter that failed: 503
// with Retry-After when it did not answer in time (whatever error a driver
// makes of a deadline), else 500.
func unavailable(ctx context.Context, desc string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		e := WrapError(CodeTemporarilyUnavailable, desc+"; retry later", retryLater{time.Second})
		e.Status = http.StatusServiceUnavailable
		return e
	}
	return WrapError(CodeServerError, desc, err)
}

// retryLater is the cause of a 429 or 503: how long the client should
// wait before it tries again.
type retryLater struct{ wait time.Duration }

func (r retryLater) Error() string { return "m2mauth: retry after " + r.wait.String() }

// transport refuses a request that did not reach us over TLS (RFC 6749
// §1.6 and §3.2), unless its peer is this machine or insecure HTTP is
// allowed; over TLS it sets Strict-Transport-Security.
func transport(w http.ResponseWriter, p peer, allowInsecure bool) error {
	if p.secure {
		w.Header()["Strict-Transport-Security"] = hstsValue
		return nil
	}
	if p.local || allowInsecure {
		return nil
	}
	return NewError(CodeInvalidRequest, "this endpoint accepts only HTTPS requests (RFC 6749 section 3.2)")
}

// parseBasic reads client_secret_basic credentials (RFC 6749 §2.3.1): the
// client id and secret are form-urlencoded, then joined by ':' and
// base64-encoded. Basic and body credentials together are refused; a body
// client_id equal to the Basic one is tolerated.
func parseBasic(values []string, cr *credentials) error {
	switch len(values) {
	case 0:
		return nil
	case 1:
	default:
		return NewError(CodeInvalidRequest, "more than one Authorization header")
	}
	cr.basic = true
	scheme, cred, _ := strings.Cut(values[0], " ")
	if !strings.EqualFold(scheme, "Basic") {
		return NewError(CodeInvalidClient, "unsupported client authentication method; use HTTP Basic")
	}
	// Usual credentials decode on the stack, and become one string.
	enc := strings.TrimSpace(cred)
	var src [256]byte
	var dst [192]byte
	in, out := src[:0], dst[:]
	if len(enc) <= len(src) {
		in = append(in, enc...)
	} else {
		in, out = []byte(enc), make([]byte, base64.StdEncoding.DecodedLen(len(enc)))
	}
	n, err := base64.StdEncoding.Decode(out, in)
	if err != nil {
		return NewError(CodeInvalidClient, "malformed HTTP Basic credentials")
	}
	id, secret, ok := strings.Cut(string(out[:n]), ":")
	if !ok {
		return NewError(CodeInvalidClient, "malformed HTTP Basic credentials")
	}
	if id, err = formUnescape(id); err == nil {
		secret, err = formUnescape(secret)
	}
	if err != nil {
		return NewError(CodeInvalidClient, "malformed HTTP Basic credentials")
	}
	if cr.secret != "" {
		return NewError(CodeInvalidRequest, "use one client authentication method: HTTP Basic or client_secret in the body, not both")
	}
	if cr.id != "" && cr.id != id {
		return NewError(CodeInvalidRequest, "client_id in the body differs from the HTTP Basic client id")
	}
	cr.id, cr.secret = id, secret
	return nil
}

// slowGate rations verifications of deliberately slow hashes (argon2id,
// bcrypt): at most n at once in the process and at most perClient of them
// for one client id, so a burst of guesses cannot exhaust memory or CPU.
// Fast hashes pass without a lock.
//
// A client presenting, from an address, the secret it proved there within
// knownWindow is not held to its id's share: guesses at its id from
// elsewhere, which fill that share, would else keep it waiting past
// StoreTimeout. Any other request, a wrong secret from that same address
// included, waits as an unknown id's does, so the bypass tells nothing.
type slowGate struct {
	global    chan struct{}
	perClient int
	mu        sync.Mutex
	clients   map[string]*clientSlots
	// known holds, for at most maxSlowKnown client ids, the last
	// addresses each passed a slow verification from.
	known map[string]*knownAddrs
	// proofKey keys the digests of the secrets proven (see proof).
	proofKey [32]byte
}

// knownAddrs are the last addresses a client passed a slow verification
// from, with the digest of the secret it presented and when.
type knownAddrs [maxKnownPerClient]struct {
	addr  string
	proof [sha256.Size]byte
	at    int64 // Unix nanoseconds; 0: a free place
}

const (
	// maxSlowKnown bounds the client ids a slowGate remembers addresses
	// of, and maxKnownPerClient the addresses of one: a client with
	// many addresses cannot push the others out.
	maxSlowKnown      = 10000
	maxKnownPerClient = 8
	// knownWindow is how long a slowGate remembers an address: 24
	// hours, as the default [RateLimiterConfig].KnownWindow.
	knownWindow = 24 * time.Hour
)

type clientSlots struct {
	ch   chan struct{}
	refs int
}

func newSlowGate(n int) *slowGate {
	g := &slowGate{global: make(chan struct{}, n), perClient: max(1, n/4), clients: make(map[string]*clientSlots), known: make(map[string]*knownAddrs)}
	rand.Read(g.proofKey[:])
	return g
}

// proof is the digest by which a slowGate recognises the secret a client
// proved: keyed with a random key of the process, so that it is no hash
// of the secret anyone could test guesses against.
func (g *slowGate) proof(id, secret string) (p [sha256.Size]byte) {
	mac := hmac.New(sha256.New, g.proofKey[:])
	mac.Write([]byte(id))
	mac.Write([]byte{0})
	mac.Write([]byte(secret))
	mac.Sum(p[:0])
	return p
}

// isKnown reports whether client id passed a slow verification with
// secret from the address key addr within knownWindow of now.
func (g *slowGate) isKnown(id, addr, secret string, now time.Time) bool {
	p := g.proof(id, secret)
	g.mu.Lock()
	defer g.mu.Unlock()
	k := g.known[id]
	if k == nil {
		return false
	}
	for _, e := range k {
		if e.at != 0 && e.addr == addr && now.UnixNano()-e.at < int64(knownWindow) {
			return hmac.Equal(e.proof[:], p[:])
		}
	}
	return false
}

// remember notes that client id passed a slow verification with secret
// from addr at now.
func (g *slowGate) remember(id, addr, secret string, now time.Time) {
	p, n := g.proof(id, secret), now.UnixNano()
	g.mu.Lock()
	defer g.mu.Unlock()
	k := g.known[id]
	if k == nil {
		if len(g.known) >= maxSlowKnown {
			g.forget(n)
		}
		k = new(knownAddrs)
		g.known[id] = k
	}
	// The address's own place, else the one with the earliest time: a
	// free one (0), else the oldest, expired or not.
	i := -1
	for j := range k {
		if k[j].at != 0 && k[j].addr == addr {
			i = j
			break
		}
	}
	if i < 0 {
		i = 0
		for j := range k {
			if k[j].at < k[i].at {
				i = j
			}
		}
	}
	k[i].addr, k[i].proof, k[i].at = addr, p, n
}

// forget makes room for a tenth of maxSlowKnown more client ids: those
// whose addresses all expired by now go first, then any. g.mu is held.
func (g *slowGate) forget(now int64) {
	for id, k := range g.known {
		live := false
		for _, e := range k {
			live = live || e.at != 0 && now-e.at < int64(knownWindow)
		}
		if !live {
			delete(g.known, id)
		}
	}
	for id := range g.known {
		if len(g.known) < maxSlowKnown*9/10 {
			break
		}
		delete(g.known, id)
	}
}

// enter waits for a slot to verify a slow hash of client id, until ctx
// ends. With known (see isKnown), the id's own share is not taken. A nil
// error must be matched by a leave with the same known.
func (g *slowGate) enter(ctx context.Context, id string, known bool) error {
	if known {
		select {
		case g.global <- struct{}{}:
			if ctx.Err() == nil {
				return nil
			}
			<-g.global
		case <-ctx.Done():
		}
		return unavailable(ctx, "too many slow secret verifications", context.DeadlineExceeded)
	}
	g.mu.Lock()
	cs := g.clients[id]
	if cs == nil {
		cs = &clientSlots{ch: make(chan struct{}, g.perClient)}
		g.clients[id] = cs
	}
	cs.refs++
	g.mu.Unlock()
	select {
	case cs.ch <- struct{}{}:
		select {
		case g.global <- struct{}{}:
			if ctx.Err() == nil { // the caller may have gone meanwhile
				return nil
			}
			<-g.global
		case <-ctx.Done():
		}
		<-cs.ch
	case <-ctx.Done():
	}
	g.unref(id, cs)
	return unavailable(ctx, "too many slow secret verifications", context.DeadlineExceeded)
}

func (g *slowGate) leave(id string, known bool) {
	<-g.global
	if known {
		return
	}
	g.mu.Lock()
	cs := g.clients[id]
	g.mu.Unlock()
	<-cs.ch
	g.unref(id, cs)
}

func (g *slowGate) unref(id string, cs *clientSlots) {
	g.mu.Lock()
	if cs.refs--; cs.refs == 0 {
		delete(g.clients, id)
	}
	g.mu.Unlock()
}
