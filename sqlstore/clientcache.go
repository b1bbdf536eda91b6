package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/m2mauth/m2mauth"
)

// maxCachedClients bounds the clients a Store keeps on SQLite.
const maxCachedClients = 4096

// noStampRetry is how long a Store on SQLite whose schema has no clients'
// stamp reads every client from the database before it looks again.
const noStampRetry = time.Minute

// errNoStamp is the error of a lookup on a schema without the clients'
// stamp (Migrate has not run since the release that added it).
var errNoStamp = errors.New("sqlstore: the schema has no clients' stamp")

// cachedClient is Client on SQLite. A cached client is returned, as a
// copy, when the clients' stamp is still the one it was read under: no
// change to any client, secret or grant has committed since, from this
// process or any other (the triggers of migration 0007 change the stamp
// in the transaction of every change). Reading the stamp is one small
// query, about half the cost of reading the client. Otherwise the client
// is read with the stamp, in one statement, hence one snapshot, and kept.
// It returns errNoStamp, and stops looking for noStampRetry, when the
// schema has no stamp. With shared set, the client returned is the one
// kept, which nobody may modify (see [Store.SharedClient]).
func (s *Store) cachedClient(ctx context.Context, id string, shared bool) (*m2mauth.Client, error) {
	if stamp, c := s.clients.get(id); c != nil {
		now, err := s.readStamp(ctx)
		switch {
		case err == nil && now == stamp && shared:
			return c, nil
		case err == nil && now == stamp:
			return c.Clone(), nil
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return nil, s.stampError(err)
		}
	}
	st, err := s.stamped.get(ctx)
	if err != nil {
		return nil, s.stampError(err)
	}
	var stamp sql.NullInt64
	c, err := decodeClientRow(st.QueryRowContext(ctx, id), id, &stamp)
	switch {
	case errors.Is(err, m2mauth.ErrClientNotFound):
		s.clients.drop(id)
		return nil, err
	case err != nil:
		return nil, s.stampError(err)
	case !stamp.Valid:
		// The stamp's row is gone: nothing can be kept.
		s.clients.drop(id)
		return c, nil
	}
	kept := c
	if !shared {
		kept = c.Clone()
	}
	s.clients.put(id, stamp.Int64, kept)
	return c, nil
}

// readStamp returns the clients' stamp, read on the stampReader's
// connection or, when it has none, on db's pool.
func (s *Store) readStamp(ctx context.Context) (int64, error) {
	if stamp, ok, err := s.stampConn.read(ctx); ok {
		return stamp, err
	}
	st, err := s.stamp.get(ctx)
	if err != nil {
		return 0, err
	}
	var stamp int64
	err = st.QueryRowContext(ctx).Scan(&stamp)
	return stamp, err
}

// stampExpected reports whether the clients' stamp is to be looked for:
// always, unless it was found missing less than noStampRetry ago. The
// usual case reads no clock.
func (s *Store) stampExpected() bool {
	until := s.noStamp.Load()
	return until == 0 || until < s.now().UnixNano()
}

// stampError returns errNoStamp, and logs a warning, for an error that
// says the stamp's table is missing, and err otherwise.
func (s *Store) stampError(err error) error {
	if !strings.Contains(err.Error(), "no such table") {
		return err
	}
	s.noStamp.Store(s.now().Add(noStampRetry).UnixNano())
	s.logger.Warn("sqlstore: the schema has no clients' stamp, so every token request reads its client from the database: run Migrate", "error", err)
	return errNoStamp
}

// clientCache holds the clients a Store read on SQLite, each with the
// stamp it was read under, at most maxCachedClients: a new one takes the
// place of an arbitrary one. A cached Client is never modified and never
// returned; the Store returns copies.
type clientCache struct {
	mu sync.Mutex
	m  map[string]stampedClient
}

type stampedClient struct {
	stamp int64
	c     *m2mauth.Client
}

func (cc *clientCache) get(id string) (int64, *m2mauth.Client) {
	cc.mu.Lock()
	e := cc.m[id]
	cc.mu.Unlock()
	return e.stamp, e.c
}

func (cc *clientCache) put(id string, stamp int64, c *m2mauth.Client) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.m == nil {
		cc.m = make(map[string]stampedClient)
	}
	if _, ok := cc.m[id]; !ok && len(cc.m) >= maxCachedClients {
		for other := range cc.m {
			delete(cc.m, other)
			break
		}
	}
	cc.m[id] = stampedClient{stamp: stamp, c: c}
}

func (cc *clientCache) drop(id string) {
	cc.mu.Lock()
	delete(cc.m, id)
	cc.mu.Unlock()
}

// len returns the number of clients held.
func (cc *clientCache) len() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return len(cc.m)
}
