// Command drive measures a token endpoint that is already running on a
// loopback address, such as the example server, with the load of
// cmd/load: concurrent keep-alive clients, each sending client
// credentials token requests one after another. It prints each round and
// the medians.
//
//	go run ./example -db memory serve -addr 127.0.0.1:18080    # prints the demo client's secret
//	cd bench && M2MAUTH_CLIENT_SECRET=… go run ./cmd/drive -url http://127.0.0.1:18080/oauth/token
//
// Only loopback addresses are accepted: it sends as many requests as the
// server answers.
package main

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"time"

	"github.com/m2mauth/m2mauth/bench"
)

func main() {
	var (
		endpoint    = flag.String("url", "http://127.0.0.1:8080/oauth/token", "the token endpoint, on a loopback address")
		clientID    = flag.String("client-id", "demo-client", "the client id")
		scope       = flag.String("scope", "", "the scope to request (default: none, the client's grant)")
		concurrency = flag.Int("concurrency", 32, "concurrent clients")
		duration    = flag.Duration("duration", 8*time.Second, "length of each measured run")
		warmup      = flag.Int("warmup", 2000, "unmeasured requests before each run")
		rounds      = flag.Int("rounds", 1, "measured runs; medians are reported")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *endpoint, *clientID, os.Getenv("M2MAUTH_CLIENT_SECRET"), *scope, *concurrency, *duration, *warmup, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "drive:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, endpoint, clientID, secret, scope string, conc int, duration time.Duration, warmup, rounds int) error {
	if secret == "" {
		// Not a flag: a command line is visible to every user of the
		// machine.
		return errors.New("set M2MAUTH_CLIENT_SECRET to the client's secret")
	}
	if rounds < 1 {
		return errors.New("-rounds must be at least 1")
	}
	// RFC 6749 §2.3.1: form-encoded, then Basic.
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(clientID)+":"+url.QueryEscape(secret)))
	cfg := bench.LoadConfig{
		// More than a run sends in its time at up to 200,000 requests
		// a second (a no-op handler answers about 60,000 here): the run
		// ends at MaxDuration.
		Requests:    int(max(duration.Seconds(), 1) * 200_000),
		Warmup:      warmup,
		Concurrency: conc,
		MaxDuration: duration,
	}
	fmt.Printf("%s: %d clients, %v a run\n", endpoint, conc, duration)
	fmt.Printf("%5s %10s %10s %10s %7s\n", "round", "req/s", "p50 µs", "p99 µs", "errors")
	var perSecond, p50, p99 []float64
	for round := 1; round <= rounds; round++ {
		res, err := bench.LoadURL(ctx, endpoint, auth, scope, cfg)
		if err != nil {
			return err
		}
		fmt.Printf("%5d %10.0f %10.0f %10.0f %7d\n", round, res.PerSecond, res.P50, res.P99, res.Errors)
		if res.Errors > 0 {
			return fmt.Errorf("round %d: %d requests failed (a wrong secret or scope, or an overloaded server)", round, res.Errors)
		}
		perSecond, p50, p99 = append(perSecond, res.PerSecond), append(p50, res.P50), append(p99, res.P99)
	}
	fmt.Printf("%5s %10.0f %10.0f %10.0f\n", "median", median(perSecond), median(p50), median(p99))
	return nil
}

// median returns the median of xs, which is not empty.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.SortFunc(s, func(a, b float64) int { return cmp.Compare(a, b) })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
