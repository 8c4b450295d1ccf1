package reliability

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// openTries is p11.MaxTries: how often Open makes a call that keeps failing
// transiently.
const openTries = 10

// TestOpenBusyToken: the failures SoftHSM's file store gives a process while
// others use the same token (SoftHSMv2 #757; measured with 20 to 80 hsmkeys
// processes, see internal/multiproc), injected here one kind at a time by
// faultmod so that each is certain to happen. Open tries again what had no
// effect, never a PIN the token looked at, and says what happened when it
// gives up.
func TestOpenBusyToken(t *testing.T) {
	ctx := context.Background()

	for _, tc := range []struct {
		name  string
		fault string
		fn    string
		calls uint64 // calls of fn Open makes: the failed ones, then one that works
	}{
		// SoftHSM: token.object half-written while C_GetTokenInfo reads it.
		{"token info", "fail C_GetTokenInfo CKR_GENERAL_ERROR count 3", "C_GetTokenInfo", 0},
		// The token missing from the slot list for a moment.
		{"token not present", "fail C_GetTokenInfo CKR_TOKEN_NOT_PRESENT count 4", "C_GetTokenInfo", 0},
		{"slot list", "fail C_GetSlotList CKR_GENERAL_ERROR count 2", "C_GetSlotList", 0},
		{"mechanisms", "fail C_GetMechanismList CKR_DEVICE_ERROR count 2", "C_GetMechanismList", 0},
		{"open session", "fail C_OpenSession CKR_DEVICE_ERROR count 2", "C_OpenSession", 0},
		// SoftHSM cannot read the token's flags before it checks the PIN.
		{"login general error", "fail C_Login CKR_GENERAL_ERROR count 2", "C_Login", 3},
		// SoftHSM loaded the token from a half-written file: no user PIN.
		{"login pin not initialised", "fail C_Login 0x102 count 2", "C_Login", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			need(t)
			n0 := snapshot(t).Calls[tc.fn]
			setFaults(t, tc.fault)
			p, err := provider.Open(ctx, config(4))
			require.NoError(t, err, "open with %q", tc.fault)
			if tc.calls > 0 {
				assert.Equal(t, tc.calls, snapshot(t).Calls[tc.fn]-n0, "%s calls", tc.fn)
			}
			k, err := p.Generate(ctx, provider.AES256)
			require.NoError(t, err)
			require.NoError(t, roundTrip(ctx, k, "busy"))
			require.NoError(t, env.ctl.Clear())
			require.NoError(t, p.Close())
		})
	}

	// A PIN the token looked at is tried once, whatever it said.
	for _, code := range []string{"CKR_PIN_INCORRECT", "CKR_PIN_LOCKED", "CKR_DEVICE_ERROR"} {
		t.Run("login "+code+" not retried", func(t *testing.T) {
			need(t)
			n0 := logins(t)
			setFaults(t, "fail C_Login "+code)
			_, err := provider.Open(ctx, config(4))
			require.Error(t, err)
			assert.NotErrorIs(t, err, provider.ErrTokenBusy)
			assert.Equal(t, uint64(1), logins(t)-n0, "C_Login calls")
		})
	}

	t.Run("gives up, busy", func(t *testing.T) {
		need(t)
		n0 := snapshot(t).Calls["C_OpenSession"]
		setFaults(t, "fail C_OpenSession CKR_GENERAL_ERROR")
		_, err := provider.Open(ctx, config(4))
		require.ErrorIs(t, err, provider.ErrTokenBusy)
		code, ok := tokenCode(err)
		require.True(t, ok, "%v", err)
		assert.Equal(t, uint(pkcs11.CKR_GENERAL_ERROR), code)
		assert.Contains(t, err.Error(), "tried 10 times")
		assert.Equal(t, uint64(openTries), snapshot(t).Calls["C_OpenSession"]-n0, "C_OpenSession calls")
	})

	t.Run("gives up, token seen then gone", func(t *testing.T) {
		need(t)
		// The first try finds the token and fails to log in; from then on
		// the token is missing from the slot list (two slots: the token and
		// SoftHSM's free one, so the third C_GetTokenInfo is the second try).
		setFaults(t, "fail C_Login CKR_GENERAL_ERROR count 1", "fail C_GetTokenInfo CKR_TOKEN_NOT_PRESENT from 3")
		_, err := provider.Open(ctx, config(4))
		var tnf *provider.TokenNotFoundError
		require.ErrorAs(t, err, &tnf)
		assert.True(t, tnf.Seen, "the first try saw the token")
		assert.Equal(t, openTries, tnf.Tries)
		assert.ErrorIs(t, err, provider.ErrNotFound)
		assert.ErrorIs(t, err, provider.ErrTokenBusy, "a token seen a moment ago is busy, not absent")
		assert.Contains(t, err.Error(), "it was there a moment ago")
	})

	t.Run("wrong label, few tries", func(t *testing.T) {
		need(t)
		// C_GetSlotList calls of one try (miekg asks for the length first).
		n0 := snapshot(t).Calls["C_GetSlotList"]
		p, err := provider.Open(ctx, config(4))
		require.NoError(t, err)
		require.NoError(t, p.Close())
		n1 := snapshot(t).Calls["C_GetSlotList"]
		perTry := n1 - n0
		cfg := config(4)
		cfg.TokenLabel = "no such token"
		_, err = provider.Open(ctx, cfg)
		var tnf *provider.TokenNotFoundError
		require.ErrorAs(t, err, &tnf)
		assert.False(t, tnf.Seen)
		assert.NotErrorIs(t, err, provider.ErrTokenBusy)
		// Another token is there: a typo more likely than a busy token.
		assert.Equal(t, 3*perTry, snapshot(t).Calls["C_GetSlotList"]-n1, "C_GetSlotList calls: 3 tries")
	})

	t.Run("context ends the waits", func(t *testing.T) {
		need(t)
		setFaults(t, "fail C_OpenSession CKR_GENERAL_ERROR")
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := provider.Open(cctx, config(4))
		require.ErrorIs(t, err, context.Canceled)
		assert.ErrorIs(t, err, provider.ErrTokenBusy, "the failure that was to be tried again is named")
	})
}

// TestGenerateNotRetried: a C_GenerateKey that failed may have made a key
// whose handle nobody knows, so it is never made again by the provider; the
// caller gets the token's error.
func TestGenerateNotRetried(t *testing.T) {
	need(t)
	ctx := context.Background()
	p := open(t, 4)
	n0 := snapshot(t).Calls["C_GenerateKey"]
	setFaults(t, "fail C_GenerateKey CKR_GENERAL_ERROR count 1")
	_, err := p.Generate(ctx, provider.AES256)
	code, ok := tokenCode(err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, uint(pkcs11.CKR_GENERAL_ERROR), code)
	assert.False(t, errors.Is(err, provider.ErrTokenBusy))
	assert.Equal(t, uint64(1), snapshot(t).Calls["C_GenerateKey"]-n0, "C_GenerateKey calls")
}

// TestReadsRetried: object searches and attribute reads of a KEK lookup
// only read, so a transient failure is tried again; the lookup succeeds.
func TestReadsRetried(t *testing.T) {
	need(t)
	ctx := context.Background()
	keks := newKEKs(t, kekSpec{"busy-aes", provider.KEKAES256})
	p := open(t, 4)
	for _, fault := range []string{
		"fail C_FindObjectsInit CKR_GENERAL_ERROR count 2",
		"fail C_FindObjects CKR_DEVICE_ERROR count 2",
		"fail C_GetAttributeValue CKR_GENERAL_ERROR count 3",
	} {
		setFaults(t, fault)
		k, err := p.KEK(ctx, keks[0].Label)
		require.NoError(t, err, "kek lookup with %q", fault)
		assert.Equal(t, keks[0].ID, k.ID)
		n, err := p.CountSessionKeys(ctx)
		require.NoError(t, err, "count with %q", fault)
		assert.Zero(t, n)
	}
	setFaults(t, "fail C_FindObjects CKR_GENERAL_ERROR")
	_, err := p.KEK(ctx, keks[0].Label)
	code, ok := tokenCode(err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, uint(pkcs11.CKR_GENERAL_ERROR), code, "a failure that does not pass is reported")
}

// TestTokensRetried: listing the tokens (hsmkeys tokens) tries a transient
// failure again, and says so when it gives up.
func TestTokensRetried(t *testing.T) {
	need(t)
	setFaults(t, "fail C_GetTokenInfo CKR_GENERAL_ERROR count 2")
	ts, err := provider.Tokens(env.so)
	require.NoError(t, err)
	assert.True(t, slices.ContainsFunc(ts, func(ti provider.TokenInfo) bool { return ti.Label == tokenLabel }))
	setFaults(t, "fail C_GetTokenInfo CKR_GENERAL_ERROR")
	_, err = provider.Tokens(env.so)
	require.ErrorIs(t, err, provider.ErrTokenBusy)
}
