package m2mauth

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"sync"
	"time"
)

// JSONAuditor writes audit events as JSON lines: one object per event,
// written to its writer in a single Write. Each object has the members
// a [SlogAuditor] gives [slog.JSONHandler]: "time" (when it was written),
// "level" ("INFO" for an issued token, "WARN" for everything else),
// "msg" ("m2mauth audit"), "event", "event_time", and one member per
// non-empty field of the event. Times are in UTC, in RFC 3339 with
// nanoseconds; strings are escaped as slog escapes them.
//
// It encodes events itself, at a fraction of the cost of going through
// slog (see BenchmarkAuditTokenRequest), and it is the default auditor
// of a [TokenHandler] whose process has not configured slog. It is safe
// for concurrent use.
type JSONAuditor struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
	err error // of the last Write; nil once one succeeds
	// sec and stamp cache the formatting of the second of the last time
	// written: "2006-01-02T15:04:05".
	sec   int64
	stamp [19]byte
}

// NewJSONAuditor returns an auditor writing to w, or to standard error
// when w is nil.
func NewJSONAuditor(w io.Writer) *JSONAuditor {
	if w == nil {
		w = os.Stderr
	}
	return &JSONAuditor{w: w, sec: -1}
}

// maxKeptAuditBuf bounds the buffer a JSONAuditor keeps between events.
const maxKeptAuditBuf = 16 << 10

// Audit writes e as one line.
func (a *JSONAuditor) Audit(_ context.Context, e AuditEvent) {
	now := systemClock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	b := append(a.buf[:0], `{"time":"`...)
	b = a.appendTime(b, now)
	b = append(b, `","level":"`...)
	b = append(b, auditLevel(e.Type).String()...)
	b = append(b, `","msg":"m2mauth audit","event":`...)
	b = appendAuditString(b, string(e.Type))
	b = append(b, `,"event_time":"`...)
	b = a.appendTime(b, e.Time)
	b = append(b, '"')
	b = appendAuditMember(b, "client_id", e.ClientID)
	b = appendAuditMember(b, "remote_ip", e.RemoteIP)
	b = appendAuditMember(b, "user_agent", e.UserAgent)
	b = appendAuditMember(b, "audience", e.Audience)
	if len(e.Scopes) > 0 {
		b = append(b, `,"scope":"`...)
		for i, s := range e.Scopes {
			if i > 0 {
				b = append(b, ' ')
			}
			b = appendJSONEscaped(b, s, &jsonSafe)
		}
		b = append(b, '"')
	}
	b = appendAuditMember(b, "jti", e.JTI)
	b = appendAuditMember(b, "secret_id", e.SecretID)
	b = appendAuditMember(b, "error", e.Error)
	b = appendAuditMember(b, "reason", e.Reason)
	b = append(b, "}\n"...)
	_, a.err = a.w.Write(b)
	if cap(b) <= maxKeptAuditBuf {
		a.buf = b
	}
}

// AuditHealth returns the error of the last write, until a write
// succeeds. With [TokenHandlerConfig.RequireAudit] the handler then
// refuses token requests; the refusal's own event is the write that
// finds the writer working again.
func (a *JSONAuditor) AuditHealth() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// defaultAuditor is the auditor of a TokenHandler configured with none
// (see [TokenHandlerConfig.Auditor]).
func defaultAuditor(logger *slog.Logger) Auditor {
	if logger == nil {
		logger = slog.Default()
		// slog's own default handler writes through the log package; a
		// handler the process set instead is one it wants used.
		if fmt.Sprintf("%T", logger.Handler()) == "*slog.defaultHandler" {
			return NewJSONAuditor(logOutput{})
		}
	}
	return NewSlogAuditor(logger)
}

// logOutput writes to the log package's output as it is at each write,
// as slog's default handler does.
type logOutput struct{}

func (logOutput) Write(p []byte) (int, error) { return log.Writer().Write(p) }

// appendTime appends t in UTC as time.RFC3339Nano formats it. The
// seconds are formatted once per second.
func (a *JSONAuditor) appendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	sec := t.Unix()
	if sec < 0 || sec > maxNumericDate {
		return t.AppendFormat(b, time.RFC3339Nano)
	}
	if sec != a.sec {
		a.sec = sec
		t.AppendFormat(a.stamp[:0], "2006-01-02T15:04:05")
	}
	b = append(b, a.stamp[:]...)
	if ns := t.Nanosecond(); ns != 0 {
		// A fraction without its trailing zeros, as RFC3339Nano writes it.
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i > 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, 'Z')
}

// appendAuditMember appends ,"k":"v" unless v is empty. k needs no
// escaping.
func appendAuditMember(b []byte, k, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, k...)
	b = append(b, `":`...)
	return appendAuditString(b, v)
}

// appendAuditString appends s as a JSON string, escaped as
// slog.JSONHandler escapes it.
func appendAuditString(b []byte, s string) []byte {
	b = append(b, '"')
	b = appendJSONEscaped(b, s, &jsonSafe)
	return append(b, '"')
}
