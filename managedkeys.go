package m2mauth

import (
	"bytes"
	"cmp"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// ManagedKeysConfig holds the tunables of [ManagedKeys]. The zero value
// is a working configuration.
type ManagedKeysConfig struct {
	// Algorithm is the algorithm of the keys ManagedKeys creates, one of
	// [SupportedAlgorithms]; an HS256 secret is sealed like a private
	// key, and never published in a JWKS. Keys already stored keep their
	// own algorithm: a change takes effect at the next rotation (call
	// Rotate for it to happen sooner), so validators must accept both
	// algorithms meanwhile. Default: ES256.
	Algorithm jose.SignatureAlgorithm
	// PropagationDelay is the time from the publication of a key, when it
	// enters the key set, to its activation, when it starts signing, so
	// that every verifier has it before it meets a token it signed. It
	// must be at least the JWKS max-age the host serves
	// ([JWKSConfig.MaxAge]) plus RefreshInterval plus however long
	// verifiers and caches in between keep a key set beyond that.
	// Default: 10m, twice the default JWKS max-age.
	PropagationDelay time.Duration
	// RotationInterval is the time from the activation of a key to the
	// activation of the next: a new key is published PropagationDelay
	// before the newest key has been active for RotationInterval. It
	// must exceed PropagationDelay. Default: 90 days.
	RotationInterval time.Duration
	// MaxTokenTTL is the longest lifetime of the tokens signed with the
	// keys: at least the MaxTokenTTL of every [TokenHandler] that uses
	// them. A retired key is deleted MaxTokenTTL plus Leeway after its
	// retirement, once every token it signed has expired. At most
	// [MaxClientTokenTTL]. Default: [MaxClientTokenTTL] (24h).
	MaxTokenTTL time.Duration
	// Leeway is added to MaxTokenTTL before a retired or revoked key is
	// deleted: at least the clock skew validators tolerate
	// ([ValidatorConfig.Leeway]). Default: [RevocationGrace] (5m).
	Leeway time.Duration
	// RefreshInterval is the time from the end of one background
	// refresh to the start of the next. A refresh reads every key from
	// the store, so a key published, revoked or deleted by another
	// replica is seen here within RefreshInterval (plus one refresh); it
	// also deletes the keys past their time, publishes the next key when
	// it is due, and audits activations and retirements. At least 10ms
	// and under PropagationDelay. Default: 30s.
	RefreshInterval time.Duration
	// Timeout bounds each background refresh and each Refresh, as a
	// whole. Default: 10s.
	Timeout time.Duration
	// Auditor, when set, receives the [EventKeyPublished],
	// [EventKeyActivated], [EventKeyRetired], [EventKeyDeleted] and
	// [EventKeyRevoked] events, with the kid as Reason. Default: none.
	Auditor Auditor
	// Logger receives key publications, revocations and deletions,
	// failed refreshes (the first of a run, and the recovery) and keys
	// that will not open; never key material. Default: [slog.Default].
	Logger *slog.Logger
	// Now is the clock. With the default, SigningKey and
	// VerificationKeys read no clock: a timer switches the keys at each
	// activation and deletion. An injected Now is read by every call, so
	// tests see the keys of the time they set. Default: [time.Now].
	Now func() time.Time
}

const (
	defaultManagedKeyAlg    = jose.ES256
	defaultPropagationDelay = 2 * defaultJWKSMaxAge
	defaultRotationInterval = 90 * 24 * time.Hour
	defaultKeyRefresh       = 30 * time.Second
	minKeyRefresh           = 10 * time.Millisecond
	defaultKeyTimeout       = 10 * time.Second
)

// ManagedKeys is a [KeyProvider] over signing keys kept in a [KeyStore]
// shared by every replica, sealed at rest by a [KeySealer]: keys that
// rotate by themselves, publish-before-sign, the same on every replica.
//
// The life of a key (see [StoredKey]): it is published, and enters the
// verification keys, PropagationDelay before it becomes active; it
// signs from its ActiveAt until a key of a later generation becomes
// active; retired, it still verifies until every token it signed has
// expired (its retirement plus MaxTokenTTL plus Leeway), when it is
// deleted. The rule every replica applies to the same rows:
//
//   - the signing key at time t is the key of the highest generation,
//     not revoked, whose ActiveAt is at or before t. When none is (a
//     replica whose clock is behind that of the replica that created a
//     key active at once, or a revoked active key whose successor
//     waits out its propagation delay), the key with the earliest
//     ActiveAt signs: it is in the key set already.
//   - the verification keys are every key neither revoked nor past its
//     deletion time. Asymmetric keys are given as their public halves;
//     HS256 keys as their secrets, which a [JWKSHandler] never serves.
//   - revoking a key takes it out of both at once. If the revoked key
//     was the active one, the previous key still held signs again; to
//     replace every key, revoke each: when no key remains that is not
//     revoked, a new one is published that signs at once (an emergency,
//     logged as an error); verifiers that read the JWKS with
//     [RemoteKeys] refetch it when they meet the new kid.
//
// Rotation is automatic: when the newest key has been active for
// RotationInterval minus PropagationDelay, the next key is published,
// to become active PropagationDelay later. Replicas that rotate at once
// create one key between them, since a store refuses a second key of a
// generation ([KeyStore.AddSigningKey]).
//
// Guarantees:
//
//   - SigningKey and VerificationKeys answer from an in-memory snapshot:
//     no I/O, no allocation, and with the default clock no clock read;
//     they return the same pointers while the keys do not change.
//   - A background goroutine refreshes the snapshot every
//     RefreshInterval (30s); a failed refresh keeps the last snapshot
//     and is logged once, until one succeeds again (logged too). Ping
//     fails meanwhile.
//   - Key material appears in no log, error or audit event, and is
//     stored only sealed, bound to its kid, algorithm and generation.
//
// Ping makes a readiness check:
//
//	Checks: map[string]func(context.Context) error{"signing_keys": keys.Ping}
//
// ManagedKeys implements [KeySchedule], so a [JWKSHandler] never lets
// verifiers cache the key set past the next activation or deletion.
//
// A ManagedKeys is safe for concurrent use. Close stops it.
type ManagedKeys struct {
	store   KeyStore
	sealer  KeySealer
	cfg     ManagedKeysConfig
	clocked bool // cfg.Now was given: read it on every call

	// snap is the current snapshot; it is replaced, never modified.
	snap atomic.Pointer[keySnapshot]
	// cur is the phase of snap at the present moment, with the default
	// clock only; timer moves it on.
	cur atomic.Pointer[keyPhase]

	pmu    sync.Mutex // guards the moves of cur and timer
	timer  *time.Timer
	closed bool

	mu      sync.Mutex  // serializes the store work; guards the fields below
	rows    []StoredKey // of the last successful read
	opened  map[string]*managedKey
	claimed map[string]uint8 // kid → keyClaim bits already claimed
	failing bool             // the last refresh failed
	health  atomic.Pointer[error]

	cancel    context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// managedKey is the opened material of one stored key. Its fields other
// than sealed are set once and read by any goroutine.
type managedKey struct {
	sign   jose.JSONWebKey // the private key, or the HS256 secret
	verify jose.JSONWebKey // the public key, or the HS256 secret
	gen    int64
	alg    string
	sealed []byte // the Sealed it was last opened from; under mu
}

// keySnapshot is what SigningKey and VerificationKeys answer from: the
// keys of one read of the store, as phases in time.
type keySnapshot struct {
	rows   []StoredKey   // as read; for telling whether the next read changed
	keys   []*managedKey // the keys of rows opened, ascending generation
	phases []keyPhase    // ascending from; phases[0].from is zero
}

// keyPhase is the state of the keys from one instant to the next phase.
type keyPhase struct {
	from    time.Time
	signing *jose.JSONWebKey // nil when no key can sign: then err says why
	set     *jose.JSONWebKeySet
	members []*managedKey // of set, for reusing it
	err     error
}

// liveKey is a stored key that is not revoked, with the instants of its
// life that follow from the other keys.
type liveKey struct {
	row      StoredKey
	retireAt time.Time // zero while no later key is published
	deleteAt time.Time // zero while retireAt is
}

// Bits of ManagedKeys.claimed.
const (
	claimedActivated uint8 = 1 << iota
	claimedRetired
	claimedRevoked
)

var (
	errManagedKeysClosed = errors.New("m2mauth: ManagedKeys is closed")
	errEveryKeyRevoked   = errors.New("m2mauth: every managed signing key is revoked")
	errNoKeyOpens        = errors.New("m2mauth: no managed signing key that opens here can sign; is the KEK the one the keys are sealed under?")
)

// NewManagedKeys returns a provider of the keys in store, sealed by
// sealer. It reads the store now, within ctx, and opens every key that
// is not revoked: a key that will not open (another KEK, an altered
// row) is an error naming its kid and the KEK problem, never replaced by
// a new key. A store with no key but revoked ones gets a first key,
// active at once (nothing can have cached an older key set); replicas
// starting together create one between them. A write that fails then
// (the deletion of an old key, the publication of a key that is due)
// does not stop the start: Ping reports it, and the next refresh tries
// again. It then starts the background refresh; Close stops it.
func NewManagedKeys(ctx context.Context, store KeyStore, sealer KeySealer, cfg ManagedKeysConfig) (*ManagedKeys, error) {
	if store == nil {
		return nil, errors.New("m2mauth: nil KeyStore")
	}
	if sealer == nil {
		return nil, errors.New("m2mauth: nil KeySealer")
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	m := &ManagedKeys{
		store:   store,
		sealer:  sealer,
		cfg:     cfg,
		clocked: cfg.Now != nil,
		opened:  make(map[string]*managedKey),
		claimed: make(map[string]uint8),
		done:    make(chan struct{}),
	}
	if !m.clocked {
		m.cfg.Now = time.Now
	}
	m.timer = time.AfterFunc(time.Hour, m.tick)
	m.timer.Stop()
	sctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	m.mu.Lock()
	fatal, err := m.refreshLocked(sctx, true)
	if err != nil && !fatal {
		// The keys work; what failed (a deletion, an audit claim, the
		// next key's publication) is retried by the next refresh.
		m.noteHealth(sctx, err)
	}
	m.mu.Unlock()
	cancel()
	if fatal {
		m.timer.Stop()
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go m.run(rctx)
	return m, nil
}

// check validates cfg and sets its defaults, except Now.
func (cfg *ManagedKeysConfig) check() error {
	switch {
	case cfg.Algorithm == "":
		cfg.Algorithm = defaultManagedKeyAlg
	case !isSupported(cfg.Algorithm):
		return fmt.Errorf("m2mauth: ManagedKeysConfig.Algorithm %q is not supported (supported: %v)", cfg.Algorithm, SupportedAlgorithms())
	}
	switch {
	case cfg.PropagationDelay == 0:
		cfg.PropagationDelay = defaultPropagationDelay
	case cfg.PropagationDelay < 0:
		return fmt.Errorf("m2mauth: ManagedKeysConfig.PropagationDelay %v is negative", cfg.PropagationDelay)
	}
	if cfg.RotationInterval == 0 {
		cfg.RotationInterval = defaultRotationInterval
	}
	if cfg.RotationInterval <= cfg.PropagationDelay {
		return fmt.Errorf("m2mauth: ManagedKeysConfig.RotationInterval %v must exceed PropagationDelay %v", cfg.RotationInterval, cfg.PropagationDelay)
	}
	switch {
	case cfg.MaxTokenTTL == 0:
		cfg.MaxTokenTTL = MaxClientTokenTTL
	case cfg.MaxTokenTTL < time.Second || cfg.MaxTokenTTL > MaxClientTokenTTL:
		return fmt.Errorf("m2mauth: ManagedKeysConfig.MaxTokenTTL %v outside [1s, %v]", cfg.MaxTokenTTL, MaxClientTokenTTL)
	}
	switch {
	case cfg.Leeway == 0:
		cfg.Leeway = RevocationGrace
	case cfg.Leeway < 0:
		return fmt.Errorf("m2mauth: ManagedKeysConfig.Leeway %v is negative", cfg.Leeway)
	}
	switch {
	case cfg.RefreshInterval == 0:
		cfg.RefreshInterval = defaultKeyRefresh
	case cfg.RefreshInterval < minKeyRefresh:
		return fmt.Errorf("m2mauth: ManagedKeysConfig.RefreshInterval %v is under %v", cfg.RefreshInterval, minKeyRefresh)
	}
	if cfg.RefreshInterval >= cfg.PropagationDelay {
		return fmt.Errorf("m2mauth: ManagedKeysConfig.RefreshInterval %v must be under PropagationDelay %v, or replicas may not know a key before it signs", cfg.RefreshInterval, cfg.PropagationDelay)
	}
	switch {
	case cfg.Timeout == 0:
		cfg.Timeout = defaultKeyTimeout
	case cfg.Timeout < 0:
		return fmt.Errorf("m2mauth: ManagedKeysConfig.Timeout %v is negative", cfg.Timeout)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return nil
}

// SigningKey implements [KeyProvider]: the key that signs now, from the
// snapshot. It fails when no key can sign (every key this replica can
// open is revoked or past its deletion) and after Close.
func (m *ManagedKeys) SigningKey(context.Context) (*jose.JSONWebKey, error) {
	p := m.phase()
	if p.signing == nil {
		return nil, p.err
	}
	return p.signing, nil
}

// VerificationKeys implements [KeyProvider]: every key neither revoked
// nor deleted, newest first, from the snapshot; the public halves of
// asymmetric keys. It fails after Close.
func (m *ManagedKeys) VerificationKeys(context.Context) (*jose.JSONWebKeySet, error) {
	p := m.phase()
	if p.set == nil {
		return nil, p.err
	}
	return p.set, nil
}

// NextKeyChange implements [KeySchedule]: the next activation or
// deletion of a key the snapshot holds, after now.
func (m *ManagedKeys) NextKeyChange(context.Context) (time.Time, bool) {
	s := m.snap.Load()
	now := m.cfg.Now()
	for i := 1; i < len(s.phases); i++ {
		if s.phases[i].from.After(now) {
			return s.phases[i].from, true
		}
	}
	return time.Time{}, false
}

// Ping returns nil when the last refresh succeeded, and its error
// otherwise: the store could not be read or written, or a key would not
// open (a replica whose KEK is not the one the keys are sealed under).
// It does no I/O.
func (m *ManagedKeys) Ping(context.Context) error {
	if err := m.health.Load(); err != nil {
		return *err
	}
	return nil
}

// phase returns the phase of the snapshot at the present moment.
func (m *ManagedKeys) phase() *keyPhase {
	if m.clocked {
		return m.snap.Load().at(m.cfg.Now())
	}
	return m.cur.Load()
}

// at returns the phase of s at t.
func (s *keySnapshot) at(t time.Time) *keyPhase {
	for i := len(s.phases) - 1; i > 0; i-- {
		if !t.Before(s.phases[i].from) {
			return &s.phases[i]
		}
	}
	return &s.phases[0]
}

// install makes s the snapshot, and, with the default clock, moves cur
// to its phase of now.
func (m *ManagedKeys) install(s *keySnapshot) {
	m.pmu.Lock()
	defer m.pmu.Unlock()
	if m.closed {
		return
	}
	m.snap.Store(s)
	if !m.clocked {
		m.advanceLocked()
	}
}

// tick is the timer's function: the next phase has begun.
func (m *ManagedKeys) tick() {
	m.pmu.Lock()
	defer m.pmu.Unlock()
	if !m.closed {
		m.advanceLocked()
	}
}

// advanceLocked moves cur to the phase of now and sets the timer for the
// next. The caller holds pmu.
func (m *ManagedKeys) advanceLocked() {
	s := m.snap.Load()
	now := time.Now()
	p := s.at(now)
	m.cur.Store(p)
	m.timer.Stop()
	for i := range s.phases {
		if s.phases[i].from.After(now) {
			// A wall clock set back or forth makes the timer early or
			// late; early, it finds the same phase and waits again.
			m.timer.Reset(s.phases[i].from.Sub(now))
			return
		}
	}
}

// Close stops the background refresh and waits for a refresh in
// progress to end. From then on SigningKey and VerificationKeys fail.
// Closing twice is not an error.
func (m *ManagedKeys) Close() error {
	m.closeOnce.Do(func() {
		m.cancel()
		<-m.done
		closed := &keySnapshot{phases: []keyPhase{{err: errManagedKeysClosed}}}
		m.pmu.Lock()
		m.closed = true
		m.timer.Stop()
		m.snap.Store(closed)
		m.cur.Store(&closed.phases[0])
		m.pmu.Unlock()
	})
	return nil
}

// run refreshes every RefreshInterval until ctx ends.
func (m *ManagedKeys) run(ctx context.Context) {
	defer close(m.done)
	t := time.NewTimer(m.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.Refresh(ctx)
		t.Reset(m.cfg.RefreshInterval)
	}
}

// Refresh reads the keys from the store now, within ctx and Timeout, as
// the background refresh does: it deletes the keys past their deletion
// time, publishes the next key when it is due (or a key active at once
// when every key is revoked), audits activations and retirements, and
// installs the new snapshot. It returns the refresh's error; a failed
// read keeps the snapshot, a key that will not open is left out of it.
func (m *ManagedKeys) Refresh(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := m.refreshLocked(rctx, false)
	if err != nil && ctx.Err() != nil {
		// Cut short by Close or by the caller: says nothing of the store.
		return err
	}
	m.noteHealth(rctx, err)
	return err
}

// noteHealth records the outcome of a refresh for Ping and logs the
// first failure of a run and the recovery. The caller holds mu.
func (m *ManagedKeys) noteHealth(ctx context.Context, err error) {
	if err == nil {
		if m.failing {
			m.failing = false
			m.cfg.Logger.InfoContext(ctx, "m2mauth: managed signing keys refresh again")
		}
		m.health.Store(nil)
		return
	}
	if !m.failing {
		m.failing = true
		m.cfg.Logger.ErrorContext(ctx, "m2mauth: refreshing managed signing keys failed; serving the keys held", "error", err)
	}
	m.health.Store(&err)
}

// refreshLocked reads the store and installs a new snapshot, writing
// what is due first, and returns what failed. A fatal failure installs
// nothing: a failed read, or, at start, a key that will not open
// (reported before anything is written) or no key that can sign. Later
// a key that will not open is left out of the snapshot. The caller
// holds mu.
func (m *ManagedKeys) refreshLocked(ctx context.Context, start bool) (fatal bool, err error) {
	rows, err := m.readKeys(ctx)
	if err != nil {
		return true, err
	}
	openErr := m.openAll(rows)
	if start && openErr != nil {
		return true, openErr
	}
	now := m.cfg.Now()
	var errs []error
	wrote := false

	// Delete the keys past their time.
	live := liveKeys(rows, m.cfg.MaxTokenTTL+m.cfg.Leeway)
	kept := rows[:0:0]
	for _, r := range rows {
		at := deleteAt(r, live, m.cfg.MaxTokenTTL+m.cfg.Leeway)
		if at.IsZero() || now.Before(at) {
			kept = append(kept, r)
			continue
		}
		wrote = true
		deleted, err := m.store.DeleteSigningKey(ctx, r.KID)
		if err != nil {
			errs = append(errs, fmt.Errorf("m2mauth: deleting signing key %q: %w", r.KID, err))
			continue
		}
		if deleted {
			m.cfg.Logger.InfoContext(ctx, "m2mauth: deleted a managed signing key", "kid", r.KID, "generation", r.Generation)
			m.audit(ctx, EventKeyDeleted, r.KID, now)
		}
	}

	// Publish a key when none is left, or the next one when it is due.
	// Not the next one while a live key does not open here: sealed under
	// a KEK this server does not hold (it was not restarted for a KEK
	// rotation), a key it sealed would be under the KEK being left, and
	// undo the rotation. The servers that open every key publish it.
	live = liveKeys(kept, m.cfg.MaxTokenTTL+m.cfg.Leeway)
	var activeAt time.Time
	switch {
	case len(live) == 0:
		activeAt = now
	case openErr == nil && !now.Before(live[len(live)-1].row.ActiveAt.Add(m.cfg.RotationInterval-m.cfg.PropagationDelay)):
		activeAt = now.Add(m.cfg.PropagationDelay)
	}
	if !activeAt.IsZero() {
		wrote = true
		row, added, err := m.publish(ctx, rows, now, activeAt)
		switch {
		case err != nil:
			errs = append(errs, err)
		case added && len(live) == 0 && len(kept) > 0:
			m.cfg.Logger.ErrorContext(ctx, "m2mauth: every managed signing key is revoked; published a new key that signs at once, before verifiers have cached it",
				"kid", row.KID, "generation", row.Generation)
		case added && len(live) == 0:
			m.cfg.Logger.InfoContext(ctx, "m2mauth: published the first managed signing key, active at once",
				"kid", row.KID, "generation", row.Generation)
		case added:
			m.cfg.Logger.InfoContext(ctx, "m2mauth: published the next managed signing key",
				"kid", row.KID, "generation", row.Generation, "active_at", row.ActiveAt)
		}
	}

	if wrote {
		if rows, err = m.readKeys(ctx); err != nil {
			return true, errors.Join(append(errs, err)...)
		}
		openErr = m.openAll(rows)
		if start && openErr != nil {
			return true, openErr
		}
	}
	s := m.build(rows)
	if start && s.at(now).signing == nil {
		return true, errors.Join(append(errs, s.at(now).err)...)
	}
	m.rows = rows
	m.install(s)
	errs = append(errs, m.claimTransitions(ctx, rows, now))
	return false, errors.Join(append(errs, openErr)...)
}

// readKeys reads every stored key.
func (m *ManagedKeys) readKeys(ctx context.Context) ([]StoredKey, error) {
	rows, err := m.store.SigningKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("m2mauth: reading the managed signing keys: %w", err)
	}
	slices.SortFunc(rows, func(a, b StoredKey) int { return cmp.Compare(a.Generation, b.Generation) })
	return rows, nil
}

// openAll opens every key of rows that is not revoked and not opened
// already, and forgets the keys rows no longer hold. A key opened
// already whose Sealed changed (resealed under another KEK) is opened
// again, to find out early whether this replica's sealer can: if not,
// the key held is kept (it is the same key) and the failure returned.
// The caller holds mu.
func (m *ManagedKeys) openAll(rows []StoredKey) error {
	var errs []error
	held := make(map[string]bool, len(rows))
	for _, r := range rows {
		if !r.RevokedAt.IsZero() {
			continue
		}
		held[r.KID] = true
		k := m.opened[r.KID]
		if k != nil && (k.gen != r.Generation || k.alg != r.Algorithm) {
			k = nil // not the key opened under this kid: open it afresh
			delete(m.opened, r.KID)
		}
		if k != nil && bytes.Equal(k.sealed, r.Sealed) {
			continue
		}
		nk, err := openStoredKey(m.sealer, r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if k != nil {
			k.sealed = nk.sealed
			continue
		}
		m.opened[r.KID] = nk
	}
	for kid := range m.opened {
		if !held[kid] {
			delete(m.opened, kid)
		}
	}
	return errors.Join(errs...)
}

// keyAD is the additional data that binds the sealed material of a key
// to its kid, algorithm and generation.
func keyAD(kid, alg string, gen int64) []byte {
	return []byte("m2mauth-key\x00" + kid + "\x00" + alg + "\x00" + strconv.FormatInt(gen, 10))
}

// openStoredKey opens the material of r with sealer and checks it.
func openStoredKey(sealer KeySealer, r StoredKey) (*managedKey, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	plain, err := sealer.Open(r.Sealed, keyAD(r.KID, r.Algorithm, r.Generation))
	if err != nil {
		return nil, fmt.Errorf("m2mauth: managed signing key %q (generation %d) does not open: %w", r.KID, r.Generation, err)
	}
	defer clear(plain)
	k, err := ParseJWK(jose.SignatureAlgorithm(r.Algorithm), plain)
	if err != nil || k.KeyID != r.KID || checkSigningKey(&k) != nil {
		// The cause may quote the material: it is not passed on.
		return nil, fmt.Errorf("m2mauth: managed signing key %q (generation %d): the sealed material is not a %s signing key of that kid", r.KID, r.Generation, r.Algorithm)
	}
	k.Use = "sig"
	mk := &managedKey{sign: k, verify: k, gen: r.Generation, alg: r.Algorithm, sealed: bytes.Clone(r.Sealed)}
	if _, symmetric := k.Key.([]byte); !symmetric {
		mk.verify.Key = publicKey(k.Key)
	}
	return mk, nil
}

// publish creates, seals and stores a key of the generation after the
// highest of rows, published now and active at activeAt, and audits it.
// It reports false when the store held a key of that generation already
// (another replica's). The caller holds mu.
func (m *ManagedKeys) publish(ctx context.Context, rows []StoredKey, now, activeAt time.Time) (StoredKey, bool, error) {
	gen := int64(1)
	if len(rows) > 0 {
		gen = rows[len(rows)-1].Generation + 1
	}
	key, err := GenerateSigningKey(m.cfg.Algorithm)
	if err != nil {
		return StoredKey{}, false, err
	}
	plain, err := key.MarshalJSON()
	if err != nil {
		return StoredKey{}, false, fmt.Errorf("m2mauth: encoding a new %s key failed", m.cfg.Algorithm)
	}
	defer clear(plain)
	row := StoredKey{
		KID:         key.KeyID,
		Algorithm:   string(m.cfg.Algorithm),
		Generation:  gen,
		PublishedAt: now.Round(0),
		ActiveAt:    activeAt.Round(0),
	}
	ad := keyAD(row.KID, row.Algorithm, row.Generation)
	if row.Sealed, err = m.sealer.Seal(plain, ad); err != nil {
		return StoredKey{}, false, fmt.Errorf("m2mauth: sealing a new signing key: %w", err)
	}
	// Never store a key that will not open.
	back, err := m.sealer.Open(row.Sealed, ad)
	if err != nil {
		return StoredKey{}, false, fmt.Errorf("m2mauth: a newly sealed signing key does not open: %w", err)
	}
	same := subtle.ConstantTimeCompare(back, plain) == 1
	clear(back)
	if !same {
		return StoredKey{}, false, errors.New("m2mauth: a newly sealed signing key opens to other bytes; check the KeySealer")
	}
	added, err := m.store.AddSigningKey(ctx, row)
	if err != nil {
		return StoredKey{}, false, fmt.Errorf("m2mauth: storing a new signing key: %w", err)
	}
	if !added {
		return StoredKey{}, false, nil
	}
	m.audit(ctx, EventKeyPublished, row.KID, now)
	return row, true, nil
}

// liveKeys returns the keys of rows (ascending generation) that are
// not revoked, with their retirement and deletion times: a key retires
// when a key of a later generation becomes active, and is deleted grace
// after.
func liveKeys(rows []StoredKey, grace time.Duration) []liveKey {
	var live []liveKey
	for _, r := range rows {
		if r.RevokedAt.IsZero() {
			live = append(live, liveKey{row: r})
		}
	}
	var next time.Time // the earliest ActiveAt of the later keys
	for i := len(live) - 1; i >= 0; i-- {
		if !next.IsZero() {
			live[i].retireAt = next
			live[i].deleteAt = next.Add(grace)
		}
		if next.IsZero() || live[i].row.ActiveAt.Before(next) {
			next = live[i].row.ActiveAt
		}
	}
	return live
}

// deleteAt returns when the key r is to be deleted: grace after its
// retirement, or after its revocation; zero while neither is known.
func deleteAt(r StoredKey, live []liveKey, grace time.Duration) time.Time {
	if !r.RevokedAt.IsZero() {
		return r.RevokedAt.Add(grace)
	}
	for i := range live {
		if live[i].row.KID == r.KID {
			return live[i].deleteAt
		}
	}
	return time.Time{}
}

// build returns the snapshot of rows, with the keys opened. It reuses
// the key sets of the current snapshot that hold the same keys, so
// that callers caching work per set keep it. The caller holds mu.
func (m *ManagedKeys) build(rows []StoredKey) *keySnapshot {
	live := liveKeys(rows, m.cfg.MaxTokenTTL+m.cfg.Leeway)
	var usable []liveKey
	var keys []*managedKey
	for _, l := range live {
		if k := m.opened[l.row.KID]; k != nil {
			usable = append(usable, l)
			keys = append(keys, k)
		}
	}
	prev := m.snap.Load()
	if prev != nil && sameRows(prev.rows, rows) && slices.Equal(prev.keys, keys) {
		return prev
	}
	noKey := errEveryKeyRevoked
	if len(live) > 0 {
		noKey = errNoKeyOpens
	}
	var bounds []time.Time
	for _, u := range usable {
		bounds = append(bounds, u.row.ActiveAt)
		if !u.deleteAt.IsZero() {
			bounds = append(bounds, u.deleteAt)
		}
	}
	slices.SortFunc(bounds, func(a, b time.Time) int { return a.Compare(b) })
	s := &keySnapshot{rows: rows, keys: keys}
	for _, t := range append([]time.Time{{}}, bounds...) {
		p := keyPhase{from: t, err: noKey}
		var signer *liveKey
		for i := len(usable) - 1; i >= 0; i-- {
			u := &usable[i]
			if !u.deleteAt.IsZero() && !t.Before(u.deleteAt) {
				continue
			}
			p.members = append(p.members, m.opened[u.row.KID])
			if signer == nil && !t.Before(u.row.ActiveAt) {
				signer = u
			}
		}
		if signer == nil { // nothing active yet: the earliest signs
			for i := len(usable) - 1; i >= 0; i-- {
				u := &usable[i]
				if (u.deleteAt.IsZero() || t.Before(u.deleteAt)) && (signer == nil || !signer.row.ActiveAt.Before(u.row.ActiveAt)) {
					signer = u
				}
			}
		}
		if signer != nil {
			p.signing, p.err = &m.opened[signer.row.KID].sign, nil
		}
		if n := len(s.phases); n > 0 && s.phases[n-1].signing == p.signing && slices.Equal(s.phases[n-1].members, p.members) {
			continue // no change at t
		}
		p.set = findSet(p.members, s, prev)
		s.phases = append(s.phases, p)
	}
	return s
}

// findSet returns the key set of members from the phases of s or prev,
// or a new one.
func findSet(members []*managedKey, s, prev *keySnapshot) *jose.JSONWebKeySet {
	for _, snap := range [...]*keySnapshot{s, prev} {
		if snap == nil {
			continue
		}
		for i := range snap.phases {
			if p := &snap.phases[i]; p.set != nil && slices.Equal(p.members, members) {
				return p.set
			}
		}
	}
	set := &jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, len(members))}
	for i, k := range members {
		set.Keys[i] = k.verify
	}
	return set
}

// sameRows reports whether two reads of the store hold the same keys.
func sameRows(a, b []StoredKey) bool {
	return slices.EqualFunc(a, b, func(x, y StoredKey) bool {
		return x.KID == y.KID && x.Algorithm == y.Algorithm && x.Generation == y.Generation &&
			x.PublishedAt.Equal(y.PublishedAt) && x.ActiveAt.Equal(y.ActiveAt) &&
			x.RevokedAt.Equal(y.RevokedAt) && bytes.Equal(x.Sealed, y.Sealed)
	})
}

// claimTransitions audits the activations and retirements that have
// happened by now, each once for the fleet (see
// [KeyStore.ClaimKeyEvent]), and the revocations that Revoke could not
// claim (the store failing just then, or the process ending). The caller
// holds mu.
func (m *ManagedKeys) claimTransitions(ctx context.Context, rows []StoredKey, now time.Time) error {
	grace := m.cfg.MaxTokenTTL + m.cfg.Leeway
	live := liveKeys(rows, grace)
	var errs []error
	claimed := make(map[string]uint8, len(rows))
	for _, r := range rows {
		bits := m.claimed[r.KID]
		if r.RevokedAt.IsZero() || bits&claimedRevoked != 0 {
			continue
		}
		first, err := m.store.ClaimKeyEvent(ctx, r.KID, EventKeyRevoked)
		if err != nil {
			errs = append(errs, fmt.Errorf("m2mauth: claiming the %s event of signing key %q: %w", EventKeyRevoked, r.KID, err))
			continue
		}
		claimed[r.KID] = bits | claimedRevoked
		if first {
			m.audit(ctx, EventKeyRevoked, r.KID, r.RevokedAt)
		}
	}
	for _, r := range rows {
		if bits := m.claimed[r.KID]; bits&claimedRevoked != 0 {
			claimed[r.KID] |= bits
		}
	}
	var activated map[string]time.Time // made when needed: a replay
	for _, l := range live {
		kid := l.row.KID
		bits := m.claimed[kid] | claimed[kid]
		activeAt := l.row.ActiveAt
		if bits&claimedActivated == 0 {
			if activated == nil {
				activated = activations(rows, now, grace)
			}
			activeAt = activated[kid]
		}
		for _, c := range [...]struct {
			bit uint8
			typ AuditEventType
			at  time.Time
		}{{claimedActivated, EventKeyActivated, activeAt}, {claimedRetired, EventKeyRetired, l.retireAt}} {
			if bits&c.bit != 0 || c.at.IsZero() || now.Before(c.at) {
				continue
			}
			first, err := m.store.ClaimKeyEvent(ctx, kid, c.typ)
			if err != nil {
				errs = append(errs, fmt.Errorf("m2mauth: claiming the %s event of signing key %q: %w", c.typ, kid, err))
				continue
			}
			bits |= c.bit
			if first {
				m.audit(ctx, c.typ, kid, c.at)
			}
		}
		claimed[kid] = bits
	}
	m.claimed = claimed
	return errors.Join(errs...)
}

// audit sends an event of a key to the Auditor, if any.
func (m *ManagedKeys) audit(ctx context.Context, typ AuditEventType, kid string, at time.Time) {
	if m.cfg.Auditor != nil {
		m.cfg.Auditor.Audit(ctx, AuditEvent{Time: at, Type: typ, Reason: auditString(kid)})
	}
}

// Rotate publishes a new key now, of the generation after the highest
// stored, active PropagationDelay from now, and returns it; if another
// replica published a key of that generation first, it returns that
// one. Either way the key is in this replica's verification keys at
// once, and in the other replicas' within their RefreshInterval. The
// key signs only from its ActiveAt.
func (m *ManagedKeys) Rotate(ctx context.Context) (ManagedKeyInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rows, err := m.readKeys(ctx)
	if err != nil {
		return ManagedKeyInfo{}, err
	}
	now := m.cfg.Now()
	row, added, err := m.publish(ctx, rows, now, now.Add(m.cfg.PropagationDelay))
	if err != nil {
		return ManagedKeyInfo{}, err
	}
	gen := row.Generation
	if !added {
		gen = 1
		if len(rows) > 0 {
			gen = rows[len(rows)-1].Generation + 1
		}
	} else {
		m.cfg.Logger.InfoContext(ctx, "m2mauth: published a new managed signing key",
			"kid", row.KID, "generation", row.Generation, "active_at", row.ActiveAt)
	}
	// The key is stored: a failure of the refresh that follows is the
	// background's to report, unless the key cannot be found at all.
	_, rerr := m.refreshLocked(ctx, false)
	m.noteHealth(ctx, rerr)
	for _, info := range keyInfos(m.rows, now, m.cfg.MaxTokenTTL+m.cfg.Leeway) {
		if info.Generation == gen {
			return info, nil
		}
	}
	if rerr != nil {
		return ManagedKeyInfo{}, fmt.Errorf("m2mauth: a signing key of generation %d is stored, but reading it back failed: %w", gen, rerr)
	}
	return ManagedKeyInfo{}, fmt.Errorf("m2mauth: the signing key of generation %d is not in the store any more", gen)
}

// Revoke revokes the key kid at once, on every replica within its
// RefreshInterval and on this one now: it neither signs nor verifies
// from then on, and leaves the key set. See [ManagedKeys] for which key
// signs next. It returns an error wrapping [ErrKeyNotFound] for a kid
// the store does not hold.
func (m *ManagedKeys) Revoke(ctx context.Context, kid string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.cfg.Now()
	if err := m.store.RevokeSigningKey(ctx, kid, now); err != nil {
		return fmt.Errorf("m2mauth: revoking signing key %q: %w", kid, err)
	}
	m.cfg.Logger.WarnContext(ctx, "m2mauth: revoked a managed signing key", "kid", kid)
	// This replica stops using the key now, whether or not the store can
	// be read back below.
	if i := slices.IndexFunc(m.rows, func(r StoredKey) bool { return r.KID == kid }); i >= 0 && m.rows[i].RevokedAt.IsZero() {
		rows := slices.Clone(m.rows)
		rows[i].RevokedAt = now
		m.rows = rows
		m.install(m.build(rows))
	}
	first, err := m.store.ClaimKeyEvent(ctx, kid, EventKeyRevoked)
	switch {
	case err != nil:
		// The next refresh of any replica claims and audits it.
		m.cfg.Logger.ErrorContext(ctx, "m2mauth: the revocation of a signing key is not audited yet; the next key refresh will", "kid", kid, "error", err)
	case first:
		m.audit(ctx, EventKeyRevoked, kid, now)
		fallthrough
	default:
		m.claimed[kid] |= claimedRevoked
	}
	_, err = m.refreshLocked(ctx, false)
	m.noteHealth(ctx, err)
	if err != nil {
		return fmt.Errorf("m2mauth: signing key %q is revoked, but refreshing the keys failed: %w", kid, err)
	}
	return nil
}

// KeyState is where a managed signing key is in its life.
type KeyState string

// States of a managed signing key.
const (
	// KeyStatePublished: in the key set, not signing yet.
	KeyStatePublished KeyState = "published"
	// KeyStateActive: the key that signs.
	KeyStateActive KeyState = "active"
	// KeyStateRetired: a later key signs; in the key set until it is
	// deleted.
	KeyStateRetired KeyState = "retired"
	// KeyStateRevoked: neither signs nor verifies; deleted later.
	KeyStateRevoked KeyState = "revoked"
)

// ManagedKeyInfo describes one managed signing key, without its
// material.
type ManagedKeyInfo struct {
	KID        string
	Algorithm  string
	Generation int64
	State      KeyState
	// PublishedAt is when the key entered the key set.
	PublishedAt time.Time
	// ActiveAt is when it starts, or started, signing: its scheduled
	// activation, or, for a key that took over ahead of it when the key
	// signing was revoked, that revocation (told while the revoked key's
	// row is kept, MaxTokenTTL plus Leeway after the revocation; the
	// scheduled activation after that).
	ActiveAt time.Time
	// RetireAt is when a later key takes over: zero while none is
	// published. It may be in the future.
	RetireAt time.Time
	// DeleteAt is when the key leaves the key set and the store: zero
	// while unknown. It may be in the past for a key the next refresh
	// deletes.
	DeleteAt time.Time
	// RevokedAt is when the key was revoked, or zero.
	RevokedAt time.Time
}

// Keys reads every key from the store and describes it, in ascending
// generation, with its state at Now.
func (m *ManagedKeys) Keys(ctx context.Context) ([]ManagedKeyInfo, error) {
	rows, err := m.readKeys(ctx)
	if err != nil {
		return nil, err
	}
	return keyInfos(rows, m.cfg.Now(), m.cfg.MaxTokenTTL+m.cfg.Leeway), nil
}

// keyInfos describes rows at now.
func keyInfos(rows []StoredKey, now time.Time, grace time.Duration) []ManagedKeyInfo {
	live := liveKeys(rows, grace)
	signing := signingKey(live, now)
	activated := activations(rows, now, grace)
	out := make([]ManagedKeyInfo, 0, len(rows))
	for _, r := range rows {
		info := ManagedKeyInfo{
			KID: r.KID, Algorithm: r.Algorithm, Generation: r.Generation,
			PublishedAt: r.PublishedAt, ActiveAt: r.ActiveAt, RevokedAt: r.RevokedAt,
			DeleteAt: deleteAt(r, live, grace),
		}
		i := slices.IndexFunc(live, func(l liveKey) bool { return l.row.KID == r.KID })
		switch {
		case !r.RevokedAt.IsZero():
			info.State = KeyStateRevoked
		case i == signing:
			info.State = KeyStateActive
		case now.Before(r.ActiveAt) && (live[i].retireAt.IsZero() || now.Before(live[i].retireAt)):
			info.State = KeyStatePublished
		default:
			info.State = KeyStateRetired
		}
		if i >= 0 {
			info.RetireAt = live[i].retireAt
			info.ActiveAt = activated[r.KID]
		}
		out = append(out, info)
	}
	return out
}

// signingKey returns the index in live of the key that signs at now, by
// the rule of ManagedKeys, or -1 if none does: the latest active key
// still held, else, when no key held is active yet, the earliest to be.
func signingKey(live []liveKey, now time.Time) int {
	signing := -1
	for i := len(live) - 1; i >= 0; i-- {
		if !live[i].deleteAt.IsZero() && !now.Before(live[i].deleteAt) {
			continue
		}
		if !now.Before(live[i].row.ActiveAt) {
			return i
		}
		if signing < 0 || !live[signing].row.ActiveAt.Before(live[i].row.ActiveAt) {
			signing = i
		}
	}
	return signing
}

// activations returns, for each key of rows that is not revoked, when
// it starts, or started, signing: the first instant by now at which it
// was the key that signs, as the rows tell (see signedFrom); or, if it has
// not signed yet, its ActiveAt. A key that signed ahead of its ActiveAt
// (the one that signed was revoked) is told apart from its schedule so.
func activations(rows []StoredKey, now time.Time, grace time.Duration) map[string]time.Time {
	at := signedFrom(rows, now, grace)
	for _, r := range rows {
		if _, ok := at[r.KID]; !ok && r.RevokedAt.IsZero() {
			at[r.KID] = r.ActiveAt
		}
	}
	return at
}

// signedFrom replays the rows up to now: at each instant something
// changed (a key published, active by its schedule, revoked, or deleted
// grace after its retirement), it finds the key that signs by the rule of
// ManagedKeys among the keys as they were then, and returns the first
// instant each key was that key. A key counts as signing ahead of its
// ActiveAt only from a revocation or a deletion, what makes a key take
// over: a key the rows show alone at its publication, because the rows of
// the keys before it are gone (deleted), is not taken to have signed
// then. A revocation stamped after now (by a replica whose clock is
// ahead) has happened all the same: the replay goes on to it.
func signedFrom(rows []StoredKey, now time.Time, grace time.Duration) map[string]time.Time {
	var instants []time.Time
	causes := make(map[int64]bool) // instants (ns) at which a key may take over
	for _, r := range rows {
		instants = append(instants, r.PublishedAt, r.ActiveAt, r.ActiveAt.Add(grace))
		causes[r.ActiveAt.Add(grace).UnixNano()] = true
		if !r.RevokedAt.IsZero() {
			instants = append(instants, r.RevokedAt)
			causes[r.RevokedAt.UnixNano()] = true
			if r.RevokedAt.After(now) {
				now = r.RevokedAt
			}
		}
	}
	slices.SortFunc(instants, func(a, b time.Time) int { return a.Compare(b) })
	instants = slices.CompactFunc(instants, time.Time.Equal)
	first := make(map[string]time.Time, len(rows))
	then := make([]StoredKey, 0, len(rows))
	for _, t := range instants {
		if t.After(now) {
			break
		}
		then = then[:0]
		for _, r := range rows {
			if r.PublishedAt.After(t) || !r.RevokedAt.IsZero() && !t.Before(r.RevokedAt) {
				continue
			}
			r.RevokedAt = time.Time{} // not yet at t
			then = append(then, r)
		}
		live := liveKeys(then, grace)
		s := signingKey(live, t)
		if s < 0 {
			continue
		}
		k := live[s].row
		if _, ok := first[k.KID]; ok || t.Before(k.ActiveAt) && !causes[t.UnixNano()] {
			continue
		}
		first[k.KID] = t
	}
	return first
}

// ResealKeys seals every key of store again with to, from what from
// opens, in one all-or-nothing [KeyStore.ResealSigningKeys], and returns
// how many keys it resealed. It is the middle step of a KEK rotation:
// first give every replica a sealer that opens under both KEKs and
// seals under the new one (NewAESKeySealer(newKEK, oldKEK)), then call
// ResealKeys with that sealer as both from and to, then drop the old
// KEK. Every key that is not revoked must open; revoked keys that do
// not are left as they are (they are never opened again). Each new
// ciphertext is checked to open before anything is written. Replicas
// that hold the keys keep them, and see the resealed rows at their next
// refresh.
func ResealKeys(ctx context.Context, store KeyStore, from, to KeySealer) (int, error) {
	if store == nil || from == nil || to == nil {
		return 0, errors.New("m2mauth: ResealKeys needs a KeyStore and two KeySealers")
	}
	rows, err := store.SigningKeys(ctx)
	if err != nil {
		return 0, fmt.Errorf("m2mauth: reading the managed signing keys: %w", err)
	}
	sealed := make(map[string][]byte, len(rows))
	for _, r := range rows {
		ad := keyAD(r.KID, r.Algorithm, r.Generation)
		plain, err := from.Open(r.Sealed, ad)
		if err != nil {
			if !r.RevokedAt.IsZero() {
				continue
			}
			return 0, fmt.Errorf("m2mauth: managed signing key %q (generation %d) does not open: %w", r.KID, r.Generation, err)
		}
		b, err := to.Seal(plain, ad)
		if err == nil {
			var back []byte
			back, err = to.Open(b, ad)
			if err == nil && subtle.ConstantTimeCompare(back, plain) != 1 {
				err = errors.New("it opens to other bytes")
			}
			clear(back)
		}
		clear(plain)
		if err != nil {
			return 0, fmt.Errorf("m2mauth: resealing signing key %q: %w", r.KID, err)
		}
		sealed[r.KID] = b
	}
	if len(sealed) == 0 {
		return 0, nil
	}
	if err := store.ResealSigningKeys(ctx, sealed); err != nil {
		return 0, fmt.Errorf("m2mauth: storing the resealed signing keys: %w", err)
	}
	return len(sealed), nil
}

var (
	_ KeyProvider = (*ManagedKeys)(nil)
	_ KeySchedule = (*ManagedKeys)(nil)
	_ Pinger      = (*ManagedKeys)(nil)
)
