package reliability

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestLatency: every call takes an extra millisecond, as with a networked
// HSM. Operations still succeed, and callers on separate sessions overlap:
// nothing in the provider serialises them, so 8 workers get clearly more
// done per second than 1.
func TestLatency(t *testing.T) {
	need(t)
	defer goleak.VerifyNone(t)
	const (
		workers = 8
		perOp   = 40 // round trips per worker and measurement
	)
	p := open(t, workers)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keys := make([]*provider.Key, workers)
	for i := range keys {
		k, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err)
		keys[i] = k
	}
	setFaults(t, "latency_us 1000")
	burst(t, p, workers, 1) // every worker has a session before timing starts

	// run has n workers do perOp round trips each (4 calls, so 4 ms of
	// latency, per round trip) and returns the round trips per second.
	run := func(n int) float64 {
		start := time.Now()
		errs := make([]error, n)
		var wg sync.WaitGroup
		for w := range n {
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
		return float64(n*perOp) / time.Since(start).Seconds()
	}
	one := run(1)
	many := run(workers)
	t.Logf("round trips per second with 1 ms per call: 1 worker %.0f, %d workers %.0f (%.1fx)", one, workers, many, many/one)
	// A round trip is at least 4 token calls (C_EncryptInit, C_Encrypt,
	// C_DecryptInit, C_Decrypt), each 1 ms more.
	assert.Less(t, one, 1000/4.0, "the latency is not applied: the test measures nothing")
	assert.GreaterOrEqual(t, many, 3*one, "%d workers on %d sessions do not overlap their calls", workers, workers)
	assert.LessOrEqual(t, p.Sessions(), workers)
}
