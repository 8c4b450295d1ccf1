package provider

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ModuleInfoOf reports SoftHSM's C_GetInfo without a token or PIN.
func TestModuleInfoOf(t *testing.T) {
	needToken(t)
	mi, err := ModuleInfoOf(Config{Module: softhsmModule()})
	require.NoError(t, err)
	assert.Equal(t, "SoftHSM", mi.Manufacturer)
	assert.Regexp(t, `^2\.[0-9]+$`, mi.CryptokiVersion)
	assert.Regexp(t, `^[0-9]+\.[0-9]+$`, mi.LibraryVersion)
	assert.Contains(t, mi.Path, "libsofthsm2.so")

	_, err = ModuleInfoOf(Config{Module: "/nonexistent/libnothing.so"})
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrConfig), "%v", err)
}
