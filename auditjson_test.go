package m2mauth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

// timeMember matches the leading "time" member of a JSON audit line.
var timeMember = regexp.MustCompile(`^\{"time":"([^"]*)",`)

// TestJSONAuditorOutput: a JSONAuditor writes, byte for byte, what a
// SlogAuditor writes through slog.JSONHandler (RFC 8259 strings, escaped
// as slog escapes them), but for the time of writing, which it gives in
// UTC as RFC 3339 (§5.6) with nanoseconds.
func TestJSONAuditorOutput(t *testing.T) {
	at := time.Date(2026, 11, 23, 12, 0, 0, 123456789, time.UTC)
	hostile := "q\"b\\s/c\x00\x1f\n\r\t<>&\u2028\u2029\xff\xc3é\U0001F600"
	events := []struct {
		name  string
		event m2mauth.AuditEvent
	}{
		{"issued", m2mauth.AuditEvent{Time: at, Type: m2mauth.EventTokenIssued, ClientID: "svc", RemoteIP: "192.0.2.1",
			UserAgent: "curl/8.0", Audience: "https://api.example.com", Scopes: m2mauth.Scopes{"read", "write"},
			JTI: "j1", SecretID: "sec_1"}},
		{"refused", m2mauth.AuditEvent{Time: at, Type: m2mauth.EventAuthFailed, ClientID: "svc", RemoteIP: "192.0.2.1",
			Error: "invalid_client", Reason: m2mauth.ReasonBadSecret}},
		{"every field empty", m2mauth.AuditEvent{Type: m2mauth.EventClientDeleted}},
		{"whole second", m2mauth.AuditEvent{Time: at.Truncate(time.Second), Type: m2mauth.EventTokenIssued}},
		{"trailing zeros", m2mauth.AuditEvent{Time: at.Truncate(time.Millisecond), Type: m2mauth.EventTokenIssued}},
		{"another zone", m2mauth.AuditEvent{Time: at.In(time.FixedZone("x", 3600)), Type: m2mauth.EventTokenIssued}},
		{"hostile strings", m2mauth.AuditEvent{Time: at, Type: m2mauth.AuditEventType(hostile), ClientID: hostile,
			RemoteIP: hostile, UserAgent: hostile, Audience: hostile, Scopes: m2mauth.Scopes{hostile, hostile},
			JTI: hostile, SecretID: hostile, Error: hostile, Reason: hostile}},
	}
	noTime := func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		if a.Key == "event_time" {
			a.Value = slog.TimeValue(a.Value.Time().UTC())
		}
		return a
	}
	for _, tc := range events {
		t.Run(tc.name, func(t *testing.T) {
			var js, got bytes.Buffer
			m2mauth.NewSlogAuditor(slog.New(slog.NewJSONHandler(&js, &slog.HandlerOptions{ReplaceAttr: noTime}))).Audit(t.Context(), tc.event)
			before := time.Now()
			a := m2mauth.NewJSONAuditor(&got)
			a.Audit(t.Context(), tc.event)
			after := time.Now()
			line := got.String()
			m := timeMember.FindStringSubmatch(line)
			require.NotNil(t, m, line)
			written, err := time.Parse(time.RFC3339Nano, m[1])
			require.NoError(t, err)
			require.True(t, strings.HasSuffix(m[1], "Z"), m[1])
			require.False(t, written.Before(before.Add(-time.Millisecond)) || written.After(after.Add(time.Millisecond)), m[1])
			require.Equal(t, js.String(), "{"+line[len(m[0]):])
			require.True(t, json.Valid([]byte(line)))
			require.NoError(t, a.AuditHealth())
		})
	}
}

// TestJSONAuditorNilWriter: a nil writer means standard error.
func TestJSONAuditorNilWriter(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	stderr := os.Stderr
	os.Stderr = w
	a := m2mauth.NewJSONAuditor(nil)
	os.Stderr = stderr
	a.Audit(t.Context(), m2mauth.AuditEvent{Type: m2mauth.EventTokenIssued, ClientID: "svc"})
	require.NoError(t, w.Close())
	line, err := io.ReadAll(r)
	require.NoError(t, err)
	require.Contains(t, string(line), `"client_id":"svc"`)
	require.NoError(t, a.AuditHealth())
}

// failingWriter fails while fail is set.
type failingWriter struct {
	mu   sync.Mutex
	fail bool
	buf  bytes.Buffer
}

func (w *failingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fail {
		return 0, errors.New("disk full")
	}
	return w.buf.Write(p)
}

// TestJSONAuditorHealth: a failed write shows in AuditHealth until a
// write succeeds, so a TokenHandler with RequireAudit stops issuing
// tokens it cannot record.
func TestJSONAuditorHealth(t *testing.T) {
	w := &failingWriter{fail: true}
	a := m2mauth.NewJSONAuditor(w)
	ev := m2mauth.AuditEvent{Time: time.Now(), Type: m2mauth.EventTokenIssued, ClientID: "svc"}
	a.Audit(t.Context(), ev)
	require.ErrorContains(t, a.AuditHealth(), "disk full")

	f := newFixture(t, func(c *m2mauth.TokenHandlerConfig) {
		c.Auditor = a
		c.RequireAudit = true
	})
	w1, _ := f.do(t, request{body: "grant_type=client_credentials", headers: map[string][]string{"Authorization": {basic("svc", f.secret)}}})
	require.Equal(t, http.StatusServiceUnavailable, w1.Code)

	// Once the writer works again, the next event written (here the
	// refusal's own) clears the error, and tokens are issued again.
	w.mu.Lock()
	w.fail = false
	w.mu.Unlock()
	w2, _ := f.do(t, request{body: "grant_type=client_credentials", headers: map[string][]string{"Authorization": {basic("svc", f.secret)}}})
	require.Equal(t, http.StatusServiceUnavailable, w2.Code)
	require.NoError(t, a.AuditHealth())
	w3, _ := f.do(t, request{body: "grant_type=client_credentials", headers: map[string][]string{"Authorization": {basic("svc", f.secret)}}})
	require.Equal(t, http.StatusOK, w3.Code)
	require.Contains(t, w.buf.String(), `"event":"token_issued"`)
}

// TestJSONAuditorConcurrent: events audited at once are written whole,
// one line each.
func TestJSONAuditorConcurrent(t *testing.T) {
	var w failingWriter
	a := m2mauth.NewJSONAuditor(&w)
	const workers, each = 8, 200
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for j := range each {
				a.Audit(context.Background(), m2mauth.AuditEvent{Time: time.Now(), Type: m2mauth.EventTokenIssued,
					ClientID: strings.Repeat("c", i*50+j%7), Scopes: m2mauth.Scopes{"read"}})
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(w.buf.String(), "\n"), "\n")
	require.Len(t, lines, workers*each)
	for _, l := range lines {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &rec), l)
		require.Equal(t, "token_issued", rec["event"])
	}
}

// TestDefaultAuditor: a TokenHandler given no Auditor writes JSON lines
// where slog's default handler would write, to the log package's output,
// while the process has not set a slog handler; given a Logger, it logs
// there through slog.
func TestDefaultAuditor(t *testing.T) {
	newHandler := func(t *testing.T, logger *slog.Logger) *fixture {
		return newFixture(t, func(c *m2mauth.TokenHandlerConfig) {
			c.Auditor = nil
			c.Logger = logger
		})
	}
	issue := func(t *testing.T, f *fixture) {
		w, _ := f.do(t, request{body: "grant_type=client_credentials", headers: map[string][]string{"Authorization": {basic("svc", f.secret)}}})
		require.Equal(t, http.StatusOK, w.Code)
	}

	t.Run("slog not configured", func(t *testing.T) {
		var out bytes.Buffer
		defer log.SetOutput(log.Writer())
		f := newHandler(t, nil)
		log.SetOutput(&out) // after the handler is made: it follows the change
		issue(t, f)
		// Other lines may come from work that earlier tests left running.
		var audit []map[string]any
		for _, l := range strings.Split(out.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(l), &rec) == nil && rec["msg"] == "m2mauth audit" {
				audit = append(audit, rec)
			}
		}
		require.Len(t, audit, 1, out.String())
		require.Equal(t, "token_issued", audit[0]["event"])
		require.Equal(t, "svc", audit[0]["client_id"])
		require.Equal(t, "INFO", audit[0]["level"])
	})

	t.Run("logger given", func(t *testing.T) {
		var out, std bytes.Buffer
		defer log.SetOutput(log.Writer())
		log.SetOutput(&std)
		issue(t, newHandler(t, slog.New(slog.NewTextHandler(&out, nil))))
		require.Contains(t, out.String(), `msg="m2mauth audit" event=token_issued`)
		require.NotContains(t, std.String(), "m2mauth audit")
	})

	t.Run("slog default set", func(t *testing.T) {
		var out, std bytes.Buffer
		defer slog.SetDefault(slog.Default())
		defer log.SetFlags(log.Flags())
		defer log.SetOutput(log.Writer())
		log.SetOutput(&std)
		slog.SetDefault(slog.New(slog.NewTextHandler(&out, nil)))
		issue(t, newHandler(t, nil))
		require.Contains(t, out.String(), `msg="m2mauth audit" event=token_issued`)
		require.NotContains(t, std.String(), "m2mauth audit")
	})
}
