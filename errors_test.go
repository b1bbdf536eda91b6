package m2mauth_test

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// TestErrorStatus checks the status of each code: RFC 6749 §5.2 (400, and
// 401 for invalid_client), RFC 6750 §3.1 (401 invalid_token, 403
// insufficient_scope), RFC 8707 §2 (400 invalid_target).
func TestErrorStatus(t *testing.T) {
	tests := map[string]int{
		m2mauth.CodeInvalidRequest:         http.StatusBadRequest,
		m2mauth.CodeInvalidClient:          http.StatusUnauthorized,
		m2mauth.CodeInvalidGrant:           http.StatusBadRequest,
		m2mauth.CodeUnauthorizedClient:     http.StatusBadRequest,
		m2mauth.CodeUnsupportedGrantType:   http.StatusBadRequest,
		m2mauth.CodeInvalidScope:           http.StatusBadRequest,
		m2mauth.CodeInvalidTarget:          http.StatusBadRequest,
		m2mauth.CodeInvalidToken:           http.StatusUnauthorized,
		m2mauth.CodeInsufficientScope:      http.StatusForbidden,
		m2mauth.CodeServerError:            http.StatusInternalServerError,
		m2mauth.CodeTemporarilyUnavailable: http.StatusServiceUnavailable,
	}
	for code, status := range tests {
		t.Run(code, func(t *testing.T) {
			e := m2mauth.NewError(code, "d")
			assert.Equal(t, status, e.Status)
			assert.Equal(t, "m2mauth: "+code+": d", e.Error())
		})
	}
}

func TestErrorIsAndUnwrap(t *testing.T) {
	cause := errors.New("db down")
	err := fmt.Errorf("wrapped: %w", m2mauth.WrapError(m2mauth.CodeServerError, "unavailable", cause))
	require.ErrorIs(t, err, &m2mauth.Error{Code: m2mauth.CodeServerError})
	require.ErrorIs(t, err, cause)
	assert.NotErrorIs(t, err, &m2mauth.Error{Code: m2mauth.CodeInvalidClient})
	var e *m2mauth.Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, "unavailable", e.Description)
	assert.Equal(t, "m2mauth: server_error: unavailable: db down", e.Error(), "the cause is in the log text")
}
