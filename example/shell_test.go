package main

import (
	"os/exec"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestShellQuote: /bin/sh reads each quoted word back as the string
// quoted, whatever it holds.
func TestShellQuote(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"empty", "", `''`},
		{"plain", "m2mauth.db", `'m2mauth.db'`},
		{"apostrophe", "demo-client:<the demo client's secret>", `'demo-client:<the demo client'\''s secret>'`},
		{"only quotes", "''", `''\'''\'''`},
		{"spaces", "read:builders read:subcontractors", `'read:builders read:subcontractors'`},
		{"expansions", "$HOME `id` $(id) ${x} * ? [a] ~ !", ""},
		{"backslashes and double quotes", `a\"b\\c"`, ""},
		{"separators", "a;b&c|d>e<f#g", ""},
		{"newline and tab", "a\nb\tc", ""},
		{"URL", "postgres://u:p@h:5432/d?sslmode=disable&x=1", ""},
		{"IPv6 URL", "http://[::1]:8080/oauth/token", ""},
		{"UTF-8", "clé", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := shellQuote(tc.in)
			if tc.want != "" {
				assert.Equal(t, tc.want, q)
			}
			out, err := exec.Command("/bin/sh", "-c", "printf %s "+q).Output()
			require.NoError(t, err, "sh -c 'printf %%s %s'", q)
			assert.Equal(t, tc.in, string(out))

			// One word, even beside others.
			out, err = exec.Command("/bin/sh", "-c", `set -- x`+q+`y z; printf '%s|' "$#" "$@"`).Output()
			require.NoError(t, err)
			assert.Equal(t, "2|x"+tc.in+"y|z|", string(out))
		})
	}
}
