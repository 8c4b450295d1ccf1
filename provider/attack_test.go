package provider

// The attacks of the 2026 review (issue 11: findings 1, 2, 3, 4, 7) and the
// rest of their classes (Clulow 2003; Tookan, Bortolozzo et al. 2010;
// Bardou et al., CRYPTO 2012), played against the real SoftHSM token with
// handles of the attacker's own: a second miekg handle with the user login
// in this process, a child process with no PIN, and the token directory's
// files. Each step names what it showed before the fix.

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// objectFilesContaining lists the token's .object files that hold b.
func objectFilesContaining(t *testing.T, b []byte) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(tok.dir, "tokens", "*", "*.object"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "softhsm keeps one file per token object")
	var out []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		if bytes.Contains(data, b) {
			out = append(out, f)
		}
	}
	return out
}

// Finding 1: the attacker has a copy of the token directory and no PIN.
func TestAESKEKExposedAtRest(t *testing.T) {
	a := openAdmin(t)
	require.False(t, a.Profile().PublicObjectsProtectedAtRest, "softhsm stores public objects in clear")
	require.True(t, a.Profile().DefaultKEKType().IsRSA(), "so the default kek is rsa here")

	// The token fact: an SO-made AES KEK's value is in its file, in clear.
	value := make([]byte, 32)
	_, _ = rand.Read(value)
	f := filepath.Join(t.TempDir(), "kek")
	require.NoError(t, os.WriteFile(f, value, 0o600))
	_, err := a.ImportKEK(bg, uniqueName(t, "clear"), f)
	require.ErrorIs(t, err, ErrPolicy, "refused by default (before: imported, and readable at rest)")
	assert.Contains(t, err.Error(), "stored in clear at rest")
	_, err = a.CreateKEK(bg, uniqueName(t, "clear"), KEKAES256)
	require.ErrorIs(t, err, ErrPolicy, "refused by default (before: the default kek type)")

	k, err := a.ImportKEKWith(bg, uniqueName(t, "clear"), f, allowExposed)
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.DestroyKEK(bg, k.ID) })
	assert.True(t, k.ExposedAtRest, "the explicit choice is stated")
	assert.NotEmpty(t, objectFilesContaining(t, value), "the attacker reads an aes kek from the files")

	// The default KEK: its unwrapping half is a private object, encrypted
	// at rest. Its modulus is in both halves; in clear only in the public
	// (trusted, wrap-only) half's file.
	rk := makeKEK(t, a, uniqueName(t, "at-rest"), a.Profile().DefaultKEKType())
	assert.False(t, rk.ExposedAtRest)
	mod := rk.PublicKey().N.Bytes()
	assert.Len(t, objectFilesContaining(t, mod), 1, "the private half is not in clear")
}

// makeLegacyRSAKEK makes an RSA KEK as hsmkeys did before the review: no
// CKA_ALLOWED_MECHANISMS, the short unwrap template. No session of this
// process may be logged in.
func makeLegacyRSAKEK(t *testing.T, label string) []byte {
	t.Helper()
	needToken(t)
	id, err := p11.NewKEKID(1)
	require.NoError(t, err)
	legacyUnwrap := []ckraw.Attr{
		{Type: pkcs11.CKA_TOKEN, Value: false}, {Type: pkcs11.CKA_PRIVATE, Value: true},
		{Type: pkcs11.CKA_SENSITIVE, Value: true}, {Type: pkcs11.CKA_EXTRACTABLE, Value: true},
		{Type: pkcs11.CKA_WRAP_WITH_TRUSTED, Value: true}, {Type: pkcs11.CKA_WRAP, Value: false},
		{Type: pkcs11.CKA_UNWRAP, Value: false}, {Type: pkcs11.CKA_DERIVE, Value: false},
		{Type: pkcs11.CKA_COPYABLE, Value: false},
	}
	common := []ckraw.Attr{
		{Type: pkcs11.CKA_TOKEN, Value: true}, {Type: pkcs11.CKA_LABEL, Value: label}, {Type: pkcs11.CKA_ID, Value: id},
		{Type: pkcs11.CKA_MODIFIABLE, Value: false}, {Type: pkcs11.CKA_COPYABLE, Value: false},
	}
	raw, err := ckraw.Open(tok.module, ckraw.Options{})
	require.NoError(t, err)
	defer raw.Close()
	ctx := pkcs11.New(tok.module)
	require.NotNil(t, ctx)
	defer ctx.Destroy()
	if err := ctx.Initialize(); err != nil {
		require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED))
	}
	as := func(user uint, pin string, fn func(s pkcs11.SessionHandle)) {
		s, err := ctx.OpenSession(tok.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		require.NoError(t, err)
		defer ctx.CloseSession(s)
		require.NoError(t, ctx.Login(s, user, pin))
		defer ctx.Logout(s)
		fn(s)
	}
	var modulus []byte
	as(pkcs11.CKU_USER, tok.userPIN, func(s pkcs11.SessionHandle) {
		priv := append(append([]ckraw.Attr{}, common...),
			ckraw.Attr{Type: pkcs11.CKA_PRIVATE, Value: true}, ckraw.Attr{Type: pkcs11.CKA_SENSITIVE, Value: true},
			ckraw.Attr{Type: pkcs11.CKA_EXTRACTABLE, Value: false}, ckraw.Attr{Type: pkcs11.CKA_UNWRAP, Value: true},
			ckraw.Attr{Type: pkcs11.CKA_DECRYPT, Value: false}, ckraw.Attr{Type: pkcs11.CKA_SIGN, Value: false},
			ckraw.Attr{Type: pkcs11.CKA_SIGN_RECOVER, Value: false}, ckraw.Attr{Type: pkcs11.CKA_DERIVE, Value: false},
			ckraw.Attr{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: legacyUnwrap})
		pub := []ckraw.Attr{{Type: pkcs11.CKA_TOKEN, Value: false}, {Type: pkcs11.CKA_MODULUS_BITS, Value: uint(2048)},
			{Type: pkcs11.CKA_PUBLIC_EXPONENT, Value: []byte{1, 0, 1}}}
		ph, _, err := raw.GenerateKeyPair(uint(s), pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pub, priv)
		require.NoError(t, err)
		got, err := ctx.GetAttributeValue(s, pkcs11.ObjectHandle(ph), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil)})
		require.NoError(t, err)
		modulus = got[0].Value
	})
	as(pkcs11.CKU_SO, tok.soPIN, func(s pkcs11.SessionHandle) {
		_, err := raw.CreateObject(uint(s), append(append([]ckraw.Attr{}, common...),
			ckraw.Attr{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_PUBLIC_KEY)}, ckraw.Attr{Type: pkcs11.CKA_KEY_TYPE, Value: uint(pkcs11.CKK_RSA)},
			ckraw.Attr{Type: pkcs11.CKA_PRIVATE, Value: false}, ckraw.Attr{Type: pkcs11.CKA_MODULUS, Value: modulus},
			ckraw.Attr{Type: pkcs11.CKA_PUBLIC_EXPONENT, Value: []byte{1, 0, 1}}, ckraw.Attr{Type: pkcs11.CKA_TRUSTED, Value: true},
			ckraw.Attr{Type: pkcs11.CKA_WRAP, Value: true}, ckraw.Attr{Type: pkcs11.CKA_ENCRYPT, Value: false},
			ckraw.Attr{Type: pkcs11.CKA_VERIFY, Value: false}, ckraw.Attr{Type: pkcs11.CKA_VERIFY_RECOVER, Value: false},
			ckraw.Attr{Type: pkcs11.CKA_DERIVE, Value: false},
			ckraw.Attr{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: []ckraw.Attr{{Type: pkcs11.CKA_WRAP_WITH_TRUSTED, Value: true}}}))
		require.NoError(t, err)
	})
	return id
}

// pkcs1Blob is a valid PKCS#1 v1.5 encryption of a 32-byte key under pub:
// what a Bleichenbacher attacker submits, varied, to C_UnwrapKey.
func pkcs1Blob(t *testing.T, pub *rsa.PublicKey) []byte {
	t.Helper()
	b, err := rsa.EncryptPKCS1v15(rand.Reader, pub, make([]byte, 32))
	require.NoError(t, err)
	return b
}

// unwrapFull is the template hsmkeys itself unwraps with.
func unwrapFull() []*pkcs11.Attribute {
	var out []*pkcs11.Attribute
	for _, a := range p11.UnwrapTemplate() {
		out = append(out, pkcs11.NewAttribute(a.Type, a.Value))
	}
	return out
}

func withAttr(tmpl []*pkcs11.Attribute, t uint, v any) []*pkcs11.Attribute {
	var out []*pkcs11.Attribute
	for _, a := range tmpl {
		if a.Type == t {
			if v == nil {
				continue
			}
			a = pkcs11.NewAttribute(t, v)
		}
		out = append(out, a)
	}
	return out
}

// Findings 2, 3 and 4, and their classes, by a holder of the user PIN.
func TestUserPINAttacker(t *testing.T) {
	legacyLabel := uniqueName(t, "legacy")
	legacyID := makeLegacyRSAKEK(t, legacyLabel)
	a := openAdmin(t)
	rsaKEK := makeKEK(t, a, uniqueName(t, "oracle"), KEKRSA2048)
	aesKEK := makeKEK(t, a, uniqueName(t, "cbc"), KEKAES256)
	ks, err := a.KEKs(bg)
	require.NoError(t, err)
	var legacy *KEK
	for _, k := range ks {
		if bytes.Equal(k.ID, legacyID) {
			legacy = k
		}
	}
	require.NotNil(t, legacy)
	t.Cleanup(func() { _ = a.DestroyKEK(bg, legacyID) })

	p := openProvider(t)
	rsaKEK, aesKEK = mustKEK(t, p, rsaKEK), mustKEK(t, p, aesKEK)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	w, err := p.Wrap(bg, k, aesKEK)
	require.NoError(t, err)
	unwrapped, err := p.Unwrap(bg, w)
	require.NoError(t, err)
	raw := openRaw(t)
	c, s := raw.ctx, raw.s
	mech := func(m uint, param []byte) []*pkcs11.Mechanism {
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(m, param)}
	}
	aesTmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
	}
	destroyIfMade := func(h pkcs11.ObjectHandle, err error) error {
		if err == nil {
			_ = c.DestroyObject(s, h)
		}
		return err
	}

	t.Run("padding oracle through C_UnwrapKey", func(t *testing.T) {
		// Before: CKR_OK, a PKCS#1 v1.5 unwrap oracle (Bardou et al.).
		blob := pkcs1Blob(t, rsaKEK.PublicKey())
		for name, tmpl := range map[string][]*pkcs11.Attribute{"as hsmkeys asks": unwrapFull(), "plain": aesTmpl} {
			err := destroyIfMade(c.UnwrapKey(s, mech(pkcs11.CKM_RSA_PKCS, nil), pkcs11.ObjectHandle(rsaKEK.obj.Unwrap), blob, tmpl))
			require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID), name)
		}
		_, err := c.WrapKey(s, mech(pkcs11.CKM_RSA_PKCS, nil), pkcs11.ObjectHandle(rsaKEK.obj.Wrap), pkcs11.ObjectHandle(k.obj))
		require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID), "wrap with pkcs#1 v1.5")
		// Raw RSA on the halves: neither decrypts nor encrypts at all.
		require.Error(t, c.DecryptInit(s, mech(pkcs11.CKM_RSA_X_509, nil), pkcs11.ObjectHandle(rsaKEK.obj.Unwrap)))
		// The same attack on a KEK made before the fix still works:
		// which is why such a KEK is refused for wrapping and the docs say
		// its keys are exposed to pin holders.
		lk := mustKEK(t, p, legacy)
		err = destroyIfMade(c.UnwrapKey(s, mech(pkcs11.CKM_RSA_PKCS, nil), pkcs11.ObjectHandle(lk.obj.Unwrap), pkcs1Blob(t, lk.PublicKey()), withAttr(unwrapFull(), pkcs11.CKA_ALLOWED_MECHANISMS, nil)))
		require.NoError(t, err, "an outdated rsa kek is still an oracle")
	})

	t.Run("chosen-iv encryption under an aes kek", func(t *testing.T) {
		// Before: CKR_OK with an IV of the attacker's choice (finding 4).
		own, err := c.GenerateKey(s, mech(pkcs11.CKM_AES_KEY_GEN, nil), []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
		})
		require.NoError(t, err)
		defer c.DestroyObject(s, own)
		_, err = c.WrapKey(s, mech(pkcs11.CKM_AES_CBC, bytes.Repeat([]byte{0x42}, 16)), pkcs11.ObjectHandle(aesKEK.obj.Wrap), own)
		require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID))
		for _, m := range [][]*pkcs11.Mechanism{mech(pkcs11.CKM_AES_ECB, nil), mech(pkcs11.CKM_AES_CBC, make([]byte, 16)), mech(pkcs11.CKM_AES_CBC_PAD, make([]byte, 16))} {
			_, err = c.WrapKey(s, m, pkcs11.ObjectHandle(aesKEK.obj.Wrap), own)
			require.Error(t, err)
			require.Error(t, destroyIfMade(c.UnwrapKey(s, m, pkcs11.ObjectHandle(aesKEK.obj.Unwrap), w.Bytes, aesTmpl)))
		}
		_, err = p.WrapWith(bg, k, aesKEK, AESKeyWrapPad)
		require.NoError(t, err, "both key wraps still work")
	})

	t.Run("new uses for a session key", func(t *testing.T) {
		// Before: every change CKR_OK (finding 3), on generated and
		// unwrapped keys alike.
		for name, key := range map[string]p11.Object{"generated": k.obj, "unwrapped": unwrapped.obj} {
			got := raw.bools(t, uint(key), pkcs11.CKA_MODIFIABLE)
			assert.False(t, got[pkcs11.CKA_MODIFIABLE], name)
			for _, attr := range []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
				pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true), pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
				pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
				pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "mine"),
				pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, []byte{}),
			} {
				err := c.SetAttributeValue(s, pkcs11.ObjectHandle(key), []*pkcs11.Attribute{attr})
				require.Error(t, err, "%s key: set 0x%x", name, attr.Type)
			}
			// Copy into a key with more uses.
			require.Error(t, destroyIfMade(c.CopyObject(s, pkcs11.ObjectHandle(key), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true)})), name)
			// Mechanisms hsmkeys never uses on it.
			for _, m := range [][]*pkcs11.Mechanism{mech(pkcs11.CKM_AES_CBC, make([]byte, 16)), mech(pkcs11.CKM_AES_CMAC, nil), mech(pkcs11.CKM_AES_KEY_WRAP, nil)} {
				err := c.EncryptInit(s, m, pkcs11.ObjectHandle(key))
				if err == nil {
					_, _ = c.Encrypt(s, make([]byte, 16))
				}
				require.Error(t, err, "%s key: mechanism 0x%x", name, m[0].Mechanism)
			}
			// Sign (a MAC oracle) with it.
			if err := c.SignInit(s, mech(pkcs11.CKM_AES_CMAC, nil), pkcs11.ObjectHandle(key)); err == nil {
				_, _ = c.Sign(s, make([]byte, 16))
				t.Errorf("%s key: signs with CKM_AES_CMAC", name)
			}
			// Use it as a wrapping key for another session key.
			_, err := c.WrapKey(s, mech(pkcs11.CKM_AES_KEY_WRAP, nil), pkcs11.ObjectHandle(key), pkcs11.ObjectHandle(k.obj))
			require.Error(t, err, name)
		}
		// And the key still does what hsmkeys does with it.
		sealed, err := unwrapped.Seal(bg, []byte("still works"), nil)
		require.NoError(t, err)
		_, err = k.Open(bg, sealed, nil)
		require.NoError(t, err)
	})

	t.Run("unwrap as another kind of key", func(t *testing.T) {
		// Before: an unwrap as CKK_GENERIC_SECRET with CKA_SIGN gave an
		// HMAC key holding the session key's value (finding 3).
		full := unwrapFull()
		for name, tmpl := range map[string][]*pkcs11.Attribute{
			"generic secret":       withAttr(full, pkcs11.CKA_KEY_TYPE, uint(pkcs11.CKK_GENERIC_SECRET)),
			"generic secret, sign": withAttr(withAttr(full, pkcs11.CKA_KEY_TYPE, uint(pkcs11.CKK_GENERIC_SECRET)), pkcs11.CKA_SIGN, true),
			"signing aes":          withAttr(full, pkcs11.CKA_SIGN, true),
			"deriving":             withAttr(full, pkcs11.CKA_DERIVE, true),
			"wrapping":             withAttr(full, pkcs11.CKA_WRAP, true),
			"modifiable":           withAttr(full, pkcs11.CKA_MODIFIABLE, true),
			"no modifiable":        withAttr(full, pkcs11.CKA_MODIFIABLE, nil),
			"any mechanism":        withAttr(full, pkcs11.CKA_ALLOWED_MECHANISMS, nil),
			"cbc allowed":          withAttr(full, pkcs11.CKA_ALLOWED_MECHANISMS, p11.MechList([]uint{pkcs11.CKM_AES_CBC})),
			"no class":             withAttr(full, pkcs11.CKA_CLASS, nil),
			"the old template":     withAttr(withAttr(withAttr(withAttr(withAttr(full, pkcs11.CKA_SIGN, nil), pkcs11.CKA_VERIFY, nil), pkcs11.CKA_MODIFIABLE, nil), pkcs11.CKA_ALLOWED_MECHANISMS, nil), pkcs11.CKA_KEY_TYPE, nil),
		} {
			for _, kek := range []struct {
				mech []*pkcs11.Mechanism
				obj  p11.Object
				blob []byte
			}{{mech(pkcs11.CKM_AES_KEY_WRAP, nil), aesKEK.obj.Unwrap, w.Bytes}} {
				err := destroyIfMade(c.UnwrapKey(s, kek.mech, pkcs11.ObjectHandle(kek.obj), kek.blob, tmpl))
				require.Error(t, err, name)
			}
		}
		rw, err := p.Wrap(bg, k, rsaKEK)
		require.NoError(t, err)
		oaep := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.NewOAEPParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKZ_DATA_SPECIFIED, nil))}
		err = destroyIfMade(c.UnwrapKey(s, oaep, pkcs11.ObjectHandle(rsaKEK.obj.Unwrap), rw.Bytes, withAttr(full, pkcs11.CKA_KEY_TYPE, uint(pkcs11.CKK_GENERIC_SECRET))))
		require.Error(t, err, "rsa kek: generic secret")
		// The premise: the template hsmkeys asks for does unwrap.
		require.NoError(t, destroyIfMade(c.UnwrapKey(s, mech(pkcs11.CKM_AES_KEY_WRAP, nil), pkcs11.ObjectHandle(aesKEK.obj.Unwrap), w.Bytes, full)))
		require.NoError(t, destroyIfMade(c.UnwrapKey(s, oaep, pkcs11.ObjectHandle(rsaKEK.obj.Unwrap), rw.Bytes, full)))
	})

	t.Run("an outdated kek", func(t *testing.T) {
		lk, err := p.KEKByID(bg, legacyID)
		require.NoError(t, err, "still found, to unwrap what was wrapped under it")
		assert.True(t, lk.Outdated)
		assert.False(t, lk.Restricted)
		assert.Contains(t, strings.Join(lk.Problems, "; "), "no CKA_ALLOWED_MECHANISMS")
		_, err = p.Wrap(bg, k, lk)
		require.ErrorIs(t, err, ErrPolicy, "refused for wrapping")
		assert.Contains(t, err.Error(), "create a new version")
		assert.Contains(t, err.Error(), "rewrap")
		_, err = p.KEK(bg, legacyLabel)
		require.ErrorIs(t, err, ErrPolicy)
		// doctor names it and what it has exposed.
		checks, err := p.Doctor(bg)
		require.NoError(t, err)
		var found bool
		for _, c := range checks {
			if c.Name == "kek "+legacyLabel+" v1" {
				found = true
				assert.False(t, c.OK)
				assert.Contains(t, c.Detail, "create a new version")
				assert.Contains(t, c.Detail, "padding oracle")
			}
		}
		assert.True(t, found, "doctor lists the outdated kek")
		// What was wrapped under it can still move to a good KEK: a blob
		// made independently with the public key (RSA-OAEP, SHA-1).
		cek := make([]byte, 32)
		_, _ = rand.Read(cek)
		blob, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, lk.PublicKey(), cek, nil)
		require.NoError(t, err)
		moved, err := p.RewrapKey(bg, &WrappedKey{KEKID: legacyID, Mechanism: RSAOAEPSHA1, Algorithm: AES256, Bytes: blob}, rsaKEK)
		require.NoError(t, err)
		assert.Equal(t, rsaKEK.ID, moved.KEKID)
	})
}

// plantInput tells the no-PIN child what to plant.
type plantInput struct {
	Module   string `json:"module"`
	Slot     uint   `json:"slot"`
	Label    string `json:"label"`
	ID       []byte `json:"id"`
	RSALabel string `json:"rsa_label"`
	RSAID    []byte `json:"rsa_id"`
	Modulus  []byte `json:"modulus"`
}

// Finding 7: with no login, plant public objects with a KEK's label and ID.
func TestPlantedObjects(t *testing.T) {
	a := openAdmin(t)
	aesKEK := makeKEK(t, a, uniqueName(t, "planted"), KEKAES256)
	rsaKEK := makeKEK(t, a, uniqueName(t, "planted-rsa"), KEKRSA2048)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	in, err := json.Marshal(plantInput{Module: tok.module, Slot: tok.slot, Label: aesKEK.Label, ID: aesKEK.ID,
		RSALabel: rsaKEK.Label, RSAID: rsaKEK.ID, Modulus: other.N.Bytes()})
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^TestPlantChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "HSMKEYS_PLANT="+string(in), "HSMKEYS_ATTACKER=plant")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "PLANTED 5", "%s", out)
	t.Cleanup(func() { removeForeign(t, aesKEK.Label, rsaKEK.Label) })

	// Lookup is unaffected (before: the objects merged into the KEKs,
	// exports were refused and RSA messages stopped decrypting).
	ks, err := a.KEKs(bg)
	require.NoError(t, err)
	for _, k := range ks {
		if k.Label == aesKEK.Label || k.Label == rsaKEK.Label {
			assert.Empty(t, k.Problems, "%v", k)
			assert.Equal(t, 1, k.Version, "%v", k)
		}
	}
	fs, err := a.ForeignObjects(bg)
	require.NoError(t, err)
	n := 0
	for _, f := range fs {
		if f.Label == aesKEK.Label || f.Label == rsaKEK.Label {
			n++
		}
	}
	assert.Equal(t, 5, n, "every planted object is listed as foreign: %+v", fs)

	p := openProvider(t)
	for _, kek := range []*KEK{aesKEK, rsaKEK} {
		byName, err := p.KEK(bg, kek.Label)
		require.NoError(t, err)
		assert.Equal(t, kek.ID, byName.ID, "the planted higher version is ignored")
		byID := mustKEK(t, p, kek)
		k, err := p.Generate(bg, AES256)
		require.NoError(t, err)
		blob, err := p.Export(bg, k, []*KEK{byID}, Options{})
		require.NoError(t, err, "export still works")
		_, err = p.Import(bg, blob, Options{})
		require.NoError(t, err, "and import")
		var msg bytes.Buffer
		require.NoError(t, p.Encrypt(bg, &msg, strings.NewReader("planted"), 7, []*KEK{byID}, Options{}))
		var pt bytes.Buffer
		require.NoError(t, p.Decrypt(bg, &pt, bytes.NewReader(msg.Bytes()), int64(msg.Len()), Options{}))
		assert.Equal(t, "planted", pt.String())
	}
	require.NoError(t, p.Close())

	// Destroy is safe: an id held only by foreign objects destroys nothing;
	// destroying a KEK destroys its own halves only (before: the obvious
	// 'kek destroy --id' of the flagged version took the private half).
	higher := bytes.Clone(aesKEK.ID)
	higher[3] = 9
	err = a.DestroyKEK(bg, higher)
	require.ErrorIs(t, err, ErrNotFound)
	assert.Contains(t, err.Error(), "foreign")
	require.NoError(t, a.DestroyKEK(bg, rsaKEK.ID))
	fs, err = a.ForeignObjects(bg)
	require.NoError(t, err)
	n = 0
	for _, f := range fs {
		if f.Label == rsaKEK.Label {
			n++
		}
	}
	assert.Equal(t, 3, n, "the planted objects are not hsmkeys's to destroy")
}

// removeForeign destroys, as the user, the public objects the child made.
func removeForeign(t *testing.T, labels ...string) {
	raw := openRaw(t)
	for _, label := range labels {
		for _, class := range []uint{pkcs11.CKO_SECRET_KEY, pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_PRIVATE_KEY} {
			tmpl := []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false)}
			if class != pkcs11.CKO_PRIVATE_KEY {
				tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, false))
			}
			require.NoError(t, raw.ctx.FindObjectsInit(raw.s, tmpl))
			hs, _, err := raw.ctx.FindObjects(raw.s, 100)
			require.NoError(t, err)
			require.NoError(t, raw.ctx.FindObjectsFinal(raw.s))
			for _, h := range hs {
				_ = raw.ctx.DestroyObject(raw.s, h)
			}
		}
	}
}

// TestPlantChild is the attacker with access to the token and no PIN,
// planting objects. It runs only as the child of TestPlantedObjects.
func TestPlantChild(t *testing.T) {
	spec := os.Getenv("HSMKEYS_PLANT")
	if spec == "" {
		t.Skip("runs only as the child process of TestPlantedObjects")
	}
	var in plantInput
	require.NoError(t, json.Unmarshal([]byte(spec), &in))
	ctx := pkcs11.New(in.Module)
	require.NotNil(t, ctx)
	require.NoError(t, ctx.Initialize())
	defer ctx.Finalize()
	s, err := ctx.OpenSession(in.Slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	defer ctx.CloseSession(s)
	higher := bytes.Clone(in.ID)
	higher[3] = 9 // a "version 9" of the same name
	aes := func(label string, id []byte) []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true), pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, make([]byte, 32)),
		}
	}
	planted := 0
	for _, tmpl := range [][]*pkcs11.Attribute{
		aes(in.Label, in.ID),  // same label and id as the aes kek
		aes(in.Label, higher), // a newer "version"
		aes(in.RSALabel, in.RSAID),
		{ // a public key with the rsa kek's id and another modulus
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, in.RSALabel), pkcs11.NewAttribute(pkcs11.CKA_ID, in.RSAID),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, in.Modulus), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
		},
	} {
		_, err := ctx.CreateObject(s, tmpl)
		require.NoError(t, err)
		planted++
	}
	// A public "private key" that can unwrap, with the rsa kek's id.
	_, _, err = ctx.GenerateKeyPair(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 1024)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, in.RSALabel), pkcs11.NewAttribute(pkcs11.CKA_ID, in.RSAID)})
	require.NoError(t, err)
	planted++
	fmt.Printf("PLANTED %d\n", planted)
}

// Issue 12: two processes creating versions of one KEK at the same time.
func TestCreateKEKConcurrentProcesses(t *testing.T) {
	a := openAdmin(t)
	name := uniqueName(t, "race")
	barrier := t.TempDir()
	const perChild = 3
	var cmds []*exec.Cmd
	var outs []*bytes.Buffer
	for i := 0; i < 2; i++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCreateKEKChild$", "-test.count=1")
		// Like the attacker children, these do not keep the module
		// initialised (HSMKEYS_ATTACKER): each Admin loads it afresh.
		spec, err := json.Marshal(raceSpec{Module: tok.module, Label: tok.label, UserPIN: tok.userPIN, SOPIN: tok.soPIN,
			Name: name, Barrier: barrier, N: perChild, Me: i})
		require.NoError(t, err)
		cmd.Env = append(os.Environ(), "HSMKEYS_ATTACKER=race", "HSMKEYS_RACE="+string(spec))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		cmds, outs = append(cmds, cmd), append(outs, &out)
	}
	// A child that fails never reaches the barrier: then end the other.
	done := make(chan error, len(cmds))
	for _, cmd := range cmds {
		go func() { done <- cmd.Wait() }()
	}
	var failed error
	for range cmds {
		if err := <-done; err != nil && failed == nil {
			failed = err
			for _, cmd := range cmds {
				_ = cmd.Process.Kill()
			}
		}
	}
	require.NoError(t, failed, "%s\n%s", outs[0], outs[1])
	ks, err := a.KEKs(bg)
	require.NoError(t, err)
	seen := map[int]bool{}
	for _, k := range ks {
		if k.Label != name {
			continue
		}
		t.Cleanup(func() { _ = a.DestroyKEK(bg, k.ID) })
		assert.False(t, seen[k.Version], "version %d made twice", k.Version)
		seen[k.Version] = true
	}
	// A creation that failed for SoftHSM's own reasons (the child tries
	// again) may have left its KEK when removing it failed too, and said
	// so: more versions, never a version twice.
	assert.GreaterOrEqual(t, len(seen), 2*perChild)
}

type raceSpec struct {
	Module, Label, UserPIN, SOPIN, Name, Barrier string
	N, Me                                        int
}

// TestCreateKEKChild creates versions of a KEK; the first creation of each
// child waits, after choosing its version, until both children have chosen,
// so that both choose the same one.
func TestCreateKEKChild(t *testing.T) {
	env := os.Getenv("HSMKEYS_RACE")
	if env == "" {
		t.Skip("runs only as the child process of TestCreateKEKConcurrentProcesses")
	}
	var rs raceSpec
	require.NoError(t, json.Unmarshal([]byte(env), &rs))
	first := true
	testHookVersionChosen = func() {
		if !first {
			return
		}
		first = false
		require.NoError(t, os.WriteFile(filepath.Join(rs.Barrier, fmt.Sprintf("ready-%d", rs.Me)), nil, 0o600))
		// Wait for the event "the other one chose too": its file.
		for {
			m, _ := filepath.Glob(filepath.Join(rs.Barrier, "ready-*"))
			if len(m) >= 2 {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	cfg := Config{Module: rs.Module, TokenLabel: rs.Label, PIN: PINValue([]byte(rs.UserPIN))}
	for i, tries := 0, 0; i < rs.N; tries++ {
		require.Less(t, tries, 20, "softhsm keeps failing")
		a, err := OpenAdmin(bg, cfg, PINValue([]byte(rs.SOPIN)))
		var k *KEK
		if err == nil {
			k, err = a.CreateKEKWith(bg, rs.Name, KEKAES128, allowExposed)
			require.NoError(t, a.Close())
		}
		var notFound *TokenNotFoundError
		if code, _ := p11.CodeOf(err); code == pkcs11.CKR_GENERAL_ERROR || errors.As(err, &notFound) {
			// SoftHSM's file store under two processes (SoftHSMv2 #757,
			// TOKEN-FACTS) fails some calls (CKR_GENERAL_ERROR, the token
			// not found), and then keeps failing until
			// the module is loaded again: a failed creation removes what it
			// made or says what it left; try again with a fresh module.
			t.Logf("transient: %v", err)
			continue
		}
		require.NoError(t, err)
		t.Logf("made version %d id %s", k.Version, hex.EncodeToString(k.ID))
		i++
	}
}
