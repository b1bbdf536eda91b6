package m2mauth

import (
	"strings"
	"testing"
)

// BenchmarkBearerToken reads the token out of an Authorization header
// spelled as clients send it, and in the spellings that take the general
// parse.
func BenchmarkBearerToken(b *testing.B) {
	tok := strings.Repeat("a", 380)
	for _, bc := range []struct{ name, header string }{
		{"usual", "Bearer " + tok},
		{"lowercase", "bearer " + tok},
		{"two spaces", "Bearer  " + tok},
	} {
		b.Run(bc.name, func(b *testing.B) {
			values := []string{bc.header}
			for b.Loop() {
				if got, e := bearerToken(values); e != nil || len(got) != len(tok) {
					b.Fatalf("got %q, %v", got, e)
				}
			}
		})
	}
}
