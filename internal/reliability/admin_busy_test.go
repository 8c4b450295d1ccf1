package reliability

import (
	"context"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestOpenAdminBusyToken: KEK administration meets a busy token as Open
// does (TestOpenBusyToken): OpenAdmin and each admin session try again what
// failed as SoftHSM's file store fails under several processes and had no
// effect, never a PIN the token looked at, and say when they give up.
func TestOpenAdminBusyToken(t *testing.T) {
	ctx := context.Background()
	openAdmin := func(t *testing.T) *provider.Admin {
		t.Helper()
		a, err := provider.OpenAdmin(ctx, config(4), provider.PINValue([]byte(soPIN)))
		require.NoError(t, err)
		t.Cleanup(func() { _ = a.Close() })
		return a
	}

	for _, tc := range []struct {
		name, fault string
		fn          string
		calls       uint64 // calls of fn: the failed ones, then one that works (0: not counted)
	}{
		{"token info", "fail C_GetTokenInfo CKR_GENERAL_ERROR count 3", "C_GetTokenInfo", 0},
		{"token not present", "fail C_GetTokenInfo CKR_TOKEN_NOT_PRESENT count 2", "C_GetTokenInfo", 0},
		{"slot list", "fail C_GetSlotList CKR_GENERAL_ERROR count 2", "C_GetSlotList", 0},
		{"open session", "fail C_OpenSession CKR_DEVICE_ERROR count 2", "C_OpenSession", 3},
		{"login general error", "fail C_Login CKR_GENERAL_ERROR count 2", "C_Login", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			need(t)
			t.Cleanup(func() { require.NoError(t, env.ctl.Clear()) })
			n0 := snapshot(t).Calls[tc.fn]
			setFaults(t, tc.fault)
			a := openAdmin(t)
			_, err := a.KEKs(ctx) // one admin session, logged in as the user
			require.NoError(t, err, "with %q", tc.fault)
			if tc.calls > 0 {
				assert.Equal(t, tc.calls, snapshot(t).Calls[tc.fn]-n0, "%s calls", tc.fn)
			}
		})
	}

	t.Run("login PIN refused not retried", func(t *testing.T) {
		need(t)
		t.Cleanup(func() { require.NoError(t, env.ctl.Clear()) })
		a := openAdmin(t)
		n0 := logins(t)
		setFaults(t, "fail C_Login CKR_PIN_INCORRECT")
		_, err := a.KEKs(ctx)
		var pe *provider.PINError
		require.ErrorAs(t, err, &pe)
		assert.NotErrorIs(t, err, provider.ErrTokenBusy)
		assert.Equal(t, uint64(1), logins(t)-n0, "C_Login calls")
	})

	t.Run("gives up, busy", func(t *testing.T) {
		need(t)
		t.Cleanup(func() { require.NoError(t, env.ctl.Clear()) })
		a := openAdmin(t)
		n0 := snapshot(t).Calls["C_OpenSession"]
		setFaults(t, "fail C_OpenSession CKR_GENERAL_ERROR")
		_, err := a.KEKs(ctx)
		require.ErrorIs(t, err, provider.ErrTokenBusy)
		var te *provider.TokenError
		require.ErrorAs(t, err, &te)
		assert.Equal(t, "C_OpenSession", te.Op)
		assert.Contains(t, err.Error(), "tried 10 times")
		assert.Equal(t, uint64(openTries), snapshot(t).Calls["C_OpenSession"]-n0, "C_OpenSession calls")
	})

	t.Run("OpenAdmin gives up, busy", func(t *testing.T) {
		need(t)
		t.Cleanup(func() { require.NoError(t, env.ctl.Clear()) })
		setFaults(t, "fail C_GetTokenInfo CKR_GENERAL_ERROR")
		_, err := provider.OpenAdmin(ctx, config(4), provider.PINValue([]byte(soPIN)))
		require.ErrorIs(t, err, provider.ErrTokenBusy)
		assert.Contains(t, err.Error(), "tried 10 times")
	})

	t.Run("wait ends with the context", func(t *testing.T) {
		need(t)
		t.Cleanup(func() { require.NoError(t, env.ctl.Clear()) })
		setFaults(t, "fail C_GetTokenInfo CKR_GENERAL_ERROR")
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := provider.OpenAdmin(cctx, config(4), provider.PINValue([]byte(soPIN)))
		require.ErrorIs(t, err, context.Canceled)
		require.ErrorIs(t, err, provider.ErrTokenBusy)
	})
}
