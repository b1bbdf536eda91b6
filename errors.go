package m2mauth

import (
	"errors"
	"net/http"
	"sync"
)

// Error codes of RFC 6749 §5.2 (token endpoint), RFC 6750 §3.1 (protected
// resources) and RFC 8707 §2 (resource indicators).
const (
	// CodeInvalidRequest: the request is missing a required parameter,
	// repeats one, or is otherwise malformed.
	CodeInvalidRequest = "invalid_request"
	// CodeInvalidClient: client authentication failed.
	CodeInvalidClient = "invalid_client"
	// CodeInvalidGrant: the grant is invalid, expired or revoked.
	CodeInvalidGrant = "invalid_grant"
	// CodeUnauthorizedClient: the client may not use this grant type.
	CodeUnauthorizedClient = "unauthorized_client"
	// CodeUnsupportedGrantType: the grant type is not supported.
	CodeUnsupportedGrantType = "unsupported_grant_type"
	// CodeInvalidScope: the requested scope is invalid, unknown or
	// exceeds what the client was granted.
	CodeInvalidScope = "invalid_scope"
	// CodeInvalidTarget: the requested audience or resource is invalid or
	// not granted to the client (RFC 8707 §2).
	CodeInvalidTarget = "invalid_target"
	// CodeInvalidToken: the access token is expired, malformed or
	// otherwise invalid (RFC 6750 §3.1).
	CodeInvalidToken = "invalid_token"
	// CodeInsufficientScope: the access token lacks a scope the resource
	// requires (RFC 6750 §3.1).
	CodeInsufficientScope = "insufficient_scope"
	// CodeServerError: the server failed in a way that is not the
	// client's fault.
	CodeServerError = "server_error"
	// CodeTemporarilyUnavailable: the server cannot answer now; the client
	// should retry after the time given in Retry-After.
	CodeTemporarilyUnavailable = "temporarily_unavailable"
)

// Error is a protocol error as defined by RFC 6749 §5.2 and RFC 6750 §3.1.
// The token handler and the middleware answer every failure with one,
// rendered as JSON {"error": Code, "error_description": Description} with
// status Status.
//
// Description is sent to the client and therefore never contains a secret,
// a token, or an internal cause; the cause, if any, is kept for logs and is
// reachable through [errors.Unwrap].
//
// Two Errors match under [errors.Is] when their codes are equal, so
//
//	errors.Is(err, &m2mauth.Error{Code: m2mauth.CodeInvalidToken})
//
// reports whether err is an invalid_token error.
type Error struct {
	// Code is the RFC error code, one of the Code constants.
	Code string
	// Description is a human-readable explanation safe to send to clients.
	Description string
	// Status is the HTTP status code of the response.
	Status int

	cause error
}

// NewError returns an [Error] with the given code and description and the
// status RFC 6749, RFC 6750 and RFC 8707 prescribe for that code.
func NewError(code, description string) *Error {
	return &Error{Code: code, Description: description, Status: statusForCode(code)}
}

// WrapError is [NewError] with an internal cause that is kept for logs and
// [errors.Unwrap] but never sent to the client.
func WrapError(code, description string, cause error) *Error {
	e := NewError(code, description)
	e.cause = cause
	return e
}

func statusForCode(code string) int {
	switch code {
	case CodeInvalidClient, CodeInvalidToken:
		return http.StatusUnauthorized
	case CodeInsufficientScope:
		return http.StatusForbidden
	case CodeServerError:
		return http.StatusInternalServerError
	case CodeTemporarilyUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusBadRequest
	}
}

// Error returns "m2mauth: code: description", followed by ": cause" when there is
// an internal cause. It is for logs; clients see only Code and
// Description.
func (e *Error) Error() string {
	s := "m2mauth: " + e.Code
	if e.Description != "" {
		s += ": " + e.Description
	}
	if e.cause != nil {
		s += ": " + e.cause.Error()
	}
	return s
}

// Unwrap returns the internal cause, if any.
func (e *Error) Unwrap() error { return e.cause }

// Is reports whether target is an *Error with the same Code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// asError converts any error into an *Error: protocol errors pass through,
// anything else becomes a server_error that hides its cause.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return WrapError(CodeServerError, "internal server error", err)
}

// appendErrorJSON appends the RFC 6749 §5.2 JSON body of e.
func appendErrorJSON(dst []byte, e *Error) []byte {
	dst = append(dst, `{"error":`...)
	dst = appendJSONString(dst, e.Code)
	if e.Description != "" {
		dst = append(dst, `,"error_description":`...)
		dst = appendJSONString(dst, safeDescription(e.Description))
	}
	return append(dst, '}')
}

// safeDescription returns s with every byte that RFC 6749 §5.2 and
// RFC 6750 §3 do not allow in an error_description (anything but
// %x20-21 / %x23-5B / %x5D-7E: quotes, backslashes, control characters
// and non-ASCII) replaced by '?', so that no description, whoever wrote
// it, breaks the JSON body's or the challenge's syntax.
func safeDescription(s string) string {
	i := 0
	for i < len(s) && descriptionChar(s[i]) {
		i++
	}
	if i == len(s) {
		return s // the common case: no copy
	}
	b := []byte(s)
	for ; i < len(b); i++ {
		if !descriptionChar(b[i]) {
			b[i] = '?'
		}
	}
	return string(b)
}

func descriptionChar(c byte) bool {
	return c >= 0x20 && c <= 0x7e && c != '"' && c != '\\'
}

// defaultRealm is the realm of every challenge unless configured.
const defaultRealm = "m2mauth"

// bufPool holds the buffers used to read request bodies and build
// responses.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// writeError writes e as the JSON body with its status. Headers set by the
// caller are kept.
func writeError(w http.ResponseWriter, e *Error) {
	bp := bufPool.Get().(*[]byte)
	buf := appendErrorJSON((*bp)[:0], e)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	w.Write(buf)
	*bp = buf
	bufPool.Put(bp)
}
