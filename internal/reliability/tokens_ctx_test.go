package reliability

import (
	"context"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/require"
)

// TestTokensOfContext: the wait between tries of a transient failure
// ends with the caller's context, and the error says both.
func TestTokensOfContext(t *testing.T) {
	need(t)
	setFaults(t, "fail C_GetTokenInfo CKR_GENERAL_ERROR")
	t.Cleanup(func() { require.NoError(t, env.ctl.Clear()) })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := provider.TokensOf(ctx, provider.Config{Module: env.so})
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, err, provider.ErrTokenBusy)
	var te *provider.TokenError
	require.ErrorAs(t, err, &te)
	require.Equal(t, "C_GetTokenInfo", te.Op)
}
