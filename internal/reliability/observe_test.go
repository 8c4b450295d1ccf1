package reliability

import (
	"context"
	"sync"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMetricsRetries: the calls a busy token fails and the provider tries
// again reach Config.Metrics with the function and the code: at Open,
// for reads of an open provider, and for a token missing from the slot
// list (C_GetSlotList, code 0).
func TestMetricsRetries(t *testing.T) {
	need(t)
	ctx := context.Background()
	var mu sync.Mutex
	var got []string
	cfg := config(4)
	cfg.Metrics = &provider.Metrics{Retry: func(op string, code uint) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, op+" "+(&provider.TokenError{Op: op, Code: code}).Name())
	}}
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := got
		got = nil
		return out
	}
	t.Cleanup(func() { require.NoError(t, env.ctl.Clear()) })

	setFaults(t, "fail C_GetTokenInfo CKR_GENERAL_ERROR count 2")
	p, err := provider.Open(ctx, cfg)
	require.NoError(t, err)
	defer p.Close()
	assert.Equal(t, []string{"C_GetTokenInfo CKR_GENERAL_ERROR", "C_GetTokenInfo CKR_GENERAL_ERROR"}, take(), "at Open")

	setFaults(t, "fail C_FindObjectsInit CKR_GENERAL_ERROR count 1")
	_, err = p.CountSessionKeys(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"C_FindObjectsInit CKR_GENERAL_ERROR"}, take(), "a read")

	setFaults(t, "fail C_GetTokenInfo CKR_TOKEN_NOT_PRESENT count 1")
	p2, err := provider.Open(ctx, cfg)
	require.NoError(t, err)
	defer p2.Close()
	assert.Equal(t, []string{"C_GetSlotList CKR_OK"}, take(), "a token missing from the slot list")
}
