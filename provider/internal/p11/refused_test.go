package p11

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

// softhsmSession makes a SoftHSM token in a temporary directory and returns
// a session on it logged in as the user.
func softhsmSession(t testing.TB) (*Module, pkcs11.SessionHandle) {
	t.Helper()
	var module string
	for _, m := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(m); err == nil {
			module = m
			break
		}
	}
	if module == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set and SoftHSM 2 is missing")
		}
		t.Skip("SoftHSM 2 is not installed")
	}
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "tokens"), 0o700))
	conf := filepath.Join(dir, "softhsm2.conf")
	require.NoError(t, os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600))
	t.Setenv("SOFTHSM2_CONF", conf)
	m, err := Load(module, "")
	require.NoError(t, err)
	t.Cleanup(func() { m.Release() })
	free, err := m.FreeSlots()
	require.NoError(t, err)
	require.NotEmpty(t, free)
	require.NoError(t, m.InitToken(free[0], []byte("so-pin-1"), []byte("user-pin-1"), "refused"))
	ts, err := m.Tokens()
	require.NoError(t, err)
	var slot uint
	for _, tok := range ts {
		if tok.Label == "refused" {
			slot = tok.Slot
		}
	}
	h, err := m.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	t.Cleanup(func() { m.ctx.CloseSession(h) })
	require.NoError(t, m.ctx.Login(h, pkcs11.CKU_USER, "user-pin-1"))
	return m, h
}

func countObjects(t testing.TB, m *Module, h pkcs11.SessionHandle) int {
	t.Helper()
	objs, err := findObjects(m.ctx, h, nil, 4096)
	require.NoError(t, err)
	return len(objs)
}

// A token object template SoftHSM refuses with a bare
// CKR_ATTRIBUTE_TYPE_INVALID: the error names the attribute, and the
// retries leave nothing behind (though SoftHSM leaves a bare session
// object for each failed call: they die with the retries' own session).
func TestRefusedAttributeNamed(t *testing.T) {
	m, h := softhsmSession(t)
	const bogus = pkcs11.CKA_VENDOR_DEFINED | 0x4711 // no token knows it
	aes := func(extra ...ckraw.Attr) []ckraw.Attr {
		return append([]ckraw.Attr{
			{Type: pkcs11.CKA_TOKEN, Value: true},
			{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_SECRET_KEY)},
			{Type: pkcs11.CKA_KEY_TYPE, Value: uint(pkcs11.CKK_AES)},
			{Type: pkcs11.CKA_LABEL, Value: "k"},
			{Type: pkcs11.CKA_VALUE_LEN, Value: uint(32)},
			{Type: pkcs11.CKA_SENSITIVE, Value: true},
		}, extra...)
	}

	t.Run("C_GenerateKey", func(t *testing.T) {
		tmpl := aes(ckraw.Attr{Type: bogus, Value: true})
		_, err := m.raw.GenerateKey(uint(h), pkcs11.CKM_AES_KEY_GEN, tmpl)
		require.Error(t, err)
		left := countObjects(t, m, h) // SoftHSM 2.6.1 leaves one from the failed call
		err = m.generateErr(h, pkcs11.CKM_AES_KEY_GEN, tmpl, err)
		require.Equal(t, left, countObjects(t, m, h), "the retries left objects behind")
		var re *RefusedError
		require.ErrorAs(t, err, &re)
		require.Equal(t, []uint{bogus}, re.Attrs)
		code, _ := CodeOf(err)
		require.Equal(t, uint(pkcs11.CKR_ATTRIBUTE_TYPE_INVALID), code)
		require.Contains(t, err.Error(), "C_GenerateKey: CKR_ATTRIBUTE_TYPE_INVALID")
		require.Contains(t, err.Error(), "the token refuses attribute vendor attribute 0x80004711")
	})
	t.Run("C_CreateObject", func(t *testing.T) {
		tmpl := []ckraw.Attr{
			{Type: pkcs11.CKA_TOKEN, Value: true},
			{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_SECRET_KEY)},
			{Type: pkcs11.CKA_KEY_TYPE, Value: uint(pkcs11.CKK_AES)},
			{Type: pkcs11.CKA_VALUE, Value: make([]byte, 32)},
			{Type: bogus, Value: []byte{1}},
		}
		_, err := m.raw.CreateObject(uint(h), tmpl)
		require.Error(t, err)
		left := countObjects(t, m, h) // SoftHSM 2.6.1 leaves one from the failed call
		err = m.createErr(h, tmpl, err)
		require.Equal(t, left, countObjects(t, m, h), "the retries left objects behind")
		require.ErrorContains(t, err, "C_CreateObject: CKR_ATTRIBUTE_TYPE_INVALID")
		require.ErrorContains(t, err, "refuses attribute vendor attribute 0x80004711")
	})
	t.Run("C_GenerateKeyPair", func(t *testing.T) {
		// 3072 bits: the retries ask for 2048, after the whole template at
		// 3072 bits as a session object.
		pub := []ckraw.Attr{{Type: pkcs11.CKA_TOKEN, Value: false}, {Type: pkcs11.CKA_MODULUS_BITS, Value: uint(3072)}, {Type: pkcs11.CKA_PUBLIC_EXPONENT, Value: []byte{1, 0, 1}}}
		priv := []ckraw.Attr{{Type: pkcs11.CKA_TOKEN, Value: true}, {Type: pkcs11.CKA_SENSITIVE, Value: true}, {Type: bogus, Value: true}}
		_, _, err := m.raw.GenerateKeyPair(uint(h), pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pub, priv)
		require.Error(t, err)
		left := countObjects(t, m, h) // SoftHSM 2.6.1 leaves one from the failed call
		err = m.generatePairErr(h, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pub, priv, err)
		require.Equal(t, left, countObjects(t, m, h), "the retries left objects behind")
		var re *RefusedError
		require.ErrorAs(t, err, &re)
		require.Equal(t, []uint{bogus}, re.Attrs)
	})
	t.Run("miekg C_GenerateKey", func(t *testing.T) {
		tmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 16),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(bogus, true),
		}
		mech := []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}
		_, err := m.ctx.GenerateKey(h, mech, tmpl)
		require.Error(t, err)
		left := countObjects(t, m, h) // SoftHSM 2.6.1 leaves one from the failed call
		err = m.generateSessionKeyErr(h, mech, tmpl, err)
		require.Equal(t, left, countObjects(t, m, h), "the retries left objects behind")
		require.ErrorContains(t, err, "refuses attribute vendor attribute 0x80004711")
	})
	t.Run("C_UnwrapKey", func(t *testing.T) {
		kek, err := m.raw.GenerateKey(uint(h), pkcs11.CKM_AES_KEY_GEN, []ckraw.Attr{
			{Type: pkcs11.CKA_TOKEN, Value: false}, {Type: pkcs11.CKA_VALUE_LEN, Value: uint(32)},
			{Type: pkcs11.CKA_WRAP, Value: true}, {Type: pkcs11.CKA_UNWRAP, Value: true},
		})
		require.NoError(t, err)
		key, err := m.raw.GenerateKey(uint(h), pkcs11.CKM_AES_KEY_GEN, []ckraw.Attr{
			{Type: pkcs11.CKA_TOKEN, Value: false}, {Type: pkcs11.CKA_VALUE_LEN, Value: uint(16)}, {Type: pkcs11.CKA_EXTRACTABLE, Value: true},
		})
		require.NoError(t, err)
		mech := []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}
		wrapped, err := m.ctx.WrapKey(h, mech, pkcs11.ObjectHandle(kek), pkcs11.ObjectHandle(key))
		require.NoError(t, err)
		tmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(bogus, true),
		}
		_, err = m.ctx.UnwrapKey(h, mech, pkcs11.ObjectHandle(kek), wrapped, tmpl)
		require.Error(t, err)
		left := countObjects(t, m, h)
		err = m.unwrapErr(h, mech, pkcs11.ObjectHandle(kek), wrapped, tmpl, err)
		require.Equal(t, left, countObjects(t, m, h), "the retries left objects behind")
		var re *RefusedError
		require.ErrorAs(t, err, &re)
		require.Equal(t, []uint{bogus}, re.Attrs)
		require.ErrorContains(t, err, "C_UnwrapKey: CKR_ATTRIBUTE_TYPE_INVALID")
	})

	// Other failures pass through untouched and cost no retry.
	other := &Error{Op: "C_GenerateKey", Code: pkcs11.CKR_DEVICE_ERROR}
	tries := 0
	got := m.explain(h, other, []uint{pkcs11.CKA_LABEL}, func(pkcs11.SessionHandle, int) bool { tries++; return true })
	require.Same(t, other, got)
	require.Zero(t, tries)
	// No single attribute to blame: said so, with the code kept.
	bad := &Error{Op: "C_CreateObject", Code: pkcs11.CKR_TEMPLATE_INCONSISTENT}
	got = m.explain(h, bad, []uint{pkcs11.CKA_LABEL, pkcs11.CKA_ID}, func(pkcs11.SessionHandle, int) bool { return false })
	require.True(t, errors.Is(got, pkcs11.Error(pkcs11.CKR_TEMPLATE_INCONSISTENT)))
	require.True(t, strings.Contains(got.Error(), "several are refused"), got.Error())
}

// BenchmarkRefusedExplain is the price of naming the attribute, paid only
// after a template refusal: one failed C_GenerateKey of a 7-attribute AES
// template (one attribute unknown to the token), then the retries.
func BenchmarkRefusedExplain(b *testing.B) {
	m, h := softhsmSession(b)
	tmpl := []ckraw.Attr{
		{Type: pkcs11.CKA_TOKEN, Value: true},
		{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_SECRET_KEY)},
		{Type: pkcs11.CKA_KEY_TYPE, Value: uint(pkcs11.CKK_AES)},
		{Type: pkcs11.CKA_LABEL, Value: "k"},
		{Type: pkcs11.CKA_VALUE_LEN, Value: uint(32)},
		{Type: pkcs11.CKA_SENSITIVE, Value: true},
		{Type: pkcs11.CKA_VENDOR_DEFINED | 0x4711, Value: true},
	}
	b.Run("failed call alone", func(b *testing.B) {
		for b.Loop() {
			_, err := m.raw.GenerateKey(uint(h), pkcs11.CKM_AES_KEY_GEN, tmpl)
			require.Error(b, err)
		}
	})
	b.Run("failed call and explain", func(b *testing.B) {
		for b.Loop() {
			_, err := m.raw.GenerateKey(uint(h), pkcs11.CKM_AES_KEY_GEN, tmpl)
			var re *RefusedError
			require.ErrorAs(b, m.generateErr(h, pkcs11.CKM_AES_KEY_GEN, tmpl, err), &re)
		}
	})
}
