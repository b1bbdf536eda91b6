package m2mauth

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// BenchmarkObserverWork measures what metrics and a Detector add to one
// issued token, apart from the request itself: the event counted and
// passed through the detector, and the request's duration recorded, as
// the token handler does it. The event is the handler's: stamped with the
// request's time and the client's parsed address.
func BenchmarkObserverWork(b *testing.B) {
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { provider.Shutdown(context.Background()) })
	m, err := NewMetrics(provider.Meter("bench"), MetricsConfig{})
	require.NoError(b, err)
	d, err := NewDetector(nil, m.AlertSink(nil), DetectorConfig{})
	require.NoError(b, err)
	b.Cleanup(func() { d.Close() })
	addr := netip.MustParseAddr("192.0.2.10")
	ev := AuditEvent{
		Type: EventTokenIssued, ClientID: "bench-client", Audience: "https://api.example.com",
		RemoteIP: addr.String(), addr: addr, JTI: "j",
	}
	ctx := context.Background()
	for _, bc := range []struct {
		name     string
		auditor  Auditor
		duration bool
	}{
		{"detector", d, false},
		{"metrics.Auditor", m.Auditor(nil), false},
		{"duration", nil, true},
		{"all", m.Auditor(d), true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			timer := m.endpointDurations("token")
			b.ReportAllocs()
			for b.Loop() {
				ev.Time = time.Now() // the handler's one clock read
				if bc.auditor != nil {
					bc.auditor.Audit(ctx, ev)
				}
				if bc.duration {
					timer.requestDone(ctx, ev.Time, 200)
				}
			}
		})
	}
}
