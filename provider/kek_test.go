package provider

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// openAdmin opens KEK administration on the test token. No provider of this
// process may be open while it logs in as the SO.
func openAdmin(t testing.TB) *Admin {
	t.Helper()
	needToken(t)
	a, err := OpenAdmin(bg, baseConfig(), PINValue([]byte(tok.soPIN)))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, a.Close()) })
	return a
}

// makeKEK creates a KEK with a name unique to the test.
func makeKEK(t testing.TB, a *Admin, name string, typ KEKType) *KEK {
	t.Helper()
	// AES KEKs on SoftHSM only by explicit choice: they are in clear at
	// rest (TestAESKEKExposedAtRest).
	k, err := a.CreateKEKWith(bg, name, typ, KEKOptions{AllowExposedAtRest: !typ.IsRSA()})
	require.NoError(t, err)
	require.Empty(t, k.Problems)
	t.Cleanup(func() {
		if a.closed {
			return
		}
		_ = a.DestroyKEK(bg, k.ID)
	})
	return k
}

func uniqueName(t testing.TB, base string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return base + "-" + hex.EncodeToString(b[:])
}

func TestKEKKindsRoundTrip(t *testing.T) {
	a := openAdmin(t)
	types := []KEKType{KEKAES128, KEKAES256, KEKRSA2048, KEKRSA3072}
	if !testing.Short() {
		types = append(types, KEKRSA4096)
	}
	keks := map[KEKType]*KEK{}
	for _, typ := range types {
		keks[typ] = makeKEK(t, a, uniqueName(t, typ.String()), typ)
		k := keks[typ]
		assert.Equal(t, typ, k.Type)
		assert.Equal(t, 1, k.Version)
		assert.True(t, k.Trusted)
		assert.True(t, k.CanUnwrap())
		assert.Equal(t, typ.IsRSA(), k.PublicKey() != nil)
	}
	p := openProvider(t)
	raw := openRaw(t)
	for _, typ := range types {
		t.Run(typ.String(), func(t *testing.T) {
			kek, err := p.KEK(bg, keks[typ].Label)
			require.NoError(t, err)
			// The objects are what the policy says, read independently.
			for _, obj := range []uint{uint(kek.obj.Wrap), uint(kek.obj.Unwrap)} {
				got := raw.bools(t, obj, pkcs11.CKA_TOKEN, pkcs11.CKA_MODIFIABLE)
				assert.True(t, got[pkcs11.CKA_TOKEN])
				assert.False(t, got[pkcs11.CKA_MODIFIABLE])
			}
			got := raw.bools(t, uint(kek.obj.Wrap), pkcs11.CKA_TRUSTED, pkcs11.CKA_WRAP, pkcs11.CKA_ENCRYPT)
			assert.Equal(t, map[uint]bool{pkcs11.CKA_TRUSTED: true, pkcs11.CKA_WRAP: true, pkcs11.CKA_ENCRYPT: false}, got)
			got = raw.bools(t, uint(kek.obj.Unwrap), pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_UNWRAP, pkcs11.CKA_DECRYPT, pkcs11.CKA_SIGN, pkcs11.CKA_DERIVE)
			assert.Equal(t, map[uint]bool{pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_UNWRAP: true,
				pkcs11.CKA_DECRYPT: false, pkcs11.CKA_SIGN: false, pkcs11.CKA_DERIVE: false}, got)
			if typ.IsRSA() {
				assert.True(t, raw.bools(t, uint(kek.obj.Unwrap), pkcs11.CKA_PRIVATE)[pkcs11.CKA_PRIVATE], "the private half is a private object")
			}

			for _, alg := range []Algorithm{AES128, AES256} {
				k, err := p.Generate(bg, alg)
				require.NoError(t, err)
				w, err := p.Wrap(bg, k, kek)
				require.NoError(t, err)
				assert.Equal(t, kek.ID, w.KEKID)
				assert.Equal(t, alg, w.Algorithm)
				if typ.IsRSA() {
					assert.Equal(t, RSAOAEPSHA1, w.Mechanism, "SoftHSM 2.6.1 does OAEP with SHA-1 only")
				} else {
					assert.Equal(t, AESKeyWrap, w.Mechanism)
				}
				back, err := p.Unwrap(bg, w)
				require.NoError(t, err)
				// The same key: what one seals the other opens.
				sealed, err := k.Seal(bg, []byte("round trip"), nil)
				require.NoError(t, err)
				pt, err := back.Open(bg, sealed, nil)
				require.NoError(t, err)
				assert.Equal(t, "round trip", string(pt))
				// The unwrapped key is a sensitive session key, exportable
				// only under trusted keys.
				attrs := raw.bools(t, uint(back.obj), pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE,
					pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_WRAP_WITH_TRUSTED, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE, pkcs11.CKA_COPYABLE)
				assert.Equal(t, map[uint]bool{pkcs11.CKA_TOKEN: false, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true,
					pkcs11.CKA_EXTRACTABLE: true, pkcs11.CKA_WRAP_WITH_TRUSTED: true, pkcs11.CKA_WRAP: false,
					pkcs11.CKA_UNWRAP: false, pkcs11.CKA_DERIVE: false, pkcs11.CKA_COPYABLE: false}, attrs)
				_, err = raw.ctx.GetAttributeValue(raw.s, pkcs11.ObjectHandle(back.obj), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
				require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE))
			}
		})
	}
}

func TestKEKCannotEncryptOrDecrypt(t *testing.T) {
	a := openAdmin(t)
	aesKEK := makeKEK(t, a, uniqueName(t, "noenc"), KEKAES256)
	rsaKEK := makeKEK(t, a, uniqueName(t, "noenc-rsa"), KEKRSA2048)
	p := openProvider(t)
	raw := openRaw(t)
	for _, kek := range []*KEK{aesKEK, rsaKEK} {
		kek, err := p.KEKByID(bg, kek.ID)
		require.NoError(t, err)
		for _, obj := range []pkcs11.ObjectHandle{pkcs11.ObjectHandle(kek.obj.Wrap), pkcs11.ObjectHandle(kek.obj.Unwrap)} {
			mech := pkcs11.CKM_AES_ECB
			if kek.Type.IsRSA() {
				mech = pkcs11.CKM_RSA_PKCS
			}
			m := []*pkcs11.Mechanism{pkcs11.NewMechanism(uint(mech), nil)}
			if err := raw.ctx.EncryptInit(raw.s, m, obj); err == nil {
				_, _ = raw.ctx.Encrypt(raw.s, make([]byte, 16))
				t.Errorf("%v object %d can encrypt", kek, obj)
			}
			if err := raw.ctx.DecryptInit(raw.s, m, obj); err == nil {
				_, _ = raw.ctx.Decrypt(raw.s, make([]byte, 16))
				t.Errorf("%v object %d can decrypt", kek, obj)
			}
			// Nor can anyone change that: KEKs are not modifiable.
			err := raw.ctx.SetAttributeValue(raw.s, obj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)})
			require.Error(t, err)
		}
	}
}

func TestKEKVersionsAndRewrap(t *testing.T) {
	a := openAdmin(t)
	name := uniqueName(t, "rotating")
	v1 := makeKEK(t, a, name, KEKAES256)
	v2 := makeKEK(t, a, name, KEKAES256)
	other := makeKEK(t, a, uniqueName(t, "site-b"), KEKRSA2048)
	assert.Equal(t, 1, v1.Version)
	assert.Equal(t, 2, v2.Version)
	assert.NotEqual(t, v1.ID, v2.ID)

	p := openProvider(t)
	newest, err := p.KEK(bg, name)
	require.NoError(t, err)
	assert.Equal(t, v2.ID, newest.ID, "export uses the newest version")

	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	old1, err := p.KEKByID(bg, v1.ID)
	require.NoError(t, err)
	oldBlob, err := p.Wrap(bg, k, old1)
	require.NoError(t, err)

	// Rewrap to the new version and to another KEK kind: the key stays the same.
	newBlob, err := p.RewrapKey(bg, oldBlob, newest)
	require.NoError(t, err)
	assert.Equal(t, v2.ID, newBlob.KEKID)
	otherKEK, err := p.KEKByID(bg, other.ID)
	require.NoError(t, err)
	rsaBlob, err := p.RewrapKey(bg, newBlob, otherKEK)
	require.NoError(t, err)
	sealed, err := k.Seal(bg, []byte("same key"), nil)
	require.NoError(t, err)
	for _, w := range []*WrappedKey{oldBlob, newBlob, rsaBlob} {
		back, err := p.Unwrap(bg, w)
		require.NoError(t, err, "the old blob still imports until the old version is destroyed")
		pt, err := back.Open(bg, sealed, nil)
		require.NoError(t, err)
		assert.Equal(t, "same key", string(pt))
	}
	before, err := p.CountSessionKeys(bg)
	require.NoError(t, err)
	_, err = p.RewrapKey(bg, oldBlob, newest)
	require.NoError(t, err)
	after, err := p.CountSessionKeys(bg)
	require.NoError(t, err)
	assert.Equal(t, before, after, "rewrap leaves no session key behind")

	// Destroy v1 (administration needs the providers closed).
	require.NoError(t, p.Close())
	require.NoError(t, a.DestroyKEK(bg, v1.ID))
	p = openProvider(t)
	_, err = p.Unwrap(bg, oldBlob)
	require.ErrorIs(t, err, ErrNotFound)
	assert.Contains(t, err.Error(), hex.EncodeToString(v1.ID), "the error names the missing kek")
	_, err = p.Unwrap(bg, newBlob)
	require.NoError(t, err)
}

func TestWrappedKeyInvalid(t *testing.T) {
	a := openAdmin(t)
	kekA := makeKEK(t, a, uniqueName(t, "flip-a"), KEKAES256)
	kekB := makeKEK(t, a, uniqueName(t, "flip-b"), KEKAES256)
	kekR := makeKEK(t, a, uniqueName(t, "flip-r"), KEKRSA2048)
	p := openProvider(t)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	for _, kek := range []*KEK{kekA, kekR} {
		kek, err := p.KEKByID(bg, kek.ID)
		require.NoError(t, err)
		w, err := p.Wrap(bg, k, kek)
		require.NoError(t, err)
		for _, bit := range []int{0, 7, 8 * len(w.Bytes) / 2, 8*len(w.Bytes) - 1} {
			bad := *w
			bad.Bytes = bytes.Clone(w.Bytes)
			bad.Bytes[bit/8] ^= 1 << (bit % 8)
			_, err := p.Unwrap(bg, &bad)
			require.ErrorIs(t, err, ErrWrappedKeyInvalid, "%v bit %d", kek, bit)
		}
	}
	w, err := p.Wrap(bg, k, mustKEK(t, p, kekA))
	require.NoError(t, err)
	wrong := *w
	wrong.KEKID = kekB.ID
	_, err = p.Unwrap(bg, &wrong)
	require.ErrorIs(t, err, ErrWrappedKeyInvalid, "a blob presented under another kek")
	for name, bad := range map[string]*WrappedKey{
		"nil":       nil,
		"empty":     {KEKID: kekA.ID, Mechanism: AESKeyWrap, Algorithm: AES256},
		"oversized": {KEKID: kekA.ID, Mechanism: AESKeyWrap, Algorithm: AES256, Bytes: make([]byte, 4096)},
		"short":     {KEKID: kekA.ID, Mechanism: AESKeyWrap, Algorithm: AES256, Bytes: w.Bytes[:24]},
		"wrong alg": {KEKID: kekA.ID, Mechanism: AESKeyWrap, Algorithm: AES128, Bytes: w.Bytes},
		"bad alg":   {KEKID: kekA.ID, Mechanism: AESKeyWrap, Algorithm: Algorithm(7), Bytes: w.Bytes},
		"bad mech":  {KEKID: kekA.ID, Mechanism: WrapMechanism(99), Algorithm: AES256, Bytes: w.Bytes},
		"rsa mech":  {KEKID: kekA.ID, Mechanism: RSAOAEPSHA1, Algorithm: AES256, Bytes: w.Bytes},
		"no kek":    {KEKID: []byte("missing"), Mechanism: AESKeyWrap, Algorithm: AES256, Bytes: w.Bytes},
		"empty id":  {Mechanism: AESKeyWrap, Algorithm: AES256, Bytes: w.Bytes},
	} {
		_, err := p.Unwrap(bg, bad)
		require.Error(t, err, name)
		assert.NotContains(t, err.Error(), "panic", name)
	}
	_, err = p.Unwrap(bg, &WrappedKey{KEKID: []byte("missing"), Mechanism: AESKeyWrap, Algorithm: AES256, Bytes: w.Bytes})
	require.ErrorIs(t, err, ErrNotFound)
	_, err = p.Wrap(bg, k, nil)
	require.ErrorIs(t, err, ErrInvalidInput)
	_, err = p.KEK(bg, "no-such-kek")
	require.ErrorIs(t, err, ErrNotFound)
}

func mustKEK(t testing.TB, p *Provider, k *KEK) *KEK {
	t.Helper()
	kek, err := p.KEKByID(bg, k.ID)
	require.NoError(t, err)
	return kek
}

func TestExportPolicyNone(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "none"), KEKAES256)
	p := openProvider(t, func(c *Config) { c.ExportPolicy = ExportNone })
	assert.Empty(t, p.Enforcement())
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	_, err = p.Wrap(bg, k, mustKEK(t, p, kek))
	require.ErrorIs(t, err, ErrPolicy)
	// And the token agrees, whatever the provider would do.
	raw := openRaw(t)
	_, err = raw.ctx.WrapKey(raw.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)},
		pkcs11.ObjectHandle(mustKEK(t, p, kek).obj.Wrap), pkcs11.ObjectHandle(k.obj))
	require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_KEY_UNEXTRACTABLE))
}

func TestEnforcementChecksAtOpen(t *testing.T) {
	p := openProvider(t)
	checks := p.Enforcement()
	require.Len(t, checks, 6)
	for _, c := range checks {
		assert.True(t, c.OK, "%s: %s", c.Name, c.Detail)
		assert.False(t, c.Unchecked, "%s: %s", c.Name, c.Detail)
	}
	assert.Contains(t, checks[0].Detail, "CKR_KEY_NOT_WRAPPABLE")
	// The refusals that count are those whose premise held on SoftHSM
	// 2.6.1; the rest say they were not checked.
	assert.Contains(t, checks[3].Detail, "wrap with CKM_AES_CBC: CKR_MECHANISM_INVALID")
	assert.Contains(t, checks[3].Detail, "not checked: unwrap with CKM_AES_CBC")
	assert.Contains(t, checks[4].Detail, "wrap with CKM_RSA_PKCS: CKR_MECHANISM_INVALID, unwrap with CKM_RSA_PKCS: CKR_MECHANISM_INVALID")
	for _, what := range []string{"CKA_DERIVE", "CKA_WRAP", "CKA_UNWRAP", "CKA_SIGN", "CKA_VERIFY", "CKA_ENCRYPT", "C_CopyObject"} {
		assert.Contains(t, checks[5].Detail, what)
	}
	raw := openRaw(t)
	assert.Equal(t, 0, raw.sessionKeys(t)-p.keyCount(), "the checks leave no objects")
}

func (p *Provider) keyCount() int {
	p.keysMu.Lock()
	defer p.keysMu.Unlock()
	return len(p.keys)
}

func TestForeignKEKRefused(t *testing.T) {
	needToken(t)
	raw := openRaw(t)
	label := uniqueName(t, "foreign")
	// A wrapping key another tool made: it can also decrypt.
	h, err := raw.ctx.GenerateKey(raw.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
	})
	require.NoError(t, err)
	defer raw.ctx.DestroyObject(raw.s, h)
	// An untrusted object is not a KEK, whatever its attributes: anyone
	// could have made it. It is listed apart, as a foreign object.
	p := openProvider(t)
	_, err = p.KEK(bg, label)
	require.ErrorIs(t, err, ErrNotFound)
	assert.Contains(t, err.Error(), "foreign")
	ks, err := p.KEKs(bg)
	require.NoError(t, err)
	for _, k := range ks {
		assert.NotEqual(t, label, k.Label, "not listed as a kek")
	}
	fs, err := p.ForeignObjects(bg)
	require.NoError(t, err)
	var found *ForeignObject
	for i := range fs {
		if fs[i].Label == label {
			found = &fs[i]
		}
	}
	require.NotNil(t, found, "listed as a foreign object")
	assert.Equal(t, "secret key", found.Class)
	assert.Contains(t, found.Why, "CKA_TRUSTED")
}

func TestImportKEKFromFile(t *testing.T) {
	a := openAdmin(t)
	dir := t.TempDir()
	// The test chooses the KEK value, so that it can check the wrapping
	// independently (RFC 3394) with Go's AES.
	kekValue := make([]byte, 32)
	_, _ = rand.Read(kekValue)
	loose := filepath.Join(dir, "loose")
	require.NoError(t, os.WriteFile(loose, kekValue, 0o644))
	_, err := a.ImportKEKWith(bg, "imported", loose, allowExposed)
	require.ErrorIs(t, err, ErrSecretFile)
	assert.Contains(t, err.Error(), "group or others")
	for name, content := range map[string][]byte{
		"short":   kekValue[:15],
		"odd hex": []byte(strings.Repeat("ab", 20)),
		"not hex": []byte(strings.Repeat("zz", 32)),
		"empty":   nil,
	} {
		f := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		require.NoError(t, os.WriteFile(f, content, 0o600))
		_, err := a.ImportKEKWith(bg, "imported", f, allowExposed)
		require.ErrorIs(t, err, ErrSecretFile, name)
	}
	_, err = a.ImportKEKWith(bg, "imported", filepath.Join(dir, "missing"), allowExposed)
	require.ErrorIs(t, err, ErrSecretFile)

	var keks []*KEK
	for i, content := range [][]byte{kekValue, []byte(hex.EncodeToString(kekValue) + "\n")} {
		f := filepath.Join(dir, fmt.Sprintf("kek%d", i))
		require.NoError(t, os.WriteFile(f, content, 0o600))
		k, err := a.ImportKEKWith(bg, uniqueName(t, "imported"), f, allowExposed)
		require.NoError(t, err)
		t.Cleanup(func() { _ = a.DestroyKEK(bg, k.ID) })
		assert.Equal(t, KEKAES256, k.Type)
		assert.Empty(t, k.Problems, "same attributes as a generated aes kek")
		keks = append(keks, k)
	}

	p := openProvider(t)
	for _, kek := range keks {
		kek := mustKEK(t, p, kek)
		k, err := p.Generate(bg, AES256)
		require.NoError(t, err)
		w, err := p.Wrap(bg, k, kek)
		require.NoError(t, err)
		// Independent check: RFC 3394 unwrap with the test's KEK value, then
		// the recovered key opens what the token sealed.
		cek := aesKeyUnwrap(t, kekValue, w.Bytes)
		sealed, err := k.Seal(bg, []byte("interop"), []byte("ad"))
		require.NoError(t, err)
		gcm, err := cipher.NewGCM(must(aes.NewCipher(cek)))
		require.NoError(t, err)
		pt, err := gcm.Open(nil, sealed[:12], sealed[12:], []byte("ad"))
		require.NoError(t, err)
		assert.Equal(t, "interop", string(pt))
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// aesKeyUnwrap is RFC 3394 §2.2.2, for the interoperability check only.
func aesKeyUnwrap(t testing.TB, kek, wrapped []byte) []byte {
	t.Helper()
	require.Zero(t, len(wrapped)%8)
	n := len(wrapped)/8 - 1
	b := must(aes.NewCipher(kek))
	a := bytes.Clone(wrapped[:8])
	r := make([][]byte, n)
	for i := range r {
		r[i] = bytes.Clone(wrapped[8*(i+1) : 8*(i+2)])
	}
	buf := make([]byte, 16)
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			tt := uint64(n*j + i)
			copy(buf, a)
			for k := 0; k < 8; k++ {
				buf[7-k] ^= byte(tt >> (8 * k))
			}
			copy(buf[8:], r[i-1])
			b.Decrypt(buf, buf)
			copy(a, buf[:8])
			copy(r[i-1], buf[8:])
		}
	}
	require.Equal(t, bytes.Repeat([]byte{0xA6}, 8), a, "RFC 3394 integrity check")
	return bytes.Join(r, nil)
}

func TestImportPublicKEK(t *testing.T) {
	a := openAdmin(t)
	// Another party's key pair: the test holds the private half.
	theirs, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	kek, err := a.ImportPublicKEK(bg, uniqueName(t, "partner"), &theirs.PublicKey)
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.DestroyKEK(bg, kek.ID) })
	assert.Equal(t, KEKRSAPublic, kek.Type)
	assert.Empty(t, kek.Problems)
	assert.False(t, kek.CanUnwrap())
	_, err = a.ImportPublicKEK(bg, "weak", &rsa.PublicKey{N: new(big.Int).Rsh(theirs.N, 1100), E: 65537})
	require.ErrorIs(t, err, ErrInvalidInput)

	p := openProvider(t)
	kek = mustKEK(t, p, kek)
	k, err := p.Generate(bg, AES128)
	require.NoError(t, err)
	w, err := p.Wrap(bg, k, kek)
	require.NoError(t, err)
	require.Equal(t, RSAOAEPSHA1, w.Mechanism)
	// The other party opens it with standard RSA-OAEP.
	cek, err := rsa.DecryptOAEP(sha1.New(), nil, theirs, w.Bytes, nil)
	require.NoError(t, err)
	require.Len(t, cek, 16)
	sealed, err := k.Seal(bg, []byte("to the partner"), nil)
	require.NoError(t, err)
	gcm, err := cipher.NewGCM(must(aes.NewCipher(cek)))
	require.NoError(t, err)
	pt, err := gcm.Open(nil, sealed[:12], sealed[12:], nil)
	require.NoError(t, err)
	assert.Equal(t, "to the partner", string(pt))
	// We cannot unwrap what we sent: only they hold the private key.
	_, err = p.Unwrap(bg, w)
	require.ErrorIs(t, err, ErrNotFound)
}

func TestAdminPINErrors(t *testing.T) {
	needToken(t)
	a, err := OpenAdmin(bg, baseConfig(), PINValue([]byte("wrong-so-pin")))
	require.NoError(t, err)
	defer a.Close()
	_, err = a.CreateKEKWith(bg, uniqueName(t, "x"), KEKAES256, allowExposed)
	var pe *PINError
	require.ErrorAs(t, err, &pe)
	assert.True(t, pe.SO)
	assert.NotContains(t, err.Error(), "wrong-so-pin")
	_, err = a.CreateKEKWith(bg, uniqueName(t, "x"), KEKAES256, allowExposed)
	require.ErrorAs(t, err, &pe, "the refused pin is not tried again")

	// The SO cannot log in while a provider holds the user login.
	openProvider(t)
	a2 := openAdmin(t)
	_, err = a2.CreateKEKWith(bg, uniqueName(t, "x"), KEKAES256, allowExposed)
	require.ErrorIs(t, err, ErrLoginHeld)
	assert.Contains(t, err.Error(), "close providers")
}

// attackerResult is what the child process reports.
type attackerResult struct {
	Steps map[string]string `json:"steps"` // step -> "ok" or the CKR error
}

// TestAttackers plays the attackers of docs/security.md against the token.
// The user-PIN attacker in this process holds an independent handle with
// the user login (login is per application); the attacker with no PIN must
// be another process, since this one is logged in.
func TestAttackers(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "attacked"), KEKAES256)
	rsaKEK := makeKEK(t, a, uniqueName(t, "attacked-rsa"), KEKRSA2048)
	p := openProvider(t)
	kek, rsaKEK = mustKEK(t, p, kek), mustKEK(t, p, rsaKEK)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	blob, err := p.Wrap(bg, k, kek)
	require.NoError(t, err)
	rsaBlob, err := p.Wrap(bg, k, rsaKEK)
	require.NoError(t, err)

	t.Run("user pin", func(t *testing.T) {
		raw := openRaw(t)
		key := pkcs11.ObjectHandle(k.obj)
		kw := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}
		// Read the value.
		_, err := raw.ctx.GetAttributeValue(raw.s, key, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_SENSITIVE))
		// Wrap under a key of its own.
		own, err := raw.ctx.GenerateKey(raw.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true), pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true),
		})
		if err == nil {
			defer raw.ctx.DestroyObject(raw.s, own)
			_, err = raw.ctx.WrapKey(raw.s, kw, own, key)
			require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_KEY_NOT_WRAPPABLE), "wrap under an attacker's key")
		} else {
			require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_ATTRIBUTE_READ_ONLY), "the user cannot make a trusted key")
			own, err = raw.ctx.GenerateKey(raw.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			})
			require.NoError(t, err)
			defer raw.ctx.DestroyObject(raw.s, own)
			_, err = raw.ctx.WrapKey(raw.s, kw, own, key)
			require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_KEY_NOT_WRAPPABLE), "wrap under an attacker's key")
		}
		// Wrap under an untrusted RSA public key.
		priv, err := rsa.GenerateKey(rand.Reader, 2048)
		require.NoError(t, err)
		pub, err := raw.ctx.CreateObject(raw.s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, priv.N.Bytes()), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
		})
		require.NoError(t, err)
		defer raw.ctx.DestroyObject(raw.s, pub)
		oaep := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.NewOAEPParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKZ_DATA_SPECIFIED, nil))}
		_, err = raw.ctx.WrapKey(raw.s, oaep, pub, key)
		require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_KEY_NOT_WRAPPABLE), "wrap under an untrusted rsa key")
		// Clear the one-way attributes.
		for _, attr := range []uint{pkcs11.CKA_SENSITIVE, pkcs11.CKA_WRAP_WITH_TRUSTED} {
			err := raw.ctx.SetAttributeValue(raw.s, key, []*pkcs11.Attribute{pkcs11.NewAttribute(attr, false)})
			require.Error(t, err, "clear 0x%x", attr)
		}
		// Copy it into a weaker key.
		for _, attr := range []uint{pkcs11.CKA_SENSITIVE, pkcs11.CKA_WRAP_WITH_TRUSTED} {
			h, err := raw.ctx.CopyObject(raw.s, key, []*pkcs11.Attribute{pkcs11.NewAttribute(attr, false)})
			if err == nil {
				_ = raw.ctx.DestroyObject(raw.s, h)
			}
			require.Error(t, err, "copy with 0x%x false", attr)
		}
		// Unwrap an exported blob as a readable key or a token object.
		for name, weak := range map[string][]*pkcs11.Attribute{
			"non-sensitive": {pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true)},
			"token object":  {pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)},
			"not trusted":   {pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, false)},
		} {
			tmpl := append([]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			}, weak...)
			for _, c := range []struct {
				kek  *KEK
				mech []*pkcs11.Mechanism
				blob []byte
			}{{kek, kw, blob.Bytes}, {rsaKEK, oaep, rsaBlob.Bytes}} {
				h, err := raw.ctx.UnwrapKey(raw.s, c.mech, pkcs11.ObjectHandle(c.kek.obj.Unwrap), c.blob, tmpl)
				if err == nil {
					_ = raw.ctx.DestroyObject(raw.s, h)
				}
				require.ErrorIs(t, err, pkcs11.Error(pkcs11.CKR_TEMPLATE_INCONSISTENT), "unwrap as %s under %v", name, c.kek)
			}
		}
	})

	t.Run("no pin", func(t *testing.T) {
		in, err := json.Marshal(attackerInput{
			Conf: os.Getenv("SOFTHSM2_CONF"), Module: tok.module, Slot: tok.slot,
			KEKID: kek.ID, Blob: blob.Bytes, RSAKEKID: rsaKEK.ID, RSABlob: rsaBlob.Bytes,
		})
		require.NoError(t, err)
		cmd := exec.Command(os.Args[0], "-test.run=^TestAttackerChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "HSMKEYS_ATTACKER="+string(in))
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		i := bytes.Index(out, []byte("RESULT "))
		require.GreaterOrEqual(t, i, 0, "%s", out)
		var res attackerResult
		require.NoError(t, json.NewDecoder(bytes.NewReader(out[i+7:])).Decode(&res))
		assert.Equal(t, map[string]string{
			"login state":                       "CKS_RW_PUBLIC_SESSION",
			"unwrap non-sensitive (aes)":        "CKR_USER_NOT_LOGGED_IN", // a private key: no login, no object
			"unwrap non-sensitive public (aes)": "CKR_TEMPLATE_INCONSISTENT",
			"unwrap as template asks (aes)":     "CKR_USER_NOT_LOGGED_IN",
			"find rsa private half":             "not found",
			"set CKA_DECRYPT on the kek":        "CKR_ACTION_PROHIBITED",
			// CKA_ALLOWED_MECHANISMS: key wrap only (before: "ok").
			"cbc wrap with a chosen iv under the kek": "CKR_MECHANISM_INVALID",
			// What A1 can do, and what a blob therefore does not prove.
			"key wrap of a key it chose under the kek": "ok",
			"copy the kek": "CKR_ACTION_PROHIBITED",
		}, res.Steps)
	})
}

type attackerInput struct {
	Conf     string `json:"conf"`
	Module   string `json:"module"`
	Slot     uint   `json:"slot"`
	KEKID    []byte `json:"kek_id"`
	Blob     []byte `json:"blob"`
	RSAKEKID []byte `json:"rsa_kek_id"`
	RSABlob  []byte `json:"rsa_blob"`
}

// TestAttackerChild is the attacker with access to the token and no PIN.
// It runs only as the child of TestAttackers.
func TestAttackerChild(t *testing.T) {
	spec := os.Getenv("HSMKEYS_ATTACKER")
	if spec == "" {
		t.Skip("runs only as the child process of TestAttackers")
	}
	var in attackerInput
	require.NoError(t, json.Unmarshal([]byte(spec), &in))
	ctx := pkcs11.New(in.Module)
	require.NotNil(t, ctx)
	require.NoError(t, ctx.Initialize())
	defer ctx.Finalize()
	s, err := ctx.OpenSession(in.Slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	res := attackerResult{Steps: map[string]string{}}
	outcome := func(err error) string {
		if err == nil {
			return "ok"
		}
		if e, ok := err.(pkcs11.Error); ok {
			if e == pkcs11.CKR_ACTION_PROHIBITED {
				return "CKR_ACTION_PROHIBITED" // miekg v1.1.2 has no name for 0x1B
			}
			name := e.Error()
			return name[strings.LastIndex(name, " ")+1:]
		}
		return err.Error()
	}
	info, err := ctx.GetSessionInfo(s)
	require.NoError(t, err)
	res.Steps["login state"] = map[uint]string{pkcs11.CKS_RW_PUBLIC_SESSION: "CKS_RW_PUBLIC_SESSION", pkcs11.CKS_RW_USER_FUNCTIONS: "CKS_RW_USER_FUNCTIONS"}[info.State]

	find := func(class uint, id []byte) (pkcs11.ObjectHandle, bool) {
		require.NoError(t, ctx.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_ID, id)}))
		hs, _, err := ctx.FindObjects(s, 1)
		require.NoError(t, err)
		require.NoError(t, ctx.FindObjectsFinal(s))
		if len(hs) == 0 {
			return 0, false
		}
		return hs[0], true
	}
	kek, ok := find(pkcs11.CKO_SECRET_KEY, in.KEKID)
	require.True(t, ok, "the trusted aes kek is a public object")
	kw := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}
	base := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES)}
	try := func(name string, tmpl []*pkcs11.Attribute) {
		h, err := ctx.UnwrapKey(s, kw, kek, in.Blob, append(append([]*pkcs11.Attribute{}, base...), tmpl...))
		if err == nil {
			_ = ctx.DestroyObject(s, h)
		}
		res.Steps[name] = outcome(err)
	}
	try("unwrap non-sensitive (aes)", []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true)})
	try("unwrap non-sensitive public (aes)", []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)})
	try("unwrap as template asks (aes)", []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false), pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false), pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, false),
	})
	if _, ok := find(pkcs11.CKO_PRIVATE_KEY, in.RSAKEKID); ok {
		res.Steps["find rsa private half"] = "found"
	} else {
		res.Steps["find rsa private half"] = "not found"
	}
	// Finding 4: encrypt chosen data under the public kek with a chosen IV,
	// by wrapping a key of our own with CKM_AES_CBC (before: CKR_OK).
	own, err := ctx.CreateObject(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true), pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, bytes.Repeat([]byte("chosen!!"), 4)),
	})
	require.NoError(t, err)
	_, err = ctx.WrapKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC, bytes.Repeat([]byte{7}, 16))}, kek, own)
	res.Steps["cbc wrap with a chosen iv under the kek"] = outcome(err)
	_, err = ctx.WrapKey(s, kw, kek, own)
	res.Steps["key wrap of a key it chose under the kek"] = outcome(err)
	res.Steps["set CKA_DECRYPT on the kek"] = outcome(ctx.SetAttributeValue(s, kek, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)}))
	h, err := ctx.CopyObject(s, kek, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)})
	if err == nil {
		_ = ctx.DestroyObject(s, h)
	}
	res.Steps["copy the kek"] = outcome(err)
	_ = ctx.CloseSession(s)
	out, err := json.Marshal(res)
	require.NoError(t, err)
	fmt.Printf("RESULT %s\n", out)
}

func TestDoctor(t *testing.T) {
	a := openAdmin(t)
	good := makeKEK(t, a, uniqueName(t, "doctor-good"), KEKAES128)
	raw := openRaw(t)
	label := uniqueName(t, "doctor-bad")
	h, err := raw.ctx.GenerateKey(raw.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 16), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_WRAP, true), pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
	})
	require.NoError(t, err)
	defer raw.ctx.DestroyObject(raw.s, h)
	p := openProvider(t)
	checks, err := p.Doctor(bg)
	require.NoError(t, err)
	byName := map[string]EnforcementCheck{}
	for _, c := range checks {
		byName[c.Name] = c
	}
	for _, name := range []string{"mechanism CKM_AES_GCM", "mechanism CKM_AES_KEY_WRAP", "trusted-only wrapping", "wrap template", "unwrap template",
		"aes kek mechanisms", "rsa kek mechanisms", "session key attributes", "session key generate", "session key seal and open", "session key tamper", "session key destroy", "export policy none", "export policy trusted", "kek " + good.Label + " v1"} {
		require.Contains(t, byName, name)
		assert.True(t, byName[name].OK, "%s: %s", name, byName[name].Detail)
		assert.False(t, byName[name].Unchecked, "%s: %s", name, byName[name].Detail)
	}
	// SoftHSM: the profile and an AES KEK are stated plainly.
	assert.True(t, byName["token profile"].Warning)
	assert.Contains(t, byName["token profile"].Detail, "stored in clear at rest")
	assert.True(t, byName["kek "+good.Label+" v1"].Warning)
	assert.Contains(t, byName["kek "+good.Label+" v1"].Detail, "EXPOSED AT REST")
	// An untrusted object with a label is not a KEK: a warning, apart.
	assert.NotContains(t, byName, "kek "+label+" v0")
	bad := byName["foreign object "+label]
	assert.True(t, bad.OK)
	assert.True(t, bad.Warning)
	assert.Contains(t, bad.Detail, "not CKA_TRUSTED")
	before := raw.sessionKeys(t)
	_, err = p.Doctor(bg)
	require.NoError(t, err)
	assert.Equal(t, before, raw.sessionKeys(t), "doctor leaves nothing behind")
}

func TestDoctorTriesKEKsUnderExportNone(t *testing.T) {
	a := openAdmin(t)
	good := makeKEK(t, a, uniqueName(t, "doctor-none"), KEKAES256)
	p := openProvider(t, func(c *Config) { c.ExportPolicy = ExportNone })
	checks, err := p.Doctor(bg)
	require.NoError(t, err)
	var found bool
	for _, c := range checks {
		if c.Name == "kek "+good.Label+" v1" {
			found = true
			assert.True(t, c.OK, c.Detail)
			assert.Contains(t, c.Detail, "wrap and unwrap work")
		}
	}
	assert.True(t, found)
}

func TestWrapWithPadding(t *testing.T) {
	a := openAdmin(t)
	kek := makeKEK(t, a, uniqueName(t, "kwp"), KEKAES256)
	rsaKEK := makeKEK(t, a, uniqueName(t, "kwp-rsa"), KEKRSA2048)
	p := openProvider(t)
	kek, rsaKEK = mustKEK(t, p, kek), mustKEK(t, p, rsaKEK)
	for _, alg := range []Algorithm{AES128, AES256} {
		k, err := p.Generate(bg, alg)
		require.NoError(t, err)
		w, err := p.WrapWith(bg, k, kek, AESKeyWrapPad)
		require.NoError(t, err)
		assert.Equal(t, AESKeyWrapPad, w.Mechanism)
		plain, err := p.WrapWith(bg, k, kek, AESKeyWrap)
		require.NoError(t, err)
		assert.NotEqual(t, plain.Bytes, w.Bytes, "RFC 5649 uses another integrity value than RFC 3394")
		back, err := p.Unwrap(bg, w)
		require.NoError(t, err)
		sealed, err := k.Seal(bg, []byte("kwp"), nil)
		require.NoError(t, err)
		_, err = back.Open(bg, sealed, nil)
		require.NoError(t, err)
	}
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	_, err = p.WrapWith(bg, k, kek, RSAOAEPSHA1)
	require.ErrorIs(t, err, ErrInvalidInput, "an aes kek cannot wrap with oaep")
	_, err = p.WrapWith(bg, k, rsaKEK, AESKeyWrapPad)
	require.ErrorIs(t, err, ErrInvalidInput)
	_, err = p.WrapWith(bg, k, kek, WrapMechanism(42))
	require.ErrorIs(t, err, ErrUnsupported)
}

// allowExposed is the explicit choice a test makes to have an AES KEK on
// SoftHSM.
var allowExposed = KEKOptions{AllowExposedAtRest: true}
