package provider

import (
	"testing"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPolicyCheckDefault: by default the first key generated of each kind,
// and the first unwrapped under each KEK, is read back; under
// CheckEveryKey nothing is marked and every key is read back. The key
// check value of a generated key is the token's CKA_CHECK_VALUE once the
// first key showed it equal to the one computed on the token, and an
// exported key made that way imports (its manifest's check value is
// compared with AES-ECB on the token).
func TestPolicyCheckDefault(t *testing.T) {
	a := openAdmin(t)
	name := uniqueName(t, "policycheck")
	kek := makeKEK(t, a, name, KEKAES256)
	require.NoError(t, a.Close())
	for _, pc := range []PolicyCheck{0, CheckEveryKey} {
		p := openProvider(t, func(c *Config) { c.PolicyCheck = pc })
		k, err := p.KEK(bg, name)
		require.NoError(t, err)
		var blobs [][]byte
		for range 3 {
			key, err := p.Generate(bg, AES256)
			require.NoError(t, err)
			blob, err := p.Export(bg, key, []*KEK{k}, Options{})
			require.NoError(t, err)
			blobs = append(blobs, blob)
			require.NoError(t, key.Destroy(bg))
		}
		assert.Equal(t, kcvAttrGood, p.kcvAttr.Load(), "SoftHSM's CKA_CHECK_VALUE is the AES-ECB check value")
		for _, blob := range blobs {
			key, err := p.Import(bg, blob, Options{})
			require.NoError(t, err)
			require.NoError(t, key.Destroy(bg))
		}
		_, generated := p.checked.Load(p11.SecretKeySpec{Bytes: 32, Extractable: true, WrapWithTrusted: true})
		_, unwrapped := p.checked.Load(unwrapKind{string(kek.ID), AESKeyWrap, AES256})
		if pc == CheckEveryKey {
			assert.True(t, p.mustCheck(p11.SecretKeySpec{Bytes: 32, Extractable: true, WrapWithTrusted: true}), "every generated key is read back")
			assert.True(t, p.mustCheck(unwrapKind{string(kek.ID), AESKeyWrap, AES256}), "every unwrapped key is read back")
			continue
		}
		assert.Equal(t, CheckFirstKey, p.cfg.PolicyCheck, "the default")
		assert.True(t, generated, "the first generated key was read back")
		assert.True(t, unwrapped, "the first key unwrapped under the kek was read back")
		assert.False(t, p.mustCheck(unwrapKind{string(kek.ID), AESKeyWrap, AES256}))
		assert.True(t, p.mustCheck(unwrapKind{"another kek", AESKeyWrap, AES256}), "another kek's first key is read back")
	}
}
