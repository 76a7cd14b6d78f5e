// etcdput: the raw-client baseline for kinelab's generator. Like `benchmark put` from etcd's tools
// (which the Go module proxy does not serve), it writes unique keys with plain Puts from many
// concurrent clients and prints one JSON line with the achieved rate.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated endpoints")
	total := flag.Int("total", 10000, "puts to issue")
	clients := flag.Int("clients", 8, "concurrent clients (one connection each)")
	valueSize := flag.Int("val-size", 1024, "value bytes")
	prefix := flag.String("prefix", "/registry/configmaps/bench/", "key prefix")
	flag.Parse()

	value := make([]byte, *valueSize)
	rand.Read(value)
	var next int64 = -1
	latencies := make([][]time.Duration, *clients)
	var failures int64
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < *clients; c++ {
		cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: 5 * time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, "connect:", err)
			os.Exit(2)
		}
		defer cli.Close()
		wg.Add(1)
		go func(c int, cli *clientv3.Client) {
			defer wg.Done()
			for {
				i := atomic.AddInt64(&next, 1)
				if i >= int64(*total) {
					return
				}
				t0 := time.Now()
				_, err := cli.Put(context.Background(), fmt.Sprintf("%s%d-%09d", *prefix, start.UnixNano(), i), string(value))
				if err != nil {
					atomic.AddInt64(&failures, 1)
					continue
				}
				latencies[c] = append(latencies[c], time.Since(t0))
			}
		}(c, cli)
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range latencies {
		all = append(all, l...)
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000
	}
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"ok": len(all), "failed": failures, "seconds": elapsed.Seconds(),
		"rate": float64(len(all)) / elapsed.Seconds(), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
	})
}
