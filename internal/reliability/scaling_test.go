package reliability

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider"
)

// oneWorker is the single-worker throughput of BenchmarkScaling, measured
// first in the same run, that the other worker counts are compared with.
var oneWorker atomic.Uint64 // math.Float64bits of ops/s

// BenchmarkScaling measures generate+export (to an AES KEK) with N workers
// when every PKCS#11 call takes 1 ms more, as on a networked HSM: the
// provider should keep N sessions busy at once. It reports ops/s and
// "efficiency", the throughput over N times the one-worker throughput
// (the target is ≥ 0.8 up to 16 workers; docs/performance.md).
//
//	go test ./internal/reliability -run '^$' -bench Scaling -benchtime 400x
func BenchmarkScaling(b *testing.B) {
	if env.err != nil {
		if os.Getenv("CI") != "" {
			b.Fatalf("CI is set and the fault-injection token is missing: %v", env.err)
		}
		b.Skipf("no fault-injection token: %v", env.err)
	}
	ctx := context.Background()
	cfg := config(16)
	a, err := provider.OpenAdmin(ctx, cfg, provider.PINValue([]byte(soPIN)))
	if err != nil {
		b.Fatal(err)
	}
	kek, err := a.CreateKEKWith(ctx, "scaling", provider.KEKAES256, provider.KEKOptions{AllowExposedAtRest: true})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = a.DestroyKEK(ctx, kek.ID)
		_ = a.Close()
	}()
	if err := env.ctl.Set("latency_us 1000"); err != nil {
		b.Fatal(err)
	}
	defer env.ctl.Clear()

	for _, workers := range []int{1, 2, 4, 8, 16} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			p, err := provider.Open(ctx, config(workers))
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			k, err := p.KEK(ctx, "scaling")
			if err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			var wg sync.WaitGroup
			var failed atomic.Value
			b.ResetTimer()
			start := time.Now()
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						key, err := p.Generate(ctx, provider.AES256)
						if err == nil {
							_, err = p.Export(ctx, key, []*provider.KEK{k}, provider.Options{})
							_ = key.Destroy(ctx)
						}
						if err != nil {
							failed.Store(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
			ops := float64(b.N) / elapsed.Seconds()
			b.ReportMetric(ops, "ops/s")
			if workers == 1 {
				oneWorker.Store(uint64(ops * 1000))
			} else if one := float64(oneWorker.Load()) / 1000; one > 0 {
				b.ReportMetric(ops/(float64(workers)*one), "efficiency")
			}
		})
	}
}
