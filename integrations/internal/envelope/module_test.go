package envelope

import (
	"os"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/require"
)

// With no module named, the adapters use p11-kit's proxy (the modules
// p11-kit registers), never SoftHSM by itself (issue 13).
func TestConfigDefaultModule(t *testing.T) {
	env := func(k string) string { return map[string]string{"HSMKEYS_PIN_FILE": "/f"}[k] }
	cfg, err := Settings{KEK: "k"}.Config(env)
	want, derr := provider.DefaultModule()
	if derr != nil {
		require.ErrorIs(t, err, provider.ErrNoModule)
		return
	}
	require.NoError(t, err)
	require.Equal(t, want, cfg.Module)
	if _, err := os.Stat("/usr/lib/softhsm/libsofthsm2.so"); err == nil {
		require.NotContains(t, cfg.Module, "softhsm", "SoftHSM is installed, and not picked")
	}
	// module-name is left to the provider to resolve.
	cfg, err = Settings{KEK: "k", URI: "pkcs11:token=t?module-name=softhsm2"}.Config(env)
	require.NoError(t, err)
	require.Empty(t, cfg.Module)
}
