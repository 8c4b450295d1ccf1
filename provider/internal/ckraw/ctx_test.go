//go:build cgo && unix

package ckraw_test

import (
	"bytes"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
)

// TestCtxMatchesMiekg: Ctx answers as miekg's Ctx does on the same token,
// so that p11's code, written against miekg, means the same through ckraw.
func TestCtxMatchesMiekg(t *testing.T) {
	f := newFixture(t)
	c := f.raw.Ctx()

	ms, err := f.p.GetSlotList(true)
	require.NoError(t, err)
	cs, err := c.GetSlotList(true)
	require.NoError(t, err)
	require.Equal(t, ms, cs)

	mti, err := f.p.GetTokenInfo(f.slot)
	require.NoError(t, err)
	cti, err := c.GetTokenInfo(f.slot)
	require.NoError(t, err)
	require.Equal(t, "t", cti.Label, "padding trimmed")
	require.Equal(t, trim(mti.SerialNumber), cti.SerialNumber)
	require.Equal(t, trim(mti.Model), cti.Model)
	require.Equal(t, mti.Flags, cti.Flags)

	mm, err := f.p.GetMechanismList(f.slot)
	require.NoError(t, err)
	cm, err := c.GetMechanismList(f.slot)
	require.NoError(t, err)
	require.Equal(t, len(mm), len(cm))
	for i := range mm {
		require.Equal(t, mm[i].Mechanism, cm[i].Mechanism)
	}

	// A session of one is a session of the other (the same library).
	s, err := c.OpenSession(f.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	defer c.CloseSession(s)
	require.NoError(t, c.Login(s, pkcs11.CKU_USER, userPIN))
	defer c.Logout(s)
	info, err := f.p.GetSessionInfo(s)
	require.NoError(t, err)
	ci, err := c.GetSessionInfo(s)
	require.NoError(t, err)
	require.Equal(t, info, ci)
	require.Equal(t, uint(pkcs11.CKS_RW_USER_FUNCTIONS), ci.State)

	k, err := c.GenerateKey(s, []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "ctx-key"),
	})
	require.NoError(t, err)
	defer c.DestroyObject(s, k)

	q := []*pkcs11.Attribute{{Type: pkcs11.CKA_LABEL}, {Type: pkcs11.CKA_VALUE_LEN}, {Type: pkcs11.CKA_SENSITIVE}, {Type: pkcs11.CKA_CHECK_VALUE}}
	want, err := f.p.GetAttributeValue(s, k, q)
	require.NoError(t, err)
	got, err := c.GetAttributeValue(s, k, q)
	require.NoError(t, err)
	require.Equal(t, want, got)
	// A secret attribute fails the call with the token's code, as in miekg.
	_, err = c.GetAttributeValue(s, k, []*pkcs11.Attribute{{Type: pkcs11.CKA_VALUE}})
	require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE))

	require.NoError(t, c.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "ctx-key")}))
	hs, _, err := c.FindObjects(s, 10)
	require.NoError(t, err)
	require.NoError(t, c.FindObjectsFinal(s))
	require.Equal(t, []pkcs11.ObjectHandle{k}, hs)

	// GCM, multi-part through Ctx, single-part through miekg: the same.
	nonce, aad := bytes.Repeat([]byte{7}, 12), []byte("aad")
	msg := bytes.Repeat([]byte("part"), 1000)
	gp := ckraw.NewGCMParams(nonce, aad, 128)
	require.NoError(t, c.EncryptInit(s, []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_GCM, gp)}, k))
	require.Equal(t, nonce, gp.IV())
	part, err := c.EncryptUpdate(s, msg[:1500])
	require.NoError(t, err)
	rest, err := c.EncryptUpdate(s, msg[1500:])
	require.NoError(t, err)
	tag, err := c.EncryptFinal(s)
	require.NoError(t, err)
	gp.Free()
	require.Nil(t, gp.IV())
	sealed := append(append(part, rest...), tag...)
	mp := pkcs11.NewGCMParams(nonce, aad, 128)
	defer mp.Free()
	require.NoError(t, f.p.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, mp)}, k))
	want2, err := f.p.Encrypt(s, msg)
	require.NoError(t, err)
	require.Equal(t, want2, sealed)

	dp := ckraw.NewGCMParams(nonce, aad, 128)
	defer dp.Free()
	require.NoError(t, c.DecryptInit(s, []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_GCM, dp)}, k))
	pt, err := c.Decrypt(s, sealed)
	require.NoError(t, err)
	require.Equal(t, msg, pt)
}

func trim(s string) string { return string(bytes.TrimRight([]byte(s), " \x00")) }

// TestCtxBadInput: what miekg panics on is an error here, before any call.
func TestCtxBadInput(t *testing.T) {
	f := newFixture(t)
	c := f.raw.Ctx()
	s := f.session(t)
	_, err := c.UnwrapKey(s, []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}, 1, nil, nil)
	require.ErrorIs(t, err, ckraw.ErrInput)
	_, err = c.GenerateKey(s, nil, nil)
	require.ErrorIs(t, err, ckraw.ErrInput)
	_, err = c.GenerateKey(s, []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_KEY_GEN, 42)}, nil)
	require.ErrorIs(t, err, ckraw.ErrInput)
	_, err = c.GetAttributeValue(s, 1, nil)
	require.ErrorIs(t, err, ckraw.ErrTemplate)
	_, err = c.GetAttributeValue(s, 1, []*pkcs11.Attribute{nil})
	require.ErrorIs(t, err, ckraw.ErrTemplate)
	_, _, err = c.FindObjects(s, 0)
	require.ErrorIs(t, err, ckraw.ErrInput)
	require.ErrorIs(t, c.InitToken(f.slot, soPIN, string(make([]byte, 33))), ckraw.ErrInput)

	var closed *ckraw.Module
	_, err = closed.Ctx().GetSlotList(true)
	require.ErrorIs(t, err, ckraw.ErrClosed)
}
