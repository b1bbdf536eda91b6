// Command report turns the outputs of run.sh into the results section of
// bench/README.md: it reads the raw benchmark output, the loopback JSON of
// cmd/load, the benchstat summary and the CPU profile summaries from a
// results directory, computes the medians and the ratios the goals are
// stated in, and rewrites the README between its results markers.
//
//	go run ./cmd/report -results results -readme README.md
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/m2mauth/m2mauth/bench"
)

const (
	beginMarker = "<!-- results:begin -->"
	endMarker   = "<!-- results:end -->"
)

func main() {
	var (
		results    = flag.String("results", "results", "directory with bench.txt, benchstat.txt, load.json and the *.cum.txt and *.flat.txt profile listings")
		readme     = flag.String("readme", "README.md", "README whose results section is rewritten")
		loadBefore = flag.String("loadavg-before", "", "load average when the run started")
		loadAfter  = flag.String("loadavg-after", "", "load average when the run ended")
		count      = flag.Int("count", 10, "the -count of the benchmark run")
	)
	flag.Parse()
	if err := run(*results, *readme, *loadBefore, *loadAfter, *count); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(dir, readme, loadBefore, loadAfter string, count int) error {
	b, err := parseBench(filepath.Join(dir, "bench.txt"))
	if err != nil {
		return err
	}
	var load loadReport
	raw, err := os.ReadFile(filepath.Join(dir, "load.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, &load); err != nil {
		return fmt.Errorf("load.json: %w", err)
	}
	stat, err := os.ReadFile(filepath.Join(dir, "benchstat.txt"))
	if err != nil {
		return err
	}
	r := &report{b: b, load: load, dir: dir}
	section := r.render(loadBefore, loadAfter, count, string(stat))
	if err := r.err(); err != nil {
		return err
	}
	doc, err := os.ReadFile(readme)
	if err != nil {
		return err
	}
	i := bytes.Index(doc, []byte(beginMarker))
	j := bytes.Index(doc, []byte(endMarker))
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %s … %s section", readme, beginMarker, endMarker)
	}
	var out bytes.Buffer
	out.Write(doc[:i+len(beginMarker)])
	out.WriteString("\n")
	out.WriteString(section)
	out.Write(doc[j:])
	if err := os.WriteFile(readme, out.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Print(r.goalsText)
	return nil
}

// benchData holds the medians of a benchmark run, by benchmark name
// without the GOMAXPROCS suffix ("Issue/m2mauth") and unit.
type benchData struct {
	cpu    string
	median map[string]map[string]float64
	runs   map[string]int
}

func parseBench(path string) (*benchData, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vals := map[string]map[string][]float64{}
	d := &benchData{median: map[string]map[string]float64{}, runs: map[string]int{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if cpu, ok := strings.CutPrefix(line, "cpu: "); ok {
			d.cpu = strings.TrimSpace(cpu)
			continue
		}
		if !strings.HasPrefix(line, "Benchmark") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 4 || len(fields)%2 != 0 {
			continue
		}
		name := strings.TrimPrefix(fields[0], "Benchmark")
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		if vals[name] == nil {
			vals[name] = map[string][]float64{}
		}
		for k := 2; k+1 < len(fields); k += 2 {
			v, err := strconv.ParseFloat(fields[k], 64)
			if err != nil {
				continue
			}
			vals[name][fields[k+1]] = append(vals[name][fields[k+1]], v)
		}
		d.runs[name]++
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for name, units := range vals {
		d.median[name] = map[string]float64{}
		for unit, v := range units {
			d.median[name][unit] = median(v)
		}
	}
	if len(d.median) == 0 {
		return nil, fmt.Errorf("%s: no benchmark results", path)
	}
	return d, nil
}

func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// loadReport mirrors the JSON of cmd/load.
type loadReport struct {
	Concurrency int     `json:"concurrency"`
	Requests    int     `json:"requests"`
	MaxSeconds  float64 `json:"max_seconds"`
	Rounds      int     `json:"rounds"`
	// Loopback holds the token endpoints, Validation the protected
	// routes.
	Loopback   []loopback `json:"loopback"`
	Validation []loopback `json:"validation"`
	Retained   []struct {
		Name          string  `json:"name"`
		Tokens        int     `json:"tokens"`
		BytesPerToken float64 `json:"bytes_per_token"`
	} `json:"retained"`
}

// loopback is the median and the runs of one endpoint or route.
type loopback struct {
	Name   string             `json:"name"`
	Median bench.LoadResult   `json:"median"`
	Runs   []bench.LoadResult `json:"runs"`
}

// report renders the results section, collecting missing inputs.
type report struct {
	b         *benchData
	load      loadReport
	dir       string
	missing   []string
	goalsText string
}

func (r *report) err() error {
	if len(r.missing) == 0 {
		return nil
	}
	return errors.New("missing results: " + strings.Join(r.missing, ", "))
}

// bench returns the median of unit for a benchmark.
func (r *report) bench(name, unit string) float64 {
	v, ok := r.b.median[name][unit]
	if !ok {
		r.missing = append(r.missing, name+" "+unit)
		return math.NaN()
	}
	return v
}

func (r *report) has(name string) bool { _, ok := r.b.median[name]; return ok }

func (r *report) loop(name string) (bench.LoadResult, bool) {
	for _, l := range r.load.Loopback {
		if l.Name == name {
			return l.Median, true
		}
	}
	return bench.LoadResult{}, false
}

func (r *report) mustLoop(name string) bench.LoadResult {
	l, ok := r.loop(name)
	if !ok {
		r.missing = append(r.missing, "loopback "+name)
		return bench.LoadResult{PerSecond: math.NaN(), P50: math.NaN(), P99: math.NaN(), RetainedPerToken: math.NaN()}
	}
	return l
}

func (r *report) retained(name string) (float64, bool) {
	for _, x := range r.load.Retained {
		if x.Name == name {
			return x.BytesPerToken, true
		}
	}
	return 0, false
}

// goal is one stated goal and its outcome.
type goal struct {
	what, target, measured string
	met                    bool
	profile                string // results/<profile>.{cum,flat}.txt explain a miss
}

// retainedLimit is the live-heap growth per token below which nothing is
// considered kept: the noise of the runtime's own bookkeeping.
const retainedLimit = 8.0

func (r *report) render(loadBefore, loadAfter string, count int, benchstat string) string {
	var s strings.Builder
	bcrypt := map[string]bool{}
	for _, m := range bench.Endpoints() {
		bcrypt[m.Name] = m.BCrypt
	}
	issue := func(n string) string {
		if bcrypt[n] {
			return "IssueBCrypt/" + n
		}
		return "Issue/" + n
	}
	val := func(n string) string { return "Validate/" + n }

	// Goals.
	m2m := r.bench(issue(bench.EndpointM2MAuth), "ns/op")
	var goals []goal
	noop, floor, m2mLoop := r.mustLoop(bench.EndpointNoop), r.mustLoop(bench.EndpointFloor), r.mustLoop(bench.EndpointM2MAuth)
	ratio := m2mLoop.PerSecond / noop.PerSecond
	measured := fmt.Sprintf("%s× (%s vs %s req/s)", f3(ratio), num(m2mLoop.PerSecond), num(noop.PerSecond))
	if resp, ok := r.loop(bench.EndpointResponse); ok {
		measured += fmt.Sprintf("; m2mauth's response alone: %s×", f3(resp.PerSecond/noop.PerSecond))
	}
	goals = append(goals, goal{
		what: "loopback issuance throughput", target: "≥ 0.90× the no-op handler's req/s",
		measured: measured, met: ratio >= 0.9, profile: "load",
	})
	noopIn := r.bench(issue(bench.EndpointNoop), "ns/op")
	floorIn := r.bench(issue(bench.EndpointFloor), "ns/op") - noopIn
	ratio = (m2m - noopIn) / floorIn
	measured = fmt.Sprintf("%s× (%s vs %s ns above no-op)", f3(ratio), num(m2m-noopIn), num(floorIn))
	if n := issue(bench.EndpointResponse); r.has(n) {
		resp := r.bench(n, "ns/op") - noopIn
		measured += fmt.Sprintf("; m2mauth's response alone: %s× (%s ns)", f3(resp/floorIn), num(resp))
	}
	goals = append(goals, goal{
		what: "in-process issuance", target: "≤ 0.08× the floor's time above the no-op handler",
		measured: measured, met: ratio <= 0.08, profile: "issue",
	})
	ratio = m2mLoop.P99 / floor.P99
	goals = append(goals, goal{
		what: "loopback issuance p99", target: "≤ 1.00× the floor's p99",
		measured: fmt.Sprintf("%s× (%s vs %s µs)", f3(ratio), num(m2mLoop.P99), num(floor.P99)),
		met:      ratio <= 1, profile: "load",
	})
	inproc, ok := r.retained(bench.EndpointM2MAuth)
	if !ok {
		r.missing = append(r.missing, "retained heap of m2mauth")
	}
	goals = append(goals, goal{
		what: "bytes retained per token", target: fmt.Sprintf("0 (< %g B of noise)", retainedLimit),
		measured: fmt.Sprintf("%s B in process, %s B over loopback", f1(inproc), f1(m2mLoop.RetainedPerToken)),
		met:      inproc < retainedLimit && m2mLoop.RetainedPerToken < retainedLimit,
	})
	for _, peer := range []string{"fosite", "go-oauth2"} {
		best, bestName := math.Inf(1), ""
		for _, m := range bench.Endpoints() {
			if !strings.HasPrefix(m.Name, peer) || !r.has(issue(m.Name)) {
				continue
			}
			if v := r.bench(issue(m.Name), "ns/op"); v < best {
				best, bestName = v, m.Name
			}
		}
		if bestName == "" {
			r.missing = append(r.missing, "issuance of "+peer)
			continue
		}
		ratio := m2m / best
		goals = append(goals, goal{
			what: "in-process issuance vs " + peer, target: "faster than its fastest configuration (< 1.00×)",
			measured: fmt.Sprintf("%s× of %s (%s vs %s ns/op)", f3(ratio), bestName, num(m2m), num(best)),
			met:      ratio < 1, profile: "issue",
		})
	}
	if r.has("Audit/"+bench.EndpointM2MAuthJSON) && r.has("Audit/"+bench.EndpointM2MAuthSlog) {
		js, sl := r.bench("Audit/"+bench.EndpointM2MAuthJSON, "ns/op"), r.bench("Audit/"+bench.EndpointM2MAuthSlog, "ns/op")
		ratio := js / m2m
		goals = append(goals, goal{
			what: "default audit (JSONAuditor)", target: "adds ≤ 10 % to a token",
			measured: fmt.Sprintf("%s %% (%s ns an event, `BenchmarkAudit`, on a %s ns token; the slog auditor: %s %%, %s ns)",
				f1(100*ratio), num(js), num(m2m), f1(100*sl/m2m), num(sl)),
			met: ratio <= 0.1,
		})
	} else {
		r.missing = append(r.missing, "BenchmarkAudit")
	}
	bare := r.bench(val(bench.RouteBare), "ns/op")
	floorAbove := r.bench(val(bench.RouteFloor), "ns/op") - bare
	unc := r.bench(val(bench.RouteM2MAuthUncached), "ns/op")
	ratio = (unc - bare) / floorAbove
	goals = append(goals, goal{
		what: "validation, uncached", target: "≤ 0.10× the floor's time above the bare route",
		measured: fmt.Sprintf("%s× (%s vs %s ns above bare)", f3(ratio), num(unc-bare), num(floorAbove)),
		met:      ratio <= 0.1, profile: "uncached",
	})
	auth0 := r.bench(val(bench.RouteAuth0), "ns/op")
	ratio = unc / auth0
	goals = append(goals, goal{
		what: "validation, uncached vs auth0/go-jwt-middleware", target: "faster (< 1.00×)",
		measured: fmt.Sprintf("%s× (%s vs %s ns/op)", f3(ratio), num(unc), num(auth0)),
		met:      ratio < 1, profile: "uncached",
	})
	hit := r.bench(val(bench.RouteM2MAuthCached), "ns/op")
	ratio = (hit - bare) / floorAbove
	measured = fmt.Sprintf("%s× (%s vs %s ns above bare)", f3(ratio), num(hit-bare), num(floorAbove))
	if n := val(bench.RouteHandoff); r.has(n) {
		hand := r.bench(n, "ns/op") - bare
		measured += fmt.Sprintf("; the claims handed on alone: %s× (%s ns)", f3(hand/floorAbove), num(hand))
	}
	goals = append(goals, goal{
		what: "validation, cache hit", target: "≤ 0.015× the floor's time above the bare route",
		measured: measured, met: ratio <= 0.015, profile: "cached",
	})

	// Header.
	cores := runtime.NumCPU()
	fmt.Fprintf(&s, "Measured %s with %s on %s, %d cores (GOMAXPROCS %d)",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.Version(), orUnknown(r.b.cpu), cores, runtime.GOMAXPROCS(0))
	if loadBefore != "" || loadAfter != "" {
		fmt.Fprintf(&s, "; load average %s before the run, %s after", orUnknown(loadBefore), orUnknown(loadAfter))
	}
	fmt.Fprintf(&s, ". %s. In-process numbers are medians of %d interleaved passes over every benchmark; loopback numbers are medians of %d rounds of %s requests from %d clients.",
		versions(), count, r.load.Rounds, num(float64(r.load.Requests)), r.load.Concurrency)
	if busy(loadBefore) {
		s.WriteString(" Other work was running on the machine: the load average before the run is not the run's own, as it had started nothing yet. Absolute figures are lower, and their spread wider, than on an idle machine; the ratios, each taken within this run, carry over better.")
	}
	s.WriteString("\n\n")

	s.WriteString("#### Goals\n\n| Goal | Target | Measured | |\n|---|---|---|---|\n")
	var gt strings.Builder
	for _, g := range goals {
		mark := "met"
		if !g.met {
			mark = "**missed**"
		}
		fmt.Fprintf(&s, "| %s | %s | %s | %s |\n", g.what, g.target, g.measured, mark)
		fmt.Fprintf(&gt, "%-50s %-10s %s\n", g.what, strings.Trim(mark, "*"), g.measured)
	}
	r.goalsText = gt.String()

	// Issuance.
	s.WriteString("\n#### Token issuance, in process (`BenchmarkIssue`)\n\n")
	s.WriteString("| Implementation | ns/op | above no-op | B/op | allocs/op | m2mauth's time ÷ this | retained B/token |\n|---|--:|--:|--:|--:|--:|--:|\n")
	noopNs := r.bench(issue(bench.EndpointNoop), "ns/op")
	for _, m := range bench.Endpoints() {
		n := issue(m.Name)
		if !r.has(n) {
			continue
		}
		ns := r.bench(n, "ns/op")
		ret := "—"
		if v, ok := r.retained(m.Name); ok {
			ret = f1(v)
		} else if m.BCrypt {
			ret = "as fosite-plain"
		}
		fmt.Fprintf(&s, "| %s | %s | %s | %s | %s | %s× | %s |\n", label(m.Name), num(ns), num(ns-noopNs),
			num(r.bench(n, "B/op")), num(r.bench(n, "allocs/op")), f2(m2m/ns), ret)
	}

	// Validation.
	s.WriteString("\n#### Token validation, in process (`BenchmarkValidate`)\n\n")
	s.WriteString("| Implementation | ns/op | above bare | B/op | allocs/op | above bare ÷ floor's |\n|---|--:|--:|--:|--:|--:|\n")
	for _, m := range bench.Routes() {
		n := val(m.Name)
		if !r.has(n) {
			continue
		}
		ns := r.bench(n, "ns/op")
		fmt.Fprintf(&s, "| %s | %s | %s | %s | %s | %s× |\n", label(m.Name), num(ns), num(ns-bare),
			num(r.bench(n, "B/op")), num(r.bench(n, "allocs/op")), f2((ns-bare)/floorAbove))
	}

	// Loopback.
	fmt.Fprintf(&s, "\n#### Token issuance over loopback (`cmd/load`, %d clients, keep-alive)\n\n", r.load.Concurrency)
	s.WriteString("| Endpoint | req/s | ÷ no-op's | p50 µs | p99 µs | p99 ÷ floor's | retained B/token | requests × rounds |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, l := range r.load.Loopback {
		m := l.Median
		fmt.Fprintf(&s, "| %s | %s | %s× | %s | %s | %s× | %s | %s × %d |\n", label(l.Name), num(m.PerSecond), f2(m.PerSecond/noop.PerSecond),
			num(m.P50), num(m.P99), f2(m.P99/floor.P99), f1(m.RetainedPerToken), num(float64(m.Requests)), len(l.Runs))
	}

	if len(r.load.Validation) > 0 {
		var bareLoop, floorLoop bench.LoadResult
		for _, l := range r.load.Validation {
			switch l.Name {
			case bench.RouteBare:
				bareLoop = l.Median
			case bench.RouteFloor:
				floorLoop = l.Median
			}
		}
		if bareLoop.PerSecond == 0 || floorLoop.P99 == 0 {
			r.missing = append(r.missing, "loopback validation of the bare route and the floor")
		}
		fmt.Fprintf(&s, "\n#### Token validation over loopback (`cmd/load`, %d clients, keep-alive)\n\n", r.load.Concurrency)
		s.WriteString("| Implementation | req/s | ÷ bare's | p50 µs | p99 µs | p99 ÷ floor's | retained B/request | requests × rounds |\n|---|--:|--:|--:|--:|--:|--:|--:|\n")
		for _, l := range r.load.Validation {
			m := l.Median
			fmt.Fprintf(&s, "| %s | %s | %s× | %s | %s | %s× | %s | %s × %d |\n", label(l.Name), num(m.PerSecond), f2(m.PerSecond/bareLoop.PerSecond),
				num(m.P50), num(m.P99), f2(m.P99/floorLoop.P99), f1(m.RetainedPerToken), num(float64(m.Requests)), len(l.Runs))
		}
	}

	// Profiles of misses.
	seen := map[string]bool{}
	for _, g := range goals {
		if g.met || g.profile == "" || seen[g.profile] {
			continue
		}
		seen[g.profile] = true
		fmt.Fprintf(&s, "\n<details><summary>CPU profile for the missed goal \"%s\" (results/%s.*.txt)</summary>\n", g.what, g.profile)
		for _, kind := range []string{"cum", "flat"} {
			top, err := os.ReadFile(filepath.Join(r.dir, g.profile+"."+kind+".txt"))
			if err != nil {
				continue
			}
			fmt.Fprintf(&s, "\n```\n%s```\n", trimProfile(string(top), 32))
		}
		s.WriteString("</details>\n")
	}

	fmt.Fprintf(&s, "\n<details><summary>benchstat</summary>\n\n```\n%s```\n</details>\n\n", benchstat)
	return s.String()
}

// versions lists the versions of the libraries compared, as built into
// this command.
func versions() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "Library versions unknown"
	}
	want := []string{
		"github.com/ory/fosite",
		"github.com/go-oauth2/oauth2/v4",
		"github.com/auth0/go-jwt-middleware/v2",
		"github.com/golang-jwt/jwt/v5",
		"github.com/lestrrat-go/jwx/v3",
		"github.com/go-jose/go-jose/v4",
	}
	var parts []string
	for _, path := range want {
		for _, d := range info.Deps {
			if d.Path == path {
				parts = append(parts, "`"+path+"` "+d.Version)
			}
		}
	}
	return "Versions: " + strings.Join(parts, ", ")
}

// trimProfile keeps the first n lines of a pprof -top listing, leaving
// out the header lines that name the file and the time.
func trimProfile(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	lines = slices.DeleteFunc(lines, func(l string) bool {
		return strings.HasPrefix(l, "File: ") || strings.HasPrefix(l, "Build ID: ") || strings.HasPrefix(l, "Time: ")
	})
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "")
}

// label names an implementation in the tables.
func label(name string) string {
	switch name {
	case bench.EndpointNoop:
		return "no-op handler (harness)"
	case bench.EndpointResponse:
		return "m2mauth's response alone (reference)"
	case bench.RouteHandoff:
		return "claims handed on alone (reference)"
	case bench.EndpointFloor: // and bench.RouteFloor
		return "go-jose floor"
	case bench.EndpointM2MAuth:
		return "**m2mauth**"
	case bench.EndpointM2MAuthJSON:
		return "**m2mauth**, JSON auditor"
	case bench.EndpointM2MAuthSlog:
		return "**m2mauth**, slog auditor"
	case bench.EndpointFositeBCrypt:
		return fmt.Sprintf("ory/fosite, bcrypt cost %d", bench.FositeBCryptCost)
	case bench.EndpointFositePlain:
		return "ory/fosite, plaintext hasher"
	case bench.EndpointGoOAuth2:
		return "go-oauth2 v4"
	case bench.EndpointGoOAuth2JWT:
		return "go-oauth2 v4, HS256 JWT"
	case bench.RouteBare:
		return "bare 204 route (harness)"
	case bench.RouteM2MAuthCached:
		return "**m2mauth**, cache hit"
	case bench.RouteM2MAuthUncached:
		return "**m2mauth**, uncached"
	case bench.RouteAuth0:
		return "auth0/go-jwt-middleware v2"
	case bench.RouteGolangJWT:
		return "golang-jwt v5, jwt.Parse"
	case bench.RouteGolangJWTTyped:
		return "golang-jwt v5, typed claims"
	case bench.RouteJWX:
		return "lestrrat-go/jwx v3, jwt.Parse"
	}
	return name
}

// busy reports whether a load average line ("1.20 0.80 0.50") shows
// other work: a one-minute average of 1 or more.
func busy(loadavg string) bool {
	f := strings.Fields(loadavg)
	if len(f) == 0 {
		return false
	}
	v, err := strconv.ParseFloat(f[0], 64)
	return err == nil && v >= 1
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// num formats v with thousands separators and no decimals below 10 only
// when it has a fraction worth showing.
func num(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	if math.Abs(v) < 10 && v != math.Trunc(v) {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	neg := v < 0
	s := strconv.FormatInt(int64(math.Abs(math.Round(v))), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "−" + b.String()
	}
	return b.String()
}

func f1(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

// f3 formats a ratio a goal is judged on with three decimals, so that
// one shown on the limit is not rounded onto it.
func f3(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "n/a"
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

// f2 formats a ratio with two decimals, or two significant digits when
// it is smaller than that shows.
func f2(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "n/a"
	}
	if v != 0 && math.Abs(v) < 0.01 {
		return strconv.FormatFloat(v, 'g', 2, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}
