// Package m2mauthtest provides helpers for testing applications that
// protect their routes with an [m2mauth.Validator], in the spirit of
// net/http/httptest: a real access token in one call, and a request
// context carrying claims in another.
//
// To test a protected route end to end, build the application's validator
// from an [Issuer]'s keys and send a token it minted:
//
//	iss := m2mauthtest.NewIssuer(t)
//	v, err := m2mauth.NewValidator(iss.Keys(), m2mauth.ValidatorConfig{
//		Issuer: m2mauthtest.DefaultIssuer, Audience: m2mauthtest.DefaultAudience,
//	})
//	require.NoError(t, err)
//	h := v.RequireScopes("read:builders")(builders)
//
//	r := httptest.NewRequest("GET", "/api/builders", nil)
//	r.Header.Set("Authorization", "Bearer "+iss.Token(t, "reporting-service",
//		m2mauthtest.TokenOptions{Scopes: m2mauth.Scopes{"read:builders"}}))
//	w := httptest.NewRecorder()
//	h.ServeHTTP(w, r)
//
// The token is not an imitation: [Issuer.Token] runs a real
// [m2mauth.TokenHandler] in process, over an in-memory store holding one
// client, so it carries exactly the header and claims a production token
// does (RFC 9068: typ at+jwt, iss, sub, client_id, aud, iat, nbf, exp,
// jti, scope). Tokens that a validator must refuse are made the same way:
// a [TokenOptions.IssuedAt] far enough in the past gives an expired
// token, another audience or issuer gives one for another API, and a
// second Issuer has keys of its own.
//
// To unit-test a handler that sits behind the middleware, skip the token:
// [NewClaims] builds the claims the middleware would pass on, and
// [WithClaims] puts them in a request's context, where
// [m2mauth.ClaimsFromContext] finds them.
//
// Helpers that can fail take the test's [testing.TB] and end the test
// with t.Fatalf when they cannot do what was asked (an invalid scope, a
// lifetime out of range); they never return an error to check.
package m2mauthtest
