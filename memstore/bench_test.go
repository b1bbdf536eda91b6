package memstore_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/m2mauth/m2mauth/memstore"
)

// BenchmarkCurrentRevocations measures what a validator pays per token to
// get the revocations, with 10,000 of them and nothing changing: no
// allocation, no lock.
func BenchmarkCurrentRevocations(b *testing.B) {
	s := memstore.New()
	ctx := b.Context()
	exp := time.Now().Add(time.Hour)
	for i := range 10_000 {
		if err := s.RevokeToken(ctx, "svc", fmt.Sprintf("jti-%05d", i), exp); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := s.CurrentRevocations(); err != nil { // publish once
		b.Fatal(err)
	}
	iat := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := s.CurrentRevocations()
			if err != nil || r.Revoked("svc", "jti-not-revoked", iat) {
				b.Fatal("unexpected revocation state")
			}
		}
	})
}

// BenchmarkRevokeToken measures revoking one token after another with
// nobody reading: the snapshot is rebuilt on the next read, not on every
// write, so the cost of a write does not grow with the number of entries.
func BenchmarkRevokeToken(b *testing.B) {
	s := memstore.New()
	ctx := b.Context()
	exp := time.Now().Add(time.Hour)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := s.RevokeToken(ctx, "svc", fmt.Sprintf("jti-%09d", i), exp); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
