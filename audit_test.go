package m2mauth_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
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
