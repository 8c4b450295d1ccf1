package reliability

import (
	"context"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRSAKEKCreateFailure: an RSA KEK is two objects, made by two logins.
// When the second (the SO's trusted public half, C_CreateObject) fails,
// the private half made first is removed; when removing it fails too
// (C_DestroyObject), the error says so, names its id and the command that
// removes it, instead of dropping the cleanup error (issue 12).
func TestRSAKEKCreateFailure(t *testing.T) {
	need(t)
	ctx := context.Background()
	a, err := provider.OpenAdmin(ctx, config(0), provider.PINValue([]byte(soPIN)))
	require.NoError(t, err)
	defer a.Close()
	name := fmt.Sprintf("halfmade-%x", time.Now().UnixNano())

	setFaults(t, "fail C_CreateObject CKR_DEVICE_ERROR")
	_, err = a.CreateKEK(ctx, name, provider.KEKRSA2048)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "still on the token")
	require.NoError(t, env.ctl.Clear())
	assert.Empty(t, versionsOf(t, a, name), "the private half was removed")

	setFaults(t, "fail C_CreateObject CKR_DEVICE_ERROR", "fail C_DestroyObject CKR_DEVICE_ERROR")
	_, err = a.CreateKEK(ctx, name, provider.KEKRSA2048)
	require.Error(t, err)
	require.NoError(t, env.ctl.Clear())
	left := versionsOf(t, a, name)
	require.Len(t, left, 1, "the private half is left, and said so")
	id := hex.EncodeToString(left[0].ID)
	assert.Contains(t, err.Error(), "is still on the token")
	assert.Contains(t, err.Error(), id)
	assert.Contains(t, err.Error(), "hsmkeys kek destroy --label "+name+" --id "+id)
	require.NoError(t, a.DestroyKEK(ctx, left[0].ID))
	assert.Empty(t, versionsOf(t, a, name))
}

func versionsOf(t *testing.T, a *provider.Admin, name string) []*provider.KEK {
	t.Helper()
	ks, err := a.KEKs(context.Background())
	require.NoError(t, err)
	var out []*provider.KEK
	for _, k := range ks {
		if k.Label == name {
			out = append(out, k)
		}
	}
	return out
}
