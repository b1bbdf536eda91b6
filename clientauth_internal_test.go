package m2mauth

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

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

// TestSlowGatePerClient: one client id holds at most a quarter of the
// slow-hash verifications at once (at least one), as
// TokenHandlerConfig.SlowHashConcurrency documents; another id still gets
// its turn meanwhile.
func TestSlowGatePerClient(t *testing.T) {
	for _, tt := range []struct{ n, perClient int }{{1, 1}, {4, 1}, {8, 2}, {16, 4}} {
		t.Run(fmt.Sprint(tt.n), func(t *testing.T) {
			g := newSlowGate(tt.n)
			for i := range tt.perClient {
				require.NoError(t, g.enter(t.Context(), "guessed"), "verification %d", i+1)
			}
			// The id's next verification waits for a turn, here until
			// its request gives up.
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
			defer cancel()
			require.Error(t, g.enter(ctx, "guessed"), "one more for the same id")
			if tt.n > tt.perClient {
				require.NoError(t, g.enter(t.Context(), "other"), "another id")
				g.leave("other")
			}
			for range tt.perClient {
				g.leave("guessed")
			}
			require.NoError(t, g.enter(t.Context(), "guessed"), "after the others left")
			g.leave("guessed")
		})
	}
}
