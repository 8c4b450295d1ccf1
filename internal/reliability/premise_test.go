package reliability

import (
	"context"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestEnforcementPremise: a transport or token that fails a call for its
// own reasons must never make a check read as "enforced". faultmod answers
// every C_WrapKey, or every C_SetAttributeValue and C_CopyObject, with
// CKR_MECHANISM_INVALID, 0x70 (as a token without the mechanism, or a transport
// that drops it, would): the refusals then look exactly like enforcement,
// and only the premise, the same call on an unrestricted twin, tells them
// apart. (A fault module stands in for such a token: SoftHSM has every
// mechanism.)
func TestEnforcementPremise(t *testing.T) {
	need(t)
	cfg := config(0)
	cfg.ExportPolicy = provider.ExportNone // Open checks nothing; Doctor does
	p, err := provider.Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, env.ctl.Clear())
		assert.NoError(t, p.Close())
	})
	doctor := func() map[string]provider.EnforcementCheck {
		checks, err := p.Doctor(context.Background())
		require.NoError(t, err)
		out := map[string]provider.EnforcementCheck{}
		for _, c := range checks {
			out[c.Name] = c
		}
		return out
	}

	got := doctor()
	for _, name := range []string{"trusted-only wrapping", "aes kek mechanisms", "rsa kek mechanisms", "session key attributes"} {
		assert.True(t, got[name].OK, "%s without faults: %s", name, got[name].Detail)
	}

	setFaults(t, "fail C_WrapKey 0x70")
	got = doctor()
	for _, name := range []string{"trusted-only wrapping", "aes kek mechanisms", "rsa kek mechanisms"} {
		c := got[name]
		assert.False(t, c.OK, "%s must not read as enforced: %s", name, c.Detail)
	}
	assert.True(t, got["trusted-only wrapping"].Unchecked, got["trusted-only wrapping"].Detail)
	assert.Contains(t, got["trusted-only wrapping"].Detail, "could not be checked")

	setFaults(t, "fail C_SetAttributeValue 0x70", "fail C_CopyObject 0x70")
	got = doctor()
	c := got["session key attributes"]
	assert.False(t, c.OK, c.Detail)
	assert.True(t, c.Unchecked, c.Detail)
	assert.Contains(t, c.Detail, "could not be checked")
}
