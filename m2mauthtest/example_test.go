package m2mauthtest_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/m2mauthtest"
)

// t stands for the *testing.T of the test the examples would be written
// in. It ends the example on a failure.
var t testing.TB = exampleT{}

type exampleT struct{ testing.TB }

func (exampleT) Helper() {}

func (exampleT) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }

// builders is an application's handler, mounted behind the middleware.
var builders = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	claims, ok := m2mauth.ClaimsFromContext(r.Context())
	if !ok {
		http.Error(w, "no claims", http.StatusInternalServerError)
		return
	}
	fmt.Fprintf(w, "builders for %s", claims.ClientID)
})

// ExampleIssuer_Token tests a protected route through the real middleware:
// a token with the route's scope is let through, one without it is
// refused with 403.
func ExampleIssuer_Token() {
	iss := m2mauthtest.NewIssuer(t)
	v, err := m2mauth.NewValidator(iss.Keys(), m2mauth.ValidatorConfig{
		Issuer: m2mauthtest.DefaultIssuer, Audience: m2mauthtest.DefaultAudience,
	})
	if err != nil {
		t.Fatalf("validator: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /api/builders", v.RequireScopes("read:builders")(builders))

	r := httptest.NewRequest(http.MethodGet, "/api/builders", nil)
	r.Header.Set("Authorization", "Bearer "+iss.Token(t, "reporting-service",
		m2mauthtest.TokenOptions{Scopes: m2mauth.Scopes{"read:builders"}}))
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	fmt.Println(w.Code, w.Body)

	r.Header.Set("Authorization", "Bearer "+iss.Token(t, "reporting-service",
		m2mauthtest.TokenOptions{Scopes: m2mauth.Scopes{"read:subcontractors"}}))
	w = httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	fmt.Println(w.Code, w.Header().Get("WWW-Authenticate"))
	// Output:
	// 200 builders for reporting-service
	// 403 Bearer realm="m2mauth", error="insufficient_scope", error_description="the access token lacks a required scope", scope="read:builders"
}

// ExampleWithClaims unit-tests a handler that sits behind the middleware,
// with the claims the middleware would pass it and no token at all.
func ExampleWithClaims() {
	claims := m2mauthtest.NewClaims(t, "reporting-service",
		m2mauthtest.TokenOptions{Scopes: m2mauth.Scopes{"read:builders"}})
	r := m2mauthtest.WithClaims(httptest.NewRequest(http.MethodGet, "/api/builders", nil), claims)
	w := httptest.NewRecorder()
	builders.ServeHTTP(w, r)
	fmt.Println(w.Code, w.Body)
	// Output:
	// 200 builders for reporting-service
}
