package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
	"github.com/m2mauth/m2mauth/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(*testing.T) m2mauth.ClientManager {
		return memstore.New()
	}, storetest.WithAuditedStore(func(_ *testing.T, a m2mauth.Auditor) m2mauth.ClientManager {
		return memstore.New(memstore.WithAuditor(a))
	}), storetest.WithClock(func(_ *testing.T, now func() time.Time) m2mauth.ClientManager {
		return memstore.New(memstore.WithClock(now))
	}), storetest.WithRevokedTokens(20_000))
}

// TestAuditClock checks that events carry the time of the change from the
// store's clock, the same as UpdatedAt.
func TestAuditClock(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	var got []m2mauth.AuditEvent
	s := memstore.New(memstore.WithClock(func() time.Time { return now }),
		memstore.WithAuditor(m2mauth.AuditorFunc(func(_ context.Context, e m2mauth.AuditEvent) { got = append(got, e) })))
	ctx := t.Context()
	require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{ID: "svc", Public: true}))
	now = now.Add(time.Hour)
	require.NoError(t, s.SetDisabled(ctx, "svc", true))
	c, err := s.Client(ctx, "svc")
	require.NoError(t, err)
	assert.Equal(t, []m2mauth.AuditEvent{
		{Time: now.Add(-time.Hour), Type: m2mauth.EventClientCreated, ClientID: "svc", Reason: "public"},
		{Time: now, Type: m2mauth.EventClientDisabled, ClientID: "svc", Reason: "disabled"},
		{Time: now, Type: m2mauth.EventTokensRevoked, ClientID: "svc", Reason: "disabled"},
	}, got)
	assert.Equal(t, c.UpdatedAt, got[1].Time)
	assert.Equal(t, c.TokensRevokedAt, got[2].Time)
}

func ExampleNew() {
	ctx := context.Background()
	store := memstore.New()

	// Register a client. The plaintext secret goes to the operator once;
	// the store keeps only its hash.
	plain, secret, err := m2mauth.NewSecret(time.Now(), time.Time{})
	if err != nil {
		log.Fatal(err)
	}
	err = store.CreateClient(ctx, &m2mauth.Client{
		ID:      "billing-worker",
		Secrets: []m2mauth.Secret{secret},
		Grants: map[string]m2mauth.Scopes{
			"https://api.example.com": {"invoices:read", "invoices:write"},
		},
	})
	if err != nil {
		log.Fatal(err)
	}

	// Look it up, as the token handler does on each request.
	c, err := store.Client(ctx, "billing-worker")
	if err != nil {
		log.Fatal(err)
	}
	ok, err := m2mauth.VerifySecret(c.Secrets[0].Hash, plain)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(c.ID, "may request", c.Grants["https://api.example.com"])
	fmt.Println("secret accepted:", ok)

	_, err = store.Client(ctx, "unknown")
	fmt.Println("unknown client:", errors.Is(err, m2mauth.ErrClientNotFound))
	// Output:
	// billing-worker may request invoices:read invoices:write
	// secret accepted: true
	// unknown client: true
}

// TestClientLookupsIndependent: what a caller does to a looked-up client
// (appending to or changing its secrets and scopes) shows neither in
// another audience's scopes of the same client nor in a later lookup,
// for clients whose secrets and scopes fit in one allocation and for
// larger ones.
func TestClientLookupsIndependent(t *testing.T) {
	secrets := func(n int) []m2mauth.Secret {
		out := make([]m2mauth.Secret, n)
		for i := range out {
			_, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
			require.NoError(t, err)
			sec.ID = fmt.Sprintf("s%d", i)
			out[i] = sec
		}
		return out
	}
	tests := []struct {
		name   string
		client m2mauth.Client
	}{
		{"small", m2mauth.Client{ID: "small", Secrets: secrets(2), Grants: map[string]m2mauth.Scopes{
			"https://a": {"read", "write"}, "https://b": {"x", "y"}, "https://c": nil}}},
		{"large", m2mauth.Client{ID: "large", Secrets: secrets(3), Grants: map[string]m2mauth.Scopes{
			"https://a": {"1", "2", "3", "4"}, "https://b": {"5", "6", "7"}, "https://c": {"8"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := memstore.New()
			ctx := context.Background()
			require.NoError(t, s.CreateClient(ctx, &tt.client))
			want, err := s.Client(ctx, tt.client.ID)
			require.NoError(t, err)

			c, err := s.Client(ctx, tt.client.ID)
			require.NoError(t, err)
			require.Equal(t, want, c)
			before := map[string]m2mauth.Scopes{}
			for aud, sc := range c.Grants {
				before[aud] = sc.Clone()
			}
			c.Secrets[0].ID = "changed"
			_ = append(c.Secrets, m2mauth.Secret{ID: "appended"})
			for aud, sc := range c.Grants {
				_ = append(sc, "appended")
				require.Equal(t, before[aud], c.Grants[aud], aud)
			}
			for _, sc := range c.Grants {
				if len(sc) > 0 {
					sc[0] = "changed"
				}
			}
			again, err := s.Client(ctx, tt.client.ID)
			require.NoError(t, err)
			require.Equal(t, want, again)
		})
	}
}

// TestSharedClient checks that SharedClient answers from the client it
// decoded last while the client is unchanged, with a new one once it
// changes, and that Client still returns a copy of its own each time.
func TestSharedClient(t *testing.T) {
	ctx := t.Context()
	s := memstore.New()
	require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{ID: "svc", Grants: map[string]m2mauth.Scopes{"https://api.example.com": {"read"}}}))

	first, err := s.SharedClient(ctx, "svc")
	require.NoError(t, err)
	again, err := s.SharedClient(ctx, "svc")
	require.NoError(t, err)
	assert.Same(t, first, again, "an unchanged client is shared")

	copy1, err := s.Client(ctx, "svc")
	require.NoError(t, err)
	copy2, err := s.Client(ctx, "svc")
	require.NoError(t, err)
	assert.NotSame(t, copy1, copy2, "Client returns a copy of its own")
	assert.NotSame(t, first, copy1)

	require.NoError(t, s.SetDisabled(ctx, "svc", true))
	changed, err := s.SharedClient(ctx, "svc")
	require.NoError(t, err)
	assert.NotSame(t, first, changed)
	assert.True(t, changed.Disabled, "the change is seen")
	assert.False(t, first.Disabled, "a client handed out never changes")
}

// TestSharedClientMany checks SharedClient over more clients than it keeps
// decoded: clients whose ids pick the same place take turns there, and
// each call returns the client asked for.
func TestSharedClientMany(t *testing.T) {
	ctx := t.Context()
	s := memstore.New()
	const n = 3000
	for i := range n {
		id := fmt.Sprintf("svc-%04d", i)
		require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{ID: id, Grants: map[string]m2mauth.Scopes{"https://" + id + ".example.com": {"read"}}}))
	}
	for round := range 2 {
		for i := range n {
			id := fmt.Sprintf("svc-%04d", (i*7+round)%n)
			c, err := s.SharedClient(ctx, id)
			require.NoError(t, err)
			require.Equal(t, id, c.ID)
			require.Equal(t, m2mauth.Scopes{"read"}, c.Grants["https://"+id+".example.com"])
		}
	}
}

// TestDeletedClientsGiveMemoryBack: the memory of deleted clients is
// given back, the index's included (a Go map keeps the memory of the
// entries deleted from it), once their watermarks have died.
func TestDeletedClientsGiveMemoryBack(t *testing.T) {
	n := 200_000
	if testing.Short() {
		n = 50_000
	}
	ctx := t.Context()
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	clock := newFakeClock()
	s := memstore.New(memstore.WithClock(clock.Now))
	before := heap()
	for i := range n {
		require.NoError(t, s.CreateClient(ctx, &m2mauth.Client{ID: fmt.Sprintf("client-%d", i), Public: true}))
	}
	full := heap()
	for i := range n - 10 {
		require.NoError(t, s.DeleteClient(ctx, fmt.Sprintf("client-%d", i)))
	}
	// A deleted client's watermark lives a day: past it, the next
	// snapshot drops them.
	clock.Set(clock.Now().Add(30 * time.Hour))
	_, err := s.CurrentRevocations()
	require.NoError(t, err)
	left := heap()
	t.Logf("%d clients: %d KiB; %d deleted: %d KiB kept", n, (full-before)>>10, n-10, (left-before)>>10)
	assert.Less(t, left-before, (full-before)/4, "memory kept after deleting all but 10 of %d clients", n)
	for i := n - 10; i < n; i++ {
		_, err := s.Client(ctx, fmt.Sprintf("client-%d", i))
		require.NoError(t, err)
	}
	runtime.KeepAlive(s)
}
