// Package memstore provides an in-memory [m2mauth.ClientManager],
// [m2mauth.Revoker] and [m2mauth.KeyStore]: the store for tests, examples
// and single-instance servers whose clients are configured at start-up.
//
// A Store is safe for concurrent use. It never keeps a reference to a
// Client a caller gave it, and [Store.Client] returns a deep copy, so
// callers cannot change its state behind its back. [Store.SharedClient]
// returns a Client shared, read-only, by every caller.
//
// A Store is also its own [m2mauth.RevocationSource]: a [m2mauth.Validator]
// given it as its revocation source refuses a revoked token as soon as the
// call that revoked it returns. Nothing is shared between processes; a
// fleet of replicas needs a shared store such as sqlstore.
//
// Given an auditor with [WithAuditor], a Store reports every change made
// through its [m2mauth.ClientManager] and [m2mauth.Revoker] methods;
// [Store] lists the events.
package memstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/m2mauth/m2mauth"
)

// Store is an in-memory client store that keeps revocations. The zero
// value is not usable; call [New].
//
// # Concurrency
//
// A Store is safe for concurrent use. Reads of clients share a read lock;
// changes take it exclusively, for a time that does not depend on the
// number of clients or revocations, except for an occasional sweep of dead
// revocations (amortised over the writes that made them). The first
// CurrentRevocations after a change also takes it, to rebuild the
// snapshot in time proportional to the number of revocations.
//
// # Memory
//
// Clients are kept encoded, in storage the garbage collector need not
// trace: a client with one secret and one audience takes about 220 bytes,
// and a million of them add next to nothing to the cost of a collection,
// so they do not slow down the requests of the process that holds them.
// [Store.Client] and [Store.ListClients] decode a fresh copy on every
// call. [Store.SharedClient], which the token handler uses, keeps the
// clients it decoded last, up to 1024 of them, and answers from one while
// the client's record is unchanged. A client's times come back as the
// same instants, in UTC or Local if they were stored so, else in a fixed
// zone of the same name and offset; none keeps a monotonic clock reading.
//
// # Revocations
//
// Every change is immediate within the process: once RevokeToken,
// RevokeClientTokens, RevokeAllTokens, or a SetDisabled, UpdateClient or
// DeleteClient that revokes, returns, [Store.Revocations],
// [Store.RevocationsSince] and [Store.CurrentRevocations] reflect it.
// Every change makes the Version greater (see [Store.RevocationsSince]).
// CurrentRevocations answers from an immutable snapshot with two atomic
// loads and a read of the clock, without locking or allocating; the first
// call after a change rebuilds the snapshot, so a burst of revocations
// costs one rebuild, not one each.
//
// The watermark of a client is set to the Store's clock's now by
// [Store.RevokeClientTokens], by SetDisabled(true) (every time, even on a
// client already disabled), by an UpdateClient that turns Disabled on, and
// by DeleteClient; it outlives the client, so tokens issued before a
// deletion stay revoked if the id is registered again. Re-enabling a
// client leaves it: the old tokens stay revoked, and tokens issued from
// the next second on are valid. A client created with a TokensRevokedAt
// gets that watermark (capped at now); UpdateClient leaves TokensRevokedAt
// as stored.
//
// Memory stays bounded by the live entries: token ids whose expiry plus
// [m2mauth.RevocationGrace] has passed, and watermarks older than
// [m2mauth.MaxClientTokenTTL] plus that grace, are dropped when the
// snapshot is rebuilt and, amortised, as more revocations are written.
//
// # Audit events
//
// With [WithAuditor], every successful change sends the auditor the
// events below, after the change is made and before the method returns;
// a call that fails sends none. Each event has the Time of the change
// (the Store's clock, as for UpdatedAt), its Type, the ClientID, the
// SecretID where one is concerned, and a Reason naming the fields whose
// value the call changed, comma-separated in the order of
// [m2mauth.Client]'s fields ("grants", "public", "disabled",
// "token_ttl", "introspect"), or empty when it changed none. No event
// holds a secret, a hash or a token id.
//
//   - CreateClient: [m2mauth.EventClientCreated], Reason naming the
//     fields set to other than their zero value, then one
//     [m2mauth.EventSecretAdded] for each of the client's secrets.
//   - UpdateClient: [m2mauth.EventClientUpdated]; and when Disabled
//     changed, [m2mauth.EventClientDisabled] or [m2mauth.EventClientEnabled]
//     too, with Reason "disabled"; when it turned Disabled on, then
//     [m2mauth.EventTokensRevoked] with Reason "disabled".
//   - AddSecret: [m2mauth.EventSecretAdded].
//   - ExpireSecret: [m2mauth.EventSecretExpiring], Reason "expires_at"
//     when it set a new expiry, "expires_at_removed" when it removed one,
//     empty when the expiry was already as asked.
//   - RemoveSecret: [m2mauth.EventSecretRemoved].
//   - SetDisabled: [m2mauth.EventClientDisabled] or
//     [m2mauth.EventClientEnabled], Reason "disabled" when the client was
//     not already so; when disabling, then [m2mauth.EventTokensRevoked]
//     with Reason "disabled".
//   - DeleteClient: [m2mauth.EventClientDeleted], then
//     [m2mauth.EventTokensRevoked] with Reason "deleted".
//   - RevokeClientTokens: [m2mauth.EventTokensRevoked], Reason "revoke".
//   - RevokeAllTokens: [m2mauth.EventTokensRevoked] with an empty
//     ClientID and Reason "revoke_all".
//   - RevokeToken: none; the revocation endpoint audits it.
//
// The Time of an [m2mauth.EventTokensRevoked] is when the change was made,
// by the Store's clock: the watermark it set, unless a later one was set
// already (by a clock that has since stepped back), which stays.
//
// The auditor is called without the Store's lock held, so it may read
// the Store; events of concurrent changes may reach it out of order
// (their Time keeps it).
type Store struct {
	now     func() time.Time
	auditor m2mauth.Auditor // nil for none
	mu      sync.RWMutex
	clients clientTable // guarded by mu
	rev     revocations // guarded by mu

	// snap is the snapshot CurrentRevocations hands out; stale is set
	// (with mu held) by every change to rev, and cleared when snap is
	// rebuilt from it (with mu held). stale is allocated on its own, so
	// that the expiry timer, which holds it, does not hold the Store.
	snap  atomic.Pointer[published]
	stale *atomic.Bool
	// clocked is true when the clock is the host's (WithClock): then
	// CurrentRevocations reads it to see dead entries. On the real clock
	// a timer marks the snapshot stale instead, so that a validation
	// reads no clock here.
	clocked bool
	expiry  *time.Timer // guarded by mu

	keys keyring // managed signing keys, under their own lock (keys.go)

	// lent holds clients SharedClient decoded, each in the place the hash
	// of its id picks; an entry answers for as long as its encoding is
	// the client's record.
	lent [lentSlots]atomic.Pointer[decodedClient]
}

// lentSlots is the number of decoded clients a Store keeps for
// SharedClient, a power of two.
const lentSlots = 1024

// Option configures a [Store].
type Option func(*Store)

// WithClock sets the clock used for CreatedAt, UpdatedAt, audit events,
// watermarks, and to tell which revocations are dead. Default: [time.Now].
func WithClock(now func() time.Time) Option {
	return func(s *Store) { s.now, s.clocked = now, true }
}

// WithAuditor sets the auditor that receives an event for every change
// made through the Store's [m2mauth.ClientManager] methods (see [Store]).
// Default: none.
func WithAuditor(a m2mauth.Auditor) Option {
	return func(s *Store) { s.auditor = a }
}

// New returns an empty store.
func New(opts ...Option) *Store {
	s := &Store{now: time.Now, clients: newClientTable(), rev: newRevocations(), stale: new(atomic.Bool)}
	for _, o := range opts {
		o(s)
	}
	s.snap.Store(emptyPublished())
	// Even with nothing revoked, a Version above any a previous run of
	// this process published (see nextVersion).
	s.rev.version = nextVersion(0, s.now())
	s.stale.Store(true)
	return s
}

var _ m2mauth.ClientManager = (*Store)(nil)

// Client returns a copy of the client with the given id, or an error
// wrapping [m2mauth.ErrClientNotFound].
func (s *Store) Client(_ context.Context, id string) (*m2mauth.Client, error) {
	s.mu.RLock()
	rec, ok := s.clients.get(id)
	var enc string
	if ok {
		enc = string(rec) // the copy the Client's strings share
	}
	s.mu.RUnlock()
	if !ok {
		return nil, notFound(id)
	}
	return decodeClient(enc), nil
}

// SharedClient returns the client with the given id, as [Store.Client]
// does, but shared with other callers, who must not modify it: the
// client decoded by an earlier call, when the client has not changed
// since, and without a copy. See [m2mauth.ClientSharer].
func (s *Store) SharedClient(_ context.Context, id string) (*m2mauth.Client, error) {
	s.mu.RLock()
	r, h, ok := s.clients.refHash(id)
	if !ok {
		s.mu.RUnlock()
		return nil, notFound(id)
	}
	rec := s.clients.record(r)
	slot := &s.lent[h&(lentSlots-1)]
	if d := slot.Load(); d != nil && d.enc == string(rec) {
		// The same encoding decodes to the same client.
		s.mu.RUnlock()
		return &d.c, nil
	}
	enc := string(rec)
	s.mu.RUnlock()
	d := decodeRecord(enc)
	slot.Store(d)
	return &d.c, nil
}

// SharingStore returns s: see [m2mauth.ClientSharer].
func (s *Store) SharingStore() m2mauth.ClientStore { return s }

// CreateClient stores a copy of c. A non-zero TokensRevokedAt is kept as
// given, and sets the client's watermark to it (or to now, if it is later)
// unless the watermark is already later. A client registered under the id
// of a deleted one starts with the deleted one's watermark as its
// TokensRevokedAt when that is later and still live, as in sqlstore.
func (s *Store) CreateClient(ctx context.Context, c *m2mauth.Client) error {
	if c == nil {
		return fmt.Errorf("memstore: nil client")
	}
	if err := c.Validate(); err != nil {
		return err
	}
	cp := c.Clone()
	now := s.now()
	if cp.CreatedAt.IsZero() {
		cp.CreatedAt = now
	}
	if cp.UpdatedAt.IsZero() {
		cp.UpdatedAt = now
	}
	given := cp.TokensRevokedAt
	s.mu.Lock()
	if _, ok := s.clients.get(c.ID); ok {
		s.mu.Unlock()
		return fmt.Errorf("memstore: %q: %w", c.ID, m2mauth.ErrClientExists)
	}
	// A watermark outlives its client: a client registered again under
	// the id of a deleted one starts with it, so that the token handler
	// waits it out and no token of the new client is born revoked.
	if old := s.rev.clients[cp.ID]; old.After(cp.TokensRevokedAt) && m2mauth.WatermarkLive(old, now) {
		cp.TokensRevokedAt = old
	}
	s.clients.put(c.ID, encodeClient(nil, cp))
	if at := given; !at.IsZero() {
		if at.After(now) {
			at = now
		}
		if m2mauth.WatermarkLive(at, now) && at.After(s.rev.clients[cp.ID]) {
			s.rev.clients[cp.ID] = at
			s.changedLocked(now)
		}
	}
	s.mu.Unlock()

	events := []m2mauth.AuditEvent{event(now, m2mauth.EventClientCreated, cp.ID, "", m2mauth.ChangedFields(&m2mauth.Client{}, cp))}
	for _, sec := range cp.Secrets {
		events = append(events, event(now, m2mauth.EventSecretAdded, cp.ID, sec.ID, ""))
	}
	s.audit(ctx, events)
	return nil
}

// UpdateClient replaces the grants, Public, Disabled, TokenTTL and
// CanIntrospect of an existing client. When it turns Disabled on, it
// revokes the client's tokens as [Store.RevokeClientTokens] does. A c
// with an UpdatedAt is written only over the client as it was then (see
// [m2mauth.ClientManager.UpdateClient]).
func (s *Store) UpdateClient(ctx context.Context, c *m2mauth.Client) error {
	if c == nil {
		return fmt.Errorf("memstore: nil client")
	}
	return s.modify(ctx, c.ID, func(cur *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		if !c.UpdatedAt.IsZero() && c.UpdatedAt.UnixMicro() != cur.UpdatedAt.UnixMicro() {
			return nil, fmt.Errorf("memstore: client %q: %w", c.ID, m2mauth.ErrClientChanged)
		}
		next := c.Clone()
		next.Secrets, next.CreatedAt, next.TokensRevokedAt = cur.Secrets, cur.CreatedAt, cur.TokensRevokedAt
		if err := next.Validate(); err != nil {
			return nil, err
		}
		events := []m2mauth.AuditEvent{event(now, m2mauth.EventClientUpdated, cur.ID, "", m2mauth.ChangedFields(cur, next))}
		if next.Disabled != cur.Disabled {
			events = append(events, event(now, disabledEvent(next.Disabled), cur.ID, "", "disabled"))
		}
		if next.Disabled && !cur.Disabled {
			next.TokensRevokedAt = s.watermarkLocked(cur.ID, now)
			events = append(events, event(now, m2mauth.EventTokensRevoked, cur.ID, "", "disabled"))
		}
		*cur = *next
		return events, nil
	})
}

// AddSecret adds a secret to a client.
func (s *Store) AddSecret(ctx context.Context, clientID string, sec m2mauth.Secret) error {
	return s.modify(ctx, clientID, func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		c.Secrets = append(c.Secrets, sec)
		if err := c.Validate(); err != nil {
			return nil, err
		}
		return []m2mauth.AuditEvent{event(now, m2mauth.EventSecretAdded, clientID, sec.ID, "")}, nil
	})
}

// RotateSecret adds sec to a client, as [Store.AddSecret] does, and in
// the same change makes each of its other secrets expire at
// othersExpireAt, unless it expires earlier already: a rotation never
// lengthens a secret's life, so one with a long grace period run beside
// one with none (a leaked secret) cannot revive the leaked secret, and
// a rotation that fails changes nothing. It sends
// [m2mauth.EventSecretAdded], then an [m2mauth.EventSecretExpiring] for
// each secret whose expiry it moved.
func (s *Store) RotateSecret(ctx context.Context, clientID string, sec m2mauth.Secret, othersExpireAt time.Time) error {
	if othersExpireAt.IsZero() {
		return errors.New("memstore: RotateSecret needs the time the other secrets expire")
	}
	return s.modify(ctx, clientID, func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		others := len(c.Secrets)
		c.Secrets = append(c.Secrets, sec)
		if err := c.Validate(); err != nil {
			return nil, err
		}
		events := []m2mauth.AuditEvent{event(now, m2mauth.EventSecretAdded, clientID, sec.ID, "")}
		for i := range c.Secrets[:others] {
			o := &c.Secrets[i]
			if !o.ExpiresAt.IsZero() && !o.ExpiresAt.After(othersExpireAt) {
				continue
			}
			events = append(events, event(now, m2mauth.EventSecretExpiring, clientID, o.ID, m2mauth.ExpiryChange(o.ExpiresAt, othersExpireAt)))
			o.ExpiresAt = othersExpireAt
		}
		return events, nil
	})
}

// ExpireSecret sets the expiry of one secret; a zero time removes it.
func (s *Store) ExpireSecret(ctx context.Context, clientID, secretID string, at time.Time) error {
	return s.modify(ctx, clientID, func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		i := secretIndex(c, secretID)
		if i < 0 {
			return nil, fmt.Errorf("memstore: %q: %w", secretID, m2mauth.ErrSecretNotFound)
		}
		reason := m2mauth.ExpiryChange(c.Secrets[i].ExpiresAt, at)
		c.Secrets[i].ExpiresAt = at
		return []m2mauth.AuditEvent{event(now, m2mauth.EventSecretExpiring, clientID, secretID, reason)}, nil
	})
}

// RemoveSecret deletes one secret.
func (s *Store) RemoveSecret(ctx context.Context, clientID, secretID string) error {
	return s.modify(ctx, clientID, func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		i := secretIndex(c, secretID)
		if i < 0 {
			return nil, fmt.Errorf("memstore: %q: %w", secretID, m2mauth.ErrSecretNotFound)
		}
		c.Secrets = append(c.Secrets[:i], c.Secrets[i+1:]...)
		return []m2mauth.AuditEvent{event(now, m2mauth.EventSecretRemoved, clientID, secretID, "")}, nil
	})
}

// SetDisabled disables or re-enables a client. Disabling it, even when it
// is disabled already, also revokes its tokens as
// [Store.RevokeClientTokens] does; re-enabling it leaves them revoked.
func (s *Store) SetDisabled(ctx context.Context, clientID string, disabled bool) error {
	return s.modify(ctx, clientID, func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error) {
		reason := ""
		if c.Disabled != disabled {
			reason = "disabled"
		}
		c.Disabled = disabled
		events := []m2mauth.AuditEvent{event(now, disabledEvent(disabled), clientID, "", reason)}
		if disabled {
			c.TokensRevokedAt = s.watermarkLocked(clientID, now)
			events = append(events, event(now, m2mauth.EventTokensRevoked, clientID, "", "disabled"))
		}
		return events, nil
	})
}

// DeleteClient removes a client and revokes every token issued to it so
// far; the revocation outlives the client.
func (s *Store) DeleteClient(ctx context.Context, clientID string) error {
	s.mu.Lock()
	if !s.clients.remove(clientID) {
		s.mu.Unlock()
		return notFound(clientID)
	}
	now := s.now()
	s.watermarkLocked(clientID, now)
	s.mu.Unlock()
	s.audit(ctx, []m2mauth.AuditEvent{
		event(now, m2mauth.EventClientDeleted, clientID, "", ""),
		event(now, m2mauth.EventTokensRevoked, clientID, "", "deleted"),
	})
	return nil
}

// ListClients returns up to limit clients with ids greater than after, in
// ascending id order; limit <= 0 means 100.
func (s *Store) ListClients(_ context.Context, after string, limit int) ([]*m2mauth.Client, error) {
	if limit <= 0 {
		limit = 100
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	// The limit smallest ids above after, found in one pass that keeps at
	// most 2*limit of them.
	var ids []string
	cut := "" // with len(ids) == limit, no id from cut on can be in the page
	s.clients.each(func(id []byte) {
		if string(id) <= after || (cut != "" && string(id) >= cut) {
			return
		}
		ids = append(ids, string(id))
		if len(ids) == 2*limit {
			sort.Strings(ids)
			ids, cut = ids[:limit], ids[limit-1]
		}
	})
	sort.Strings(ids)
	if len(ids) > limit {
		ids = ids[:limit]
	}
	out := make([]*m2mauth.Client, len(ids))
	for i, id := range ids {
		rec, _ := s.clients.get(id)
		out[i] = decodeClient(string(rec))
	}
	return out, nil
}

// modify applies f to a copy of the stored client and stores the copy only
// if f succeeds, so a failed change leaves nothing behind; f runs with s.mu
// held, and may change the revocations once it cannot fail. now is the
// time of the change and the new UpdatedAt, unless that is not a
// microsecond past the last one. The events f returns go to the auditor
// once the copy is stored and the lock released.
func (s *Store) modify(ctx context.Context, id string,
	f func(c *m2mauth.Client, now time.Time) ([]m2mauth.AuditEvent, error)) error {
	s.mu.Lock()
	rec, ok := s.clients.get(id)
	if !ok {
		s.mu.Unlock()
		return notFound(id)
	}
	next := decodeClient(string(rec))
	prev := next.UpdatedAt
	now := s.now()
	events, err := f(next, now)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	next.UpdatedAt = now
	if least := prev.Add(time.Microsecond); now.Before(least) {
		// The clock has not moved on (or went back): the new version
		// still gets a later UpdatedAt.
		next.UpdatedAt = least
	}
	s.clients.put(id, encodeClient(nil, next))
	s.mu.Unlock()
	s.audit(ctx, events)
	return nil
}

// audit sends events to the auditor, if there is one.
func (s *Store) audit(ctx context.Context, events []m2mauth.AuditEvent) {
	if s.auditor == nil {
		return
	}
	for _, e := range events {
		s.auditor.Audit(ctx, e)
	}
}

// event returns the audit event of one change.
func event(now time.Time, typ m2mauth.AuditEventType, clientID, secretID, reason string) m2mauth.AuditEvent {
	return m2mauth.AuditEvent{Time: now, Type: typ, ClientID: clientID, SecretID: secretID, Reason: reason}
}

// disabledEvent returns the event type of setting Disabled to disabled.
func disabledEvent(disabled bool) m2mauth.AuditEventType {
	if disabled {
		return m2mauth.EventClientDisabled
	}
	return m2mauth.EventClientEnabled
}

func secretIndex(c *m2mauth.Client, secretID string) int {
	for i, sec := range c.Secrets {
		if sec.ID == secretID {
			return i
		}
	}
	return -1
}

// clientTable holds a Store's clients in a form the garbage collector
// need not trace: each client is one record, its encoding
// (encodeClient), in a chunk of such records, and the index from ids to
// records holds no pointers. A store of a million clients is then a few
// thousand pointer-free chunks and one pointer-free map to the collector,
// not millions of structs, maps, slices and strings to mark on every
// cycle; it also takes about a quarter of the memory.
//
// Records are never changed in place: a changed client is appended anew
// and its old record becomes dead. A chunk other than the one appended to
// whose records are at least half dead is compacted, its live records
// moved to the current chunk, so the table holds at most about twice its
// live records, and a change costs the same at any size.
type clientTable struct {
	hash  func(id string) uint64 // maphash under a random seed
	index map[uint64]recordRef   // by the hash of the id
	// spill holds the ids whose hash another id held in index when they
	// were put: with 64-bit hashes under a random seed, almost surely
	// none.
	spill map[string]recordRef
	// peak is the most entries index has held since it was last made:
	// a Go map keeps the memory of its deleted entries, so once it holds
	// under a quarter of that, it is made again at its size.
	peak   int
	chunks []chunk
	free   []uint32 // indexes of chunks emptied by compaction, for reuse
	cur    uint32   // the chunk records are appended to
}

// minShrink is the smallest peak of the index for which it is made again
// when it empties: below it, the memory kept is not worth the work.
const minShrink = 4096

// recordRef locates a record: its chunk and its offset there.
type recordRef struct{ chunk, off uint32 }

// chunk is a run of records, each its length as a uvarint and then that
// many bytes of encoding, which starts with the client's id.
type chunk struct {
	b    []byte
	dead int // bytes of records no longer referenced, prefixes included
}

// chunkSize is the capacity of a chunk, once the table has grown: the
// first chunk holds firstChunkSize bytes, and each next one twice the one
// before. A record longer than an eighth of chunkSize gets a chunk of its
// own, so that no full-sized chunk is left with more than an eighth
// unused.
const (
	chunkSize      = 64 << 10
	firstChunkSize = 1 << 10
)

func newClientTable() clientTable {
	seed := maphash.MakeSeed()
	return clientTable{
		hash:   func(id string) uint64 { return maphash.String(seed, id) },
		index:  make(map[uint64]recordRef),
		spill:  make(map[string]recordRef),
		chunks: []chunk{{b: make([]byte, 0, firstChunkSize)}},
	}
}

// ref returns where the record of id is, looking in index and then spill.
func (t *clientTable) ref(id string) (recordRef, bool) {
	r, _, ok := t.refHash(id)
	return r, ok
}

// refHash is ref, also returning the hash of id.
func (t *clientTable) refHash(id string) (recordRef, uint64, bool) {
	h := t.hash(id)
	if r, ok := t.index[h]; ok && string(t.id(r)) == id {
		return r, h, true
	}
	if len(t.spill) > 0 {
		r, ok := t.spill[id]
		return r, h, ok
	}
	return recordRef{}, h, false
}

// setRef points id at r, where id already is: in spill if it is there,
// else in index unless another id has its hash there.
func (t *clientTable) setRef(id string, r recordRef) {
	if _, ok := t.spill[id]; ok {
		t.spill[id] = r
		return
	}
	h := t.hash(id)
	if old, ok := t.index[h]; ok && string(t.id(old)) != id {
		t.spill[id] = r
		return
	}
	t.index[h] = r
	t.peak = max(t.peak, len(t.index))
}

// get returns the encoding of the client id. It is valid until the next
// change to t, and must not be modified.
func (t *clientTable) get(id string) ([]byte, bool) {
	r, ok := t.ref(id)
	if !ok {
		return nil, false
	}
	return t.record(r), true
}

// put stores enc, the encoding of the client id, in place of any record
// it had.
func (t *clientTable) put(id string, enc []byte) {
	t.remove(id)
	t.setRef(id, t.append(enc))
}

// remove deletes the client id, reporting whether it was there.
func (t *clientTable) remove(id string) bool {
	h := t.hash(id)
	r, ok := t.index[h]
	switch {
	case ok && string(t.id(r)) == id:
		delete(t.index, h)
		if t.peak >= minShrink && len(t.index) < t.peak/4 {
			index := make(map[uint64]recordRef, len(t.index))
			maps.Copy(index, t.index)
			t.index, t.peak = index, len(index)
		}
	case len(t.spill) > 0:
		if r, ok = t.spill[id]; !ok {
			return false
		}
		delete(t.spill, id)
	default:
		return false
	}
	t.kill(r)
	return true
}

// each calls f with the id of every client, in no order. The id is valid
// only during the call.
func (t *clientTable) each(f func(id []byte)) {
	for _, r := range t.index {
		f(t.id(r))
	}
	for _, r := range t.spill {
		f(t.id(r))
	}
}

// record returns the encoding at r.
func (t *clientTable) record(r recordRef) []byte {
	b := t.chunks[r.chunk].b[r.off:]
	n, k := binary.Uvarint(b)
	return b[k : k+int(n)]
}

// id returns the client id of the record at r.
func (t *clientTable) id(r recordRef) []byte {
	rec := t.record(r)
	n, k := binary.Uvarint(rec)
	return rec[k : k+int(n)]
}

// append adds the record enc and returns where it is.
func (t *clientTable) append(enc []byte) recordRef {
	size := uvarintLen(uint64(len(enc))) + len(enc)
	c := t.cur
	switch {
	case size > chunkSize/8:
		c = t.newChunk(size)
	case len(t.chunks[c].b)+size > cap(t.chunks[c].b):
		full := c
		t.cur = t.newChunk(min(chunkSize, max(2*cap(t.chunks[c].b), size)))
		t.compactIfDead(full)
		// Moving full's live records may have left too little room.
		return t.append(enc)
	}
	ch := &t.chunks[c]
	r := recordRef{chunk: c, off: uint32(len(ch.b))}
	ch.b = binary.AppendUvarint(ch.b, uint64(len(enc)))
	ch.b = append(ch.b, enc...)
	return r
}

// newChunk returns the index of a new empty chunk of capacity size.
func (t *clientTable) newChunk(size int) uint32 {
	c := chunk{b: make([]byte, 0, size)}
	if n := len(t.free); n > 0 {
		i := t.free[n-1]
		t.free = t.free[:n-1]
		t.chunks[i] = c
		return i
	}
	t.chunks = append(t.chunks, c)
	return uint32(len(t.chunks) - 1)
}

// kill marks the record at r dead, which no id may refer to any more, and
// compacts its chunk if that leaves it at least half dead.
func (t *clientTable) kill(r recordRef) {
	b := t.chunks[r.chunk].b[r.off:]
	n, k := binary.Uvarint(b)
	t.chunks[r.chunk].dead += k + int(n)
	if r.chunk != t.cur {
		t.compactIfDead(r.chunk)
	}
}

// compactIfDead empties chunk c, moving its live records to the current
// chunk, if at least half of it is dead. c must not be the current chunk.
func (t *clientTable) compactIfDead(c uint32) {
	b := t.chunks[c].b
	if 2*t.chunks[c].dead < len(b) {
		return
	}
	for off := 0; off < len(b); {
		here := recordRef{chunk: c, off: uint32(off)}
		n, k := binary.Uvarint(b[off:])
		if id := string(t.id(here)); t.refersTo(id, here) {
			t.setRef(id, t.append(b[off+k:off+k+int(n)]))
		}
		off += k + int(n)
	}
	t.chunks[c] = chunk{}
	t.free = append(t.free, c)
}

// refersTo reports whether id's record is the one at r.
func (t *clientTable) refersTo(id string, r recordRef) bool {
	cur, ok := t.ref(id)
	return ok && cur == r
}

// uvarintLen returns the length of x as a uvarint.
func uvarintLen(x uint64) int {
	n := 1
	for ; x >= 0x80; x >>= 7 {
		n++
	}
	return n
}

// A client's encoding, as clientTable keeps it: strings are a uvarint
// length and the bytes; counts are uvarints; a time is timeZero alone, or
// timeUTC or timeLocal, or timeZone with the zone's name (a string) and
// offset (a varint), followed by the Unix seconds (a varint) and the
// nanoseconds (a uvarint).
//
//	id, flags (one byte of client flags), TokenTTL (a varint),
//	TokensRevokedAt, CreatedAt, UpdatedAt,
//	the number of secrets, then each: id, hash, CreatedAt, ExpiresAt,
//	the number of grants, then each: audience, 0 for nil scopes or
//	1 + the number of scopes, then the scopes.
//
// Times keep their instant and their location if it is UTC or Local;
// any other location becomes a fixed zone of the same name and offset.
// Monotonic clock readings are not kept.
const (
	flagPublic byte = 1 << iota
	flagDisabled
	flagCanIntrospect
	flagSecrets // Secrets is not nil
	flagGrants  // Grants is not nil
)

const (
	timeZero byte = iota
	timeUTC
	timeLocal
	timeZone
)

// encodeClient appends the encoding of c to b.
func encodeClient(b []byte, c *m2mauth.Client) []byte {
	b = appendString(b, c.ID)
	var flags byte
	if c.Public {
		flags |= flagPublic
	}
	if c.Disabled {
		flags |= flagDisabled
	}
	if c.CanIntrospect {
		flags |= flagCanIntrospect
	}
	if c.Secrets != nil {
		flags |= flagSecrets
	}
	if c.Grants != nil {
		flags |= flagGrants
	}
	b = append(b, flags)
	b = binary.AppendVarint(b, int64(c.TokenTTL))
	b = appendTime(b, c.TokensRevokedAt)
	b = appendTime(b, c.CreatedAt)
	b = appendTime(b, c.UpdatedAt)
	b = binary.AppendUvarint(b, uint64(len(c.Secrets)))
	for _, sec := range c.Secrets {
		b = appendString(b, sec.ID)
		b = appendString(b, sec.Hash)
		b = appendTime(b, sec.CreatedAt)
		b = appendTime(b, sec.ExpiresAt)
	}
	b = binary.AppendUvarint(b, uint64(len(c.Grants)))
	for aud, scopes := range c.Grants {
		b = appendString(b, aud)
		if scopes == nil {
			b = append(b, 0)
			continue
		}
		b = binary.AppendUvarint(b, uint64(len(scopes))+1)
		for _, tok := range scopes {
			b = appendString(b, tok)
		}
	}
	return b
}

func appendString(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

func appendTime(b []byte, t time.Time) []byte {
	switch loc := t.Location(); {
	case loc == time.UTC && t.IsZero():
		return append(b, timeZero)
	case loc == time.UTC:
		b = append(b, timeUTC)
	case loc == time.Local:
		b = append(b, timeLocal)
	default:
		name, offset := t.Zone()
		b = appendString(append(b, timeZone), name)
		b = binary.AppendVarint(b, int64(offset))
	}
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// decodedClient is a Client with room for its secrets and scopes in the
// shape most clients have (one secret; a few scopes in all), so that
// decoding such a client allocates the three together. Each slice handed
// out of it is capped at its length: an append by the caller moves to
// new memory instead of reaching the next one.
type decodedClient struct {
	c       m2mauth.Client
	enc     string // what c was decoded from
	secrets [1]m2mauth.Secret
	scopes  [4]string
}

// decodeClient returns a new Client decoded from enc, made by
// encodeClient. Its strings share enc's memory, which is immutable.
func decodeClient(enc string) *m2mauth.Client { return &decodeRecord(enc).c }

// decodeRecord is decodeClient, returning the client with its room and
// its encoding.
func decodeRecord(enc string) *decodedClient {
	d := decoder{s: enc}
	b := &decodedClient{enc: enc}
	c := &b.c
	c.ID = d.string()
	flags := d.byte()
	c.Public = flags&flagPublic != 0
	c.Disabled = flags&flagDisabled != 0
	c.CanIntrospect = flags&flagCanIntrospect != 0
	c.TokenTTL = time.Duration(d.varint())
	c.TokensRevokedAt = d.time()
	c.CreatedAt = d.time()
	c.UpdatedAt = d.time()
	if n := d.uvarint(); n > 0 || flags&flagSecrets != 0 {
		if n <= uint64(len(b.secrets)) {
			c.Secrets = b.secrets[:n:n]
		} else {
			c.Secrets = make([]m2mauth.Secret, n)
		}
		for i := range c.Secrets {
			c.Secrets[i] = m2mauth.Secret{ID: d.string(), Hash: d.string(), CreatedAt: d.time(), ExpiresAt: d.time()}
		}
	}
	if n := d.uvarint(); n > 0 || flags&flagGrants != 0 {
		c.Grants = make(map[string]m2mauth.Scopes, n)
		free := b.scopes[:0]
		for range n {
			aud := d.string()
			var scopes m2mauth.Scopes
			if k := int(d.uvarint()); k > 0 {
				if k-1 <= cap(free)-len(free) {
					scopes = free[len(free) : len(free)+k-1 : len(free)+k-1]
					free = free[:len(free)+k-1]
				} else {
					scopes = make(m2mauth.Scopes, k-1)
				}
				for i := range scopes {
					scopes[i] = d.string()
				}
			}
			c.Grants[aud] = scopes
		}
	}
	return b
}

// notFound is the error for a client id the Store does not hold.
func notFound(id string) error {
	return fmt.Errorf("memstore: %q: %w", id, m2mauth.ErrClientNotFound)
}

// decoder reads an encoding made by encodeClient, which is well formed.
type decoder struct {
	s string
	i int
}

func (d *decoder) byte() byte {
	b := d.s[d.i]
	d.i++
	return b
}

func (d *decoder) uvarint() uint64 {
	var x uint64
	for shift := 0; ; shift += 7 {
		b := d.byte()
		x |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return x
		}
	}
}

func (d *decoder) varint() int64 {
	u := d.uvarint()
	return int64(u>>1) ^ -int64(u&1)
}

func (d *decoder) string() string {
	n := int(d.uvarint())
	s := d.s[d.i : d.i+n]
	d.i += n
	return s
}

func (d *decoder) time() time.Time {
	kind := d.byte()
	if kind == timeZero {
		return time.Time{}
	}
	var loc *time.Location
	switch kind {
	case timeUTC:
		loc = time.UTC
	case timeLocal:
		loc = time.Local
	default:
		name := d.string()
		loc = time.FixedZone(name, int(d.varint()))
	}
	sec := d.varint()
	return time.Unix(sec, int64(d.uvarint())).In(loc)
}
