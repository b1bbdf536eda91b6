package m2mauth

import (
	"encoding/base64"
	"strings"
	"testing"

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
