#!/usr/bin/env bash
# Measures m2mauth against its peer libraries in one run and rewrites the
# results section of README.md. 8 to 10 minutes on 2 idle cores, longer
# beside other work.
#
# Knobs (environment):
#   COUNT=10             passes over the in-process benchmarks (-count of bcrypt's)
#   BENCHTIME=1s         -benchtime of the in-process benchmarks
#   BCRYPT_BENCHTIME=20x -benchtime of the bcrypt benchmark
#   ROUNDS=7             loopback rounds over all endpoints (medians reported)
#   REQUESTS=50000       loopback requests per endpoint and round
set -euo pipefail
cd "$(dirname "$0")"

COUNT=${COUNT:-10}
BENCHTIME=${BENCHTIME:-1s}
BCRYPT_BENCHTIME=${BCRYPT_BENCHTIME:-20x}
ROUNDS=${ROUNDS:-7}
REQUESTS=${REQUESTS:-50000}

out=results
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
before=$(loadavg)
echo "load average before: $before"

echo "== vet and sanity tests"
go vet ./...
go test -count=1 ./...

benchstat=$(go env GOPATH)/bin/benchstat
if [ ! -x "$benchstat" ]; then
	echo "== installing benchstat"
	go install golang.org/x/perf/cmd/benchstat@latest
fi

go test -c -o "$tmp/bench.test" .
go build -o "$tmp/load" ./cmd/load

# The passes are interleaved (each runs every benchmark once) rather than
# -count repeating each benchmark in a row, so that a slow spell of the
# machine weighs on every implementation alike instead of on one.
echo "== in-process benchmarks ($COUNT interleaved passes)"
: >"$out/bench.txt"
for _ in $(seq "$COUNT"); do
	"$tmp/bench.test" -test.run '^$' -test.bench '^(BenchmarkIssue|BenchmarkValidate|BenchmarkAudit)$' \
		-test.benchmem -test.count 1 -test.benchtime "$BENCHTIME" | tee -a "$out/bench.txt"
done
"$tmp/bench.test" -test.run '^$' -test.bench '^BenchmarkIssueBCrypt$' \
	-test.benchmem -test.count "$COUNT" -test.benchtime "$BCRYPT_BENCHTIME" | tee -a "$out/bench.txt"
"$benchstat" "$out/bench.txt" | tee "$out/benchstat.txt"

echo "== loopback load and retained heap"
"$tmp/load" -rounds "$ROUNDS" -requests "$REQUESTS" -out "$out/load.json" \
	-cpuprofile "$tmp/load.pprof" | tee "$out/load.txt"

echo "== CPU profiles of m2mauth"
top() { # name, binary, profile: pprof listings by cumulative and by own time
	go tool pprof -top -cum -nodecount 30 "$2" "$3" >"$out/$1.cum.txt" 2>/dev/null
	go tool pprof -top -nodecount 30 "$2" "$3" >"$out/$1.flat.txt" 2>/dev/null
}
profile() { # name, -bench pattern
	"$tmp/bench.test" -test.run '^$' -test.bench "$2" -test.benchtime 3s \
		-test.cpuprofile "$tmp/$1.pprof" >/dev/null
	top "$1" "$tmp/bench.test" "$tmp/$1.pprof"
}
rm -f "$out"/*.prof.txt "$out"/*.cum.txt "$out"/*.flat.txt
profile issue '^BenchmarkIssue$/^m2mauth$'
profile uncached '^BenchmarkValidate$/^m2mauth-uncached$'
profile cached '^BenchmarkValidate$/^m2mauth-cached$'
top load "$tmp/load" "$tmp/load.pprof"

after=$(loadavg)
echo "load average after: $after"
echo "== goals"
go run ./cmd/report -results "$out" -readme README.md -count "$COUNT" \
	-loadavg-before "$before" -loadavg-after "$after"
