package reliability

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// Phases of a fault test, as seen by a worker when it starts a Generate.
const (
	phaseBefore    = iota // no fault written yet: the key must be lost after it
	phaseFaulting         // fault written, maybe not yet seen: either outcome
	phaseRecovered        // the fault has happened: the key must work
)

// TestSessionsClosedUnderLoad: C_CloseAllSessions while 16 goroutines share
// 4 sessions. Keys made before are lost and say so; keys made after work;
// no Open ever returns another plaintext; the pool stays within its bound
// and Close leaves no session key behind.
func TestSessionsClosedUnderLoad(t *testing.T) {
	need(t)
	defer goleak.VerifyNone(t)
	const (
		workers     = 16
		maxSessions = 4
	)
	p := open(t, maxSessions)
	ctx, cancel := context.WithTimeout(context.Background(), safetyNet)
	defer cancel()

	// Keys made before the fault and held idle through it.
	var before []*provider.Key
	var beforeSealed [][]byte
	for i := range 8 {
		k, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err)
		sealed, err := k.Seal(ctx, []byte("before"), nil)
		require.NoError(t, err)
		require.NoError(t, roundTrip(ctx, k, fmt.Sprint("before ", i)))
		before = append(before, k)
		beforeSealed = append(beforeSealed, sealed)
	}

	var (
		phase    atomic.Int32
		stop     atomic.Bool
		done     [3]atomic.Int64 // round trips completed, by phase of the key
		lost     [3]atomic.Int64 // ErrKeyLost answers, by phase of the key
		failMu   sync.Mutex
		failures []string
		wg       sync.WaitGroup
	)
	fail := func(format string, args ...any) {
		failMu.Lock()
		defer failMu.Unlock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	for w := range workers {
		wg.Go(func() {
			for !stop.Load() {
				ph := phase.Load()
				k, err := p.Generate(ctx, provider.AES256)
				if err != nil {
					// A dead session is replaced and Generate retried: a
					// Generate never fails for it.
					fail("worker %d: generate (phase %d): %v", w, ph, err)
					continue
				}
				for i := 0; i < 4 && !stop.Load(); i++ {
					err := roundTrip(ctx, k, fmt.Sprintf("worker %d op %d", w, i))
					if err == nil {
						done[ph].Add(1)
						continue
					}
					if errors.Is(err, provider.ErrKeyLost) && ph != phaseRecovered {
						lost[ph].Add(1)
						break
					}
					fail("worker %d: round trip (phase %d): %v", w, ph, err)
					break
				}
				if err := k.Destroy(ctx); err != nil {
					fail("worker %d: destroy (phase %d): %v", w, ph, err)
				}
			}
		})
	}

	defer func() { // also when a require below ends the test early
		stop.Store(true)
		wg.Wait()
	}()

	eventually(t, func() bool { return done[phaseBefore].Load() >= 200 }, "the workers make no progress before the fault")
	phase.Store(phaseFaulting)
	// The sessions must close while calls are in flight in the provider,
	// but not inside SoftHSM: its C_CloseAllSessions frees the state of a
	// session another thread is using (see fire). So faultmod holds every
	// call the workers make (and the opening of a session) before it
	// reaches SoftHSM; once it holds as many calls as there are sessions,
	// every session's user waits in faultmod, the other workers wait for a
	// session, and nothing is inside SoftHSM when the close runs.
	g, release := gate(t)
	var held []string
	for _, fn := range []string{"C_OpenSession", "C_GenerateKey", "C_GetAttributeValue", "C_EncryptInit", "C_Encrypt",
		"C_DecryptInit", "C_Decrypt", "C_DestroyObject"} {
		held = append(held, "hold "+fn+" "+g)
	}
	setFaults(t, held...)
	waitHolding(t, maxSessions)
	fire(t, "close_all_sessions")
	setFaults(t)
	release() // the held calls go on, on sessions that are gone
	// A key held idle is lost: the one-shot has closed every session, and
	// from now on any Generate meets the token after the fault.
	_, err := before[0].Seal(ctx, []byte("probe"), nil)
	require.ErrorIs(t, err, provider.ErrKeyLost, "a key made before close_all_sessions")
	phase.Store(phaseRecovered)
	eventually(t, func() bool { return done[phaseRecovered].Load() >= 200 }, "the workers make no progress after the fault")
	stop.Store(true)
	wg.Wait()
	t.Logf("round trips before/during/after the fault: %d/%d/%d; ErrKeyLost before/during: %d/%d",
		done[0].Load(), done[1].Load(), done[2].Load(), lost[0].Load(), lost[1].Load())
	require.Empty(t, failures)

	// Every key made before the fault is lost, and says so for every use.
	for i, k := range before {
		_, err := k.Seal(ctx, []byte("after"), nil)
		assert.ErrorIs(t, err, provider.ErrKeyLost, "seal with key %d made before the fault", i)
		_, err = k.Open(ctx, beforeSealed[i], nil)
		assert.ErrorIs(t, err, provider.ErrKeyLost, "open with key %d made before the fault", i)
	}
	// New work succeeds.
	var after []*provider.Key
	for i := range 16 {
		k, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err)
		require.NoError(t, roundTrip(ctx, k, fmt.Sprint("after ", i)))
		after = append(after, k)
	}
	assert.LessOrEqual(t, p.Sessions(), maxSessions)
	assert.Positive(t, p.Sessions())

	// A second provider on the same token sees this process's session keys:
	// exactly the 16 alive (the workers destroyed theirs, the rest were lost
	// with their sessions), and none once p is closed.
	q := open(t, 1)
	n, err := q.CountSessionKeys(ctx)
	require.NoError(t, err)
	assert.Equal(t, len(after), n, "session keys on the token while p holds %d", len(after))
	require.NoError(t, p.Close())
	n, err = q.CountSessionKeys(ctx)
	require.NoError(t, err)
	assert.Zero(t, n, "session keys left on the token after Close")
	for _, k := range after {
		_, err := k.Seal(ctx, []byte("x"), nil)
		assert.ErrorIs(t, err, provider.ErrKeyDestroyed)
	}
}

// TestSessionClosedWhileOpening: the token drops its sessions between the
// C_OpenSession of a new pool session and its first use (the login check).
// Nothing had been done with that session yet: the provider must open
// another one, not fail the caller's Generate with the raw
// CKR_SESSION_HANDLE_INVALID.
func TestSessionClosedWhileOpening(t *testing.T) {
	need(t)
	defer goleak.VerifyNone(t)
	ctx := context.Background()
	p := open(t, 4)
	// Empty the pool: the token leaves (its sessions are dropped) and comes
	// back, so the next call opens a session.
	setFaults(t, "token_gone 1")
	_, err := p.Generate(ctx, provider.AES256)
	require.ErrorIs(t, err, provider.ErrTokenUnavailable)
	require.Zero(t, p.Sessions())
	fire(t)

	// The new session's C_GetSessionInfo is held in faultmod (not in
	// SoftHSM) while the sessions are closed.
	g, release := gate(t)
	setFaults(t, "hold C_GetSessionInfo "+g+" count 1")
	type result struct {
		k   *provider.Key
		err error
	}
	res := make(chan result, 1)
	go func() {
		k, err := p.Generate(ctx, provider.AES256)
		res <- result{k, err}
	}()
	waitHolding(t, 1)
	fire(t, "close_all_sessions")
	release()
	r := <-res
	require.NoError(t, r.err, "generate whose new session was closed before its first use")
	setFaults(t)
	require.NoError(t, roundTrip(ctx, r.k, "after"))
}
