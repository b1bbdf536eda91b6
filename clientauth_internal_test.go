package m2mauth

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestParseBasicLengths: credentials decode the same whether they fit the
// stack buffers or not (RFC 7617 §2; RFC 6749 §2.3.1 form-encodes the id
// and secret), and malformed ones are invalid_client at any length.
func TestParseBasicLengths(t *testing.T) {
	enc := func(s string) []string { return []string{"Basic " + base64.StdEncoding.EncodeToString([]byte(s))} }
	long := strings.Repeat("a", 300)
	tests := []struct {
		name       string
		header     []string
		id, secret string
		invalid    bool
	}{
		{"short", enc("svc:s3cret"), "svc", "s3cret", false},
		{"at the stack buffer", enc("svc:" + strings.Repeat("b", 188)), "svc", strings.Repeat("b", 188), false},
		{"longer than the stack buffer", enc(long + ":" + long), long, long, false},
		{"escaped, long", enc("svc%3A1:" + long + "%2B"), "svc:1", long + "+", false},
		{"not base64, long", []string{"Basic " + strings.Repeat("!", 400)}, "", "", true},
		{"no colon, long", enc(long), "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cr credentials
			err := parseBasic(tt.header, &cr)
			if tt.invalid {
				require.Error(t, err)
				require.Equal(t, CodeInvalidClient, asError(err).Code)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.id, cr.id)
			require.Equal(t, tt.secret, cr.secret)
		})
	}
}

// TestFormUnescape: formUnescape answers what url.QueryUnescape answers
// (application/x-www-form-urlencoded, RFC 6749 Appendix B), with or
// without something to unescape.
func TestFormUnescape(t *testing.T) {
	for _, in := range []string{
		"", "client_credentials", "read write", "a+b", "+", "%41", "%2B", "%25", "a%20b+c",
		"%", "%4", "%zz", "a%", "a%2", "%%41", "\xff", "caf\u00e9", strings.Repeat("x", 300) + "%",
	} {
		t.Run(in, func(t *testing.T) {
			want, wantErr := url.QueryUnescape(in)
			got, err := formUnescape(in)
			require.Equal(t, wantErr != nil, err != nil, "error %v, url.QueryUnescape's %v", err, wantErr)
			require.Equal(t, want, got)
		})
	}
}

// BenchmarkParseCredentials parses the benchmark token request's Basic
// credentials and form body, as the token handler does.
func BenchmarkParseCredentials(b *testing.B) {
	header := []string{"Basic " + base64.StdEncoding.EncodeToString([]byte("bench-client:"+strings.Repeat("s", 43)))}
	b.ReportAllocs()
	for b.Loop() {
		var req tokenRequest
		if err := parseBasic(header, &req.cred); err != nil {
			b.Fatal(err)
		}
		if err := parseFormParams("grant_type=client_credentials&scope=read", &req); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSlowGateKnownAddress: a client presenting, from an address, the
// secret it proved there is not kept waiting behind guesses at its id from
// other addresses, which fill the id's share; anyone else still is, a
// wrong secret from that address included. What is remembered is bounded,
// and one client with many addresses cannot push the others out.
func TestSlowGateKnownAddress(t *testing.T) {
	g := newSlowGate(4) // a share of one per id
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	g.remember("legacy", "192.0.2.1", "right", now)

	require.NoError(t, g.enter(t.Context(), "legacy", false), "a guess from elsewhere takes the share")
	for _, tc := range []struct {
		name, addr, secret string
		at                 time.Time
		known              bool
	}{
		{"the client's address and secret", "192.0.2.1", "right", now.Add(time.Hour), true},
		{"a wrong secret from the client's address", "192.0.2.1", "guess", now.Add(time.Hour), false},
		{"another address", "198.51.100.7", "right", now.Add(time.Hour), false},
		{"the client's address, a day later", "192.0.2.1", "right", now.Add(knownWindow), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			known := g.isKnown("legacy", tc.addr, tc.secret, tc.at)
			require.Equal(t, tc.known, known)
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
			defer cancel()
			err := g.enter(ctx, "legacy", known)
			if !tc.known {
				require.Error(t, err, "waits behind the guess")
				return
			}
			require.NoError(t, err)
			g.leave("legacy", known)
		})
	}
	g.leave("legacy", false)
	assert.False(t, g.isKnown("other", "192.0.2.1", "right", now), "another id at that address")

	// A client with a whole /48 of addresses keeps only its last few.
	for i := range 20 * maxKnownPerClient {
		g.remember("tenant", fmt.Sprintf("2001:db8:%x::/64", i), "t", now.Add(time.Minute))
	}
	assert.True(t, g.isKnown("legacy", "192.0.2.1", "right", now.Add(2*time.Minute)), "pushed out by another client")
	assert.True(t, g.isKnown("tenant", fmt.Sprintf("2001:db8:%x::/64", 20*maxKnownPerClient-1), "t", now.Add(2*time.Minute)))
	assert.False(t, g.isKnown("tenant", "2001:db8:0::/64", "t", now.Add(2*time.Minute)), "the oldest address gave way")

	// Many clients: bounded.
	for i := range 2 * maxSlowKnown {
		g.remember(fmt.Sprint("c", i), "192.0.2.1", "s", now)
	}
	assert.LessOrEqual(t, len(g.known), maxSlowKnown)
	assert.True(t, g.isKnown(fmt.Sprint("c", 2*maxSlowKnown-1), "192.0.2.1", "s", now), "the newest is kept")
}

// TestSlowGatePerClient: one client id holds at most a quarter of the
// slow-hash verifications at once (at least one), as
// TokenHandlerConfig.SlowHashConcurrency documents; another id still gets
// its turn meanwhile.
func TestSlowGatePerClient(t *testing.T) {
	for _, tt := range []struct{ n, perClient int }{{1, 1}, {4, 1}, {8, 2}, {16, 4}} {
		t.Run(fmt.Sprint(tt.n), func(t *testing.T) {
			g := newSlowGate(tt.n)
			for i := range tt.perClient {
				require.NoError(t, g.enter(t.Context(), "guessed", false), "verification %d", i+1)
			}
			// The id's next verification waits for a turn, here until
			// its request gives up.
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
			defer cancel()
			require.Error(t, g.enter(ctx, "guessed", false), "one more for the same id")
			if tt.n > tt.perClient {
				require.NoError(t, g.enter(t.Context(), "other", false), "another id")
				g.leave("other", false)
			}
			for range tt.perClient {
				g.leave("guessed", false)
			}
			require.NoError(t, g.enter(t.Context(), "guessed", false), "after the others left")
			g.leave("guessed", false)
		})
	}
}

// oneClient is a ClientStore of one client.
type oneClient struct{ c *Client }

func (s oneClient) Client(_ context.Context, id string) (*Client, error) {
	if id != s.c.ID {
		return nil, ErrClientNotFound
	}
	return s.c.Clone(), nil
}

// TestSlowHashKnownAddressServed: while guesses at a slow-hash client's
// id fill its share of the slow-hash turns, the client itself, asking
// from an address it authenticated from before, still gets its token;
// from an address it never used, it waits like the guesses.
func TestSlowHashKnownAddressServed(t *testing.T) {
	hash, err := HashSecretArgon2id("right-secret-0123456789")
	require.NoError(t, err)
	key, err := NewHS256Key("k1", []byte("0123456789abcdef0123456789abcdef"))
	require.NoError(t, err)
	keys, err := NewStaticKeys(key)
	require.NoError(t, err)
	c := &Client{ID: "legacy", Secrets: []Secret{{ID: "s1", Hash: hash}}, Grants: map[string]Scopes{"https://api.example.com": {"read"}}}
	h, err := NewTokenHandler(oneClient{c}, keys, TokenHandlerConfig{
		Issuer: "https://auth.example.com", DefaultAudience: "https://api.example.com",
		StoreTimeout: 200 * time.Millisecond, Auditor: AuditorFunc(func(context.Context, AuditEvent) {}),
	})
	require.NoError(t, err)
	ask := func(addr, id, secret string) int {
		r := httptest.NewRequest(http.MethodPost, "https://auth.example.com/oauth/token", strings.NewReader("grant_type=client_credentials"))
		r.RemoteAddr = addr
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.SetBasicAuth(id, secret)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	require.Equal(t, http.StatusOK, ask("192.0.2.1:1", "legacy", "right-secret-0123456789"), "the client, from its usual address")

	// A guess from elsewhere holds the id's share.
	require.NoError(t, h.auth.slow.enter(t.Context(), "legacy", false))
	defer h.auth.slow.leave("legacy", false)
	assert.Equal(t, http.StatusOK, ask("192.0.2.1:2", "legacy", "right-secret-0123456789"), "from its usual address")
	assert.Equal(t, http.StatusServiceUnavailable, ask("198.51.100.9:1", "legacy", "right-secret-0123456789"), "from a new address, behind the guess")
	// A guess from the client's address waits too, as one at an id that
	// does not exist does: the answer tells neither apart.
	require.NoError(t, h.auth.slow.enter(t.Context(), "nosuch", false))
	defer h.auth.slow.leave("nosuch", false)
	assert.Equal(t, http.StatusServiceUnavailable, ask("192.0.2.1:3", "legacy", "a-guess"), "a wrong secret from its address")
	assert.Equal(t, http.StatusServiceUnavailable, ask("192.0.2.1:4", "nosuch", "a-guess"), "an unknown id from its address")
}
