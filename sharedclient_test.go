package m2mauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// countingSharer is a memstore that counts the lookups made with Client
// and with SharedClient.
type countingSharer struct {
	*memstore.Store
	copies, shares atomic.Int64
}

func (s *countingSharer) Client(ctx context.Context, id string) (*m2mauth.Client, error) {
	s.copies.Add(1)
	return s.Store.Client(ctx, id)
}

func (s *countingSharer) SharingStore() m2mauth.ClientStore { return s }

func (s *countingSharer) SharedClient(ctx context.Context, id string) (*m2mauth.Client, error) {
	s.shares.Add(1)
	return s.Store.SharedClient(ctx, id)
}

// TestEndpointsReadSharedClients checks that the token, introspection and
// revocation endpoints look clients up with SharedClient when the store
// has it, never with Client, and leave the clients they are lent as they
// were, on every path: tokens issued and refused (RFC 6749 §5.2),
// introspection of another client's token (RFC 7662 §2.1), revocation
// (RFC 7009 §2.1).
func TestEndpointsReadSharedClients(t *testing.T) {
	e := newEndpointFixture(t, nil)
	store := &countingSharer{Store: e.store}
	h, err := m2mauth.NewTokenHandler(store, e.keys, m2mauth.TokenHandlerConfig{
		Issuer: testIssuer, DefaultAudience: testAudience, Now: e.clock, Logger: discardLogger(),
	})
	require.NoError(t, err)
	rev, err := h.RevocationHandler(e.store)
	require.NoError(t, err)
	in, err := h.IntrospectionHandler(m2mauth.IntrospectionConfig{Revocations: e.store})
	require.NoError(t, err)

	ids := []string{"svc", "rotated", "disabled", "public", "weird:id+1", "short", "introspector"}
	lent := make(map[string]*m2mauth.Client)
	want := make(map[string]*m2mauth.Client)
	for _, id := range ids {
		c, err := e.store.SharedClient(t.Context(), id)
		require.NoError(t, err)
		lent[id] = c
		want[id], err = e.store.Client(t.Context(), id)
		require.NoError(t, err)
	}

	token := func(t *testing.T) string {
		w := send(t, h, request{body: "grant_type=client_credentials&scope=read", headers: auth(basic("svc", e.secret))})
		require.Equal(t, http.StatusOK, w.Code, "body: %s", w.Body)
		var resp tokenResponse
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp))
		return resp.AccessToken
	}
	grant := func(body string) func(*testing.T) string {
		return func(*testing.T) string { return "grant_type=client_credentials" + body }
	}
	aToken := func(t *testing.T) string { return "token=" + url.QueryEscape(token(t)) }
	tests := []struct {
		name       string
		h          http.Handler
		body       func(t *testing.T) string
		id, secret string
		status     int
	}{
		{"token issued for a subset of the grant", h, grant("&scope=write"), "svc", e.secret, http.StatusOK},
		{"token issued for the whole grant", h, grant(""), "weird:id+1", e.weirdSecret, http.StatusOK},
		{"token with the client's own lifetime", h, grant(""), "short", e.secret, http.StatusOK},
		{"scope not granted", h, grant("&scope=read+admin"), "svc", e.secret, http.StatusBadRequest},
		{"audience not granted", h, grant("&resource=" + url.QueryEscape("https://other.example.com")), "svc", e.secret, http.StatusBadRequest},
		{"wrong secret", h, grant(""), "svc", "wrong", http.StatusUnauthorized},
		{"expired secret", h, grant(""), "rotated", e.oldSecret, http.StatusUnauthorized},
		{"disabled client", h, grant(""), "disabled", e.disSecret, http.StatusUnauthorized},
		{"public client", h, grant(""), "public", "x", http.StatusUnauthorized},
		{"introspection of another client's token", in, aToken, "introspector", e.introSecret, http.StatusOK},
		{"revocation of the client's own token", rev, aToken, "svc", e.secret, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := send(t, tt.h, request{body: tt.body(t), headers: auth(basic(tt.id, tt.secret))})
			require.Equal(t, tt.status, w.Code, "body: %s", w.Body)
		})
	}

	assert.Zero(t, store.copies.Load(), "lookups made with Client")
	assert.Positive(t, store.shares.Load(), "lookups made with SharedClient")
	for _, id := range ids {
		again, err := e.store.SharedClient(t.Context(), id)
		require.NoError(t, err)
		assert.Same(t, lent[id], again, "%s: the client did not change, so it is still shared", id)
		assert.Equal(t, want[id], lent[id], "%s: the shared client was modified", id)
	}
}

// policyStore embeds a memstore, and so its SharedClient, but changes
// what Client returns: it refuses one client, or fails every lookup.
type policyStore struct {
	*memstore.Store
	refused string
	fail    error
}

func (s policyStore) Client(ctx context.Context, id string) (*m2mauth.Client, error) {
	if s.fail != nil {
		return nil, s.fail
	}
	if id == s.refused {
		return nil, fmt.Errorf("policy: %q: %w", id, m2mauth.ErrClientNotFound)
	}
	return s.Store.Client(ctx, id)
}

// selfSharer is a ClientSharer whose SharingStore is itself, of a type
// that cannot be compared: it cannot show it is the store it was given,
// so it is asked with its Client, which refuses "svc".
type selfSharer struct {
	policyStore
	tags []string
}

func (s selfSharer) SharingStore() m2mauth.ClientStore { return s }

// TestWrappedSharerKeepsItsClient checks that a store embedding a
// ClientSharer is asked with its own Client, which may restrict or fail
// lookups, not with the embedded store's SharedClient: a refused client
// gets invalid_client (RFC 6749 §5.2), a failing store server_error.
func TestWrappedSharerKeepsItsClient(t *testing.T) {
	f := newFixture(t)
	refuse := policyStore{Store: f.store, refused: "svc"}
	tests := []struct {
		name   string
		store  m2mauth.ClientStore
		id     string
		secret string
		status int
		code   string
	}{
		{"a refused client, wrapper by value", refuse, "svc", f.secret, http.StatusUnauthorized, m2mauth.CodeInvalidClient},
		{"a refused client, wrapper by pointer", &refuse, "svc", f.secret, http.StatusUnauthorized, m2mauth.CodeInvalidClient},
		{"another client", refuse, "short", f.secret, http.StatusOK, ""},
		{"a failing store", policyStore{Store: f.store, fail: errors.New("store down")}, "short", f.secret, http.StatusInternalServerError, m2mauth.CodeServerError},
		{"a sharer that cannot be compared", selfSharer{policyStore: refuse, tags: []string{"x"}}, "svc", f.secret, http.StatusUnauthorized, m2mauth.CodeInvalidClient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := m2mauth.NewTokenHandler(tt.store, f.keys, m2mauth.TokenHandlerConfig{
				Issuer: testIssuer, DefaultAudience: testAudience, Logger: discardLogger(),
			})
			require.NoError(t, err)
			w := send(t, h, request{target: "/oauth/token", body: "grant_type=client_credentials", headers: auth(basic(tt.id, tt.secret))})
			require.Equal(t, tt.status, w.Code, "body: %s", w.Body)
			if tt.code != "" {
				assert.Equal(t, tt.code, errorOf(t, w).Error)
			}
		})
	}
}

// TestSharedClientsUnderChange sends 200 simultaneous token requests, each
// from its own loopback address, while the client's lifetime is changed
// again and again: every token is issued (RFC 6749 §4.4.3) with one of the
// lifetimes the client had, and the race detector sees no write to a lent
// client.
func TestSharedClientsUnderChange(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	lifetimes := []time.Duration{5 * time.Minute, 10 * time.Minute}
	const requests = 200
	var wg sync.WaitGroup
	start := make(chan struct{})
	codes := make([]int, requests)
	expires := make([]int64, requests)
	for i := range requests {
		wg.Go(func() {
			r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			r.Header.Set("Authorization", basic("short", f.secret))
			r.RemoteAddr = fmt.Sprintf("127.0.%d.%d:40000", i/250, i%250+1)
			w := httptest.NewRecorder()
			<-start
			f.handler.ServeHTTP(w, r)
			codes[i] = w.Code
			var resp tokenResponse
			if assert.NoError(t, json.Unmarshal(w.Body.Bytes(), &resp)) {
				expires[i] = resp.ExpiresIn
			}
		})
	}
	wg.Go(func() {
		<-start
		for i := range 50 {
			c, err := f.store.Client(ctx, "short")
			if !assert.NoError(t, err) {
				return
			}
			c.TokenTTL = lifetimes[i%2]
			assert.NoError(t, f.store.UpdateClient(ctx, c))
		}
	})
	close(start)
	wg.Wait()
	for i := range requests {
		require.Equal(t, http.StatusOK, codes[i], "request %d", i)
		require.Contains(t, []int64{300, 600}, expires[i], "request %d", i)
	}
}
