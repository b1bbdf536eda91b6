//go:build unix

package memstore_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// scaleSizes are the store sizes of the scale benchmarks: what a token
// request or a lookup costs must not grow with them.
var scaleSizes = []struct {
	name string
	n    int
}{{"clients=1", 1}, {"clients=10k", 10_000}, {"clients=1M", 1_000_000}}

const (
	scaleAudience = "https://api.example.com"
	scaleBody     = "grant_type=client_credentials&scope=read"
)

// scaleStore returns a store of n clients shaped like real ones (a
// secret with its own hash, one audience with two scopes), the id of
// one of them and its plaintext secret, and the heap the store holds per
// client, which the benchmarks report as "heapB/client".
func scaleStore(b *testing.B, n int) (s *memstore.Store, id, plain string, perClient float64) {
	b.Helper()
	ctx := context.Background()
	before := heapInUse()
	s = memstore.New()
	now := time.Now()
	for i := range n {
		p, sec, err := m2mauth.NewSecret(now, time.Time{})
		if err != nil {
			b.Fatal(err)
		}
		if i == n/2 {
			plain = p
		}
		err = s.CreateClient(ctx, &m2mauth.Client{
			ID:      fmt.Sprintf("client-%07d", i),
			Secrets: []m2mauth.Secret{sec},
			Grants:  map[string]m2mauth.Scopes{scaleAudience: {"read", "write"}},
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return s, fmt.Sprintf("client-%07d", n/2), plain, float64(heapInUse()-before) / float64(n)
}

// heapInUse returns the bytes of live heap after a full collection.
func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// BenchmarkScaleTokenRequest measures what a user sees: one client
// credentials token request (HS256, a client with a fast hash, no audit)
// through a TokenHandler over stores of growing size. Most of what a
// large store could add is the collector marking it, which runs on other
// threads too: cpu-ns/op is the CPU time of the whole process per
// request, which that work and other processes on a busy machine disturb
// less than ns/op.
func BenchmarkScaleTokenRequest(b *testing.B) {
	for _, size := range scaleSizes {
		b.Run(size.name, func(b *testing.B) {
			s, id, plain, perClient := scaleStore(b, size.n)
			key, err := m2mauth.NewHS256Key("k1", []byte("0123456789abcdef0123456789abcdef"))
			if err != nil {
				b.Fatal(err)
			}
			keys, err := m2mauth.NewStaticKeys(key)
			if err != nil {
				b.Fatal(err)
			}
			h, err := m2mauth.NewTokenHandler(s, keys, m2mauth.TokenHandlerConfig{
				Issuer:          "https://auth.example.com",
				DefaultAudience: scaleAudience,
				Auditor:         m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {}),
			})
			if err != nil {
				b.Fatal(err)
			}
			auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":"+plain))
			b.ReportAllocs()
			cpu := processCPU()
			for b.Loop() {
				r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader(scaleBody))
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				r.Header.Set("Authorization", auth)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					b.Fatalf("status %d: %s", w.Code, w.Body)
				}
			}
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(perClient, "heapB/client")
			runtime.KeepAlive(s)
		})
	}
}

// BenchmarkScaleClient measures Store.Client alone, the store's part of a
// token request, over stores of growing size.
func BenchmarkScaleClient(b *testing.B) {
	for _, size := range scaleSizes {
		b.Run(size.name, func(b *testing.B) {
			s, id, _, perClient := scaleStore(b, size.n)
			ctx := b.Context()
			b.ReportAllocs()
			cpu := processCPU()
			for b.Loop() {
				c, err := s.Client(ctx, id)
				if err != nil || len(c.Secrets) != 1 {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(perClient, "heapB/client")
		})
	}
}

// processCPU returns the CPU time the process has used so far, user and
// system, on all its threads: the collector's background work included.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
