package reliability

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/internal/faultmod"
	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// BenchmarkCalls runs each operation through faultmod.so, one worker, with
// every PKCS#11 call 1 ms slower (a networked HSM) and counts the calls the
// operation makes in steady state (the provider open, its KEK found, its
// session open, a few operations done before counting). It reports
// calls/op (all PKCS#11 calls), one metric per function ("C_Encrypt/op")
// and ops/s: on a networked HSM ops/s ≈ 1000 / (calls/op), the round trips
// are the cost. docs/performance.md holds the table and each floor.
//
//	go test ./internal/reliability -run '^$' -bench Calls -benchtime 50x
//
// FAULTMOD_BENCH_LATENCY_US changes the latency (0: in process).
func BenchmarkCalls(b *testing.B) {
	needBench(b)
	ctx := context.Background()
	kekName := createBenchKEK(b, "calls")
	latency := benchLatency()
	for _, c := range callCases() {
		b.Run(c.name, func(b *testing.B) {
			p, err := provider.Open(ctx, c.config(config(2)))
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			op, err := c.setup(ctx, p, kekName)
			if err != nil {
				b.Fatal(err)
			}
			countCalls(b, latency, op)
		})
	}
}

// callCase is one operation of BenchmarkCalls: setup prepares what it
// needs (a key, a blob, a message) and returns the operation.
type callCase struct {
	name   string
	config func(provider.Config) provider.Config
	setup  func(ctx context.Context, p *provider.Provider, kek string) (func(context.Context) error, error)
}

func sameConfig(c provider.Config) provider.Config { return c }

func callCases() []callCase {
	msg1K, msg1M := randomBytes(1<<10), randomBytes(1<<20)
	return []callCase{
		{"Generate", sameConfig, func(ctx context.Context, p *provider.Provider, _ string) (func(context.Context) error, error) {
			return func(ctx context.Context) error {
				k, err := p.Generate(ctx, provider.AES256)
				if err != nil {
					return err
				}
				return k.Destroy(ctx)
			}, nil
		}},
		{"GenerateExport", sameConfig, func(ctx context.Context, p *provider.Provider, name string) (func(context.Context) error, error) {
			kek, err := p.KEK(ctx, name)
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context) error {
				k, err := p.Generate(ctx, provider.AES256)
				if err != nil {
					return err
				}
				_, err = p.Export(ctx, k, []*provider.KEK{kek}, provider.Options{})
				return errors.Join(err, k.Destroy(ctx))
			}, nil
		}},
		{"Import", sameConfig, func(ctx context.Context, p *provider.Provider, name string) (func(context.Context) error, error) {
			blob, err := exportedBlob(ctx, p, name)
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context) error {
				k, err := p.Import(ctx, blob, provider.Options{})
				if err != nil {
					return err
				}
				return k.Destroy(ctx)
			}, nil
		}},
		{"Seal1KiB", sameConfig, func(ctx context.Context, p *provider.Provider, _ string) (func(context.Context) error, error) {
			k, err := p.Generate(ctx, provider.AES256)
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context) error {
				_, err := k.Seal(ctx, msg1K, nil)
				return err
			}, nil
		}},
		{"Open1KiB", sameConfig, func(ctx context.Context, p *provider.Provider, _ string) (func(context.Context) error, error) {
			k, err := p.Generate(ctx, provider.AES256)
			if err != nil {
				return nil, err
			}
			sealed, err := k.Seal(ctx, msg1K, nil)
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context) error {
				_, err := k.Open(ctx, sealed, nil)
				return err
			}, nil
		}},
		encryptCase("Encrypt1KiB", msg1K, sameConfig),
		encryptCase("Encrypt1MiB", msg1M, sameConfig),
		decryptCase("Decrypt1KiB", msg1K, sameConfig),
		decryptCase("Decrypt1MiB", msg1M, sameConfig),
		encryptCase("Encrypt1KiBCached", msg1K, withCache),
		decryptCase("Decrypt1KiBCached", msg1K, withCache),
	}
}

// withCache turns the data-key cache on (provider/cache.go) with limits the
// benchmarks do not reach.
func withCache(c provider.Config) provider.Config {
	c.DataKeyCache = &provider.DataKeyCache{MaxMessages: 1 << 30, MaxAge: time.Hour}
	return c
}

func encryptCase(name string, msg []byte, cfg func(provider.Config) provider.Config) callCase {
	return callCase{name, cfg, func(ctx context.Context, p *provider.Provider, kekName string) (func(context.Context) error, error) {
		kek, err := p.KEK(ctx, kekName)
		if err != nil {
			return nil, err
		}
		var out bytes.Buffer
		return func(ctx context.Context) error {
			out.Reset()
			return p.Encrypt(ctx, &out, bytes.NewReader(msg), int64(len(msg)), []*provider.KEK{kek}, provider.Options{})
		}, nil
	}}
}

func decryptCase(name string, msg []byte, cfg func(provider.Config) provider.Config) callCase {
	return callCase{name, cfg, func(ctx context.Context, p *provider.Provider, kekName string) (func(context.Context) error, error) {
		kek, err := p.KEK(ctx, kekName)
		if err != nil {
			return nil, err
		}
		var ct bytes.Buffer
		if err := p.Encrypt(ctx, &ct, bytes.NewReader(msg), int64(len(msg)), []*provider.KEK{kek}, provider.Options{}); err != nil {
			return nil, err
		}
		var out bytes.Buffer
		return func(ctx context.Context) error {
			out.Reset()
			if err := p.Decrypt(ctx, &out, bytes.NewReader(ct.Bytes()), int64(ct.Len()), provider.Options{}); err != nil {
				return err
			}
			if out.Len() != len(msg) {
				return errMismatch
			}
			return nil
		}, nil
	}}
}

func exportedBlob(ctx context.Context, p *provider.Provider, kekName string) ([]byte, error) {
	kek, err := p.KEK(ctx, kekName)
	if err != nil {
		return nil, err
	}
	k, err := p.Generate(ctx, provider.AES256)
	if err != nil {
		return nil, err
	}
	defer k.Destroy(ctx)
	return p.Export(ctx, k, []*provider.KEK{kek}, provider.Options{})
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// needBench skips a benchmark without the fault-injection token (fails in CI).
func needBench(b *testing.B) {
	b.Helper()
	if env.err != nil {
		if os.Getenv("CI") != "" {
			b.Fatalf("CI is set and the fault-injection token is missing: %v", env.err)
		}
		b.Skipf("no fault-injection token: %v", env.err)
	}
	if err := env.ctl.Clear(); err != nil {
		b.Fatal(err)
	}
}

// createBenchKEK makes an AES-256 KEK named name (the SO makes it trusted)
// and destroys it when the benchmark ends.
func createBenchKEK(b *testing.B, name string) string {
	b.Helper()
	ctx := context.Background()
	a, err := provider.OpenAdmin(ctx, config(2), provider.PINValue([]byte(soPIN)))
	if err != nil {
		b.Fatal(err)
	}
	kek, err := a.CreateKEKWith(ctx, name, provider.KEKAES256, provider.KEKOptions{AllowExposedAtRest: true})
	if err != nil {
		_ = a.Close()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = a.DestroyKEK(ctx, kek.ID)
		_ = a.Close()
	})
	return name
}

// benchLatency is the per-call latency of the counting benchmarks, in µs.
func benchLatency() int {
	if v := os.Getenv("FAULTMOD_BENCH_LATENCY_US"); v != "" {
		var n int
		if _, err := fmt.Sscan(v, &n); err == nil && n >= 0 {
			return n
		}
	}
	return 1000
}

// latencyLines is the control file for latency µs per call.
func latencyLines(latency int) []string {
	if latency == 0 {
		return nil
	}
	return []string{fmt.Sprintf("latency_us %d", latency)}
}

// countCalls runs op a few times (steady state), then b.N times between two
// stats snapshots, and reports calls/op, calls per function and ops/s.
func countCalls(b *testing.B, latency int, op func(context.Context) error) {
	b.Helper()
	ctx := context.Background()
	lines := latencyLines(latency)
	if err := env.ctl.Set(lines...); err != nil {
		b.Fatal(err)
	}
	defer env.ctl.Clear()
	for range 3 {
		if err := op(ctx); err != nil {
			b.Fatal(err)
		}
	}
	before := benchSnapshot(b, lines...)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if err := op(ctx); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	after := benchSnapshot(b, lines...)
	perFn, total := callsPerOp(before, after, b.N)
	b.ReportMetric(total, "calls/op")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	names := make([]string, 0, len(perFn))
	for fn := range perFn {
		names = append(names, fn)
	}
	slices.Sort(names)
	var sb strings.Builder
	for _, fn := range names {
		b.ReportMetric(perFn[fn], fn+"/op")
		fmt.Fprintf(&sb, " %s=%.2f", fn, perFn[fn])
	}
	b.Logf("calls per op: %.2f:%s", total, sb.String())
}

// callsPerOp is the calls made between two snapshots over n operations,
// per function and in all, without the C_GetInfo each snapshot makes.
func callsPerOp(before, after *faultmod.Stats, n int) (map[string]float64, float64) {
	out := map[string]float64{}
	var total float64
	for fn, c := range after.Calls {
		d := c - before.Calls[fn]
		if fn == "C_GetInfo" {
			d-- // the snapshot's own call (counted after the stats are written)
		}
		if d == 0 {
			continue
		}
		v := float64(d) / float64(n)
		out[fn] = v
		total += v
	}
	return out, total
}

// benchSnapshot is snapshot for benchmarks: it has faultmod.so write its
// counters and reads them, leaving lines in force.
func benchSnapshot(b *testing.B, lines ...string) *faultmod.Stats {
	b.Helper()
	if err := os.Remove(env.stats); err != nil && !errors.Is(err, fs.ErrNotExist) {
		b.Fatal(err)
	}
	if err := env.ctl.Set(append(slices.Clone(lines), "stats")...); err != nil {
		b.Fatal(err)
	}
	if _, err := env.anchor.GetInfo(); err != nil {
		b.Fatal(err)
	}
	s, err := faultmod.ReadStats(env.stats)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// TestCallCounts pins the PKCS#11 calls each operation makes in steady
// state with the default configuration (docs/performance.md, "Round
// trips"): one more is a round trip more on a networked HSM. Each number is
// the floor of the operation; a change that adds a call fails here.
func TestCallCounts(t *testing.T) {
	need(t)
	ctx := context.Background()
	a, err := provider.OpenAdmin(ctx, config(2), provider.PINValue([]byte(soPIN)))
	if err != nil {
		t.Fatal(err)
	}
	kek, err := a.CreateKEKWith(ctx, "callcount", provider.KEKAES256, provider.KEKOptions{AllowExposedAtRest: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = a.DestroyKEK(ctx, kek.ID)
		_ = a.Close()
	})
	want := map[string]map[string]float64{
		"Generate":       {"C_GenerateKey": 1, "C_DestroyObject": 1},
		"GenerateExport": {"C_GenerateKey": 1, "C_GetAttributeValue": 1, "C_WrapKey": 1, "C_EncryptInit": 1, "C_Encrypt": 1, "C_DestroyObject": 1},
		"Import":         {"C_UnwrapKey": 1, "C_DecryptInit": 1, "C_Decrypt": 1, "C_EncryptInit": 1, "C_Encrypt": 1, "C_DestroyObject": 1},
		"Seal1KiB":       {"C_EncryptInit": 1, "C_Encrypt": 1},
		"Open1KiB":       {"C_DecryptInit": 1, "C_Decrypt": 1},
		"Encrypt1KiB":    {"C_GenerateKey": 1, "C_WrapKey": 1, "C_EncryptInit": 1, "C_Encrypt": 1, "C_DestroyObject": 1},
		"Encrypt1MiB":    {"C_GenerateKey": 1, "C_WrapKey": 1, "C_EncryptInit": 1, "C_EncryptUpdate": 32, "C_EncryptFinal": 1, "C_DestroyObject": 1},
		"Decrypt1KiB":    {"C_UnwrapKey": 1, "C_DecryptInit": 1, "C_Decrypt": 1, "C_DestroyObject": 1},
		"Decrypt1MiB":    {"C_UnwrapKey": 1, "C_DecryptInit": 1, "C_Decrypt": 1, "C_DestroyObject": 1},
		// The data-key cache: the key made or unwrapped once, then reused.
		"Encrypt1KiBCached": {"C_EncryptInit": 1, "C_Encrypt": 1},
		"Decrypt1KiBCached": {"C_DecryptInit": 1, "C_Decrypt": 1},
	}
	for _, c := range callCases() {
		t.Run(c.name, func(t *testing.T) {
			p, err := provider.Open(ctx, c.config(config(2)))
			require.NoError(t, err)
			t.Cleanup(func() { assert.NoError(t, p.Close()) })
			op, err := c.setup(ctx, p, "callcount")
			require.NoError(t, err)
			for range 3 { // steady state: the first key of each kind is read back
				require.NoError(t, op(ctx))
			}
			const n = 4
			before := snapshot(t)
			counted := provider.TokenCalls()
			for range n {
				require.NoError(t, op(ctx))
			}
			counted = provider.TokenCalls() - counted
			got, total := callsPerOp(before, snapshot(t), n)
			assert.Equal(t, want[c.name], got)
			// The provider's own count (hsmkeys bench) is the module's.
			assert.InDelta(t, total, float64(counted)/n, 1e-9, "provider.TokenCalls against faultmod")
		})
	}
}

// TestTokenCallsOpenClose: provider.TokenCalls counts every call of Open
// and Close too (slot and mechanism lists, token info, sessions, login,
// the enforcement checks), as faultmod counts them, loading excepted.
func TestTokenCallsOpenClose(t *testing.T) {
	need(t)
	ctx := context.Background()
	before := snapshot(t)
	counted := provider.TokenCalls()
	phase := counted
	phases := map[string]uint64{}
	mark := func(name string) {
		now := provider.TokenCalls()
		phases[name] = now - phase
		phase = now
	}
	p, err := provider.Open(ctx, config(2))
	require.NoError(t, err)
	mark("open")
	k, err := p.Generate(ctx, provider.AES256)
	require.NoError(t, err)
	mark("first generate")
	require.NoError(t, roundTrip(ctx, k, "x"))
	mark("seal and open")
	require.NoError(t, p.Close())
	mark("close (one key)")
	counted = provider.TokenCalls() - counted
	t.Logf("calls by phase: %v", phases)
	after := snapshot(t)
	var want uint64
	for fn, c := range after.Calls {
		switch fn {
		case "C_GetFunctionList", "C_Initialize", "C_Finalize":
			continue
		case "C_GetInfo":
			c-- // the first snapshot's
		}
		want += c - before.Calls[fn]
	}
	assert.Equal(t, want, counted)
	t.Logf("Open, one generate, seal and open, Close: %d PKCS#11 calls", counted)
}
