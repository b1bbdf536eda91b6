package m2mauth

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestErrorDescriptionCharset: RFC 6749 §5.2 and RFC 6750 §3 allow only
// %x20-21 / %x23-5B / %x5D-7E in error_description; whatever a
// description holds, the JSON body carries only those.
func TestErrorDescriptionCharset(t *testing.T) {
	tests := []struct{ in, want string }{
		{"client authentication failed", "client authentication failed"},
		{`parameter a"b\c is repeated`, "parameter a?b?c is repeated"},
		{"caf\u00e9\n\tend\x7f", "caf????end?"},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			body := appendErrorJSON(nil, NewError(CodeInvalidRequest, tt.in))
			var got struct {
				Error       string `json:"error"`
				Description string `json:"error_description"`
			}
			require.NoError(t, json.Unmarshal(body, &got), "%s", body)
			assert.Equal(t, CodeInvalidRequest, got.Error)
			assert.Equal(t, tt.want, got.Description)
			for _, c := range []byte(got.Description) {
				assert.True(t, c == 0x20 || c == 0x21 || (c >= 0x23 && c <= 0x5b) || (c >= 0x5d && c <= 0x7e), "byte %#x", c)
			}
		})
	}
}
