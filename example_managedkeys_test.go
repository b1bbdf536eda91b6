package m2mauth_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// ExampleNewManagedKeys keeps the signing keys in the store the
// replicas share, sealed under a key-encryption key (KEK): they rotate
// by themselves, every new key in the JWKS before it signs.
func ExampleNewManagedKeys() {
	ctx := context.Background()

	// The KEK: 32 random bytes, from a secret manager or the
	// environment, for instance
	//
	//	kek, err := m2mauth.ParseKEK(os.Getenv("M2MAUTH_KEK"))
	//
	// with M2MAUTH_KEK made by `openssl rand -base64 32`.
	kek := make([]byte, m2mauth.KEKSize)
	rand.Read(kek)
	sealer, err := m2mauth.NewAESKeySealer(kek)
	if err != nil {
		log.Fatal(err)
	}

	// A fleet shares a database (sqlstore); one process may use memstore.
	store := memstore.New()
	keys, err := m2mauth.NewManagedKeys(ctx, store, sealer, m2mauth.ManagedKeysConfig{
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err) // a KEK that does not open the stored keys stops here
	}
	defer keys.Close()

	tokens, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
		Issuer:          "https://auth.example.com",
		DefaultAudience: "https://api.example.com",
	})
	if err != nil {
		log.Fatal(err)
	}
	jwks, err := m2mauth.NewJWKSHandler(keys, m2mauth.JWKSConfig{})
	if err != nil {
		log.Fatal(err)
	}
	ready, err := m2mauth.NewReadinessHandler(store, keys, m2mauth.ReadinessConfig{
		Checks: map[string]func(context.Context) error{"signing_keys": keys.Ping},
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/oauth/token", tokens)
	mux.Handle("GET /.well-known/jwks.json", jwks)
	mux.Handle("GET /readyz", ready)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	// Rotate now rather than on schedule: the new key is published at
	// once, and signs PropagationDelay (10m) later.
	next, err := keys.Rotate(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("published generation", next.Generation, "active in", next.ActiveAt.Sub(next.PublishedAt))

	list, err := keys.Keys(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, k := range list {
		fmt.Println(k.Generation, k.Algorithm, k.State)
	}

	resp, err := http.Get(srv.URL + "/.well-known/jwks.json")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct{ Keys []json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		log.Fatal(err)
	}
	fmt.Println("keys in the JWKS:", len(set.Keys), resp.Header.Get("Cache-Control"))
	// Output:
	// published generation 2 active in 10m0s
	// 1 ES256 active
	// 2 ES256 published
	// keys in the JWKS: 2 public, max-age=300
}

// ExampleResealKeys rotates the key-encryption key: every replica is
// given a sealer that seals under the new KEK and still opens under the
// old one, the stored keys are resealed, and the old KEK can go.
func ExampleResealKeys() {
	ctx := context.Background()
	oldKEK, newKEK := make([]byte, m2mauth.KEKSize), make([]byte, m2mauth.KEKSize)
	rand.Read(oldKEK)
	rand.Read(newKEK)
	store := memstore.New()
	cfg := m2mauth.ManagedKeysConfig{Logger: slog.New(slog.DiscardHandler)}

	// Keys sealed under the old KEK.
	before, err := m2mauth.NewAESKeySealer(oldKEK)
	if err != nil {
		log.Fatal(err)
	}
	keys, err := m2mauth.NewManagedKeys(ctx, store, before, cfg)
	if err != nil {
		log.Fatal(err)
	}
	keys.Close()

	// 1. Every replica runs with NewAESKeySealer(newKEK, oldKEK).
	both, err := m2mauth.NewAESKeySealer(newKEK, oldKEK)
	if err != nil {
		log.Fatal(err)
	}
	// 2. Reseal the stored keys under the new KEK, all or nothing.
	n, err := m2mauth.ResealKeys(ctx, store, both, both)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("resealed", n, "key")

	// 3. The new KEK alone opens them.
	after, err := m2mauth.NewAESKeySealer(newKEK)
	if err != nil {
		log.Fatal(err)
	}
	keys, err = m2mauth.NewManagedKeys(ctx, store, after, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer keys.Close()
	_, err = m2mauth.NewManagedKeys(ctx, store, before, cfg)
	fmt.Println("the old KEK alone opens them:", err == nil)
	// Output:
	// resealed 1 key
	// the old KEK alone opens them: false
}
