package memstore

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// TestClientTable runs random puts and removes of records of every size
// against a map, and checks after each step that the table holds what the
// map does, in at most about twice its live bytes; once with the real
// hash, once with hashes that collide all the time.
func TestClientTable(t *testing.T) {
	hashes := []struct {
		name string
		hash func(string) uint64
	}{
		{"maphash", nil},
		{"colliding", func(id string) uint64 { return uint64(len(id) % 3) }},
	}
	for _, h := range hashes {
		t.Run(h.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			tab := newClientTable()
			if h.hash != nil {
				tab.hash = h.hash
			}
			model := map[string][]byte{}
			for step := range 20_000 {
				id := fmt.Sprintf("c%d", rng.IntN(300))
				if rng.IntN(4) == 0 {
					_, had := model[id]
					assert.Equal(t, had, tab.remove(id), "remove %q", id)
					delete(model, id)
				} else {
					size := 1 + rng.IntN(600)
					switch rng.IntN(100) {
					case 0:
						size = chunkSize/8 + rng.IntN(7) - 5 // a chunk of its own, or nearly
					case 1:
						size = chunkSize/8 + rng.IntN(chunkSize)
					}
					rec := append([]byte(nil), appendString(nil, id)...)
					rec = append(rec, strings.Repeat(string(rune('a'+step%26)), size)...)
					tab.put(id, rec)
					model[id] = rec
				}
				if step%97 == 0 || step > 19_900 {
					checkTable(t, &tab, model)
				}
			}
		})
	}
}

// checkTable checks that tab holds exactly model, in at most about twice
// its bytes.
func checkTable(t *testing.T, tab *clientTable, model map[string][]byte) {
	t.Helper()
	live := 0
	for id, rec := range model {
		got, ok := tab.get(id)
		require.True(t, ok, "get %q", id)
		require.Equal(t, rec, got, "record of %q", id)
		live += uvarintLen(uint64(len(rec))) + len(rec)
	}
	_, ok := tab.get("absent")
	require.False(t, ok)
	ids := []string{}
	tab.each(func(id []byte) { ids = append(ids, string(id)) })
	slices.Sort(ids)
	want := make([]string, 0, len(model))
	for id := range model {
		want = append(want, id)
	}
	slices.Sort(want)
	require.Equal(t, want, ids)
	used, dead, held := 0, 0, 0
	for _, c := range tab.chunks {
		used += len(c.b)
		dead += c.dead
		held += cap(c.b)
	}
	require.Equal(t, live, used-dead, "bytes used less dead bytes")
	require.LessOrEqual(t, held, 2*live*8/7+2*chunkSize, "bytes held, with %d live", live)
}

// TestClientEncoding: a client decodes to what was encoded, nil and empty
// slices and maps apart; times keep their instant and zone, and, in UTC
// or Local without a monotonic reading, their very representation.
func TestClientEncoding(t *testing.T) {
	zone := time.FixedZone("XYZ", -(3*3600 + 1800))
	at := time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.UTC)
	tests := []struct {
		name string
		c    *m2mauth.Client
	}{
		{"bare", &m2mauth.Client{ID: "a"}},
		{"empty, not nil", &m2mauth.Client{ID: "a", Secrets: []m2mauth.Secret{}, Grants: map[string]m2mauth.Scopes{}}},
		{"every field", &m2mauth.Client{
			ID: strings.Repeat("x", 255),
			Secrets: []m2mauth.Secret{
				{ID: "s1", Hash: "$sha256$salt$digest", CreatedAt: at, ExpiresAt: at.Add(time.Hour)},
				{ID: "s2", Hash: "$2b$12$" + strings.Repeat("h", 53), CreatedAt: at.Local()},
			},
			Grants: map[string]m2mauth.Scopes{
				"https://a.example": {"read", "write"},
				"https://b.example": {},
				"https://c.example": nil,
			},
			Public: true, Disabled: true, CanIntrospect: true,
			TokenTTL:        90 * time.Minute,
			TokensRevokedAt: at.Add(-time.Hour).Local(),
			CreatedAt:       time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
			UpdatedAt:       time.Date(-400, 1, 1, 0, 0, 0, 0, time.UTC),
		}},
	}
	tests = append(tests, []struct {
		name string
		c    *m2mauth.Client
	}{
		{"one secret, four scopes: the shape decoded in one block", &m2mauth.Client{
			ID:      "a",
			Secrets: []m2mauth.Secret{{ID: "s1", Hash: "$sha256$salt$digest", CreatedAt: at}},
			Grants:  map[string]m2mauth.Scopes{"https://a.example": {"read", "write"}, "https://b.example": {"x", "y"}},
		}},
		{"more scopes than the block holds", &m2mauth.Client{
			ID:      "a",
			Secrets: []m2mauth.Secret{{ID: "s1", Hash: "$sha256$salt$digest", CreatedAt: at}},
			Grants:  map[string]m2mauth.Scopes{"https://a.example": {"read", "write", "admin"}, "https://b.example": {"x", "y"}, "https://c.example": {"z"}},
		}},
	}...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := decodeClient(string(encodeClient(nil, tc.c)))
			assert.Equal(t, tc.c, got)
		})
	}

	t.Run("appending to one slice reaches no other", func(t *testing.T) {
		c := &m2mauth.Client{
			ID:      "a",
			Secrets: []m2mauth.Secret{{ID: "s1", Hash: "h"}},
			Grants:  map[string]m2mauth.Scopes{"https://a.example": {"read"}, "https://b.example": {"x", "y"}, "https://c.example": {}},
		}
		got := decodeClient(string(encodeClient(nil, c)))
		for aud := range got.Grants {
			_ = append(got.Grants[aud], "appended")
		}
		_ = append(got.Secrets, m2mauth.Secret{ID: "appended"})
		assert.Equal(t, c, got)
	})

	t.Run("other zone and monotonic reading", func(t *testing.T) {
		now := time.Now()
		c := &m2mauth.Client{ID: "a", CreatedAt: at.In(zone), UpdatedAt: now}
		got := decodeClient(string(encodeClient(nil, c)))
		assert.True(t, got.CreatedAt.Equal(c.CreatedAt))
		assert.Equal(t, c.CreatedAt.String(), got.CreatedAt.String())
		assert.Equal(t, now.Round(0), got.UpdatedAt)
	})
}
