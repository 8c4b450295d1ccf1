package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/hsmkeys/hsmkeys/provider"
)

var benchSpec = spec{
	path:  "bench",
	usage: "bench [--op generate|seal|export|import|all] [--workers N] [--duration D] [--kek NAME] [--size BYTES]",
	about: `Measures this token: for each operation, N goroutines run it on the
provider's session pool for D, and the operations per second, the
PKCS#11 calls per operation and the latency (median and 99th percentile)
are reported. On a networked HSM every call is a round trip: ops/s of one
worker is about 1 / (CALLS/OP x round trip), and N workers on N sessions
do N times that while the HSM keeps up.
  generate  generate an AES-256 session key and destroy it
  seal      AES-GCM seal of --size bytes under one session key
  export    wrap a session key under a KEK, as 'key new' does
  import    unwrap an exported key and destroy it, as 'key inspect --verify'
export and import use --kek, or the first KEK on the token that can
unwrap; with none, 'all' skips them. The token is left as it was.`,
	examples: `hsmkeys bench
hsmkeys bench --op seal --workers 4 --duration 10s --size 65536
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' bench --op all --json`,
}

var benchOps = []string{"generate", "seal", "export", "import"}

type benchResult struct {
	Op        string  `json:"op"`
	Workers   int     `json:"workers"`
	Ops       int     `json:"ops"`
	OpsPerSec float64 `json:"ops_per_sec"`
	// CallsPerOp is PKCS#11 calls per operation (provider.TokenCalls).
	CallsPerOp float64 `json:"calls_per_op"`
	P50us      float64 `json:"p50_us"`
	P99us      float64 `json:"p99_us"`
}

type benchConfig struct {
	ops      []string
	workers  int
	duration time.Duration
	kekName  string
	size     int
}

func (c *cli) cmdBench(ctx context.Context, args []string) error {
	fs := c.newFlags(benchSpec)
	op := fs.String("op", "all", "`OP`: generate, seal, export, import or all")
	workers := fs.Int("workers", runtime.GOMAXPROCS(0), "run `N` goroutines at once")
	duration := fs.Duration("duration", 2*time.Second, "measure each operation for `D`")
	kekName := fs.String("kek", "", "the KEK `NAME` for export and import")
	size := fs.Int("size", 1024, "seal `BYTES` at a time")
	c.pinFlags(fs, false)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
	}
	bc := benchConfig{ops: []string{*op}, workers: *workers, duration: *duration, kekName: *kekName, size: *size}
	switch {
	case *op == "all":
		bc.ops = benchOps
	case !slices.Contains(benchOps, *op):
		return usagef(fs.spec.path, "--op %q: want generate, seal, export, import or all", *op)
	case *workers < 1 || *workers > 256:
		return usagef(fs.spec.path, "--workers %d: want 1 to 256", *workers)
	case *duration <= 0:
		return usagef(fs.spec.path, "--duration %v: want more than 0", *duration)
	case *size < 0 || *size > provider.MaxSealSize:
		return usagef(fs.spec.path, "--size %d: want 0 to %d", *size, provider.MaxSealSize)
	}
	need := provider.ExportNone // generate and seal run under either policy
	if slices.Contains(bc.ops, "export") || slices.Contains(bc.ops, "import") {
		need = provider.ExportTrusted
	}
	p, err := c.openProvider(ctx, need, *workers+1)
	if err != nil {
		return err
	}
	defer p.Close()
	results, err := c.bench(ctx, p, bc)
	if err != nil {
		return err
	}
	if c.json {
		return c.writeJSON(results)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "OP\tWORKERS\tOPS\tOPS/S\tCALLS/OP\tP50 µs\tP99 µs\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.2f\t%.0f\t%.0f\t\n", r.Op, r.Workers, r.Ops, r.OpsPerSec, r.CallsPerOp, r.P50us, r.P99us)
	}
	return tw.Flush()
}

// bench runs each operation in turn.
func (c *cli) bench(ctx context.Context, p *provider.Provider, bc benchConfig) ([]benchResult, error) {
	kek, err := benchKEK(ctx, p, bc)
	if err != nil {
		return nil, err
	}
	results := []benchResult{}
	prog := c.newProgress()
	defer prog.clear()
	for _, op := range bc.ops {
		if kek == nil && (op == "export" || op == "import") {
			fmt.Fprintf(c.stderr, "hsmkeys: bench: no KEK on the token that can unwrap; %s skipped ('hsmkeys kek create --label NAME' makes one)\n", op)
			continue
		}
		fn, done, err := benchOp(ctx, p, op, kek, bc.size)
		if err != nil {
			return nil, fmt.Errorf("bench %s: %w", op, err)
		}
		r, err := measure(ctx, op, bc, fn, prog)
		done()
		if err != nil {
			return nil, fmt.Errorf("bench %s: %w", op, err)
		}
		results = append(results, r)
	}
	return results, nil
}

// benchKEK is the KEK for export and import: the one named, or the first
// good one that can unwrap (nil if none and none was asked for).
func benchKEK(ctx context.Context, p *provider.Provider, bc benchConfig) (*provider.KEK, error) {
	if !slices.Contains(bc.ops, "export") && !slices.Contains(bc.ops, "import") {
		return nil, nil
	}
	if bc.kekName != "" {
		k, err := p.KEK(ctx, bc.kekName)
		return k, kekNotFound(err)
	}
	keks, err := p.KEKs(ctx)
	if err != nil {
		return nil, err
	}
	for _, k := range keks {
		if len(k.Problems) == 0 && k.CanUnwrap() {
			return p.KEKByID(ctx, k.ID)
		}
	}
	if len(bc.ops) == 1 {
		return nil, kekNotFound(fmt.Errorf("%w: no KEK on the token can unwrap, for bench %s", provider.ErrNotFound, bc.ops[0]))
	}
	return nil, nil
}

// benchOp prepares one operation: fn runs it once, done cleans up.
func benchOp(ctx context.Context, p *provider.Provider, op string, kek *provider.KEK, size int) (fn func() error, done func(), err error) {
	bg := context.WithoutCancel(ctx)
	if op == "generate" {
		return func() error {
			k, err := p.Generate(ctx, provider.AES256)
			if err != nil {
				return err
			}
			return k.Destroy(bg)
		}, func() {}, nil
	}
	k, err := p.Generate(ctx, provider.AES256)
	if err != nil {
		return nil, nil, err
	}
	done = func() { _ = k.Destroy(bg) }
	switch op {
	case "seal":
		data := make([]byte, size)
		_, _ = rand.Read(data)
		return func() error { _, err := k.Seal(ctx, data, nil); return err }, done, nil
	case "export":
		return func() error { _, err := p.Export(ctx, k, []*provider.KEK{kek}, provider.Options{}); return err }, done, nil
	}
	blob, err := p.Export(ctx, k, []*provider.KEK{kek}, provider.Options{})
	done()
	if err != nil {
		return nil, nil, err
	}
	return func() error {
		k, err := p.Import(ctx, blob, provider.Options{})
		if err != nil {
			return err
		}
		return k.Destroy(bg)
	}, func() {}, nil
}

// measure runs fn on bc.workers goroutines for bc.duration.
func measure(ctx context.Context, op string, bc benchConfig, fn func() error, prog *progress) (benchResult, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	calls := provider.TokenCalls() // this process's only provider: its calls
	start := time.Now()
	deadline := start.Add(bc.duration)
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		all []time.Duration
	)
	for range bc.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for ctx.Err() == nil && time.Now().Before(deadline) {
				t := time.Now()
				if err := fn(); err != nil {
					cancel(err)
					break
				}
				mine = append(mine, time.Since(t))
				prog.show("bench %s: %.1fs of %v", op, time.Since(start).Seconds(), bc.duration)
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	calls = provider.TokenCalls() - calls
	if err := context.Cause(ctx); err != nil {
		return benchResult{}, err // an operation failed, or an interrupt
	}
	slices.Sort(all)
	r := benchResult{Op: op, Workers: bc.workers, Ops: len(all)}
	if len(all) > 0 {
		r.OpsPerSec = float64(len(all)) / elapsed.Seconds()
		r.CallsPerOp = float64(calls) / float64(len(all))
		r.P50us = micros(all[len(all)/2])
		r.P99us = micros(all[min(len(all)-1, len(all)*99/100)])
	}
	return r, nil
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
