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
		burst(t, p, 16, 20)
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
		g, release := gate(t)
		setFaults(t, "max_sessions 2")
		p := open(t, 8)
		k, err := p.Generate(context.Background(), provider.AES256)
		require.NoError(t, err)
		setFaults(t, "max_sessions 2", "hold C_Encrypt "+g)
		holders := make(chan error, 2)
		for range 2 {
			go func() {
				_, err := k.Seal(context.Background(), []byte("held"), nil)
				holders <- err
			}()
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
		for range 2 {
			require.NoError(t, <-holders, "callers that got a session finish their call")
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
		g, release := gate(t)
		held := []string{"max_sessions 2", "hold C_GenerateKey " + g}
		setFaults(t, "max_sessions 2")
		p := open(t, 8)
		refused := snapshot(t, held...).Injected["C_OpenSession"]
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
		eventually(t, func() bool {
			return snapshot(t, held...).Injected["C_OpenSession"] >= refused+callers-2
		}, "the callers beyond the token's two sessions never asked for one")
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
