package m2mauth

import (
	"context"
	"time"
)

// AlertSeverity says how urgent an [Alert] is.
type AlertSeverity string

// Alert severities.
const (
	// AlertWarning: unusual, worth a look (a new address, a burst).
	AlertWarning AlertSeverity = "warning"
	// AlertCritical: an attack or a compromise is likely (spraying, a
	// lock-out, a disabled client still trying).
	AlertCritical AlertSeverity = "critical"
)

// Alert is one notice of an unusual pattern in the audit stream, or of
// its end. It never holds a secret, a token or an Authorization header.
type Alert struct {
	// Time is when the condition was detected, or cleared.
	Time time.Time
	// Rule names the rule that fired (for example "client_failures").
	Rule string
	// Severity says how urgent it is.
	Severity AlertSeverity
	// Recovered is true for the notice that the condition has cleared.
	Recovered bool
	// ClientID and Address name what the rule watches; either may be
	// empty. A rule keyed by client has an empty ClientID for the client
	// ids that no client can have, which it counts together (Message
	// says so).
	ClientID, Address string
	// Count is the number of events that made the rule fire, within
	// Window (for a recovery, the count when it cleared).
	Count int
	// Window is the span the count covers.
	Window time.Duration
	// Message explains the alert for a person.
	Message string
}

// AlertSink receives alerts. Send is called off the request path (never
// by a token request waiting for it) and must be safe for concurrent use.
// It should return promptly: a [Detector] hands its alerts to the sink
// one at a time from one goroutine, so a slow Send delays the alerts
// behind it (and fills the detector's queue). A sink that does I/O
// queues the alert and sends it in the background, as
// [WebhookAlertSink] does; [SlogAlertSink] logs it, and
// [MultiAlertSink] sends it to several sinks.
type AlertSink interface {
	Send(ctx context.Context, a Alert)
}

// AlertSinkFunc adapts a function to the [AlertSink] interface.
type AlertSinkFunc func(ctx context.Context, a Alert)

// Send calls f(ctx, a).
func (f AlertSinkFunc) Send(ctx context.Context, a Alert) { f(ctx, a) }
