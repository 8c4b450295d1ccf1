package reliability

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestLatency: every call takes an extra millisecond, as with a networked
// HSM. Operations still succeed, and callers on separate sessions overlap:
// nothing in the provider serialises them. The overlap is shown by an event,
// not by a throughput that a busy machine would spoil: with C_Encrypt held
// in faultmod, all 8 workers are inside it at once. (BenchmarkScaling
// measures what the overlap gains.)
func TestLatency(t *testing.T) {
	need(t)
	defer goleak.VerifyNone(t)
	const (
		workers = 8
		perOp   = 40 // round trips per worker
	)
	p := open(t, workers)
	ctx, cancel := context.WithTimeout(context.Background(), safetyNet)
	defer cancel()
	keys := make([]*provider.Key, workers)
	for i := range keys {
		k, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err)
		keys[i] = k
	}
	setFaults(t, "latency_us 1000")
	burst(t, p, workers, 1) // every worker has a session

	// All work succeeds with the latency.
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perOp {
				if err := roundTrip(ctx, keys[w], fmt.Sprint(w, i)); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for w, err := range errs {
		require.NoError(t, err, "worker %d", w)
	}

	// Every worker is inside a token call at the same time.
	g, release := gate(t)
	setFaults(t, "latency_us 1000", "hold C_Encrypt "+g)
	for w := range workers {
		wg.Go(func() { errs[w] = roundTrip(ctx, keys[w], fmt.Sprint("held ", w)) })
	}
	waitHolding(t, workers) // only if nothing serialises the 8 calls
	release()
	wg.Wait()
	for w, err := range errs {
		require.NoError(t, err, "worker %d", w)
	}
	assert.LessOrEqual(t, p.Sessions(), workers)
}
