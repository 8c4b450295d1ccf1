package reliability

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
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
		// Slow encryptions keep both sessions busy for 40 ms (two C_Encrypt
		// calls per Seal); the callers allow 30.
		setFaults(t, "max_sessions 2", "latency_us C_Encrypt 20000")
		p := open(t, 8)
		k, err := p.Generate(context.Background(), provider.AES256)
		require.NoError(t, err)
		var (
			ok, timedOut atomic.Int64
			wg           sync.WaitGroup
			errMu        sync.Mutex
			others       []error
		)
		for range 16 {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
				defer cancel()
				_, err := k.Seal(ctx, []byte("slow"), nil)
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, context.DeadlineExceeded):
					timedOut.Add(1)
				default:
					errMu.Lock()
					others = append(others, err)
					errMu.Unlock()
				}
			})
		}
		wg.Wait()
		t.Logf("seals: %d done, %d timed out waiting", ok.Load(), timedOut.Load())
		require.NoError(t, errors.Join(others...))
		assert.Positive(t, ok.Load(), "callers that got a session finish their call")
		assert.Positive(t, timedOut.Load(), "16 callers on 2 slow sessions: some must time out")
		// Nothing is left holding a session: the key works for everyone.
		setFaults(t, "max_sessions 2")
		burst(t, p, 16, 2)
		require.NoError(t, roundTrip(context.Background(), k, "after"))
		assert.LessOrEqual(t, p.Sessions(), tokenMax)
	})

	t.Run("waiters learn that the token is gone", func(t *testing.T) {
		// Two callers hold the token's two sessions in a slow C_GenerateKey,
		// the others wait for one of them. The token leaves, then comes
		// back: the holders fail with ErrTokenUnavailable, and a waiter must
		// not go on waiting for a session that will never be returned.
		setFaults(t, "max_sessions 2", "latency_us C_GenerateKey 50000")
		p := open(t, 8)
		const callers = 12
		var wg sync.WaitGroup
		errs := make([]error, callers)
		waited := make([]time.Duration, callers)
		for i := range callers {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
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
		time.Sleep(20 * time.Millisecond) // all callers hold or wait
		setFaults(t, "max_sessions 2", "latency_us C_GenerateKey 50000", "token_gone 1")
		time.Sleep(200 * time.Millisecond)
		fire(t, "max_sessions 2") // the token is back
		wg.Wait()
		for i, err := range errs {
			if err != nil && !errors.Is(err, provider.ErrTokenUnavailable) {
				t.Errorf("caller %d, after %v: %v; want success or ErrTokenUnavailable", i, waited[i].Round(time.Millisecond), err)
			}
		}
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
