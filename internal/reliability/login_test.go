package reliability

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// logins is the number of C_Login calls faultmod.so has seen, injected
// failures included. It clears the faults.
func logins(t *testing.T) uint64 {
	t.Helper()
	return snapshot(t).Calls["C_Login"]
}

// TestLoginLost: the token forgets the login. The provider logs in again,
// once, and goes on; lost keys say so. A PIN the token refuses on that
// login gives a *provider.PINError and is never tried again.
func TestLoginLost(t *testing.T) {
	ctx := context.Background()

	t.Run("sessions closed", func(t *testing.T) {
		need(t)
		p := open(t, 4)
		old, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err)
		n0 := logins(t)

		fire(t, "close_all_sessions") // C_CloseAllSessions also logs out
		k, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err, "generate after the sessions and the login were lost")
		require.NoError(t, roundTrip(ctx, k, "after"))
		for i := range 10 {
			require.NoError(t, roundTrip(ctx, k, fmt.Sprint("after ", i)))
		}
		_, err = old.Seal(ctx, []byte("x"), nil)
		assert.ErrorIs(t, err, provider.ErrKeyLost)
		assert.Equal(t, uint64(1), logins(t)-n0, "C_Login calls to restore the login")
	})

	t.Run("sessions closed under concurrent callers", func(t *testing.T) {
		need(t)
		defer goleak.VerifyNone(t)
		const (
			callers = 8
			rounds  = 2
		)
		p := open(t, callers)
		var extra []uint64 // C_Login calls, in the rounds that did not make one
		for range rounds {
			burst(t, p, callers, 1) // one session per caller, all logged in
			n0 := logins(t)
			// A slow C_Login (a networked HSM) lets the other callers look
			// at the login state before the first has restored it.
			fire(t, "close_all_sessions", "latency_us C_Login 20000")
			burst(t, p, callers, 2)
			if n := logins(t) - n0; n != 1 {
				extra = append(extra, n)
			}
		}
		// Login is per application (PKCS#11 v2.40 §5.6): restoring it takes
		// one C_Login however many sessions are replaced at once.
		assert.Empty(t, extra, "C_Login calls to restore the login for %d callers at once, in the rounds (of %d) that did not make exactly one", callers, rounds)
	})

	t.Run("device error on the new login", func(t *testing.T) {
		need(t)
		p := open(t, 4)
		n0 := logins(t)

		// A failure that is not a refusal of the pin is not remembered: the
		// next call logs in again.
		fire(t, "close_all_sessions", "fail C_Login CKR_DEVICE_ERROR count 1")
		_, err := p.Generate(ctx, provider.AES256)
		code, ok := tokenCode(err)
		require.True(t, ok, "%v: not a *provider.TokenError", err)
		assert.Equal(t, uint(pkcs11.CKR_DEVICE_ERROR), code, "%v", err)
		var pe *provider.PINError
		assert.False(t, errors.As(err, &pe), "%v: a device error reported as a refused pin", err)

		k, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err, "generate after a transient login failure")
		require.NoError(t, roundTrip(ctx, k, "after"))
		assert.Equal(t, uint64(2), logins(t)-n0, "C_Login calls: the failed one, then one that works")
	})

	t.Run("logout elsewhere in the process", func(t *testing.T) {
		need(t)
		p := open(t, 4)
		old, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err)
		n0 := logins(t)

		// Another part of the application logs out: the sessions stay, the
		// private session objects are destroyed (PKCS#11 v2.40 §5.6,
		// C_Logout).
		h, err := env.anchor.OpenSession(p.Token().Slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		require.NoError(t, err)
		require.NoError(t, env.anchor.Logout(h))
		require.NoError(t, env.anchor.CloseSession(h))

		_, err = old.Seal(ctx, []byte("x"), nil)
		assert.ErrorIs(t, err, provider.ErrKeyLost, "a key destroyed by the logout")
		k, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err, "generate after a logout elsewhere")
		require.NoError(t, roundTrip(ctx, k, "after"))
		assert.Equal(t, uint64(1), logins(t)-n0, "C_Login calls to restore the login")
	})

	t.Run("pin refused on the new login", func(t *testing.T) {
		need(t)
		defer goleak.VerifyNone(t)
		p := open(t, 4)
		old, err := p.Generate(ctx, provider.AES256)
		require.NoError(t, err)
		n0 := logins(t)

		fire(t, "close_all_sessions", "fail C_Login CKR_PIN_INCORRECT count 1")
		_, err = p.Generate(ctx, provider.AES256)
		var pe *provider.PINError
		require.ErrorAs(t, err, &pe, "generate when the token refuses the pin")
		assert.False(t, pe.SO)
		code, ok := tokenCode(err)
		require.True(t, ok)
		assert.Equal(t, uint(pkcs11.CKR_PIN_INCORRECT), code)
		// Taking the count clears the faults: from here the token would
		// accept the pin, and still must not be asked.
		n1 := logins(t)
		assert.Equal(t, uint64(1), n1-n0, "C_Login calls up to the refusal")

		// Later calls, one at a time and at once, keep the refusal and
		// never send the PIN again: a real token counts every wrong try.
		for i := range 5 {
			_, err := p.Generate(ctx, provider.AES256)
			assert.ErrorAs(t, err, &pe, "generate %d after the refusal", i)
			_, err = p.CountSessionKeys(ctx)
			assert.ErrorAs(t, err, &pe, "count %d after the refusal", i)
		}
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Go(func() { _, errs[i] = p.Generate(ctx, provider.AES128) })
		}
		wg.Wait()
		for i, err := range errs {
			assert.ErrorAs(t, err, &pe, "concurrent generate %d after the refusal", i)
		}
		_, err = old.Seal(ctx, []byte("x"), nil)
		assert.ErrorIs(t, err, provider.ErrKeyLost)
		assert.Equal(t, n1, logins(t), "C_Login calls after the refusal")
	})
}
