package reliability

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestDeviceErrors: CKR_DEVICE_ERROR on a tenth of the C_GenerateKey,
// C_Encrypt and C_Decrypt calls. Each failure reaches the caller as a
// *provider.TokenError with the code and the function, never as a panic, a
// lost key or an authentication failure; the pool neither leaks sessions nor
// wedges, and once the faults stop every call succeeds.
func TestDeviceErrors(t *testing.T) {
	need(t)
	defer goleak.VerifyNone(t)
	const (
		workers     = 8
		opsEach     = 150
		maxSessions = 4
	)
	p := open(t, maxSessions)
	ctx, cancel := context.WithTimeout(context.Background(), safetyNet)
	defer cancel()

	// One key per worker made before the faults: a device error must not
	// cost a key its session.
	keys := make([]*provider.Key, workers)
	for i := range keys {
		k, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err)
		keys[i] = k
	}

	setFaults(t,
		"fail C_GenerateKey CKR_DEVICE_ERROR prob 0.1 seed 1",
		"fail C_Encrypt CKR_DEVICE_ERROR prob 0.1 seed 1",
		"fail C_Decrypt CKR_DEVICE_ERROR prob 0.1 seed 2",
	)
	var (
		failed   = map[string]*atomic.Int64{"C_GenerateKey": {}, "C_Encrypt": {}, "C_Decrypt": {}}
		okOps    atomic.Int64
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
	// expect checks that err is an injected device error of one of ops.
	expect := func(err error, what string, ops ...string) {
		var te *provider.TokenError
		if !errors.As(err, &te) {
			fail("%s: %v: not a *provider.TokenError", what, err)
			return
		}
		if te.Code != pkcs11.CKR_DEVICE_ERROR {
			fail("%s: %v: code 0x%X, want CKR_DEVICE_ERROR (0x30)", what, err, te.Code)
			return
		}
		for _, op := range ops {
			if te.Op == op {
				failed[op].Add(1)
				break
			}
		}
		if failed[te.Op] == nil {
			fail("%s: %v: from %s", what, err, te.Op)
		}
		for _, wrong := range []error{provider.ErrKeyLost, provider.ErrAuthentication, provider.ErrTokenUnavailable} {
			if errors.Is(err, wrong) {
				fail("%s: %v: a device error reported as %q", what, err, wrong)
			}
		}
	}
	// op is one round trip of worker w, every fifth with a new key.
	op := func(w, i int) {
		what := fmt.Sprintf("worker %d op %d", w, i)
		k := keys[w]
		if i%5 == 0 {
			nk, err := p.Generate(ctx, provider.AES128)
			if err != nil {
				expect(err, what+" generate", "C_GenerateKey")
				return
			}
			defer func() {
				if err := nk.Destroy(ctx); err != nil {
					fail("%s: destroy: %v", what, err)
				}
			}()
			k = nk
		}
		msg := []byte(what)
		sealed, err := k.Seal(ctx, msg, nil)
		if err != nil {
			expect(err, what+" seal", "C_Encrypt")
			return
		}
		got, err := k.Open(ctx, sealed, nil)
		if err != nil {
			expect(err, what+" open", "C_Decrypt")
			return
		}
		if string(got) != string(msg) {
			fail("%s: %v", what, errMismatch)
			return
		}
		okOps.Add(1)
	}
	for w := range workers {
		wg.Go(func() {
			for i := range opsEach {
				op(w, i)
			}
		})
	}
	wg.Wait()
	t.Logf("round trips: %d ok; injected failures seen: generate %d, encrypt %d, decrypt %d",
		okOps.Load(), failed["C_GenerateKey"].Load(), failed["C_Encrypt"].Load(), failed["C_Decrypt"].Load())
	require.Empty(t, failures)
	for op, n := range failed {
		assert.Positive(t, n.Load(), "no injected failure of %s reached a caller", op)
	}
	assert.Positive(t, okOps.Load())
	assert.LessOrEqual(t, p.Sessions(), maxSessions)

	// Faults off: a burst of many more callers than sessions completes (a
	// session lost to an error path would leave fewer, a leaked slot would
	// wedge the burst until the deadline), and every key made before still
	// works.
	require.NoError(t, env.ctl.Clear())
	burst(t, p, 64, 8)
	for i, k := range keys {
		assert.NoError(t, roundTrip(ctx, k, "after"), "key %d", i)
	}
	assert.LessOrEqual(t, p.Sessions(), maxSessions)
	// Every session faultmod saw opened and not closed is one the pool holds.
	st := snapshot(t)
	assert.Equal(t, p.Sessions(), st.OpenSessions, "sessions open in the module vs held by the pool")
}

// burst runs callers goroutines that each make a key and do rounds round
// trips with it, within a deadline, and requires every call to succeed.
func burst(t *testing.T, p *provider.Provider, callers, rounds int) {
	t.Helper()
	require.NoError(t, burstErr(p, callers, rounds), "burst of %d callers", callers)
}

// burstErr is burst for any goroutine: it returns what went wrong.
func burstErr(p *provider.Provider, callers, rounds int) error {
	ctx, cancel := context.WithTimeout(context.Background(), safetyNet)
	defer cancel()
	errs := make(chan error, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			k, err := p.Generate(ctx, provider.AES256)
			if err != nil {
				errs <- fmt.Errorf("caller %d: generate: %w", c, err)
				return
			}
			defer func() {
				if err := k.Destroy(ctx); err != nil {
					errs <- fmt.Errorf("caller %d: destroy: %w", c, err)
				}
			}()
			for r := range rounds {
				if err := roundTrip(ctx, k, "burst"); err != nil {
					errs <- fmt.Errorf("caller %d round %d: %w", c, r, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}
