package m2mauth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// TestAuditFieldsSanitised: strings that come from a request reach audit
// events as valid UTF-8 of at most 256 bytes without control characters,
// so they cannot forge log lines or break a database column; a forwarded
// IPv6 zone never reaches remote_ip.
func TestAuditFieldsSanitised(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes: a cut must not split one
	tests := []struct {
		name, clientID, userAgent, forwarded string
		wantClient, wantIP                   string
	}{
		{name: "line break in client_id", clientID: "svc\nevent=token_issued", wantClient: "svc?event=token_issued"},
		{name: "escape and DEL", clientID: "a\x1b[31mb\x7fc", wantClient: "a?[31mb?c"},
		{name: "C1 control and line separator", clientID: "a\u0085b\u2028c", wantClient: "a?b?c"},
		{name: "invalid UTF-8", clientID: "a\xffb", wantClient: "a\uFFFDb"},
		{name: "long UTF-8 cut on a character boundary", clientID: long, wantClient: strings.Repeat("é", 128)},
		{name: "user agent", clientID: "svc", userAgent: "curl\r\nX-Injected: 1", wantClient: "svc"},
		{name: "forwarded zone id", clientID: "svc", forwarded: "fe80::1%" + strings.Repeat("x", 2048), wantClient: "svc", wantIP: "10.0.0.5"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(c *m2mauth.TokenHandlerConfig) {
				c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
				c.ForwardedHeader = m2mauth.HeaderXForwardedFor
				c.AllowInsecureHTTP = true
			})
			r := httptest.NewRequest(http.MethodPost, "/oauth/token", strings.NewReader("grant_type=client_credentials"))
			r.RemoteAddr = "10.0.0.5:1"
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			r.Header.Set("Authorization", basic(tc.clientID, "wrong"))
			r.Header.Set("User-Agent", tc.userAgent)
			if tc.forwarded != "" {
				r.Header.Set("X-Forwarded-For", tc.forwarded)
			}
			w := httptest.NewRecorder()
			f.handler.ServeHTTP(w, r)
			require.Equal(t, 401, w.Code)
			ev := f.lastEvent(t)
			assert.Equal(t, tc.wantClient, ev.ClientID)
			for _, s := range []string{ev.ClientID, ev.UserAgent, ev.RemoteIP} {
				assert.True(t, utf8.ValidString(s))
				assert.LessOrEqual(t, len(s), 256)
				assert.False(t, strings.ContainsAny(s, "\r\n\x00\x1b\x7f"), "%q", s)
			}
			if tc.wantIP != "" {
				assert.Equal(t, tc.wantIP, ev.RemoteIP)
			}
		})
	}
}

// TestSlogAuditorOutput pins what a SlogAuditor writes: the message, the
// level, and one attribute per non-empty field, in order, with the
// event's time as a time value; the source, for handlers that add it,
// is SlogAuditor.Audit.
func TestSlogAuditorOutput(t *testing.T) {
	at := time.Date(2026, 11, 23, 12, 0, 0, 123456789, time.UTC)
	tests := []struct {
		name     string
		event    m2mauth.AuditEvent
		minLevel slog.Level
		json     string // "" when nothing is written
		text     string
	}{
		{
			name: "issued",
			event: m2mauth.AuditEvent{Time: at, Type: m2mauth.EventTokenIssued, ClientID: "svc", RemoteIP: "192.0.2.1",
				UserAgent: "curl/8.0", Audience: "https://api.example.com", Scopes: m2mauth.Scopes{"read", "write"},
				JTI: "j1", SecretID: "sec_1"},
			json: `{"level":"INFO","msg":"m2mauth audit","event":"token_issued","event_time":"2026-11-23T12:00:00.123456789Z",` +
				`"client_id":"svc","remote_ip":"192.0.2.1","user_agent":"curl/8.0","audience":"https://api.example.com",` +
				`"scope":"read write","jti":"j1","secret_id":"sec_1"}`,
			text: `level=INFO msg="m2mauth audit" event=token_issued event_time=2026-11-23T12:00:00.123Z client_id=svc ` +
				`remote_ip=192.0.2.1 user_agent=curl/8.0 audience=https://api.example.com scope="read write" jti=j1 secret_id=sec_1`,
		},
		{
			name: "refused",
			event: m2mauth.AuditEvent{Time: at, Type: m2mauth.EventAuthFailed, ClientID: "svc", RemoteIP: "192.0.2.1",
				Error: "invalid_client", Reason: m2mauth.ReasonBadSecret},
			json: `{"level":"WARN","msg":"m2mauth audit","event":"client_auth_failed","event_time":"2026-11-23T12:00:00.123456789Z",` +
				`"client_id":"svc","remote_ip":"192.0.2.1","error":"invalid_client","reason":"bad_secret"}`,
			text: `level=WARN msg="m2mauth audit" event=client_auth_failed event_time=2026-11-23T12:00:00.123Z client_id=svc ` +
				`remote_ip=192.0.2.1 error=invalid_client reason=bad_secret`,
		},
		{
			name:  "every field empty",
			event: m2mauth.AuditEvent{Type: m2mauth.EventClientDeleted},
			json:  `{"level":"WARN","msg":"m2mauth audit","event":"` + string(m2mauth.EventClientDeleted) + `","event_time":"0001-01-01T00:00:00Z"}`,
			text:  `level=WARN msg="m2mauth audit" event=` + string(m2mauth.EventClientDeleted) + ` event_time=0001-01-01T00:00:00.000Z`,
		},
		{
			name:     "below the logger's level",
			event:    m2mauth.AuditEvent{Time: at, Type: m2mauth.EventTokenIssued, ClientID: "svc"},
			minLevel: slog.LevelWarn,
		},
	}
	noTime := func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := &slog.HandlerOptions{Level: tc.minLevel, ReplaceAttr: noTime}
			var js, txt bytes.Buffer
			m2mauth.NewSlogAuditor(slog.New(slog.NewJSONHandler(&js, opts))).Audit(t.Context(), tc.event)
			m2mauth.NewSlogAuditor(slog.New(slog.NewTextHandler(&txt, opts))).Audit(t.Context(), tc.event)
			if tc.json == "" {
				assert.Empty(t, js.String())
				assert.Empty(t, txt.String())
				return
			}
			assert.Equal(t, tc.json+"\n", js.String())
			assert.Equal(t, tc.text+"\n", txt.String())
		})
	}

	t.Run("record time and source", func(t *testing.T) {
		var js bytes.Buffer
		a := m2mauth.NewSlogAuditor(slog.New(slog.NewJSONHandler(&js, &slog.HandlerOptions{AddSource: true})))
		before := time.Now()
		for range 2 { // the second call too
			js.Reset()
			a.Audit(context.Background(), m2mauth.AuditEvent{Time: at, Type: m2mauth.EventTokenIssued})
			var rec struct {
				Time   time.Time
				Source slog.Source
			}
			require.NoError(t, json.Unmarshal(js.Bytes(), &rec))
			assert.WithinDuration(t, before, rec.Time, time.Minute)
			assert.True(t, strings.HasSuffix(rec.Source.Function, "m2mauth.(*SlogAuditor).Audit"), "%+v", rec.Source)
			assert.Equal(t, "audit.go", rec.Source.File[strings.LastIndexByte(rec.Source.File, '/')+1:])
		}
	})
}
