package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	jwtmiddleware "github.com/auth0/go-jwt-middleware/v2"
	"github.com/auth0/go-jwt-middleware/v2/validator"
	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"github.com/golang-jwt/jwt/v5"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	jwxjwt "github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/m2mauth/m2mauth"
)

// Route is one protected route under test: GET /api/builders answering
// 204 behind a bearer-token check that requires the scope "read".
type Route struct {
	// Name identifies the implementation in benchmark names and tables.
	Name string
	// Handler is the route with its token check.
	Handler http.Handler
}

// Serve sends GET /api/builders with token to the route in process and
// returns the recorded answer.
func (rt Route) Serve(token string) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	rt.Handler.ServeHTTP(w, NewRouteRequest(token))
	return w
}

// RouteMaker builds one implementation's protected route.
type RouteMaker struct {
	Name string
	New  func() (Route, error)
}

// Names of the protected routes.
const (
	RouteBare            = "bare"
	RouteHandoff         = "handoff"
	RouteFloor           = "floor"
	RouteM2MAuthCached   = "m2mauth-cached"
	RouteM2MAuthUncached = "m2mauth-uncached"
	RouteAuth0           = "auth0"
	RouteGolangJWT       = "golang-jwt"
	RouteGolangJWTTyped  = "golang-jwt-typed"
	RouteJWX             = "jwx"
)

// Routes lists every protected route, the references first.
func Routes() []RouteMaker {
	return []RouteMaker{
		{Name: RouteBare, New: func() (Route, error) { return Route{Name: RouteBare, Handler: bareRoute()}, nil }},
		{Name: RouteHandoff, New: NewHandoffRoute},
		{Name: RouteFloor, New: NewFloorRoute},
		{Name: RouteM2MAuthCached, New: func() (Route, error) { return NewM2MAuthRoute(0) }},
		{Name: RouteM2MAuthUncached, New: func() (Route, error) { return NewM2MAuthRoute(-1) }},
		{Name: RouteAuth0, New: NewAuth0Route},
		{Name: RouteGolangJWT, New: func() (Route, error) { return NewGolangJWTRoute(false) }},
		{Name: RouteGolangJWTTyped, New: func() (Route, error) { return NewGolangJWTRoute(true) }},
		{Name: RouteJWX, New: NewJWXRoute},
	}
}

// bareRoute is the protected route itself, without a check: the harness
// cost.
func bareRoute() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
}

// NewHandoffRoute is the cost of handing a token's claims to the route
// without checking the token: a middleware that reads the Authorization
// header, puts the claims of m2mauth's token into the request's context
// with m2mauth.ContextWithClaims, as RequireScopes does once it accepts
// a token, and calls the route with the request carrying them. It checks
// nothing. Between it and the bare route is what any middleware that
// gives the route the claims through the request's context costs; between
// it and m2mauth's cache hit is the check itself.
func NewHandoffRoute() (Route, error) {
	tok, err := IssueToken()
	if err != nil {
		return Route{}, err
	}
	keys, err := m2mauthKeys()
	if err != nil {
		return Route{}, err
	}
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{Issuer: Issuer, Audience: Audience})
	if err != nil {
		return Route{}, err
	}
	claims, err := v.Validate(context.Background(), tok)
	if err != nil {
		return Route{}, err
	}
	next := bareRoute()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.Header["Authorization"]) != 1 {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r.WithContext(m2mauth.ContextWithClaims(r.Context(), claims)))
	})
	return Route{Name: RouteHandoff, Handler: h}, nil
}

// NewM2MAuthRoute guards the route with m2mauth's RequireScopes("read").
// cacheSize is ValidatorConfig.CacheSize: 0 for the default cache, -1 to
// verify every token from scratch.
func NewM2MAuthRoute(cacheSize int) (Route, error) {
	keys, err := m2mauthKeys()
	if err != nil {
		return Route{}, err
	}
	v, err := m2mauth.NewValidator(keys, m2mauth.ValidatorConfig{
		Issuer: Issuer, Audience: Audience, CacheSize: cacheSize,
	})
	if err != nil {
		return Route{}, err
	}
	name := RouteM2MAuthCached
	if cacheSize < 0 {
		name = RouteM2MAuthUncached
	}
	return Route{Name: name, Handler: v.RequireScopes(Scope)(bareRoute())}, nil
}

// NewFloorRoute is a minimal hand-written check with go-jose: ParseSigned,
// Claims, Expected validation and a scope check. It is
// BenchmarkRequireScopesFloor of the root benchmarks.
func NewFloorRoute() (Route, error) {
	key := Key()
	next := bareRoute()
	type claims struct {
		josejwt.Claims
		Scope string `json:"scope"`
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		t, err := josejwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.HS256})
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var c claims
		if err := t.Claims(key, &c); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if err := c.Claims.Validate(josejwt.Expected{Issuer: Issuer, AnyAudience: josejwt.Audience{Audience}, Time: time.Now()}); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if !hasScope(c.Scope, Scope) {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
	return Route{Name: RouteFloor, Handler: h}, nil
}

// auth0Claims carries the scope claim through auth0's validator.
type auth0Claims struct {
	Scope string `json:"scope"`
}

func (*auth0Claims) Validate(context.Context) error { return nil }

// NewAuth0Route guards the route with auth0/go-jwt-middleware v2:
// validator.New (HS256, issuer, audience, the scope as a custom claim)
// wrapped by jwtmiddleware.New(...).CheckJWT, and the scope checked in the
// route.
func NewAuth0Route() (Route, error) {
	key := Key()
	v, err := validator.New(
		func(context.Context) (any, error) { return key, nil },
		validator.HS256, Issuer, []string{Audience},
		validator.WithCustomClaims(func() validator.CustomClaims { return &auth0Claims{} }),
	)
	if err != nil {
		return Route{}, err
	}
	next := bareRoute()
	route := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := r.Context().Value(jwtmiddleware.ContextKey{}).(*validator.ValidatedClaims)
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if cc, ok := c.CustomClaims.(*auth0Claims); !ok || !hasScope(cc.Scope, Scope) {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
	return Route{Name: RouteAuth0, Handler: jwtmiddleware.New(v.ValidateToken).CheckJWT(route)}, nil
}

// golangJWTClaims are the typed claims of the golang-jwt variant.
type golangJWTClaims struct {
	jwt.RegisteredClaims
	Scope string `json:"scope"`
}

// NewGolangJWTRoute guards the route with golang-jwt/jwt v5 as a
// middleware: jwt.Parse into MapClaims with WithValidMethods HS256,
// WithIssuer and WithAudience, then a scope check; or, with typed, a
// parser built once and ParseWithClaims into a struct, its faster form.
func NewGolangJWTRoute(typed bool) (Route, error) {
	key := Key()
	keyFunc := func(*jwt.Token) (any, error) { return key, nil }
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{"HS256"}),
		jwt.WithIssuer(Issuer),
		jwt.WithAudience(Audience),
	}
	next := bareRoute()
	var scope func(raw string) (string, error)
	name := RouteGolangJWT
	if typed {
		name = RouteGolangJWTTyped
		parser := jwt.NewParser(opts...)
		scope = func(raw string) (string, error) {
			var c golangJWTClaims
			if _, err := parser.ParseWithClaims(raw, &c, keyFunc); err != nil {
				return "", err
			}
			return c.Scope, nil
		}
	} else {
		scope = func(raw string) (string, error) {
			t, err := jwt.Parse(raw, keyFunc, opts...)
			if err != nil {
				return "", err
			}
			s, _ := t.Claims.(jwt.MapClaims)["scope"].(string)
			return s, nil
		}
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		s, err := scope(raw)
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if !hasScope(s, Scope) {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
	return Route{Name: name, Handler: h}, nil
}

// NewJWXRoute guards the route with lestrrat-go/jwx v3 as a middleware,
// the way its documentation shows: the key imported once as a JWK, then
// for each request jwt.Parse with jwt.WithKey (HS256),
// jwt.WithValidate(true), jwt.WithIssuer and jwt.WithAudience (exp, nbf
// and iat are checked by default), and the scope read with Token.Get.
// With jwt.WithKey, jwx does not compare the token's kid with the key's.
func NewJWXRoute() (Route, error) {
	key, err := jwk.Import(Key())
	if err != nil {
		return Route{}, err
	}
	opts := []jwxjwt.ParseOption{
		jwxjwt.WithKey(jwa.HS256(), key),
		jwxjwt.WithValidate(true),
		jwxjwt.WithIssuer(Issuer),
		jwxjwt.WithAudience(Audience),
	}
	next := bareRoute()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		t, err := jwxjwt.Parse([]byte(raw), opts...)
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var s string
		if err := t.Get("scope", &s); err != nil || !hasScope(s, Scope) {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
	return Route{Name: RouteJWX, Handler: h}, nil
}

// NewRoute builds the named route.
func NewRoute(name string) (Route, error) {
	for _, m := range Routes() {
		if m.Name == name {
			return m.New()
		}
	}
	return Route{}, fmt.Errorf("bench: unknown route %q", name)
}
