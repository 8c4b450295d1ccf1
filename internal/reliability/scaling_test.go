package reliability

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider"
)

// BenchmarkScaling measures generate+export (to an AES KEK) and Encrypt of
// a 1 KiB message with N workers, 1 to 64, on a pool of N sessions, when
// every PKCS#11 call takes 1 ms more, as on a networked HSM: the provider
// should keep N sessions busy at once. It reports ops/s and "efficiency",
// the throughput over N times the one-worker throughput of the same
// operation in the same run (the target is ≥ 0.9; docs/performance.md).
// FAULTMOD_BENCH_LATENCY_US sets another latency (10000: 10 ms per call,
// which leaves SoftHSM's own work, in this process, a smaller share).
//
//	go test ./internal/reliability -run '^$' -bench Scaling -benchtime 2s
func BenchmarkScaling(b *testing.B) {
	if env.err != nil {
		if os.Getenv("CI") != "" {
			b.Fatalf("CI is set and the fault-injection token is missing: %v", env.err)
		}
		b.Skipf("no fault-injection token: %v", env.err)
	}
	ctx := context.Background()
	a, err := provider.OpenAdmin(ctx, config(16), provider.PINValue([]byte(soPIN)))
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
	if err := env.ctl.Set(latencyLines(benchLatency())...); err != nil {
		b.Fatal(err)
	}
	defer env.ctl.Clear()

	msg := make([]byte, 1<<10)
	ops := []struct {
		name string
		op   func(ctx context.Context, p *provider.Provider, k *provider.KEK) error
	}{
		{"GenerateExport", func(ctx context.Context, p *provider.Provider, k *provider.KEK) error {
			key, err := p.Generate(ctx, provider.AES256)
			if err != nil {
				return err
			}
			_, err = p.Export(ctx, key, []*provider.KEK{k}, provider.Options{})
			if derr := key.Destroy(ctx); err == nil {
				err = derr
			}
			return err
		}},
		{"Encrypt1KiB", func(ctx context.Context, p *provider.Provider, k *provider.KEK) error {
			return p.Encrypt(ctx, io.Discard, bytes.NewReader(msg), int64(len(msg)), []*provider.KEK{k}, provider.Options{})
		}},
	}
	for _, o := range ops {
		var oneWorker float64 // ops/s of one worker, measured first
		for _, workers := range []int{1, 2, 4, 8, 16, 32, 64} {
			b.Run(fmt.Sprintf("op=%s/workers=%d", o.name, workers), func(b *testing.B) {
				p, err := provider.Open(ctx, config(workers))
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				k, err := p.KEK(ctx, "scaling")
				if err != nil {
					b.Fatal(err)
				}
				// Warm up: every worker's session open, the first key of
				// each kind read back, before the clock starts.
				if err := run(ctx, workers, int64(2*workers), func(ctx context.Context) error { return o.op(ctx, p, k) }); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				calls0, cpu0 := provider.TokenCalls(), cpuTime()
				start := time.Now()
				err = run(ctx, workers, int64(b.N), func(ctx context.Context) error { return o.op(ctx, p, k) })
				elapsed := time.Since(start)
				calls, cpu := provider.TokenCalls()-calls0, cpuTime()-cpu0
				b.StopTimer()
				b.ReportMetric(float64(calls)/float64(b.N), "calls/op")
				b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
				if err != nil {
					b.Fatal(err)
				}
				ops := float64(b.N) / elapsed.Seconds()
				b.ReportMetric(ops, "ops/s")
				if workers == 1 {
					oneWorker = ops
				} else if oneWorker > 0 {
					b.ReportMetric(ops/(float64(workers)*oneWorker), "efficiency")
				}
			})
		}
	}
}

// run has workers goroutines do n operations in all; the first error stops it.
func run(ctx context.Context, workers int, n int64, op func(context.Context) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= n {
				if err := op(ctx); err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	err, _ := failed.Load().(error)
	return err
}

// cpuTime is the CPU time of this process so far, user and system:
// SoftHSM's work, in the process, is in it.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
