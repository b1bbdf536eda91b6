package m2mauth_test

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// TestTransportSecurity: RFC 6749 §1.6 and §3.2 require TLS at the token
// endpoint (and RFC 6750 §5.3 for the tokens it sends back). A request
// that did not arrive over TLS is refused with invalid_request, unless it
// comes from this machine or a trusted proxy says the client used https;
// responses over TLS carry Strict-Transport-Security (RFC 6797).
func TestTransportSecurity(t *testing.T) {
	proxies := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	tests := []struct {
		name     string
		remote   string
		tls      bool
		trusted  []netip.Prefix
		header   string
		headers  []string
		insecure bool
		status   int
		hsts     bool
	}{
		{name: "TLS from anywhere", remote: "198.51.100.7:443", tls: true, status: 200, hsts: true},
		{name: "plain HTTP from a remote peer", remote: "198.51.100.7:80", status: 400},
		{name: "plain HTTP from loopback (development)", remote: "127.0.0.1:5000", status: 200},
		{name: "plain HTTP from IPv6 loopback", remote: "[::1]:5000", status: 200},
		{name: "plain HTTP, AllowInsecureHTTP", remote: "198.51.100.7:80", insecure: true, status: 200},
		{name: "untrusted peer claiming https", remote: "198.51.100.7:80", headers: []string{"X-Forwarded-Proto", "https"}, status: 400},
		{name: "untrusted peer claiming https, Forwarded", remote: "198.51.100.7:80", headers: []string{"Forwarded", "for=192.0.2.1;proto=https"}, status: 400},
		{name: "trusted proxy says https", remote: "10.0.0.5:80", trusted: proxies, header: m2mauth.HeaderXForwardedFor,
			headers: []string{"X-Forwarded-For", "192.0.2.1", "X-Forwarded-Proto", "https"}, status: 200, hsts: true},
		{name: "trusted proxy says http", remote: "10.0.0.5:80", trusted: proxies, header: m2mauth.HeaderXForwardedFor,
			headers: []string{"X-Forwarded-For", "192.0.2.1", "X-Forwarded-Proto", "http"}, status: 400},
		{name: "trusted proxy says nothing", remote: "10.0.0.5:80", trusted: proxies, header: m2mauth.HeaderXForwardedFor,
			headers: []string{"X-Forwarded-For", "192.0.2.1"}, status: 400},
		{name: "nearest proxy's scheme wins", remote: "10.0.0.5:80", trusted: proxies, header: m2mauth.HeaderXForwardedFor,
			headers: []string{"X-Forwarded-For", "192.0.2.1", "X-Forwarded-Proto", "https, http"}, status: 400},
		{name: "trusted proxy, Forwarded proto=https", remote: "10.0.0.5:80", trusted: proxies, header: m2mauth.HeaderForwarded,
			headers: []string{"Forwarded", "for=192.0.2.1;proto=https"}, status: 200, hsts: true},
		{name: "Forwarded proxy ignores X-Forwarded-Proto", remote: "10.0.0.5:80", trusted: proxies, header: m2mauth.HeaderForwarded,
			headers: []string{"Forwarded", "for=192.0.2.1;proto=http", "X-Forwarded-Proto", "https"}, status: 400},
		{name: "loopback proxy: its header decides, not loopback", remote: "127.0.0.1:80", trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			header: m2mauth.HeaderXForwardedFor, headers: []string{"X-Forwarded-For", "192.0.2.1", "X-Forwarded-Proto", "http"}, status: 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(c *m2mauth.TokenHandlerConfig) {
				c.TrustedProxies, c.ForwardedHeader, c.AllowInsecureHTTP = tc.trusted, tc.header, tc.insecure
			})
			r := httptest.NewRequest(http.MethodPost, "/oauth/token", strings.NewReader("grant_type=client_credentials"))
			if tc.tls {
				r.TLS = &tls.ConnectionState{HandshakeComplete: true}
			}
			r.RemoteAddr = tc.remote
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			r.Header.Set("Authorization", basic("svc", f.secret))
			for i := 0; i+1 < len(tc.headers); i += 2 {
				r.Header.Add(tc.headers[i], tc.headers[i+1])
			}
			w := httptest.NewRecorder()
			f.handler.ServeHTTP(w, r)
			require.Equal(t, tc.status, w.Code, w.Body.String())
			if tc.hsts {
				assert.Equal(t, "max-age=31536000", w.Header().Get("Strict-Transport-Security"))
			} else {
				assert.Empty(t, w.Header().Get("Strict-Transport-Security"))
			}
			if tc.status == 400 {
				assert.JSONEq(t, `{"error":"invalid_request","error_description":"this endpoint accepts only HTTPS requests (RFC 6749 section 3.2)"}`, w.Body.String())
				ev := f.lastEvent(t)
				assert.Equal(t, m2mauth.EventRequestRejected, ev.Type)
				assert.Equal(t, m2mauth.ReasonInsecureTransport, ev.Reason)
			}
		})
	}
}

// TestTransportSecurityOverHTTP runs the same rule over real connections:
// a TLS server, and a plain one reached over loopback.
func TestTransportSecurityOverHTTP(t *testing.T) {
	f := newFixture(t)
	form := url.Values{"grant_type": {"client_credentials"}}
	for _, tc := range []struct {
		name string
		srv  *httptest.Server
		hsts bool
	}{
		{"TLS", httptest.NewTLSServer(f.handler), true},
		{"plain HTTP over loopback", httptest.NewServer(f.handler), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.srv.Close()
			req, err := http.NewRequest(http.MethodPost, tc.srv.URL, strings.NewReader(form.Encode()))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.SetBasicAuth("svc", f.secret)
			resp, err := tc.srv.Client().Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, 200, resp.StatusCode)
			assert.Equal(t, tc.hsts, resp.Header.Get("Strict-Transport-Security") != "")
		})
	}
}

// TestForwardingHeadersWarning: requests from a private address that carry
// forwarding headers while no proxy is trusted mean a proxy is probably in
// front and every client shares its address; the handler says so once.
func TestForwardingHeadersWarning(t *testing.T) {
	var logs bytes.Buffer
	f := newFixture(t, func(c *m2mauth.TokenHandlerConfig) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	send := func(remote string, headers ...string) {
		r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader("grant_type=client_credentials"))
		r.RemoteAddr = remote
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Authorization", basic("svc", f.secret))
		for i := 0; i+1 < len(headers); i += 2 {
			r.Header.Add(headers[i], headers[i+1])
		}
		f.handler.ServeHTTP(httptest.NewRecorder(), r)
	}
	send("10.1.2.3:1")
	send("198.51.100.1:1", "X-Forwarded-For", "192.0.2.1")
	assert.Empty(t, logs.String(), "no headers, or a public peer: nothing to say")
	send("10.1.2.3:1", "X-Forwarded-For", "192.0.2.1")
	send("10.1.2.3:1", "X-Forwarded-For", "192.0.2.2")
	assert.Equal(t, 1, strings.Count(logs.String(), "TrustedProxies is empty"), logs.String())
	assert.Contains(t, logs.String(), "level=WARN")
}

// TestTrustEveryAddressWarning: trusting every address as a proxy lets
// any client claim HTTPS (RFC 6749 §1.6) and pick the address the rate
// limiter (§10.10) and the audit trail see; the handler warns of it when
// made.
func TestTrustEveryAddressWarning(t *testing.T) {
	tests := []struct {
		trusted []string
		warned  bool
	}{
		{[]string{"10.0.0.0/8", "192.168.0.0/16"}, false},
		{[]string{"0.0.0.0/0"}, true},
		{[]string{"10.0.0.0/8", "::/0"}, true},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.trusted, ","), func(t *testing.T) {
			var logs bytes.Buffer
			newFixture(t, func(c *m2mauth.TokenHandlerConfig) {
				c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
				c.ForwardedHeader = m2mauth.HeaderXForwardedFor
				for _, p := range tt.trusted {
					c.TrustedProxies = append(c.TrustedProxies, netip.MustParsePrefix(p))
				}
			})
			require.Equal(t, tt.warned, strings.Contains(logs.String(), "trusts every address"), logs.String())
		})
	}
}

// TestValidatorClientAddress: the validator's audit events name the
// client behind a trusted proxy, found by the same rules as the token
// endpoint's, and ignore forwarding headers from anyone else.
func TestValidatorClientAddress(t *testing.T) {
	proxies := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	tests := []struct {
		name    string
		trusted []netip.Prefix
		header  string
		remote  string
		xff     string
		want    string
	}{
		{"no proxy", nil, "", "198.51.100.7:1", "192.0.2.1", "198.51.100.7"},
		{"trusted proxy", proxies, m2mauth.HeaderXForwardedFor, "10.0.0.5:1", "192.0.2.1", "192.0.2.1"},
		{"untrusted peer", proxies, m2mauth.HeaderXForwardedFor, "198.51.100.7:1", "192.0.2.1", "198.51.100.7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newProtected(t, func(c *m2mauth.ValidatorConfig) {
				c.TrustedProxies, c.ForwardedHeader = tc.trusted, tc.header
			})
			r := httptest.NewRequest(http.MethodGet, "/api", nil)
			r.RemoteAddr = tc.remote
			r.Header.Set("X-Forwarded-For", tc.xff)
			r.Header.Set("Authorization", "Bearer not.a.token")
			w := httptest.NewRecorder()
			p.v.RequireScopes("read")(http.NotFoundHandler()).ServeHTTP(w, r)
			require.Equal(t, 401, w.Code)
			p.mu.Lock()
			defer p.mu.Unlock()
			require.NotEmpty(t, p.events)
			assert.Equal(t, tc.want, p.events[len(p.events)-1].RemoteIP)
		})
	}
	_, err := m2mauth.NewValidator(newProtected(t).keys, m2mauth.ValidatorConfig{Issuer: testIssuer, Audience: testAudience, TrustedProxies: proxies})
	assert.ErrorContains(t, err, "ForwardedHeader")
}
