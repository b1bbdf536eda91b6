package m2mauth_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// revT0 is the instant the revocation tests start from: a watermark set
// 700ms into a second, so whole-second semantics show.
var revT0 = time.Date(2026, 11, 23, 12, 0, 0, 700_000_000, time.UTC)

// TestRevocationsRevoked: a watermark revokes every token whose iat, in
// whole seconds (RFC 7519 §2 NumericDate), is at or before the
// watermark's second; of a store-wide and a client watermark, the later
// decides, whichever it is; a jti on the deny-list is revoked whenever it
// was issued.
func TestRevocationsRevoked(t *testing.T) {
	sec := revT0.Truncate(time.Second) // 12:00:00
	tests := []struct {
		name     string
		revs     *m2mauth.Revocations
		clientID string
		jti      string
		iat      time.Time
		want     bool
	}{
		{name: "nil revokes nothing", revs: nil, clientID: "svc", jti: "j1", iat: sec, want: false},
		{name: "empty revokes nothing", revs: &m2mauth.Revocations{}, clientID: "svc", jti: "j1", iat: sec, want: false},

		{name: "store-wide: issued seconds before", revs: &m2mauth.Revocations{Before: revT0}, clientID: "svc", jti: "j1", iat: sec.Add(-time.Minute), want: true},
		{name: "store-wide: issued in the watermark's second, before it", revs: &m2mauth.Revocations{Before: revT0}, clientID: "svc", jti: "j1", iat: sec, want: true},
		{name: "store-wide: issued in the watermark's second, after it", revs: &m2mauth.Revocations{Before: revT0}, clientID: "svc", jti: "j1", iat: sec.Add(900 * time.Millisecond), want: true},
		{name: "store-wide: issued the next second", revs: &m2mauth.Revocations{Before: revT0}, clientID: "svc", jti: "j1", iat: sec.Add(time.Second), want: false},
		{name: "store-wide: every client", revs: &m2mauth.Revocations{Before: revT0}, clientID: "other", jti: "j9", iat: sec, want: true},

		{name: "client: issued in the watermark's second", revs: &m2mauth.Revocations{Clients: map[string]time.Time{"svc": revT0}}, clientID: "svc", jti: "j1", iat: sec, want: true},
		{name: "client: issued the second before", revs: &m2mauth.Revocations{Clients: map[string]time.Time{"svc": revT0}}, clientID: "svc", jti: "j1", iat: sec.Add(-time.Second), want: true},
		{name: "client: issued the next second", revs: &m2mauth.Revocations{Clients: map[string]time.Time{"svc": revT0}}, clientID: "svc", jti: "j1", iat: sec.Add(time.Second), want: false},
		{name: "client: another client untouched", revs: &m2mauth.Revocations{Clients: map[string]time.Time{"svc": revT0}}, clientID: "other", jti: "j1", iat: sec, want: false},

		{name: "store-wide older, client later: between them is revoked", revs: &m2mauth.Revocations{Before: revT0.Add(-time.Hour), Clients: map[string]time.Time{"svc": revT0}}, clientID: "svc", jti: "j1", iat: sec.Add(-time.Minute), want: true},
		{name: "store-wide older, client later: after both is not", revs: &m2mauth.Revocations{Before: revT0.Add(-time.Hour), Clients: map[string]time.Time{"svc": revT0}}, clientID: "svc", jti: "j1", iat: sec.Add(time.Second), want: false},
		{name: "store-wide older, client later: another client between them is not", revs: &m2mauth.Revocations{Before: revT0.Add(-time.Hour), Clients: map[string]time.Time{"svc": revT0}}, clientID: "other", jti: "j1", iat: sec.Add(-time.Minute), want: false},
		{name: "client older, store-wide later: between them is revoked", revs: &m2mauth.Revocations{Before: revT0, Clients: map[string]time.Time{"svc": revT0.Add(-time.Hour)}}, clientID: "svc", jti: "j1", iat: sec.Add(-time.Minute), want: true},
		{name: "client older, store-wide later: after both is not", revs: &m2mauth.Revocations{Before: revT0, Clients: map[string]time.Time{"svc": revT0.Add(-time.Hour)}}, clientID: "svc", jti: "j1", iat: sec.Add(time.Second), want: false},

		{name: "deny-list: listed jti", revs: &m2mauth.Revocations{Tokens: map[string]time.Time{"j1": revT0.Add(time.Hour)}}, clientID: "svc", jti: "j1", iat: sec.Add(time.Hour), want: true},
		{name: "deny-list: another jti of the same client", revs: &m2mauth.Revocations{Tokens: map[string]time.Time{"j1": revT0.Add(time.Hour)}}, clientID: "svc", jti: "j2", iat: sec, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.revs.Revoked(tc.clientID, tc.jti, tc.iat))
		})
	}
}

// TestRevocationsRevokedAllocs: the check runs on every validation, so
// it must not allocate.
func TestRevocationsRevokedAllocs(t *testing.T) {
	revs := &m2mauth.Revocations{
		Before:  revT0.Add(-time.Hour),
		Clients: map[string]time.Time{"svc": revT0},
		Tokens:  map[string]time.Time{"j1": revT0.Add(time.Hour)},
	}
	iat := revT0.Add(time.Minute)
	allocs := testing.AllocsPerRun(100, func() {
		if revs.Revoked("other", "j2", iat) {
			t.Fatal("revoked")
		}
	})
	assert.Zero(t, allocs)
}

func TestRevocationsLen(t *testing.T) {
	var nilRevs *m2mauth.Revocations
	assert.Zero(t, nilRevs.Len())
	r := &m2mauth.Revocations{
		Before:  revT0,
		Clients: map[string]time.Time{"a": revT0, "b": revT0},
		Tokens:  map[string]time.Time{"j": revT0},
	}
	assert.Equal(t, 4, r.Len())
	r.Before = time.Time{}
	assert.Equal(t, 3, r.Len())
}

// TestWatermarkLive: a watermark can revoke a valid token until every
// token issued before it has expired, plus the grace a validator's
// leeway may add: MaxClientTokenTTL + RevocationGrace, bounds included.
func TestWatermarkLive(t *testing.T) {
	life := m2mauth.MaxClientTokenTTL + m2mauth.RevocationGrace
	tests := []struct {
		name string
		at   time.Time
		now  time.Time
		want bool
	}{
		{"zero is no watermark", time.Time{}, revT0, false},
		{"just set", revT0, revT0, true},
		{"set in the future", revT0.Add(time.Minute), revT0, true},
		{"a token lifetime later", revT0, revT0.Add(m2mauth.MaxClientTokenTTL), true},
		{"at the end of the grace", revT0, revT0.Add(life), true},
		{"a nanosecond past it", revT0, revT0.Add(life + time.Nanosecond), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, m2mauth.WatermarkLive(tc.at, tc.now))
		})
	}
}

// TestDenyLive: a deny-list entry is kept until RevocationGrace past the
// token's expiry, bounds included.
func TestDenyLive(t *testing.T) {
	exp := revT0.Add(time.Hour)
	tests := []struct {
		name string
		now  time.Time
		want bool
	}{
		{"before expiry", revT0, true},
		{"at expiry", exp, true},
		{"within the grace", exp.Add(m2mauth.RevocationGrace - time.Second), true},
		{"at the end of the grace", exp.Add(m2mauth.RevocationGrace), true},
		{"a nanosecond past it", exp.Add(m2mauth.RevocationGrace + time.Nanosecond), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, m2mauth.DenyLive(exp, tc.now))
		})
	}
}

// TestRevocationsPruned: Pruned drops exactly the entries that can no
// longer revoke a valid token, keeps the Version, and leaves the
// original, which may be shared, as it was.
func TestRevocationsPruned(t *testing.T) {
	life := m2mauth.MaxClientTokenTTL + m2mauth.RevocationGrace
	now := revT0.Add(48 * time.Hour)
	orig := &m2mauth.Revocations{
		Version: 42,
		Before:  now.Add(-life - time.Second), // dead
		Clients: map[string]time.Time{
			"dead":  now.Add(-life - time.Second),
			"edge":  now.Add(-life), // the last instant it lives
			"fresh": now.Add(-time.Minute),
		},
		Tokens: map[string]time.Time{
			"expired-long-ago": now.Add(-m2mauth.RevocationGrace - time.Second),
			"within-grace":     now.Add(-m2mauth.RevocationGrace),
			"valid":            now.Add(time.Hour),
		},
	}
	p := orig.Pruned(now)
	assert.Equal(t, int64(42), p.Version)
	assert.True(t, p.Before.IsZero(), "the store-wide watermark is dead")
	assert.Equal(t, map[string]time.Time{"edge": now.Add(-life), "fresh": now.Add(-time.Minute)}, p.Clients)
	assert.Equal(t, map[string]time.Time{"within-grace": now.Add(-m2mauth.RevocationGrace), "valid": now.Add(time.Hour)}, p.Tokens)
	assert.Equal(t, 4, p.Len())
	assert.Equal(t, 7, orig.Len(), "the original is untouched")

	live := &m2mauth.Revocations{Version: 1, Before: now.Add(-time.Hour)}
	assert.Equal(t, live.Before, live.Pruned(now).Before, "a live store-wide watermark stays")

	var nilRevs *m2mauth.Revocations
	empty := nilRevs.Pruned(now)
	require.NotNil(t, empty)
	assert.NotNil(t, empty.Clients)
	assert.NotNil(t, empty.Tokens)
	assert.Zero(t, empty.Len())
}
