package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"log"
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
