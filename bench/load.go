package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// LoadConfig bounds one loopback load run.
type LoadConfig struct {
	// Requests is the number of measured requests. Required.
	Requests int
	// Warmup is the number of requests sent first, unmeasured, to open
	// the connections and warm the server. Default: none.
	Warmup int
	// Concurrency is the number of clients sending requests one after
	// another. Default: 32.
	Concurrency int
	// MaxDuration stops the measured phase early. Default: 30s.
	MaxDuration time.Duration
	// Timeout bounds each request; one that takes longer counts as an
	// error. Default: 10s.
	Timeout time.Duration
}

// LoadResult is what one loopback load run measured.
type LoadResult struct {
	Name string `json:"name"`
	// Requests is the number of measured requests completed, Errors those
	// of them that failed or were not answered 200.
	Requests int `json:"requests"`
	Errors   int `json:"errors"`
	// Seconds is the duration of the measured phase.
	Seconds float64 `json:"seconds"`
	// PerSecond is Requests / Seconds.
	PerSecond float64 `json:"per_second"`
	// P50 and P99 are latency percentiles in microseconds, from sending
	// the request to reading the whole answer.
	P50 float64 `json:"p50_us"`
	P99 float64 `json:"p99_us"`
	// RetainedPerToken is the growth of the live heap over the measured
	// phase, per completed request, in bytes.
	RetainedPerToken float64 `json:"retained_bytes_per_token"`
}

// Load serves e with net/http on 127.0.0.1 (a fresh port) and drives it
// with cfg.Concurrency keep-alive clients in this process, each sending
// the token request: cfg.Warmup requests, then cfg.Requests measured ones
// or as many as cfg.MaxDuration allows. An answer other than 200 counts
// as an error. No traffic leaves the loopback interface.
func Load(ctx context.Context, e Endpoint, cfg LoadConfig) (LoadResult, error) {
	return load(ctx, e.Name, e.Handler, target{
		method: http.MethodPost, path: TokenPath, body: TokenBody,
		contentType: "application/x-www-form-urlencoded",
		auth:        e.Authorization, status: http.StatusOK,
	}, cfg)
}

// LoadRoute is Load for a protected route: each client sends GET
// /api/builders with token as its bearer token, and an answer other than
// 204 counts as an error. RetainedPerToken is then the live-heap growth
// per request.
func LoadRoute(ctx context.Context, rt Route, token string, cfg LoadConfig) (LoadResult, error) {
	return load(ctx, rt.Name, rt.Handler, target{
		method: http.MethodGet, path: RoutePath,
		auth: "Bearer " + token, status: http.StatusNoContent,
	}, cfg)
}

// LoadURL is Load for a token endpoint already running at rawURL, which
// must be plain HTTP on a loopback address (127.0.0.0/8 or ::1):
// authorization is its client's "Basic …" header value, and scope, if
// not empty, the scope to request. RetainedPerToken is not measured (0):
// the server's heap is another process's.
func LoadURL(ctx context.Context, rawURL, authorization, scope string, cfg LoadConfig) (LoadResult, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return LoadResult{}, fmt.Errorf("bench: %w", err)
	}
	if ip, err := netip.ParseAddr(u.Hostname()); u.Scheme != "http" || err != nil || !ip.IsLoopback() {
		return LoadResult{}, fmt.Errorf("bench: %q: want http:// and a loopback address, such as http://127.0.0.1:8080/oauth/token", rawURL)
	}
	body := "grant_type=client_credentials"
	if scope != "" {
		body += "&scope=" + url.QueryEscape(scope)
	}
	return drive(ctx, rawURL, rawURL, target{
		method: http.MethodPost, body: body,
		contentType: "application/x-www-form-urlencoded",
		auth:        authorization, status: http.StatusOK,
	}, cfg, false)
}

// target is the request a load run sends and the answer it expects.
type target struct {
	method, path, body, contentType, auth string
	status                                int
}

func load(ctx context.Context, name string, h http.Handler, tg target, cfg LoadConfig) (LoadResult, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return LoadResult{}, err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go srv.Serve(ln)
	defer srv.Close()
	res, err := drive(ctx, name, "http://"+ln.Addr().String()+tg.path, tg, cfg, true)
	runtime.KeepAlive(h)
	return res, err
}

// drive sends tg to endpoint as cfg says and measures the answers; with
// inProcess, the server is in this process and the growth of the live
// heap is measured too.
func drive(ctx context.Context, name, endpoint string, tg target, cfg LoadConfig, inProcess bool) (LoadResult, error) {
	if cfg.Requests <= 0 {
		return LoadResult{}, errors.New("bench: LoadConfig.Requests must be positive")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 32
	}
	if cfg.MaxDuration <= 0 {
		cfg.MaxDuration = 30 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	transport := &http.Transport{
		Proxy:               nil, // loopback only, whatever the environment says
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	defer transport.CloseIdleConnections()
	l := &loader{
		client: &http.Client{Transport: transport, Timeout: cfg.Timeout},
		url:    endpoint,
		target: tg,
		conc:   cfg.Concurrency,
	}

	if cfg.Warmup > 0 {
		lat := make([]time.Duration, 0, cfg.Warmup)
		if _, errs, _ := l.run(ctx, lat, cfg.Warmup, time.Now().Add(cfg.MaxDuration)); errs > 0 {
			return LoadResult{}, fmt.Errorf("bench: %s: %d of %d warm-up requests failed", name, errs, cfg.Warmup)
		}
	}
	// The latencies are recorded in memory allocated before the heap is
	// first measured, so they do not count as retained.
	lat := make([]time.Duration, 0, cfg.Requests)
	var before, after uint64
	if inProcess {
		before = liveHeap()
	}
	lat, errs, elapsed := l.run(ctx, lat, cfg.Requests, time.Now().Add(cfg.MaxDuration))
	if inProcess {
		after = liveHeap()
	}
	if err := ctx.Err(); err != nil {
		return LoadResult{}, err
	}

	res := LoadResult{
		Name:     name,
		Requests: len(lat),
		Errors:   errs,
		Seconds:  elapsed.Seconds(),
	}
	if len(lat) == 0 {
		return res, fmt.Errorf("bench: %s: no request completed", name)
	}
	res.PerSecond = float64(len(lat)) / elapsed.Seconds()
	slices.Sort(lat)
	res.P50 = percentile(lat, 0.50)
	res.P99 = percentile(lat, 0.99)
	res.RetainedPerToken = float64(int64(after)-int64(before)) / float64(len(lat))
	return res, nil
}

// percentile returns the p-quantile of sorted, in microseconds (nearest
// rank).
func percentile(sorted []time.Duration, p float64) float64 {
	i := int(float64(len(sorted))*p+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i]) / float64(time.Microsecond)
}

// loader sends one kind of request to one server at url.
type loader struct {
	client *http.Client
	url    string
	target target
	conc   int
}

// run sends n requests from l.conc goroutines, stopping early at deadline
// or when ctx ends. It returns lat (whose capacity must be at least n)
// extended with the latencies of the requests completed, the number of
// them that failed and the time taken.
func (l *loader) run(ctx context.Context, lat []time.Duration, n int, deadline time.Time) ([]time.Duration, int, time.Duration) {
	var (
		next   atomic.Int64
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	lat = lat[:n]
	start := time.Now()
	for range l.conc {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				t0 := time.Now()
				if t0.After(deadline) {
					return
				}
				err := l.do(ctx)
				lat[i] = max(time.Since(t0), 1)
				if err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	// Slots of requests that never ran, past the deadline, are still 0.
	lat = slices.DeleteFunc(lat, func(d time.Duration) bool { return d == 0 })
	return lat, int(failed.Load()), elapsed
}

// do sends the request and reads the whole answer, so the connection is
// reused.
func (l *loader) do(ctx context.Context) error {
	var body io.Reader
	if l.target.body != "" {
		body = strings.NewReader(l.target.body)
	}
	req, err := http.NewRequestWithContext(ctx, l.target.method, l.url, body)
	if err != nil {
		return err
	}
	if l.target.contentType != "" {
		req.Header.Set("Content-Type", l.target.contentType)
	}
	req.Header.Set("Authorization", l.target.auth)
	resp, err := l.client.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != l.target.status {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}
