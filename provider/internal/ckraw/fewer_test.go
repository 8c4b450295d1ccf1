//go:build cgo && unix

package ckraw_test

import (
	"crypto/aes"
	"crypto/cipher"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
)

// TestGetAttributeValueCap: one call with buffers of the known sizes gives
// what the two-call GetAttributeValue gives; a buffer too small falls back
// to the two calls and still answers right; an empty value stays empty.
func TestGetAttributeValueCap(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	key := sessionKey(t, f, s, true)
	c := f.raw.Ctx()
	q := func() []*pkcs11.Attribute {
		return []*pkcs11.Attribute{{Type: pkcs11.CKA_SENSITIVE}, {Type: pkcs11.CKA_WRAP_WITH_TRUSTED},
			{Type: pkcs11.CKA_VALUE_LEN}, {Type: pkcs11.CKA_CHECK_VALUE}}
	}
	want, err := c.GetAttributeValue(s, key, q())
	require.NoError(t, err)
	require.Len(t, want[3].Value, 3, "SoftHSM sets CKA_CHECK_VALUE of a generated key")
	for _, caps := range [][]int{{1, 1, 8, 3}, {1, 1, 8, 16}, {1, 1, 1, 3}, {1, 1, 8, 1}} {
		got, err := c.GetAttributeValueCap(s, key, q(), caps)
		require.NoError(t, err, "caps %v", caps)
		for i := range want {
			require.Equal(t, want[i].Type, got[i].Type)
			require.Equal(t, want[i].Value, got[i].Value, "caps %v, attribute %d", caps, i)
		}
	}
	_, err = c.GetAttributeValueCap(s, key, q(), []int{1, 1, 8})
	require.Error(t, err, "a size per attribute")
	_, err = c.GetAttributeValueCap(s, key, q(), []int{1, 1, 8, 0})
	require.Error(t, err, "a buffer of 0 bytes")

	// A key without a check value (an unwrapped key on SoftHSM, or one made
	// with CreateObject and no CKA_CHECK_VALUE given: check both agree).
	made := aesKey(t, f, s, randBytes(t, 32), false)
	a, err := c.GetAttributeValue(s, made, []*pkcs11.Attribute{{Type: pkcs11.CKA_CHECK_VALUE}})
	require.NoError(t, err)
	b, err := c.GetAttributeValueCap(s, made, []*pkcs11.Attribute{{Type: pkcs11.CKA_CHECK_VALUE}}, []int{3})
	require.NoError(t, err)
	require.Equal(t, a[0].Value, b[0].Value)
}

// TestEncryptUpdateCap: multi-part AES-GCM through the one-call update and
// final matches Go's AES-GCM, in one C call each; a buffer too small is
// answered by a second call with the size the token asked for.
func TestEncryptUpdateCap(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	value := randBytes(t, 32)
	key := aesKey(t, f, s, value, false)
	c := f.raw.Ctx()
	block, err := aes.NewCipher(value)
	require.NoError(t, err)
	g, err := cipher.NewGCM(block)
	require.NoError(t, err)
	for _, small := range []bool{false, true} {
		nonce, aad := randBytes(t, 12), randBytes(t, 20)
		msg := randBytes(t, 3000)
		gcmInit(t, f, s, key, true, nonce, aad)
		var out []byte
		for i := 0; i < len(msg); i += 1000 {
			part := msg[i : i+1000]
			room := len(part) + 16
			if small {
				room = 0
			}
			var ct []byte
			n := calls(func() { ct, err = c.EncryptUpdateCap(s, part, room) })
			require.NoError(t, err)
			if !small {
				require.EqualValues(t, 1, n, "one C_EncryptUpdate")
			} else if len(ct) > 0 {
				require.EqualValues(t, 2, n, "the size the token asked for")
			}
			out = append(out, ct...)
		}
		var last []byte
		n := calls(func() { last, err = c.EncryptFinalCap(s, 32) })
		require.NoError(t, err)
		require.EqualValues(t, 1, n, "one C_EncryptFinal")
		out = append(out, last...)
		require.Equal(t, g.Seal(nil, nonce, msg, aad), out, "small buffers %v", small)
	}
	_, err = c.EncryptUpdateCap(s, []byte{1}, -1)
	require.Error(t, err)
}

// TestEncryptUpdateIn: the output lands in the caller's buffer, in one
// call; a buffer too small gets a new one of the size the token asked for;
// no buffer at all is refused before the token is called.
func TestEncryptUpdateIn(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	value := randBytes(t, 32)
	key := aesKey(t, f, s, value, false)
	c := f.raw.Ctx()
	block, err := aes.NewCipher(value)
	require.NoError(t, err)
	g, err := cipher.NewGCM(block)
	require.NoError(t, err)
	nonce, msg := randBytes(t, 12), randBytes(t, 2048)
	gcmInit(t, f, s, key, true, nonce, nil)
	buf := make([]byte, 1024)
	var out, ct []byte
	n := calls(func() { ct, err = c.EncryptUpdateIn(s, msg[:1024], buf) })
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
	require.Same(t, &buf[0], &ct[0], "written into the caller's buffer")
	out = append(out, ct...)
	n = calls(func() { ct, err = c.EncryptUpdateIn(s, msg[1024:], buf[:16]) })
	require.NoError(t, err)
	require.EqualValues(t, 2, n, "too small: the size the token asked for")
	out = append(out, ct...)
	last, err := c.EncryptFinalCap(s, 32)
	require.NoError(t, err)
	require.Equal(t, g.Seal(nil, nonce, msg, nil), append(out, last...))
	_, err = c.EncryptUpdateIn(s, msg, nil)
	require.ErrorIs(t, err, ckraw.ErrInput)
}
