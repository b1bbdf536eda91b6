package m2mauth_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/m2mauth/m2mauth"
)

var webhookTestSecret = []byte("0123456789abcdef0123456789abcdef-webhook")

// webhookTestAlert is the alert the webhook tests send.
func webhookTestAlert() m2mauth.Alert {
	return m2mauth.Alert{
		Time:     time.Date(2026, 3, 1, 12, 0, 5, 0, time.FixedZone("CET", 3600)),
		Rule:     m2mauth.RuleClientFailures,
		Severity: m2mauth.AlertWarning,
		ClientID: "billing",
		Address:  "203.0.113.20",
		Count:    20,
		Window:   5 * time.Minute,
		Message:  `20 failed authentications for client "billing" within 5m0s`,
	}
}

// webhookReceiver is an httptest server whose answers a test scripts.
type webhookReceiver struct {
	srv      *httptest.Server
	mu       sync.Mutex
	bodies   [][]byte
	headers  []http.Header
	attempts atomic.Int32
	answer   func(attempt int32) int // the status of each attempt
	hang     chan struct{}           // when set, requests wait for it to close
}

func newWebhookReceiver(t *testing.T, tls bool, answer func(int32) int) *webhookReceiver {
	t.Helper()
	r := &webhookReceiver{answer: answer}
	h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := r.attempts.Add(1)
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.bodies = append(r.bodies, body)
		r.headers = append(r.headers, req.Header.Clone())
		hang := r.hang
		r.mu.Unlock()
		if hang != nil {
			select {
			case <-hang:
			case <-req.Context().Done():
			}
			return
		}
		w.WriteHeader(r.answer(n))
	})
	if tls {
		r.srv = httptest.NewTLSServer(h)
	} else {
		r.srv = httptest.NewServer(h)
	}
	t.Cleanup(r.srv.Close)
	return r
}

// waitWebhook polls until cond holds.
func waitWebhook(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	require.Eventually(t, cond, 30*time.Second, time.Millisecond, msg)
}

// TestWebhookAlertSinkDelivers: the alert arrives as the documented JSON,
// and its signature verifies with the secret as the docs say.
func TestWebhookAlertSinkDelivers(t *testing.T) {
	recv := newWebhookReceiver(t, true, func(int32) int { return http.StatusNoContent })
	now := time.Date(2026, 3, 1, 12, 0, 7, 0, time.UTC)
	s, err := m2mauth.NewWebhookAlertSink(recv.srv.URL+"/hooks/m2mauth", webhookTestSecret, m2mauth.WebhookConfig{
		Client: recv.srv.Client(),
		Now:    func() time.Time { return now },
	})
	require.NoError(t, err)
	s.Send(t.Context(), webhookTestAlert())
	waitWebhook(t, func() bool { return s.Delivered() == 1 }, "delivery")
	require.NoError(t, s.Close())

	recv.mu.Lock()
	defer recv.mu.Unlock()
	require.Len(t, recv.bodies, 1)
	body, h := recv.bodies[0], recv.headers[0]
	assert.Equal(t, "application/json", h.Get("Content-Type"))
	ts := h.Get("X-M2MAuth-Timestamp")
	assert.Equal(t, strconv.FormatInt(now.Unix(), 10), ts)

	// Verify as a receiver would.
	mac := hmac.New(sha256.New, webhookTestSecret)
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	assert.True(t, hmac.Equal([]byte(want), []byte(h.Get("X-M2MAuth-Signature"))), "signature %s", h.Get("X-M2MAuth-Signature"))
	// Another timestamp or body does not verify.
	mac.Reset()
	mac.Write([]byte(strconv.FormatInt(now.Unix()+1, 10) + "."))
	mac.Write(body)
	assert.NotEqual(t, "sha256="+hex.EncodeToString(mac.Sum(nil)), h.Get("X-M2MAuth-Signature"))

	var got map[string]any
	require.NoError(t, json.Unmarshal(body, &got))
	assert.NotEmpty(t, got["id"])
	delete(got, "id")
	rest, err := json.Marshal(got)
	require.NoError(t, err)
	assert.JSONEq(t, `{
		"time": "2026-03-01T11:00:05Z",
		"rule": "client_failures",
		"severity": "warning",
		"recovered": false,
		"client_id": "billing",
		"address": "203.0.113.20",
		"count": 20,
		"window_seconds": 300,
		"message": "20 failed authentications for client \"billing\" within 5m0s"
	}`, string(rest))
	assert.Zero(t, s.Dropped())
}

// TestWebhookAlertSinkFailures: a receiver that fails is retried with
// backoff up to MaxAttempts, with the same id and a fresh signature, then
// the alert is dropped and counted; permanent refusals are not retried.
func TestWebhookAlertSinkFailures(t *testing.T) {
	cases := []struct {
		name      string
		answer    func(int32) int
		down      bool // nothing listens
		hang      bool
		attempts  int32
		delivered uint64
	}{
		{name: "500 every time", answer: func(int32) int { return 500 }, attempts: 3},
		{name: "503 then 200", answer: webhookFailOnce, attempts: 2, delivered: 1},
		{name: "429 every time", answer: func(int32) int { return 429 }, attempts: 3},
		{name: "400 is not retried", answer: func(int32) int { return 400 }, attempts: 1},
		{name: "a redirect is not followed", answer: func(int32) int { return 307 }, attempts: 1},
		{name: "connection refused", down: true},
		{name: "hanging", hang: true, attempts: 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			var logMu sync.Mutex
			logger := slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil))
			cfg := m2mauth.WebhookConfig{Timeout: 100 * time.Millisecond, Backoff: time.Millisecond, Logger: logger}
			var recv *webhookReceiver
			url := ""
			if tc.down {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				url = "http://" + l.Addr().String() + "/hook"
				require.NoError(t, l.Close())
			} else {
				recv = newWebhookReceiver(t, false, tc.answer)
				if tc.hang {
					recv.hang = make(chan struct{})
					t.Cleanup(func() { close(recv.hang) })
				}
				url = recv.srv.URL + "/hook"
			}
			s, err := m2mauth.NewWebhookAlertSink(url, webhookTestSecret, cfg)
			require.NoError(t, err)
			s.Send(t.Context(), webhookTestAlert())
			waitWebhook(t, func() bool { return s.Dropped()+s.Delivered() == 1 }, "the alert is delivered or dropped")
			require.NoError(t, s.Close())
			assert.Equal(t, tc.delivered, s.Delivered())
			assert.Equal(t, 1-tc.delivered, s.Dropped())
			if recv != nil {
				assert.Equal(t, tc.attempts, recv.attempts.Load())
				recv.mu.Lock()
				ids := map[string]bool{}
				for _, b := range recv.bodies {
					var p struct{ ID string }
					require.NoError(t, json.Unmarshal(b, &p))
					ids[p.ID] = true
				}
				recv.mu.Unlock()
				assert.Len(t, ids, 1, "every attempt carries the same id")
			}
			logMu.Lock()
			defer logMu.Unlock()
			if tc.delivered == 0 {
				assert.Contains(t, logs.String(), "webhook alert dropped")
				assert.Contains(t, logs.String(), "rule=client_failures")
				assert.NotContains(t, logs.String(), "/hook", "the URL is not logged")
			} else {
				assert.Empty(t, logs.String())
			}
		})
	}
}

func webhookFailOnce(n int32) int {
	if n == 1 {
		return http.StatusServiceUnavailable
	}
	return http.StatusOK
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestWebhookAlertSinkNeverBlocks: with the receiver hanging, a thousand
// Sends return at once (the queue takes some, the rest are dropped and
// counted), and Close returns within its bound.
func TestWebhookAlertSinkNeverBlocks(t *testing.T) {
	recv := newWebhookReceiver(t, false, func(int32) int { return 200 })
	recv.hang = make(chan struct{})
	t.Cleanup(func() { close(recv.hang) })
	const closeTimeout = 200 * time.Millisecond
	s, err := m2mauth.NewWebhookAlertSink(recv.srv.URL, webhookTestSecret, m2mauth.WebhookConfig{
		Timeout:      time.Hour,
		QueueSize:    100,
		CloseTimeout: closeTimeout,
		Logger:       slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	start := time.Now()
	for range 1000 {
		s.Send(t.Context(), webhookTestAlert())
	}
	elapsed := time.Since(start)
	assert.Less(t, elapsed, 500*time.Millisecond)
	t.Logf("1000 Sends: %v", elapsed)
	assert.GreaterOrEqual(t, s.Dropped(), uint64(1000-100-1))

	start = time.Now()
	require.NoError(t, s.Close())
	took := time.Since(start)
	assert.Less(t, took, closeTimeout+5*time.Second, "Close is bounded")
	assert.GreaterOrEqual(t, took, closeTimeout-10*time.Millisecond, "Close waits for the queue until its timeout")
	assert.Equal(t, uint64(1000), s.Dropped())
	assert.Zero(t, s.Delivered())
	s.Send(t.Context(), webhookTestAlert())
	assert.Equal(t, uint64(1001), s.Dropped(), "after Close")
}

// TestWebhookAlertSinkFloodLeavesRoom: a flood of one rule's alerts
// fills at most half the queue, so another rule's alert sent during it is
// still delivered.
func TestWebhookAlertSinkFloodLeavesRoom(t *testing.T) {
	recv := newWebhookReceiver(t, false, func(int32) int { return 200 })
	hang := make(chan struct{})
	recv.hang = hang
	s, err := m2mauth.NewWebhookAlertSink(recv.srv.URL, webhookTestSecret, m2mauth.WebhookConfig{
		QueueSize: 10, CloseTimeout: time.Minute, Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	flood := webhookTestAlert()
	flood.Rule = m2mauth.RuleLockout
	for range 100 {
		s.Send(t.Context(), flood)
	}
	other := webhookTestAlert()
	other.Rule = m2mauth.RuleDisabledClient
	s.Send(t.Context(), other)
	assert.LessOrEqual(t, s.Dropped(), uint64(100-5), "the lockouts keep 5 of 10 places, and one in delivery")
	recv.mu.Lock()
	recv.hang = nil
	recv.mu.Unlock()
	close(hang)
	require.NoError(t, s.Close())
	recv.mu.Lock()
	defer recv.mu.Unlock()
	var rules []string
	for _, b := range recv.bodies {
		var a struct{ Rule string }
		require.NoError(t, json.Unmarshal(b, &a))
		rules = append(rules, a.Rule)
	}
	assert.Contains(t, rules, m2mauth.RuleDisabledClient)
}

// TestWebhookAlertSinkCloseDrains: Close delivers what is queued.
func TestWebhookAlertSinkCloseDrains(t *testing.T) {
	recv := newWebhookReceiver(t, false, func(int32) int { return 200 })
	s, err := m2mauth.NewWebhookAlertSink(recv.srv.URL, webhookTestSecret, m2mauth.WebhookConfig{})
	require.NoError(t, err)
	for range 20 {
		s.Send(t.Context(), webhookTestAlert())
	}
	require.NoError(t, s.Close())
	assert.Equal(t, uint64(20), s.Delivered())
	assert.Equal(t, int32(20), recv.attempts.Load())
	require.NoError(t, s.Close(), "again")
}

// TestWebhookAlertSinkConfig: the URL must be https unless it is
// loopback or insecure HTTP is allowed; the secret must be long enough;
// tunables must be in range.
func TestWebhookAlertSinkConfig(t *testing.T) {
	cases := []struct {
		name   string
		url    string
		secret []byte
		cfg    m2mauth.WebhookConfig
		err    string
	}{
		{name: "https", url: "https://alerts.example.com/hook"},
		{name: "http to localhost", url: "http://localhost:8080/hook"},
		{name: "http to 127.0.0.1", url: "http://127.0.0.1:8080/hook"},
		{name: "http to ::1", url: "http://[::1]:8080/hook"},
		{name: "http allowed", url: "http://alerts.internal/hook", cfg: m2mauth.WebhookConfig{AllowInsecureHTTP: true}},
		{name: "http refused", url: "http://alerts.example.com/hook?token=s3cr3t", err: "must be https"},
		{name: "another scheme", url: "ftp://alerts.example.com/hook", err: "absolute https URL"},
		{name: "relative", url: "/hook", err: "absolute https URL"},
		{name: "unparsable", url: "https://alerts.example.com/%zz?token=s3cr3t", err: "does not parse"},
		{name: "short secret", url: "https://alerts.example.com/hook", secret: []byte("short"), err: "at least 32 bytes"},
		{name: "no secret", url: "https://alerts.example.com/hook", secret: []byte{}, err: "at least 32 bytes"},
		{name: "negative attempts", url: "https://alerts.example.com/hook", cfg: m2mauth.WebhookConfig{MaxAttempts: -1}, err: "MaxAttempts"},
		{name: "tiny timeout", url: "https://alerts.example.com/hook", cfg: m2mauth.WebhookConfig{Timeout: time.Nanosecond}, err: "Timeout"},
		{name: "negative queue", url: "https://alerts.example.com/hook", cfg: m2mauth.WebhookConfig{QueueSize: -1}, err: "QueueSize"},
		// Refused before a channel of that size is made.
		{name: "huge queue", url: "https://alerts.example.com/hook", cfg: m2mauth.WebhookConfig{QueueSize: math.MaxInt}, err: "QueueSize must be at most"},
		{name: "huge backoff", url: "https://alerts.example.com/hook", cfg: m2mauth.WebhookConfig{Backoff: math.MaxInt64}, err: "Backoff must be at most"},
		{name: "zero secret", url: "https://alerts.example.com/hook", secret: make([]byte, 32), err: "all zero bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			secret := tc.secret
			if secret == nil {
				secret = webhookTestSecret
			}
			s, err := m2mauth.NewWebhookAlertSink(tc.url, secret, tc.cfg)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				assert.NotContains(t, err.Error(), "s3cr3t", "the URL may hold a secret")
				return
			}
			require.NoError(t, err)
			require.NoError(t, s.Close())
		})
	}
}

// TestSlogAlertSink: critical alerts at Error, warnings and recoveries at
// Warn, one attribute per field.
func TestSlogAlertSink(t *testing.T) {
	cases := []struct {
		name  string
		alert func(a *m2mauth.Alert)
		level string
	}{
		{"warning", func(*m2mauth.Alert) {}, "WARN"},
		{"critical", func(a *m2mauth.Alert) { a.Severity = m2mauth.AlertCritical }, "ERROR"},
		{"critical recovered", func(a *m2mauth.Alert) { a.Severity, a.Recovered = m2mauth.AlertCritical, true }, "WARN"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			sink := m2mauth.NewSlogAlertSink(slog.New(slog.NewJSONHandler(&buf, nil)))
			a := webhookTestAlert()
			tc.alert(&a)
			sink.Send(t.Context(), a)
			var got map[string]any
			require.NoError(t, json.Unmarshal(buf.Bytes(), &got))
			assert.Equal(t, tc.level, got["level"])
			assert.Equal(t, "m2mauth alert", got["msg"])
			assert.Equal(t, "client_failures", got["rule"])
			assert.Equal(t, string(a.Severity), got["severity"])
			assert.Equal(t, a.Recovered, got["recovered"])
			assert.Equal(t, "billing", got["client_id"])
			assert.Equal(t, "203.0.113.20", got["address"])
			assert.EqualValues(t, 20, got["count"])
			assert.EqualValues(t, 5*time.Minute, got["window"])
			assert.Equal(t, a.Message, got["message"])
			assert.Equal(t, "2026-03-01T12:00:05+01:00", got["alert_time"])
		})
	}
	// Empty fields are left out; a nil logger is slog.Default.
	var buf bytes.Buffer
	sink := m2mauth.NewSlogAlertSink(slog.New(slog.NewTextHandler(&buf, nil)))
	sink.Send(t.Context(), m2mauth.Alert{Rule: m2mauth.RuleAddressFailures, Severity: m2mauth.AlertCritical, Address: "192.0.2.1"})
	assert.NotContains(t, buf.String(), "client_id")
	assert.NotNil(t, m2mauth.NewSlogAlertSink(nil))
}

// TestMultiAlertSink: every sink gets every alert, nil sinks are skipped.
func TestMultiAlertSink(t *testing.T) {
	a, b := &alertRecorder{}, &alertRecorder{}
	sink := m2mauth.MultiAlertSink(a, nil, b)
	sink.Send(t.Context(), webhookTestAlert())
	sink.Send(t.Context(), m2mauth.Alert{Rule: m2mauth.RuleLockout})
	assert.Len(t, a.alerts, 2)
	assert.Equal(t, a.alerts, b.alerts)
	m2mauth.MultiAlertSink().Send(t.Context(), webhookTestAlert())
}

// TestDetectorToWebhook wires a Detector to the log and to a webhook, as
// a server would, and checks an alert arrives at both.
func TestDetectorToWebhook(t *testing.T) {
	recv := newWebhookReceiver(t, true, func(int32) int { return 200 })
	hook, err := m2mauth.NewWebhookAlertSink(recv.srv.URL, webhookTestSecret, m2mauth.WebhookConfig{Client: recv.srv.Client()})
	require.NoError(t, err)
	var logs bytes.Buffer
	var logMu sync.Mutex
	logSink := m2mauth.NewSlogAlertSink(slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil)))
	d, err := m2mauth.NewDetector(nil, m2mauth.MultiAlertSink(logSink, hook), m2mauth.DetectorConfig{})
	require.NoError(t, err)
	d.Audit(context.Background(), m2mauth.AuditEvent{Type: m2mauth.EventRateLimited, ClientID: "billing", RemoteIP: "2001:db8::7"})
	require.NoError(t, d.Close())
	require.NoError(t, hook.Close())
	assert.Equal(t, uint64(1), hook.Delivered())
	recv.mu.Lock()
	assert.Contains(t, string(recv.bodies[0]), `"rule":"lockout"`)
	assert.Contains(t, string(recv.bodies[0]), `"address":"2001:db8::/64"`)
	recv.mu.Unlock()
	logMu.Lock()
	assert.True(t, strings.Contains(logs.String(), "level=ERROR") && strings.Contains(logs.String(), "rule=lockout"), logs.String())
	logMu.Unlock()
}
