package m2mauth_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
)

// FuzzTokenHandler throws arbitrary bodies, content types and
// Authorization headers at the token endpoint: it must never panic and must
// always answer 200 with a token or an RFC 6749 §5.2 JSON error, uncached.
func FuzzTokenHandler(f *testing.F) {
	fx := newFixture(f)
	// Fuzzing runs in several processes, each with its own fixture: the
	// client the seeds authenticate as has a fixed secret, so seeds and
	// their mutations reach issuance in every process.
	const fzSecret = "fuzz-secret-not-random-0123456789"
	fx.addClient(f, "fz", mustHash(f, fzSecret))
	good := basic("fz", fzSecret)
	form := "application/x-www-form-urlencoded"
	for _, seed := range []struct{ body, ct, auth string }{
		{"grant_type=client_credentials&scope=read", form, good},
		{"grant_type=client_credentials", form, good},
		{"grant_type=client_credentials&client_id=fz&client_secret=" + fzSecret, form, ""},
		{`{"grant_type":"client_credentials","scope":"read write"}`, "application/json", good},
		{`{"grant_type":"client_credentials","scope":"read","scope":"x"}`, "application/json", good},
		{`{"a":{"b":[1,2,{"c":null}]}}`, "application/json", good},
		{"grant_type=client_credentials&resource=https%3A%2F%2Fapi.example.com%23f", form, good},
		{"grant_type=client_credentials&scope=%ff%fe", form, good},
		{"%", form, "Basic %%%"},
		{"grant_type=client_credentials", "application/json; charset=utf-16", "bearer x"},
		{"grant_type=client_credentials", form, "Basic " + strings.Repeat("A", 300)},
		{"&&&=&=&grant_type", "multipart/form-data; boundary=\"", ""},
	} {
		f.Add(seed.body, seed.ct, seed.auth, false)
		f.Add(seed.body, seed.ct, seed.auth, true)
	}
	codes := map[string]int{
		"invalid_request": 400, "invalid_client": 401, "unauthorized_client": 400,
		"unsupported_grant_type": 400, "invalid_scope": 400, "invalid_target": 400, "temporarily_unavailable": 429,
	}
	// Each input comes from an address of its own, so earlier inputs'
	// failures never lock later ones out of authentication and issuance.
	var n atomic.Uint32
	// With M2MAUTH_FUZZ_STATS set to a file, each input's status is
	// appended to it, to tell how many inputs reached issuance.
	var stats *os.File
	if path := os.Getenv("M2MAUTH_FUZZ_STATS"); path != "" {
		var err error
		if stats, err = os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err != nil {
			f.Fatal(err)
		}
		defer stats.Close()
	}
	// With asGood set, the Authorization header is the valid one and the
	// Content-Type a valid one for the body, whatever authz and ct hold,
	// so that mutations of the body explore the steps after
	// authentication, up to issuance.
	f.Fuzz(func(t *testing.T, body, ct, authz string, asGood bool) {
		if asGood {
			authz, ct = good, form
			if strings.HasPrefix(body, "{") {
				ct = "application/json"
			}
		}
		r := httptest.NewRequest(http.MethodPost, "https://m2mauth.test/oauth/token", strings.NewReader(body))
		i := n.Add(1)
		r.RemoteAddr = fmt.Sprintf("10.%d.%d.%d:1", byte(i>>16), byte(i>>8), byte(i))
		r.Header.Set("Content-Type", ct)
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		w := httptest.NewRecorder()
		fx.handler.ServeHTTP(w, r)
		if stats != nil {
			fmt.Fprintln(stats, w.Code)
		}
		if w.Header().Get("Cache-Control") != "no-store" || w.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("headers %v", w.Header())
		}
		var resp map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
			t.Fatalf("status %d, body not JSON: %q", w.Code, w.Body)
		}
		if w.Code == http.StatusOK {
			if s, _ := resp["access_token"].(string); s == "" || resp["token_type"] != "Bearer" {
				t.Fatalf("200 without a token: %q", w.Body)
			}
			return
		}
		code, _ := resp["error"].(string)
		want, ok := codes[code]
		if code == "invalid_request" && w.Code == http.StatusRequestEntityTooLarge {
			want = w.Code
		}
		if !ok || want != w.Code {
			t.Fatalf("status %d with error %q: %q", w.Code, code, w.Body)
		}
		if _, ok := resp["error_description"].(string); !ok {
			t.Fatalf("no error_description: %q", w.Body)
		}
	})
}

// FuzzRequireScopes throws arbitrary Authorization header values at a
// protected route: it must never panic and must answer 200, 400, 401 or
// 403, refusals with a JSON error and a Bearer challenge.
func FuzzRequireScopes(f *testing.F) {
	p := newProtected(f)
	good := mint(f, keyB, "k2", "at+jwt", validClaims(p.clock()))
	for _, s := range []string{
		"Bearer " + good, "bearer " + good, "Bearer " + good + "==", "Bearer " + good[:len(good)-1],
		"Bearer", "Bearer ", "Bearer  x", "Basic abc", "", "Bearer a.b.c", "Bearer ..", "Bearer e30.e30.",
		"Bearer eyJhbGciOiJub25lIn0.e30.", "Bearer " + strings.Repeat("A", 5000),
	} {
		f.Add(s)
	}
	h := p.v.RequireScopes("read")(echo)
	f.Fuzz(func(t *testing.T, authz string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header["Authorization"] = []string{authz}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		switch w.Code {
		case 200:
			return
		case 400, 401, 403:
		default:
			t.Fatalf("status %d", w.Code)
		}
		if !strings.HasPrefix(w.Header().Get("WWW-Authenticate"), `Bearer realm="m2mauth"`) {
			t.Fatalf("challenge %q", w.Header().Get("WWW-Authenticate"))
		}
		if w.Header().Get("WWW-Authenticate") == `Bearer realm="m2mauth"` {
			// No bearer credentials: no error information at all
			// (RFC 6750 §3.1).
			if w.Code != 401 || w.Body.Len() != 0 {
				t.Fatalf("status %d, body %q without credentials", w.Code, w.Body)
			}
			return
		}
		var body map[string]string
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body["error"] == "" {
			t.Fatalf("body %q", w.Body)
		}
	})
}
