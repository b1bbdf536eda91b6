// Command load measures the token endpoints and the protected routes over
// loopback HTTP and the heap each endpoint keeps per issued token, and
// writes the results as JSON for cmd/report.
//
// For each round it serves every endpoint and every route in turn with
// net/http on 127.0.0.1 and drives it with a fixed number of requests
// from concurrent keep-alive clients in the same process, under a time
// cap: token requests to the endpoints, GET /api/builders with one token
// issued by m2mauth to the routes. Each round starts one further down
// the list, and the medians of the rounds are reported. Endpoints checking secrets with bcrypt get one
// short run after the rounds. It then issues -retain tokens in process
// through each endpoint and reports the live-heap growth per token. No
// traffic leaves the loopback interface.
//
//	go run ./cmd/load -out results/load.json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/m2mauth/m2mauth/bench"
)

// Loopback is the result of the loopback runs of one endpoint.
type Loopback struct {
	Name string `json:"name"`
	// Median holds the median of each field over Runs.
	Median bench.LoadResult   `json:"median"`
	Runs   []bench.LoadResult `json:"runs"`
}

// Retained is the in-process live-heap growth per token of one endpoint.
type Retained struct {
	Name          string  `json:"name"`
	Tokens        int     `json:"tokens"`
	BytesPerToken float64 `json:"bytes_per_token"`
}

// Report is the JSON written by this command.
type Report struct {
	Concurrency int     `json:"concurrency"`
	Requests    int     `json:"requests"`
	MaxSeconds  float64 `json:"max_seconds"`
	Rounds      int     `json:"rounds"`
	// Loopback holds the token endpoints, Validation the protected
	// routes.
	Loopback   []Loopback `json:"loopback"`
	Validation []Loopback `json:"validation"`
	Retained   []Retained `json:"retained"`
}

func main() {
	var (
		endpoints   = flag.String("endpoints", "noop,response,floor,m2mauth,m2mauth-json,m2mauth-slog,fosite-plain,go-oauth2,fosite-bcrypt", "comma-separated endpoints to drive over loopback")
		routes      = flag.String("routes", "bare,handoff,floor,m2mauth-cached,m2mauth-uncached,auth0,golang-jwt,golang-jwt-typed,jwx", "comma-separated protected routes to drive over loopback (empty: none)")
		requests    = flag.Int("requests", 50000, "measured requests per endpoint or route and round")
		warmup      = flag.Int("warmup", 2000, "unmeasured requests before each run")
		bcryptReqs  = flag.Int("bcrypt-requests", 64, "measured requests for bcrypt endpoints (one run after the rounds, warm-up of one per client)")
		concurrency = flag.Int("concurrency", 32, "concurrent clients")
		maxDur      = flag.Duration("max", 15*time.Second, "time cap of each measured run")
		rounds      = flag.Int("rounds", 7, "rounds over all endpoints and routes; medians are reported")
		retain      = flag.Int("retain", 10000, "tokens issued in process per endpoint for the retained-heap measurement (0 skips it)")
		out         = flag.String("out", "", "write the JSON report to this file (default: stdout only)")
		cpuprofile  = flag.String("cpuprofile", "", "after the rounds, profile one more m2mauth loopback run into this file")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *endpoints, *routes, *requests, *warmup, *bcryptReqs, *concurrency, *maxDur, *rounds, *retain, *out, *cpuprofile); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, endpoints, routes string, requests, warmup, bcryptReqs, conc int, maxDur time.Duration, rounds, retain int, out, cpuprofile string) error {
	makers := map[string]bench.EndpointMaker{}
	for _, m := range bench.Endpoints() {
		makers[m.Name] = m
	}
	var names []string
	for n := range strings.SplitSeq(endpoints, ",") {
		if _, ok := makers[n]; !ok {
			return fmt.Errorf("unknown endpoint %q", n)
		}
		names = append(names, n)
	}
	routeMakers := map[string]bench.RouteMaker{}
	for _, m := range bench.Routes() {
		routeMakers[m.Name] = m
	}
	var routeNames []string
	if routes != "" {
		for n := range strings.SplitSeq(routes, ",") {
			if _, ok := routeMakers[n]; !ok {
				return fmt.Errorf("unknown route %q", n)
			}
			routeNames = append(routeNames, n)
		}
	}
	token, err := bench.IssueToken()
	if err != nil {
		return err
	}
	rep := Report{Concurrency: conc, Requests: requests, MaxSeconds: maxDur.Seconds(), Rounds: rounds}
	// runs holds the results by job name: the endpoint's, or
	// "validate/" and the route's.
	runs := map[string][]bench.LoadResult{}
	const validate = "validate/"

	fmt.Printf("loopback: %d clients, %d requests per run (bcrypt: %d), cap %v, %d rounds\n", conc, requests, bcryptReqs, maxDur, rounds)
	fmt.Printf("%-26s %5s %10s %10s %10s %12s %7s\n", "endpoint or route", "round", "req/s", "p50 µs", "p99 µs", "retained B", "errors")
	var cheap, slow []string
	for _, n := range names {
		if makers[n].BCrypt {
			slow = append(slow, n)
		} else {
			cheap = append(cheap, n)
		}
	}
	for _, n := range routeNames {
		cheap = append(cheap, validate+n)
	}
	measure := func(n string, round int, cfg bench.LoadConfig) error {
		var (
			res bench.LoadResult
			err error
		)
		if route, ok := strings.CutPrefix(n, validate); ok {
			res, err = loadRoute(ctx, routeMakers[route], token, cfg)
		} else {
			res, err = loadOnce(ctx, makers[n], cfg)
		}
		if err != nil {
			return err
		}
		fmt.Printf("%-26s %5d %10.0f %10.0f %10.0f %12.1f %7d\n", n, round, res.PerSecond, res.P50, res.P99, res.RetainedPerToken, res.Errors)
		runs[n] = append(runs[n], res)
		return nil
	}
	// Each round starts one endpoint or route further down the list, so
	// that none always follows the same one.
	for round := 1; round <= rounds; round++ {
		for i := range cheap {
			n := cheap[(i+round-1)%len(cheap)]
			if err := measure(n, round, bench.LoadConfig{Requests: requests, Warmup: warmup, Concurrency: conc, MaxDuration: maxDur}); err != nil {
				return err
			}
		}
	}
	// bcrypt endpoints take a quarter of a second of CPU a request: one
	// short run each, a warm-up request per client. With every client
	// waiting on bcrypt at once, a request takes seconds, more on a busy
	// machine, so each may take up to a minute.
	for _, n := range slow {
		if err := measure(n, 1, bench.LoadConfig{Requests: bcryptReqs, Warmup: conc, Concurrency: conc, MaxDuration: maxDur, Timeout: time.Minute}); err != nil {
			return err
		}
	}
	for _, n := range names {
		rep.Loopback = append(rep.Loopback, Loopback{Name: n, Median: median(n, runs[n]), Runs: runs[n]})
	}
	for _, n := range routeNames {
		rs := runs[validate+n]
		rep.Validation = append(rep.Validation, Loopback{Name: n, Median: median(n, rs), Runs: rs})
	}

	if cpuprofile != "" {
		if err := profile(ctx, makers[bench.EndpointM2MAuth], bench.LoadConfig{Requests: requests, Warmup: warmup, Concurrency: conc, MaxDuration: maxDur}, cpuprofile); err != nil {
			return err
		}
	}

	if retain > 0 {
		fmt.Printf("\nin process, %d tokens each:\n", retain)
		for _, m := range bench.Endpoints() {
			if m.BCrypt {
				continue // the same store as its plaintext twin, at seconds per token
			}
			e, err := m.New()
			if err != nil {
				return err
			}
			per, err := bench.RetainedPerToken(e, retain)
			e.Close()
			if err != nil {
				return err
			}
			fmt.Printf("%-26s %10.1f bytes retained per token\n", m.Name, per)
			rep.Retained = append(rep.Retained, Retained{Name: m.Name, Tokens: retain, BytesPerToken: per})
		}
	}

	if out == "" {
		return nil
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(out, append(b, '\n'), 0o644)
}

// loadOnce drives a fresh endpoint once and releases it.
func loadOnce(ctx context.Context, m bench.EndpointMaker, cfg bench.LoadConfig) (bench.LoadResult, error) {
	e, err := m.New()
	if err != nil {
		return bench.LoadResult{}, err
	}
	defer e.Close()
	res, err := bench.Load(ctx, e, cfg)
	if err != nil {
		return res, err
	}
	if res.Errors > 0 {
		return res, fmt.Errorf("%s: %d of %d requests failed", m.Name, res.Errors, res.Requests)
	}
	return res, nil
}

// loadRoute drives a fresh route once with token.
func loadRoute(ctx context.Context, m bench.RouteMaker, token string, cfg bench.LoadConfig) (bench.LoadResult, error) {
	rt, err := m.New()
	if err != nil {
		return bench.LoadResult{}, err
	}
	res, err := bench.LoadRoute(ctx, rt, token, cfg)
	if err != nil {
		return res, err
	}
	if res.Errors > 0 {
		return res, fmt.Errorf("validate/%s: %d of %d requests failed", m.Name, res.Errors, res.Requests)
	}
	return res, nil
}

// profile writes a CPU profile of one loopback run of m: server and
// clients both, since they share the process.
func profile(ctx context.Context, m bench.EndpointMaker, cfg bench.LoadConfig, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	_, err = loadOnce(ctx, m, cfg)
	pprof.StopCPUProfile()
	return err
}

// median returns a result whose every number is the median of that
// number over runs.
func median(name string, runs []bench.LoadResult) bench.LoadResult {
	pick := func(f func(bench.LoadResult) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return bench.LoadResult{
		Name:             name,
		Requests:         int(pick(func(r bench.LoadResult) float64 { return float64(r.Requests) })),
		Errors:           int(pick(func(r bench.LoadResult) float64 { return float64(r.Errors) })),
		Seconds:          pick(func(r bench.LoadResult) float64 { return r.Seconds }),
		PerSecond:        pick(func(r bench.LoadResult) float64 { return r.PerSecond }),
		P50:              pick(func(r bench.LoadResult) float64 { return r.P50 }),
		P99:              pick(func(r bench.LoadResult) float64 { return r.P99 }),
		RetainedPerToken: pick(func(r bench.LoadResult) float64 { return r.RetainedPerToken }),
	}
}
