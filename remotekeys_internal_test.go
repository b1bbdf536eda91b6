package m2mauth

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBoundedTransport: the default clients' transport keeps what the
// program set up in http.DefaultTransport (here the TLS roots that trust
// a private CA) and bounds the response headers; a DefaultTransport that
// is not an *http.Transport is used as it is.
func TestBoundedTransport(t *testing.T) {
	var pad int
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Padding", strings.Repeat("x", pad))
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	base := srv.Client().Transport.(*http.Transport) // trusts the server's certificate
	bounded := boundedTransport(base)
	require.NotSame(t, base, bounded, "a copy: the program's transport is not changed")
	assert.Zero(t, base.MaxResponseHeaderBytes)
	client := &http.Client{Transport: bounded}

	for _, tc := range []struct {
		pad int
		ok  bool
	}{{1 << 10, true}, {32 << 10, true}, {1 << 20, false}} {
		pad = tc.pad
		resp, err := client.Get(srv.URL)
		if !tc.ok {
			require.ErrorContains(t, err, "headers exceeded", "%d bytes of headers", tc.pad)
			continue
		}
		require.NoError(t, err, "the private CA is trusted")
		resp.Body.Close()
		assert.Equal(t, http.StatusNoContent, resp.StatusCode)
	}

	wrapper := roundTripFunc(func(r *http.Request) (*http.Response, error) { return base.RoundTrip(r) })
	assert.NotNil(t, boundedTransport(wrapper))
	_, isTransport := boundedTransport(wrapper).(*http.Transport)
	assert.False(t, isTransport, "a wrapper is used as it is")
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
