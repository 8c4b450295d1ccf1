package reliability

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestSessionLimit: the token allows 2 sessions, the provider may open 8,
// and 16 goroutines want one each. Callers wait for the provider's sessions
// instead of failing; with a deadline, waiting callers get
// context.DeadlineExceeded and nothing else.
func TestSessionLimit(t *testing.T) {
	need(t)
	defer goleak.VerifyNone(t)
	const tokenMax = 2

	t.Run("all work completes", func(t *testing.T) {
		setFaults(t, "max_sessions 2")
		p := open(t, 8)
		// The first two callers' C_GenerateKey is held until another
		// caller has been refused a session of its own: the cap is
		// reached however fast or slow the machine.
		g, release := gate(t)
		held := []string{"max_sessions 2", "hold C_GenerateKey " + g}
		before := snapshot(t, held...).Injected["C_OpenSession"]
		done := make(chan error, 1)
		go func() { done <- burstErr(p, 16, 20) }()
		waitHolding(t, 2)
		eventually(t, func() bool { n, ok := refused(held...); return ok && n > before },
			"no caller was refused a session while two held the token's two")
		release()
		require.NoError(t, <-done)
		setFaults(t, "max_sessions 2")
		assert.LessOrEqual(t, p.Sessions(), tokenMax)
		assert.Positive(t, p.Sessions())
		st := snapshot(t, "max_sessions 2")
		assert.Positive(t, st.Injected["C_OpenSession"], "the cap was never reached: the test tests nothing")
		assert.Equal(t, p.Sessions(), st.OpenSessions)
	})

	t.Run("callers wait while the pool refills", func(t *testing.T) {
		// The token went away and came back: the pool is empty and every
		// caller opens at once. Those beyond the token's two must wait for
		// the two being opened (the token is slow to answer, as a networked
		// HSM is), not fail.
		setFaults(t, "max_sessions 2")
		p := open(t, 8)
		for round := range 3 {
			burst(t, p, 16, 2)
			setFaults(t, "max_sessions 2", "token_gone 1")
			_, err := p.Generate(context.Background(), provider.AES256)
			require.ErrorIs(t, err, provider.ErrTokenUnavailable)
			require.Zero(t, p.Sessions(), "round %d: sessions left in the pool while the token is gone", round)
			fire(t, "max_sessions 2", "latency_us C_GetSessionInfo 20000") // the token is back
			burst(t, p, 16, 2)
			assert.LessOrEqual(t, p.Sessions(), tokenMax, "round %d", round)
		}
	})

	t.Run("waiters honour their deadline", func(t *testing.T) {
		// Two callers hold the token's two sessions in a C_Encrypt that
		// faultmod holds until the others are done: those 14, allowing 30
		// ms each, cannot get a session however fast or slow the machine,
		// and must give up with context.DeadlineExceeded and nothing else.
		setFaults(t, "max_sessions 2")
		p := open(t, 8)
		k, err := p.Generate(context.Background(), provider.AES256)
		require.NoError(t, err)
		g, release := gate(t) // after open: released before p is closed
		setFaults(t, "max_sessions 2", "hold C_Encrypt "+g)
		var holders sync.WaitGroup
		held := make([]error, 2)
		for i := range held {
			holders.Go(func() { _, held[i] = k.Seal(context.Background(), []byte("held"), nil) })
		}
		waitHolding(t, 2)
		var wg sync.WaitGroup
		errs := make([]error, 14)
		for i := range errs {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
				defer cancel()
				_, errs[i] = k.Seal(ctx, []byte("waits"), nil)
			})
		}
		wg.Wait()
		for i, err := range errs {
			assert.ErrorIs(t, err, context.DeadlineExceeded, "waiter %d", i)
		}
		release()
		holders.Wait()
		for _, err := range held {
			require.NoError(t, err, "callers that got a session finish their call")
		}
		// Nothing is left holding a session: the key works for everyone.
		setFaults(t, "max_sessions 2")
		burst(t, p, 16, 2)
		require.NoError(t, roundTrip(context.Background(), k, "after"))
		assert.LessOrEqual(t, p.Sessions(), tokenMax)
	})

	t.Run("waiters learn that the token is gone", func(t *testing.T) {
		// Two callers hold the token's two sessions in a C_GenerateKey
		// that faultmod holds; the others wait for one of them (each has
		// been refused a session of its own). The token leaves, the held
		// calls go on: the holders then fail with ErrTokenUnavailable, and
		// a waiter must not go on waiting for a session that will never be
		// returned. Every caller ends while the token is still gone.
		setFaults(t, "max_sessions 2")
		p := open(t, 8)
		g, release := gate(t) // after open: released before p is closed
		held := []string{"max_sessions 2", "hold C_GenerateKey " + g}
		before := snapshot(t, held...).Injected["C_OpenSession"]
		const callers = 12
		var wg sync.WaitGroup
		errs := make([]error, callers)
		waited := make([]time.Duration, callers)
		for i := range callers {
			wg.Go(func() {
				// A caller still waiting for a session when the safety net
				// runs out fails with DeadlineExceeded: the bug this finds.
				ctx, cancel := context.WithTimeout(context.Background(), safetyNet)
				defer cancel()
				start := time.Now()
				k, err := p.Generate(ctx, provider.AES256)
				waited[i] = time.Since(start)
				if err == nil {
					err = k.Destroy(ctx)
				}
				errs[i] = err
			})
		}
		waitHolding(t, 2)
		eventually(t, func() bool { n, ok := refused(held...); return ok && n >= before+callers-2 },
			"the callers beyond the token's two sessions never asked for one")
		setFaults(t, append(held, "token_gone 1")...)
		release()
		wg.Wait()
		for i, err := range errs {
			if err != nil && !errors.Is(err, provider.ErrTokenUnavailable) {
				t.Errorf("caller %d, after %v: %v; want success or ErrTokenUnavailable", i, waited[i].Round(time.Millisecond), err)
			}
		}
		fire(t, "max_sessions 2") // the token is back
		burst(t, p, 4, 2)
	})

	t.Run("no session at all is a clear error", func(t *testing.T) {
		// Another user of the process holds the token's only session: Open
		// cannot wait for a session of its own, and must say why.
		setFaults(t, "max_sessions 1")
		hog := open(t, 1)
		require.Equal(t, 1, hog.Sessions())
		_, err := provider.Open(context.Background(), config(4))
		require.Error(t, err)
		code, ok := tokenCode(err)
		require.True(t, ok, "%v: not a *provider.TokenError", err)
		assert.Equal(t, uint(pkcs11.CKR_SESSION_COUNT), code, "%v", err)
	})
}
