package m2mauth

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// SlogAlertSink writes alerts to a [slog.Logger], with the message
// "m2mauth alert" and one attribute per non-empty field: critical alerts
// at Error, warnings and every Recovered notice at Warn. It is the sink
// to start with, and safe for concurrent use.
type SlogAlertSink struct {
	logger *slog.Logger
}

// NewSlogAlertSink returns a sink that logs to logger, or to
// [slog.Default] when logger is nil.
func NewSlogAlertSink(logger *slog.Logger) *SlogAlertSink {
	if logger == nil {
		logger = slog.Default()
	}
	return &SlogAlertSink{logger: logger}
}

// Send logs a.
func (s *SlogAlertSink) Send(ctx context.Context, a Alert) {
	level := slog.LevelWarn
	if a.Severity == AlertCritical && !a.Recovered {
		level = slog.LevelError
	}
	if !s.logger.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 9)
	attrs = append(attrs,
		slog.String("rule", a.Rule),
		slog.String("severity", string(a.Severity)),
		slog.Bool("recovered", a.Recovered),
		slog.Time("alert_time", a.Time))
	if a.ClientID != "" {
		attrs = append(attrs, slog.String("client_id", a.ClientID))
	}
	if a.Address != "" {
		attrs = append(attrs, slog.String("address", a.Address))
	}
	attrs = append(attrs,
		slog.Int("count", a.Count),
		slog.Duration("window", a.Window),
		slog.String("message", a.Message))
	s.logger.LogAttrs(ctx, level, "m2mauth alert", attrs...)
}

// MultiAlertSink returns a sink that sends each alert to every one of
// sinks in turn (nil ones are skipped), for example to the log and to a
// webhook:
//
//	sink := m2mauth.MultiAlertSink(m2mauth.NewSlogAlertSink(nil), webhook)
//
// It is as safe for concurrent use as the sinks are.
func MultiAlertSink(sinks ...AlertSink) AlertSink {
	all := make([]AlertSink, 0, len(sinks))
	for _, s := range sinks {
		if s != nil {
			all = append(all, s)
		}
	}
	return AlertSinkFunc(func(ctx context.Context, a Alert) {
		for _, s := range all {
			s.Send(ctx, a)
		}
	})
}

// Headers of a webhook alert; see [WebhookAlertSink].
const (
	// WebhookTimestampHeader holds the time of the delivery attempt, in
	// decimal seconds since the Unix epoch.
	WebhookTimestampHeader = "X-M2MAuth-Timestamp"
	// WebhookSignatureHeader holds "sha256=" and the lower-case hex
	// HMAC-SHA256, keyed with the webhook secret, of the timestamp, a
	// '.' and the body.
	WebhookSignatureHeader = "X-M2MAuth-Signature"
)

// WebhookConfig holds the tunables of a [WebhookAlertSink]. The zero
// value is a working configuration.
type WebhookConfig struct {
	// Timeout bounds each delivery attempt, from the request to the end
	// of the response (of which up to 64 KiB is read). Default: 5s.
	Timeout time.Duration
	// MaxAttempts bounds the attempts to deliver one alert. Default: 3.
	MaxAttempts int
	// Backoff is the wait before the second attempt; each further one
	// waits twice as long as the one before, up to an hour. Default: 1s.
	// At most 1h.
	Backoff time.Duration
	// QueueSize bounds the alerts waiting to be delivered; alerts that do
	// not fit are dropped, counted and logged, as are those of a rule
	// whose alerts fill half of it already (a flood of one kind leaves
	// room for the others). Default: 1000. At most 65,536.
	QueueSize int
	// CloseTimeout bounds how long Close goes on delivering queued
	// alerts; those left then are dropped. Default: 10s.
	CloseTimeout time.Duration
	// AllowInsecureHTTP allows an http:// URL to a host other than
	// localhost or a loopback address. It is insecure: the alerts, which
	// name clients and addresses, cross the network in the clear, and
	// anyone on the path can hold them back. Default: false, https only.
	AllowInsecureHTTP bool
	// Client sends the requests. It is copied, and the copy never
	// follows redirects (a redirect is a failed attempt). Default: a
	// client like [http.DefaultClient].
	Client *http.Client
	// Logger receives a record for each alert dropped (at most one every
	// 10 seconds while alerts keep being dropped, with the total), naming
	// the webhook by its host only, since its URL may hold a secret.
	// Default: [slog.Default].
	Logger *slog.Logger
	// Now stamps each attempt's timestamp. Default: [time.Now].
	Now func() time.Time
}

// WebhookAlertSink delivers alerts to an HTTP endpoint: each alert is a
// POST of one JSON object (Content-Type: application/json):
//
//	{
//	  "id":             "…",                    unique per alert, the same on every attempt
//	  "time":           "2026-01-02T15:04:05Z", when the rule fired or recovered (RFC 3339, UTC)
//	  "rule":           "client_failures",      the rule (see RuleClientFailures and the others)
//	  "severity":       "warning",              "warning" or "critical"
//	  "recovered":      false,                  true for the notice that the condition cleared
//	  "client_id":      "billing",              "" when the rule watches addresses
//	  "address":        "203.0.113.7",          an address or a network ("2001:db8:1:2::/64"), or ""
//	  "count":          20,                     the events counted in the window
//	  "window_seconds": 300,                    the span of the count, in whole seconds
//	  "message":        "…"                     an explanation for a person
//	}
//
// Each attempt is signed. The X-M2MAuth-Timestamp header holds the time
// of the attempt in decimal seconds since the Unix epoch, and the
// X-M2MAuth-Signature header "sha256=" followed by the lower-case hex
// HMAC-SHA256, keyed with the webhook secret, of the timestamp header's
// value, a '.' and the body as received:
//
//	mac := hmac.New(sha256.New, secret)
//	mac.Write([]byte(r.Header.Get("X-M2MAuth-Timestamp") + "."))
//	mac.Write(body)
//	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
//
// A receiver compares want with the signature header in constant time
// ([hmac.Equal]), refuses timestamps more than a few minutes from its
// own clock (so a recorded request cannot be replayed later), and may
// drop ids it has already seen within that span (an attempt whose
// answer was lost is retried with a new timestamp but the same id and
// body). Answer with any 2xx status to acknowledge.
//
// Send queues the alert and returns at once; one background goroutine
// delivers queued alerts in order. An attempt fails on a network error,
// a timeout or a status other than 2xx; failures with a 5xx, 408 or 429
// status or none at all are retried with exponential backoff, up to
// MaxAttempts. An alert that could not be delivered, or found the queue
// full, is dropped, counted (see [WebhookAlertSink.Dropped]) and logged.
// A WebhookAlertSink is safe for concurrent use.
type WebhookAlertSink struct {
	url    string
	host   string // for logs: the URL may hold a secret
	secret []byte
	cfg    WebhookConfig
	client *http.Client

	mu     sync.RWMutex
	closed bool
	queue  chan Alert
	// queued counts the alerts of each rule in the queue; one rule may
	// hold at most half of it.
	qmu    sync.Mutex
	queued map[string]int
	// ctx ends the delivery in progress when Close gives up.
	ctx                context.Context
	cancel             context.CancelFunc
	stop, done         chan struct{}
	closeOnce          sync.Once
	dropped, delivered atomic.Uint64
	lastLog            atomic.Int64 // unix nanoseconds of the latest drop record
}

const (
	// minWebhookSecret is the least length of a webhook secret, in bytes.
	minWebhookSecret = 32
	// maxWebhookBackoff bounds the wait between two attempts.
	maxWebhookBackoff = time.Hour
	// maxAlertQueue bounds the queues of alerts (a Detector's and a
	// WebhookAlertSink's), which are allocated whole.
	maxAlertQueue = 1 << 16
)

// NewWebhookAlertSink returns a sink that POSTs alerts to rawURL, signed
// with secret (at least 32 bytes, random: for example 32 bytes from
// crypto/rand, or the text of [rand.Text] twice). The URL must be https,
// unless its host is localhost or a loopback address or
// [WebhookConfig].AllowInsecureHTTP is set. Close stops its goroutine.
func NewWebhookAlertSink(rawURL string, secret []byte, cfg WebhookConfig) (*WebhookAlertSink, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, errors.New("m2mauth: webhook URL does not parse") // the URL may hold a secret: not echoed
	}
	switch {
	case u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
		return nil, errors.New("m2mauth: webhook URL must be an absolute https URL")
	case u.Scheme == "http" && !cfg.AllowInsecureHTTP && !isLoopbackHost(u.Hostname()):
		return nil, fmt.Errorf("m2mauth: webhook URL to %s must be https (or set WebhookConfig.AllowInsecureHTTP, which is insecure)", u.Hostname())
	case len(secret) < minWebhookSecret:
		return nil, fmt.Errorf("m2mauth: webhook secret must be at least %d bytes", minWebhookSecret)
	case allZero(secret):
		return nil, errors.New("m2mauth: webhook secret is all zero bytes; use random bytes")
	}
	var errs []error
	intDef := func(n *int, def int, name string) {
		if *n == 0 {
			*n = def
		}
		if *n < 1 {
			errs = append(errs, fmt.Errorf("m2mauth: WebhookConfig.%s must be positive", name))
		}
	}
	durDef := func(d *time.Duration, def time.Duration, name string) {
		if *d == 0 {
			*d = def
		}
		if *d < time.Millisecond {
			errs = append(errs, fmt.Errorf("m2mauth: WebhookConfig.%s must be at least 1ms", name))
		}
	}
	durDef(&cfg.Timeout, 5*time.Second, "Timeout")
	intDef(&cfg.MaxAttempts, 3, "MaxAttempts")
	durDef(&cfg.Backoff, time.Second, "Backoff")
	if cfg.Backoff > maxWebhookBackoff {
		errs = append(errs, fmt.Errorf("m2mauth: WebhookConfig.Backoff must be at most %v", maxWebhookBackoff))
	}
	intDef(&cfg.QueueSize, 1000, "QueueSize")
	if cfg.QueueSize > maxAlertQueue {
		errs = append(errs, fmt.Errorf("m2mauth: WebhookConfig.QueueSize must be at most %d", maxAlertQueue))
	}
	durDef(&cfg.CloseTimeout, 10*time.Second, "CloseTimeout")
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	client := &http.Client{Transport: remoteTransport()}
	if cfg.Client != nil {
		*client = *cfg.Client
	}
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	ctx, cancel := context.WithCancel(context.Background())
	s := &WebhookAlertSink{
		url:    u.String(),
		host:   u.Host,
		secret: bytes.Clone(secret),
		cfg:    cfg,
		client: client,
		queue:  make(chan Alert, cfg.QueueSize),
		queued: make(map[string]int),
		ctx:    ctx,
		cancel: cancel,
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	go s.run()
	return s, nil
}

// Send queues a for delivery, or drops it when the queue is full or the
// sink is closed. It never waits for the network.
func (s *WebhookAlertSink) Send(_ context.Context, a Alert) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		s.drop(a, "the sink is closed")
		return
	}
	s.qmu.Lock()
	if s.queued[a.Rule] >= max(cap(s.queue)/2, 1) {
		s.qmu.Unlock()
		s.drop(a, "alerts of its rule fill half the queue")
		return
	}
	select {
	case s.queue <- a:
		s.queued[a.Rule]++
		s.qmu.Unlock()
	default:
		s.qmu.Unlock()
		s.drop(a, "the queue is full")
	}
}

// take is the delivery goroutine taking a from the queue.
func (s *WebhookAlertSink) take(a Alert) {
	s.qmu.Lock()
	if s.queued[a.Rule]--; s.queued[a.Rule] <= 0 {
		delete(s.queued, a.Rule)
	}
	s.qmu.Unlock()
	s.deliver(a)
}

// Dropped returns the number of alerts that were not delivered: those
// that found the queue full (or half of it holding their rule's, see
// [WebhookConfig].QueueSize) or the sink closed, and those whose every
// attempt failed.
func (s *WebhookAlertSink) Dropped() uint64 { return s.dropped.Load() }

// Delivered returns the number of alerts the endpoint acknowledged.
func (s *WebhookAlertSink) Delivered() uint64 { return s.delivered.Load() }

// Close stops taking alerts, goes on delivering those queued for at most
// [WebhookConfig].CloseTimeout, then abandons the attempt in progress and
// drops what is left, and stops the goroutine. Calling it again does
// nothing.
func (s *WebhookAlertSink) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		t := time.AfterFunc(s.cfg.CloseTimeout, s.cancel)
		close(s.stop)
		<-s.done
		t.Stop()
		s.cancel()
	})
	return nil
}

// run delivers queued alerts until Close, then what is left until the
// close deadline.
func (s *WebhookAlertSink) run() {
	defer close(s.done)
	for {
		select {
		case a := <-s.queue:
			s.take(a)
		case <-s.stop:
			for {
				select {
				case a := <-s.queue:
					s.take(a)
				default:
					return
				}
			}
		}
	}
}

// webhookAlert is the JSON body of a webhook delivery.
type webhookAlert struct {
	ID            string        `json:"id"`
	Time          string        `json:"time"`
	Rule          string        `json:"rule"`
	Severity      AlertSeverity `json:"severity"`
	Recovered     bool          `json:"recovered"`
	ClientID      string        `json:"client_id"`
	Address       string        `json:"address"`
	Count         int           `json:"count"`
	WindowSeconds int64         `json:"window_seconds"`
	Message       string        `json:"message"`
}

// deliver makes up to MaxAttempts attempts to deliver a.
func (s *WebhookAlertSink) deliver(a Alert) {
	if s.ctx.Err() != nil {
		s.drop(a, "the sink closed before it was sent")
		return
	}
	body, err := json.Marshal(webhookAlert{
		ID:            rand.Text(),
		Time:          a.Time.UTC().Format(time.RFC3339),
		Rule:          a.Rule,
		Severity:      a.Severity,
		Recovered:     a.Recovered,
		ClientID:      a.ClientID,
		Address:       a.Address,
		Count:         a.Count,
		WindowSeconds: int64(a.Window / time.Second),
		Message:       a.Message,
	})
	if err != nil {
		s.drop(a, err.Error())
		return
	}
	wait := s.cfg.Backoff
	var reason string
	for attempt := 1; ; attempt++ {
		retry := false
		reason, retry = s.attempt(body)
		if reason == "" {
			s.delivered.Add(1)
			return
		}
		if !retry || attempt >= s.cfg.MaxAttempts {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-s.ctx.Done():
			t.Stop()
			s.drop(a, reason+"; the sink closed before the next attempt")
			return
		}
		wait = min(2*wait, maxWebhookBackoff)
	}
	s.drop(a, reason)
}

// attempt POSTs body once. It returns "" on success, or why it failed
// and whether another attempt may succeed.
func (s *WebhookAlertSink) attempt(body []byte) (reason string, retry bool) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return "the request could not be made", false
	}
	ts := strconv.FormatInt(s.cfg.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "m2mauth-alert-webhook")
	req.Header.Set(WebhookTimestampHeader, ts)
	req.Header.Set(WebhookSignatureHeader, webhookSignature(s.secret, ts, body))
	resp, err := s.client.Do(req)
	if err != nil {
		if s.ctx.Err() != nil {
			return "the sink closed during the attempt", false
		}
		// Only the kind of failure: a url.Error names the URL.
		var ue *url.Error
		if errors.As(err, &ue) {
			if ue.Timeout() {
				return "the attempt timed out", true
			}
			err = ue.Err
		}
		return "the request failed: " + err.Error(), true
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
		return "", false
	case c >= 500, c == http.StatusRequestTimeout, c == http.StatusTooManyRequests:
		return "the endpoint answered " + resp.Status, true
	default:
		return "the endpoint answered " + resp.Status, false
	}
}

// webhookSignature is the value of the signature header for body sent
// at timestamp ts.
func webhookSignature(secret []byte, ts string, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// dropLogEvery is the least time between two records of dropped alerts.
const dropLogEvery = 10 * time.Second

// drop counts a dropped alert and logs it, unless another drop was
// logged within dropLogEvery.
func (s *WebhookAlertSink) drop(a Alert, reason string) {
	n := s.dropped.Add(1)
	now := time.Now().UnixNano()
	last := s.lastLog.Load()
	if last != 0 && now-last < int64(dropLogEvery) || !s.lastLog.CompareAndSwap(last, now) {
		return
	}
	s.cfg.Logger.LogAttrs(context.Background(), slog.LevelError, "m2mauth: webhook alert dropped",
		slog.String("webhook_host", s.host),
		slog.String("reason", reason),
		slog.String("rule", a.Rule),
		slog.String("client_id", a.ClientID),
		slog.String("address", a.Address),
		slog.Bool("recovered", a.Recovered),
		slog.Uint64("dropped_total", n))
}
