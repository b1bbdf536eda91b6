package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"testing"
	"time"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
	"github.com/m2mauth/m2mauth/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(*testing.T) m2mauth.ClientManager {
		return memstore.New()
	})
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
