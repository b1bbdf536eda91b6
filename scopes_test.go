package m2mauth_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// TestParseScopes checks the scope syntax of RFC 6749 §3.3:
// scope-token = 1*NQCHAR, tokens separated by single spaces.
func TestParseScopes(t *testing.T) {
	tests := []struct {
		in      string
		want    m2mauth.Scopes
		wantErr bool
	}{
		{in: "", want: nil},
		{in: "read", want: m2mauth.Scopes{"read"}},
		{in: "read write", want: m2mauth.Scopes{"read", "write"}},
		{in: "write read write", want: m2mauth.Scopes{"write", "read"}},
		{in: "read:builders !#$%&'()*+,-./:;<=>?@[]^_`{|}~", want: m2mauth.Scopes{"read:builders", "!#$%&'()*+,-./:;<=>?@[]^_`{|}~"}},
		{in: " read", wantErr: true},
		{in: "read ", wantErr: true},
		{in: "read  write", wantErr: true},
		{in: "re\"ad", wantErr: true},
		{in: `re\ad`, wantErr: true},
		{in: "read\twrite", wantErr: true},
		{in: "lé", wantErr: true},
		{in: "a\x00", wantErr: true},
		{in: "a\x7f", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := m2mauth.ParseScopes(tc.in)
			if tc.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			if len(tc.want) > 0 {
				back, err := m2mauth.ParseScopes(got.String())
				require.NoError(t, err)
				assert.Equal(t, got, back)
			}
		})
	}
}

func TestScopesMatching(t *testing.T) {
	s, err := m2mauth.NewScopes("read", "write", "read")
	require.NoError(t, err)
	assert.Equal(t, m2mauth.Scopes{"read", "write"}, s)
	_, err = m2mauth.NewScopes("bad scope")
	assert.Error(t, err)

	assert.True(t, s.Has("read"))
	assert.False(t, s.Has("READ"), "scopes are case-sensitive")
	assert.True(t, s.HasAll(m2mauth.Scopes{"write", "read"}))
	assert.True(t, s.HasAll(nil))
	assert.False(t, s.HasAll(m2mauth.Scopes{"read", "admin"}))
	assert.True(t, s.HasAny(m2mauth.Scopes{"admin", "write"}))
	assert.False(t, s.HasAny(nil))
	assert.Equal(t, m2mauth.Scopes{"admin"}, s.Missing(m2mauth.Scopes{"read", "admin"}))
	assert.Nil(t, s.Missing(m2mauth.Scopes{"read"}))

	c := s.Clone()
	c[0] = "changed"
	assert.Equal(t, "read", s[0], "Clone does not alias")
}
