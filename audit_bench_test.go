//go:build unix

package m2mauth_test

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/memstore"
)

// benchAuditors are the auditors of the audit benchmarks: none, the
// JSONAuditor (the default where slog is not configured), and the
// SlogAuditor on each of slog's handlers, all writing to io.Discard.
var benchAuditors = []struct {
	name    string
	auditor m2mauth.Auditor
}{
	{"none", m2mauth.AuditorFunc(func(context.Context, m2mauth.AuditEvent) {})},
	{"json", m2mauth.NewJSONAuditor(io.Discard)},
	{"slog-json", m2mauth.NewSlogAuditor(slog.New(slog.NewJSONHandler(io.Discard, nil)))},
	{"slog-text", m2mauth.NewSlogAuditor(slog.New(slog.NewTextHandler(io.Discard, nil)))},
}

// BenchmarkAuditTokenRequest measures a token request (HS256, a client
// with a fast hash) with each auditor: what the default audit adds to a
// token request is json, slog-json or slog-text minus none. Besides ns/op it
// reports cpu-ns/op, the CPU time of the whole process per request, which
// other processes on a busy machine disturb less.
func BenchmarkAuditTokenRequest(b *testing.B) {
	for _, a := range benchAuditors {
		b.Run(a.name, func(b *testing.B) {
			store := memstore.New()
			plain, sec, err := m2mauth.NewSecret(time.Now(), time.Time{})
			require.NoError(b, err)
			require.NoError(b, store.CreateClient(context.Background(), &m2mauth.Client{
				ID:      "bench-client",
				Secrets: []m2mauth.Secret{sec},
				Grants:  map[string]m2mauth.Scopes{benchAudience: {"read", "write"}},
			}))
			keys, err := m2mauth.NewStaticKeys(benchSigningKey(b, jose.HS256))
			require.NoError(b, err)
			h, err := m2mauth.NewTokenHandler(store, keys, m2mauth.TokenHandlerConfig{
				Issuer:          benchIssuer,
				DefaultAudience: benchAudience,
				Auditor:         a.auditor,
			})
			require.NoError(b, err)
			cpu := processCPU()
			runTokenBench(b, h, "Basic "+base64.StdEncoding.EncodeToString([]byte("bench-client:"+plain)))
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

// BenchmarkSlogAuditor measures SlogAuditor.Audit alone, on slog's JSON
// handler writing to io.Discard, for an issued token and a refused
// request; the JSONAuditor for the same (json-issued, json-refused);
// and, for scale, what slog's handler alone takes to write the issued
// token's record.
func BenchmarkSlogAuditor(b *testing.B) {
	a := m2mauth.NewSlogAuditor(slog.New(slog.NewJSONHandler(io.Discard, nil)))
	events := []struct {
		name string
		e    m2mauth.AuditEvent
	}{
		{"issued", m2mauth.AuditEvent{
			Time: time.Now(), Type: m2mauth.EventTokenIssued, ClientID: "bench-client",
			RemoteIP: "192.0.2.1", UserAgent: "Go-http-client/1.1", Audience: benchAudience,
			Scopes: m2mauth.Scopes{"read"}, JTI: "0123456789abcdef0123456789abcdef", SecretID: "sec_0123456789ab",
		}},
		{"refused", m2mauth.AuditEvent{
			Time: time.Now(), Type: m2mauth.EventAuthFailed, ClientID: "bench-client",
			RemoteIP: "192.0.2.1", UserAgent: "Go-http-client/1.1",
			Error: "invalid_client", Reason: m2mauth.ReasonBadSecret,
		}},
	}
	ctx := context.Background()
	for _, ev := range events {
		for _, au := range []struct {
			name string
			a    m2mauth.Auditor
		}{{"", a}, {"json-", m2mauth.NewJSONAuditor(io.Discard)}} {
			b.Run(au.name+ev.name, func(b *testing.B) {
				b.ReportAllocs()
				cpu := processCPU()
				for b.Loop() {
					au.a.Audit(ctx, ev.e)
				}
				b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
			})
		}
	}
	// The floor: the JSON handler alone writing the record of the issued
	// token, built once.
	b.Run("issued-handler-only", func(b *testing.B) {
		h := slog.NewJSONHandler(io.Discard, nil)
		e := events[0].e
		r := slog.NewRecord(time.Now(), slog.LevelInfo, "m2mauth audit", 0)
		r.AddAttrs(slog.String("event", string(e.Type)), slog.Time("event_time", e.Time),
			slog.String("client_id", e.ClientID), slog.String("remote_ip", e.RemoteIP),
			slog.String("user_agent", e.UserAgent), slog.String("audience", e.Audience),
			slog.String("scope", e.Scopes.String()), slog.String("jti", e.JTI), slog.String("secret_id", e.SecretID))
		b.ReportAllocs()
		cpu := processCPU()
		for b.Loop() {
			if err := h.Handle(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
	})
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
