package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/m2mauth/m2mauth"
	"github.com/m2mauth/m2mauth/sqlstore"
)

// webhookSecretEnv holds the alert webhook's secret when
// -alert-webhook-secret is not given, so that it stays out of the
// process list.
const webhookSecretEnv = "M2MAUTH_ALERT_WEBHOOK_SECRET"

// observability is what serve adds to watch itself: metrics for
// Prometheus, and the detector that raises alerts.
type observability struct {
	metrics  *m2mauth.Metrics
	scrape   http.Handler // GET /metrics
	detector *m2mauth.Detector
	close    func() error
}

// learnTimeout bounds the reading of the audit table by learnAddresses.
const learnTimeout = time.Minute

// learnAddresses reads from the audit table the addresses clients got
// tokens from in the last two learning periods and teaches them to det,
// so that a restart does not start the new_address rule's learning over:
// the last period's networks are known, and a client seen in the one
// before is past its learning. It runs beside the server: tokens issued
// meanwhile are learnt as they come. A failure is logged; the rule then
// learns from the start, as without the table.
func learnAddresses(serving context.Context, store *sqlstore.Store, det *m2mauth.Detector, learning time.Duration, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(serving, learnTimeout)
	defer cancel()
	since := time.Now().Add(-2 * learning)
	n := 0
	err := store.IssuedAddresses(ctx, since, func(a sqlstore.IssuedAddress) error {
		det.LearnAddress(a.ClientID, a.Address, a.First, a.Last)
		n++
		return nil
	})
	if err != nil {
		if serving.Err() == nil { // not the server stopping
			logger.Warn("alerts: the addresses clients used were not read from the audit table; new_address learns them anew", "error", err)
		}
		return
	}
	logger.Info("alerts: learnt the addresses clients used from the audit table", "since", since.UTC().Format(time.RFC3339), "addresses", n)
}

// newObservability builds the metrics (an OpenTelemetry SDK meter
// provider whose reader is the Prometheus exporter, on a registry of its
// own) and the detector, which wraps next and sends its alerts to the
// JSON log, to the webhook when one is given, and to the alerts counter.
func newObservability(f *serveFlags, next m2mauth.Auditor, logger *slog.Logger) (*observability, error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, err
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	m, err := m2mauth.NewMetrics(provider.Meter("github.com/m2mauth/m2mauth"), m2mauth.MetricsConfig{})
	if err != nil {
		provider.Shutdown(context.Background())
		return nil, err
	}
	o := &observability{
		metrics: m,
		scrape:  promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
	}
	sink := m2mauth.AlertSink(m2mauth.NewSlogAlertSink(logger))
	var webhook *m2mauth.WebhookAlertSink
	if f.alertWebhook != "" {
		// The secret comes from the flag or the environment (see
		// parseServeFlags). The URL may hold a token: the sink names the webhook by its
		// host only, and so does the log here.
		webhook, err = m2mauth.NewWebhookAlertSink(f.alertWebhook, []byte(f.alertWebhookSecret), m2mauth.WebhookConfig{Logger: logger})
		if err != nil {
			provider.Shutdown(context.Background())
			return nil, fmt.Errorf("-alert-webhook: %w", err)
		}
		sink = m2mauth.MultiAlertSink(sink, webhook)
	}
	det, err := m2mauth.NewDetector(next, m.AlertSink(sink), m2mauth.DetectorConfig{
		NewAddress: m2mauth.NewAddressRule{LearningPeriod: f.alertLearning},
	})
	if err != nil {
		if webhook != nil {
			webhook.Close()
		}
		provider.Shutdown(context.Background())
		return nil, err
	}
	if err := m.ObserveDetector(det); err != nil {
		det.Close()
		if webhook != nil {
			webhook.Close()
		}
		provider.Shutdown(context.Background())
		return nil, err
	}
	o.detector = det
	o.close = func() error {
		// The detector hands its queued alerts to the sinks, which then
		// deliver theirs.
		err := det.Close()
		if webhook != nil {
			err = errors.Join(err, webhook.Close())
		}
		return errors.Join(err, provider.Shutdown(context.Background()))
	}
	return o, nil
}
