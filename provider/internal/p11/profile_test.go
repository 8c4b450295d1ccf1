package p11

import (
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
)

// TestProfileIdentities: what only identity can tell (the probes cannot).
func TestProfileIdentities(t *testing.T) {
	soft := ProfileFor("SoftHSM project", "SoftHSM v2")
	assert.True(t, soft.IsBadTag(pkcs11.CKR_GENERAL_ERROR), "softhsm's bad tag is CKR_GENERAL_ERROR (TOKEN-FACTS)")
	assert.Equal(t, []uint{pkcs11.CKM_SHA_1}, soft.OAEPHashes)
	assert.False(t, soft.UnwrapValueLen)

	unknown := ProfileFor("Some Vendor", "X1")
	assert.False(t, unknown.IsBadTag(pkcs11.CKR_GENERAL_ERROR), "elsewhere CKR_GENERAL_ERROR is a device failure")
	assert.True(t, unknown.IsBadTag(pkcs11.CKR_ENCRYPTED_DATA_INVALID))
	assert.Zero(t, unknown.MaxCall)
	assert.True(t, unknown.StreamsGCM())
	assert.True(t, unknown.ReEncrypts())

	cloud := ProfileFor("hsmkeys faultmod", "sim CloudHSM")
	assert.Equal(t, 16<<10, cloud.MaxCall)
	assert.Equal(t, IVInParams, cloud.GCMIV)
	assert.False(t, cloud.ReEncrypts(), "a token that makes its own iv cannot re-encrypt under a message's nonce")

	luna := ProfileFor("Safenet, Inc.", "LunaSA")
	assert.True(t, luna.UnwrapValueLen)
	assert.Equal(t, IVAppended, luna.GCMIV)
	assert.False(t, luna.StreamsGCM(), "the iv comes with the last part: no header can precede the content")

	for _, p := range []Profile{soft, unknown, cloud, luna} {
		assert.Equal(t, pkcs11.CKM_AES_KEY_WRAP_PAD, int(p.KWP), "%s: until probed, rfc 5649 is 0x210A", p.Name)
	}
}
