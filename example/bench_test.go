package main

import (
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// benchClients is the number of keep-alive clients of BenchmarkServeStores,
// as in bench/cmd/drive.
const benchClients = 32

// BenchmarkServeStores measures the example server's token endpoint over
// loopback on each of its embedded stores, the load of bench/cmd/drive: 32
// keep-alive clients of the demo client, the server a process of its own
// that logs to a file. ns/op is the wall time per token, so the two
// sub-benchmarks of one run give the ratio of their throughputs, which the
// README states for SQLite against memory:
//
//	go test -run '^$' -bench ServeStores -count 5 ./example
func BenchmarkServeStores(b *testing.B) {
	bin := buildExample(b)
	for _, store := range []string{"memory", "sqlite"} {
		db := store
		if store == "sqlite" {
			db = filepath.Join(b.TempDir(), "m2mauth.db")
		}
		log, err := os.Create(filepath.Join(b.TempDir(), store+".log"))
		require.NoError(b, err)
		srv := spawnLogging(b, bin, http.DefaultClient, log, "-db", db, "-signing-key-file", newKeyFile(b), "serve", "-addr", "127.0.0.1:0")
		srv.await(b)
		secret, ok := demoSecret(b, srv)
		require.True(b, ok, "a new database gets the demo client")
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchClients, MaxConnsPerHost: benchClients}}
		auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("demo-client:"+secret))
		b.Run(store, func(b *testing.B) {
			b.SetParallelism(max(1, benchClients/runtime.GOMAXPROCS(0)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, err := http.NewRequest(http.MethodPost, srv.base+"/oauth/token", strings.NewReader("grant_type=client_credentials"))
					if err != nil {
						b.Error(err)
						return
					}
					req.Header.Set("Authorization", auth)
					req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != http.StatusOK {
						b.Errorf("status %d, %v", resp.StatusCode, err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
		client.CloseIdleConnections()
		require.NoError(b, srv.cmd.Process.Kill())
		<-srv.done
		log.Close()
	}
}
