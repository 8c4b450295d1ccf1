//go:build cgo && unix

package ckraw_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
)

const (
	modulePath = "/usr/lib/softhsm/libsofthsm2.so"
	userPIN    = "1234"
	soPIN      = "5678"
)

// fixture is a fresh SoftHSM token in t.TempDir(), initialised through miekg,
// with ckraw opened on the same library.
type fixture struct {
	p    *pkcs11.Ctx
	raw  *ckraw.Module
	slot uint
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	if _, err := os.Stat(modulePath); err != nil {
		missing(t, "SoftHSM module: %v", err)
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		missing(t, "softhsm2-util: %v", err)
	}

	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	require.NoError(t, os.Mkdir(tokens, 0o700))
	conf := filepath.Join(dir, "softhsm2.conf")
	require.NoError(t, os.WriteFile(conf, []byte(fmt.Sprintf(
		"directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", tokens)), 0o600))
	// SoftHSM reads SOFTHSM2_CONF in C_Initialize; softhsm2-util inherits it.
	t.Setenv("SOFTHSM2_CONF", conf)
	out, err := exec.Command(util, "--init-token", "--free", "--label", "t",
		"--pin", userPIN, "--so-pin", soPIN).CombinedOutput()
	require.NoError(t, err, "softhsm2-util: %s", out)

	p := pkcs11.New(modulePath)
	require.NotNil(t, p, "pkcs11.New(%s)", modulePath)
	require.NoError(t, p.Initialize())
	raw, err := ckraw.Open(modulePath, ckraw.Options{})
	if err != nil {
		p.Finalize()
		p.Destroy()
		require.NoError(t, err)
	}
	f := &fixture{p: p, raw: raw}
	t.Cleanup(func() {
		require.NoError(t, raw.Close())
		require.NoError(t, p.Finalize())
		p.Destroy()
	})

	slots, err := p.GetSlotList(true)
	require.NoError(t, err)
	found := false
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		require.NoError(t, err)
		if strings.TrimRight(ti.Label, " \x00") == "t" {
			f.slot, found = s, true
			break
		}
	}
	require.True(t, found, "token t not found")

	// Registered after the Finalize cleanup, so it runs before it.
	t.Cleanup(func() { f.destroyTokenObjects(t) })
	return f
}

func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set but "+format, args...)
	}
	t.Skipf("skipping: "+format, args...)
}

// session opens a R/W session that is closed at the end of the test.
func (f *fixture) session(t testing.TB) pkcs11.SessionHandle {
	t.Helper()
	s, err := f.p.OpenSession(f.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	t.Cleanup(func() { f.p.CloseSession(s) })
	return s
}

// login logs in as userType. Login is per application, not per session, so
// logging in as the SO and as the user at once is impossible.
func (f *fixture) login(t testing.TB, s pkcs11.SessionHandle, userType uint) {
	t.Helper()
	pin := userPIN
	if userType == pkcs11.CKU_SO {
		pin = soPIN
	}
	require.NoError(t, f.p.Login(s, userType, pin))
}

func (f *fixture) logout(t testing.TB, s pkcs11.SessionHandle) {
	t.Helper()
	require.NoError(t, f.p.Logout(s))
}

// tokenObjects lists the token objects the user can see (all of them).
func (f *fixture) tokenObjects(t testing.TB, s pkcs11.SessionHandle) []pkcs11.ObjectHandle {
	t.Helper()
	require.NoError(t, f.p.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}))
	objs, _, err := f.p.FindObjects(s, 1000)
	require.NoError(t, err)
	require.NoError(t, f.p.FindObjectsFinal(s))
	return objs
}

// destroyTokenObjects destroys, as the user, every token object the test
// made, then checks that none is left. It finds them by search: SoftHSM
// forgets object handles once every session of the slot is closed, so
// handles saved during the test may be stale here.
func (f *fixture) destroyTokenObjects(t testing.TB) {
	s, err := f.p.OpenSession(f.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	require.NoError(t, err)
	defer f.p.CloseSession(s)
	_ = f.p.Logout(s) // a failed test may have left someone logged in
	require.NoError(t, f.p.Login(s, pkcs11.CKU_USER, userPIN))
	defer f.p.Logout(s)
	for _, h := range f.tokenObjects(t, s) {
		require.NoError(t, f.p.DestroyObject(s, h), "destroy token object %d", h)
	}
	require.Empty(t, f.tokenObjects(t, s), "token objects left behind")
}

// ckr returns the CKR_* error as miekg reports it, for require.ErrorIs.
func ckr(rv uint) error { return pkcs11.Error(rv) }

// boolMap decodes a template read back with GetTemplate whose values are
// all CK_BBOOL.
func boolMap(t *testing.T, tmpl []ckraw.Attr) map[uint]bool {
	t.Helper()
	m := make(map[uint]bool, len(tmpl))
	for _, a := range tmpl {
		v, ok := a.Bool()
		require.True(t, ok, "attribute 0x%X: value %x is not a CK_BBOOL", a.Type, a.Value)
		_, dup := m[a.Type]
		require.False(t, dup, "attribute 0x%X twice", a.Type)
		m[a.Type] = v
	}
	return m
}

func attrs(m map[uint]any) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, 0, len(m))
	for k, v := range m {
		out = append(out, pkcs11.NewAttribute(k, v))
	}
	return out
}

// with returns a copy of base with the attributes of change replaced.
func with(base, change map[uint]any) map[uint]any {
	m := make(map[uint]any, len(base))
	for k, v := range base {
		m[k] = v
	}
	for k, v := range change {
		m[k] = v
	}
	return m
}

// The policy this package exists for: what a key unwrapped under a KEK must
// look like, and what a key must look like to be wrapped under it.
var (
	unwrapPolicy = []ckraw.Attr{
		{Type: pkcs11.CKA_TOKEN, Value: false},
		{Type: pkcs11.CKA_PRIVATE, Value: true},
		{Type: pkcs11.CKA_SENSITIVE, Value: true},
		{Type: pkcs11.CKA_EXTRACTABLE, Value: true},
		{Type: pkcs11.CKA_WRAP_WITH_TRUSTED, Value: true},
		{Type: pkcs11.CKA_WRAP, Value: false},
		{Type: pkcs11.CKA_UNWRAP, Value: false},
		{Type: pkcs11.CKA_DERIVE, Value: false},
	}
	wrapPolicy = []ckraw.Attr{
		{Type: pkcs11.CKA_WRAP_WITH_TRUSTED, Value: true},
	}
	// unwrapOK is an unwrap template that satisfies unwrapPolicy. SoftHSM
	// does not merge the KEK's template into the caller's: every attribute
	// of the policy must be repeated with the same value.
	unwrapOK = map[uint]any{
		pkcs11.CKA_CLASS:             pkcs11.CKO_SECRET_KEY,
		pkcs11.CKA_KEY_TYPE:          pkcs11.CKK_AES,
		pkcs11.CKA_TOKEN:             false,
		pkcs11.CKA_PRIVATE:           true,
		pkcs11.CKA_SENSITIVE:         true,
		pkcs11.CKA_EXTRACTABLE:       true,
		pkcs11.CKA_WRAP_WITH_TRUSTED: true,
		pkcs11.CKA_WRAP:              false,
		pkcs11.CKA_UNWRAP:            false,
		pkcs11.CKA_DERIVE:            false,
		pkcs11.CKA_ENCRYPT:           true,
		pkcs11.CKA_DECRYPT:           true,
	}
)

func requirePolicies(t *testing.T, f *fixture, s pkcs11.SessionHandle, key uint, wantWrap, wantUnwrap bool) {
	t.Helper()
	if wantUnwrap {
		got, err := f.raw.GetTemplate(uint(s), key, pkcs11.CKA_UNWRAP_TEMPLATE)
		require.NoError(t, err)
		require.Equal(t, boolMap(t, unwrapPolicy), boolMap(t, got))
	}
	if wantWrap {
		got, err := f.raw.GetTemplate(uint(s), key, pkcs11.CKA_WRAP_TEMPLATE)
		require.NoError(t, err)
		require.Equal(t, boolMap(t, wrapPolicy), boolMap(t, got))
	}
}

// sessionKey generates an AES-256 session key as the logged-in user.
func sessionKey(t testing.TB, f *fixture, s pkcs11.SessionHandle, wrapWithTrusted bool) pkcs11.ObjectHandle {
	t.Helper()
	k, err := f.p.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
		attrs(map[uint]any{
			pkcs11.CKA_CLASS:             pkcs11.CKO_SECRET_KEY,
			pkcs11.CKA_KEY_TYPE:          pkcs11.CKK_AES,
			pkcs11.CKA_VALUE_LEN:         32,
			pkcs11.CKA_TOKEN:             false,
			pkcs11.CKA_PRIVATE:           true,
			pkcs11.CKA_SENSITIVE:         true,
			pkcs11.CKA_EXTRACTABLE:       true,
			pkcs11.CKA_WRAP_WITH_TRUSTED: wrapWithTrusted,
			pkcs11.CKA_ENCRYPT:           true,
			pkcs11.CKA_DECRYPT:           true,
		}))
	require.NoError(t, err)
	return k
}

// sameAESKey checks that a and b hold the same key by encrypting one block.
func sameAESKey(t *testing.T, f *fixture, s pkcs11.SessionHandle, a, b pkcs11.ObjectHandle) {
	t.Helper()
	block := bytes.Repeat([]byte{0x5a}, 16)
	enc := func(k pkcs11.ObjectHandle) []byte {
		require.NoError(t, f.p.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, k))
		out, err := f.p.Encrypt(s, block)
		require.NoError(t, err)
		return out
	}
	require.Equal(t, enc(a), enc(b))
}

func requireSensitive(t *testing.T, f *fixture, s pkcs11.SessionHandle, k pkcs11.ObjectHandle) {
	t.Helper()
	got, err := f.p.GetAttributeValue(s, k, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, nil),
	})
	require.NoError(t, err)
	require.Equal(t, []byte{1}, got[0].Value, "CKA_SENSITIVE")
	require.Equal(t, []byte{1}, got[1].Value, "CKA_EXTRACTABLE")
	require.Equal(t, []byte{0}, got[2].Value, "CKA_TOKEN")
	require.Equal(t, []byte{1}, got[3].Value, "CKA_PRIVATE")
	require.Equal(t, []byte{1}, got[4].Value, "CKA_WRAP_WITH_TRUSTED")
	_, err = f.p.GetAttributeValue(s, k, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	require.ErrorIs(t, err, ckr(pkcs11.CKR_ATTRIBUTE_SENSITIVE))
}

var kwp = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}

// TestAESKEKTemplates builds the trusted AES KEK with both templates as the
// SO and checks on the token that they are enforced.
func TestAESKEKTemplates(t *testing.T) {
	f := newFixture(t)

	// The SO makes the KEK: only the SO can set CKA_TRUSTED, and only in the
	// creating template; the SO cannot create private objects, so the KEK is
	// a public object.
	so := f.session(t)
	f.login(t, so, pkcs11.CKU_SO)
	kek, err := f.raw.GenerateKey(uint(so), pkcs11.CKM_AES_KEY_GEN, []ckraw.Attr{
		{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_SECRET_KEY)},
		{Type: pkcs11.CKA_KEY_TYPE, Value: uint(pkcs11.CKK_AES)},
		{Type: pkcs11.CKA_VALUE_LEN, Value: uint(32)},
		{Type: pkcs11.CKA_LABEL, Value: "kek"},
		{Type: pkcs11.CKA_TOKEN, Value: true},
		{Type: pkcs11.CKA_PRIVATE, Value: false},
		{Type: pkcs11.CKA_TRUSTED, Value: true},
		{Type: pkcs11.CKA_WRAP, Value: true},
		{Type: pkcs11.CKA_UNWRAP, Value: true},
		{Type: pkcs11.CKA_ENCRYPT, Value: false},
		{Type: pkcs11.CKA_DECRYPT, Value: false},
		{Type: pkcs11.CKA_SIGN, Value: false},
		{Type: pkcs11.CKA_VERIFY, Value: false},
		{Type: pkcs11.CKA_DERIVE, Value: false},
		{Type: pkcs11.CKA_SENSITIVE, Value: true},
		{Type: pkcs11.CKA_EXTRACTABLE, Value: false},
		{Type: pkcs11.CKA_MODIFIABLE, Value: false},
		{Type: pkcs11.CKA_COPYABLE, Value: false},
		{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: unwrapPolicy},
		{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: wrapPolicy},
	})
	require.NoError(t, err)
	requirePolicies(t, f, so, kek, true, true)
	trusted, err := f.p.GetAttributeValue(so, pkcs11.ObjectHandle(kek), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, nil)})
	require.NoError(t, err)
	require.Equal(t, []byte{1}, trusted[0].Value)
	f.logout(t, so)

	// The user wraps and unwraps session keys.
	us := f.session(t)
	f.login(t, us, pkcs11.CKU_USER)
	requirePolicies(t, f, us, kek, true, true)
	key := sessionKey(t, f, us, true)
	blob, err := f.p.WrapKey(us, kwp, pkcs11.ObjectHandle(kek), key)
	require.NoError(t, err)
	require.NotEmpty(t, blob)

	t.Run("unwrap asking SENSITIVE=false", func(t *testing.T) {
		_, err := f.p.UnwrapKey(us, kwp, pkcs11.ObjectHandle(kek), blob, attrs(with(unwrapOK, map[uint]any{pkcs11.CKA_SENSITIVE: false})))
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_TEMPLATE_INCONSISTENT))
	})
	t.Run("unwrap asking TOKEN=true", func(t *testing.T) {
		_, err := f.p.UnwrapKey(us, kwp, pkcs11.ObjectHandle(kek), blob, attrs(with(unwrapOK, map[uint]any{pkcs11.CKA_TOKEN: true})))
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_TEMPLATE_INCONSISTENT))
	})
	t.Run("unwrap asking EXTRACTABLE=false", func(t *testing.T) {
		_, err := f.p.UnwrapKey(us, kwp, pkcs11.ObjectHandle(kek), blob, attrs(with(unwrapOK, map[uint]any{pkcs11.CKA_EXTRACTABLE: false})))
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_TEMPLATE_INCONSISTENT))
	})
	t.Run("unwrap leaving policy attributes out", func(t *testing.T) {
		// SoftHSM requires every attribute of the unwrap template in the
		// caller's template (it does not fill them in).
		m := with(unwrapOK, nil)
		delete(m, pkcs11.CKA_WRAP_WITH_TRUSTED)
		_, err := f.p.UnwrapKey(us, kwp, pkcs11.ObjectHandle(kek), blob, attrs(m))
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_TEMPLATE_INCONSISTENT))
	})
	t.Run("unwrap leaving TOKEN and PRIVATE to their defaults", func(t *testing.T) {
		// SoftHSM always puts CKA_TOKEN (default false) and CKA_PRIVATE
		// (default true) in the new key's template, so these two may go.
		m := with(unwrapOK, nil)
		delete(m, pkcs11.CKA_TOKEN)
		delete(m, pkcs11.CKA_PRIVATE)
		k, err := f.p.UnwrapKey(us, kwp, pkcs11.ObjectHandle(kek), blob, attrs(m))
		require.NoError(t, err)
		requireSensitive(t, f, us, k)
		require.NoError(t, f.p.DestroyObject(us, k))
	})
	t.Run("unwrap with a compatible template", func(t *testing.T) {
		k, err := f.p.UnwrapKey(us, kwp, pkcs11.ObjectHandle(kek), blob, attrs(unwrapOK))
		require.NoError(t, err)
		requireSensitive(t, f, us, k)
		sameAESKey(t, f, us, key, k)
		require.NoError(t, f.p.DestroyObject(us, k))
	})
	t.Run("wrap a key without WRAP_WITH_TRUSTED", func(t *testing.T) {
		k := sessionKey(t, f, us, false)
		_, err := f.p.WrapKey(us, kwp, pkcs11.ObjectHandle(kek), k)
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_KEY_NOT_WRAPPABLE))
	})
	f.logout(t, us)

	// Nobody logged in: the public KEK is usable by anyone, so the unwrap
	// template is what stops a PIN-less caller from getting a readable key.
	t.Run("no login", func(t *testing.T) {
		anon := f.session(t)
		_, err := f.p.UnwrapKey(anon, kwp, pkcs11.ObjectHandle(kek), blob,
			attrs(with(unwrapOK, map[uint]any{pkcs11.CKA_PRIVATE: false, pkcs11.CKA_SENSITIVE: false})))
		t.Logf("PRIVATE=false SENSITIVE=false: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_TEMPLATE_INCONSISTENT))

		_, err = f.p.UnwrapKey(anon, kwp, pkcs11.ObjectHandle(kek), blob, attrs(unwrapOK))
		t.Logf("compatible template (PRIVATE=true): %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_USER_NOT_LOGGED_IN))

		// CKA_MODIFIABLE=false and CKA_COPYABLE=false keep a PIN-less
		// caller from loosening the public KEK (see TestModifiableKEK).
		err = f.p.SetAttributeValue(anon, pkcs11.ObjectHandle(kek), []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		})
		t.Logf("set CKA_DECRYPT: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_ACTION_PROHIBITED))
		err = f.p.SetAttributeValue(anon, pkcs11.ObjectHandle(kek), []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP_TEMPLATE, []byte{}),
		})
		t.Logf("clear CKA_UNWRAP_TEMPLATE: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_ACTION_PROHIBITED))
		_, err = f.p.CopyObject(anon, pkcs11.ObjectHandle(kek), []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		})
		t.Logf("copy the KEK: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_ACTION_PROHIBITED))
	})
}

// TestModifiableKEK records why a public KEK must be made with
// CKA_MODIFIABLE=false. Its templates are frozen either way, but without a
// PIN anyone can switch on CKA_DECRYPT and undo RFC 5649 key wrapping one
// AES-ECB block at a time, recovering every wrapped key in plaintext.
func TestModifiableKEK(t *testing.T) {
	f := newFixture(t)
	so := f.session(t)
	f.login(t, so, pkcs11.CKU_SO)
	kek, err := f.raw.GenerateKey(uint(so), pkcs11.CKM_AES_KEY_GEN, []ckraw.Attr{
		{Type: pkcs11.CKA_VALUE_LEN, Value: uint(32)},
		{Type: pkcs11.CKA_TOKEN, Value: true},
		{Type: pkcs11.CKA_PRIVATE, Value: false},
		{Type: pkcs11.CKA_TRUSTED, Value: true},
		{Type: pkcs11.CKA_WRAP, Value: true},
		{Type: pkcs11.CKA_UNWRAP, Value: true},
		{Type: pkcs11.CKA_DECRYPT, Value: false},
		{Type: pkcs11.CKA_SENSITIVE, Value: true},
		{Type: pkcs11.CKA_EXTRACTABLE, Value: false},
		{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: unwrapPolicy},
		{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: wrapPolicy},
	})
	require.NoError(t, err)
	f.logout(t, so)

	secret := bytes.Repeat([]byte{0xc3, 0x3c}, 16)
	us := f.session(t)
	f.login(t, us, pkcs11.CKU_USER)
	key, err := f.p.CreateObject(us, attrs(map[uint]any{
		pkcs11.CKA_CLASS:             pkcs11.CKO_SECRET_KEY,
		pkcs11.CKA_KEY_TYPE:          pkcs11.CKK_AES,
		pkcs11.CKA_VALUE:             secret,
		pkcs11.CKA_TOKEN:             false,
		pkcs11.CKA_SENSITIVE:         true,
		pkcs11.CKA_EXTRACTABLE:       true,
		pkcs11.CKA_WRAP_WITH_TRUSTED: true,
	}))
	require.NoError(t, err)
	blob, err := f.p.WrapKey(us, kwp, pkcs11.ObjectHandle(kek), key)
	require.NoError(t, err)
	f.logout(t, us)

	anon := f.session(t)
	err = f.p.SetAttributeValue(anon, pkcs11.ObjectHandle(kek), []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP_TEMPLATE, []byte{}),
	})
	t.Logf("no login, clear CKA_UNWRAP_TEMPLATE: %v", err)
	require.ErrorIs(t, err, ckr(pkcs11.CKR_ATTRIBUTE_READ_ONLY))

	err = f.p.SetAttributeValue(anon, pkcs11.ObjectHandle(kek), []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
	})
	t.Logf("no login, set CKA_DECRYPT on the trusted KEK: %v", err)
	require.NoError(t, err)
	got := kwpUnwrapWithECB(t, f, anon, pkcs11.ObjectHandle(kek), blob)
	require.Equal(t, secret, got, "wrapped key recovered without a PIN")
}

// kwpUnwrapWithECB undoes RFC 5649 (AES key wrap with padding) using only
// single-block AES decryptions under kek on the token.
func kwpUnwrapWithECB(t *testing.T, f *fixture, s pkcs11.SessionHandle, kek pkcs11.ObjectHandle, blob []byte) []byte {
	t.Helper()
	require.Zero(t, len(blob)%8)
	n := len(blob)/8 - 1
	require.Greater(t, n, 1)
	dec := func(b []byte) []byte {
		require.NoError(t, f.p.DecryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, kek))
		out, err := f.p.Decrypt(s, b)
		require.NoError(t, err)
		return out
	}
	a := binary.BigEndian.Uint64(blob[:8])
	r := make([][]byte, n)
	for i := range r {
		r[i] = blob[8*(i+1) : 8*(i+2)]
	}
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			in := binary.BigEndian.AppendUint64(nil, a^uint64(n*j+i))
			b := dec(append(in, r[i-1]...))
			a, r[i-1] = binary.BigEndian.Uint64(b[:8]), b[8:]
		}
	}
	require.Equal(t, uint64(0xA65959A6), a>>32, "RFC 5649 integrity check")
	plain := bytes.Join(r, nil)
	mli := int(a & 0xffffffff)
	require.LessOrEqual(t, mli, len(plain))
	return plain[:mli]
}

// rsaPublicTemplate is the trusted, wrap-only public half.
func rsaPublicTemplate(modulus, exponent, id []byte) []ckraw.Attr {
	return []ckraw.Attr{
		{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_PUBLIC_KEY)},
		{Type: pkcs11.CKA_KEY_TYPE, Value: uint(pkcs11.CKK_RSA)},
		{Type: pkcs11.CKA_TOKEN, Value: true},
		{Type: pkcs11.CKA_PRIVATE, Value: false},
		{Type: pkcs11.CKA_LABEL, Value: "kek-rsa"},
		{Type: pkcs11.CKA_ID, Value: id},
		{Type: pkcs11.CKA_MODULUS, Value: modulus},
		{Type: pkcs11.CKA_PUBLIC_EXPONENT, Value: exponent},
		{Type: pkcs11.CKA_TRUSTED, Value: true},
		{Type: pkcs11.CKA_WRAP, Value: true},
		{Type: pkcs11.CKA_ENCRYPT, Value: false},
		{Type: pkcs11.CKA_VERIFY, Value: false},
		{Type: pkcs11.CKA_VERIFY_RECOVER, Value: false},
		{Type: pkcs11.CKA_DERIVE, Value: false},
		{Type: pkcs11.CKA_MODIFIABLE, Value: false},
		{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: wrapPolicy},
	}
}

// rsaPrivateTemplate is the private, sensitive, non-extractable, unwrap-only
// private half.
func rsaPrivateTemplate(id []byte) []ckraw.Attr {
	return []ckraw.Attr{
		{Type: pkcs11.CKA_TOKEN, Value: true},
		{Type: pkcs11.CKA_PRIVATE, Value: true},
		{Type: pkcs11.CKA_LABEL, Value: "kek-rsa"},
		{Type: pkcs11.CKA_ID, Value: id},
		{Type: pkcs11.CKA_SENSITIVE, Value: true},
		{Type: pkcs11.CKA_EXTRACTABLE, Value: false},
		{Type: pkcs11.CKA_UNWRAP, Value: true},
		{Type: pkcs11.CKA_DECRYPT, Value: false},
		{Type: pkcs11.CKA_SIGN, Value: false},
		{Type: pkcs11.CKA_SIGN_RECOVER, Value: false},
		{Type: pkcs11.CKA_DERIVE, Value: false},
		{Type: pkcs11.CKA_MODIFIABLE, Value: false},
		{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: unwrapPolicy},
	}
}

var oaep = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP,
	pkcs11.NewOAEPParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKZ_DATA_SPECIFIED, nil))}

// TestRSAPairWaysThatFail records what SoftHSM refuses when one tries to get
// a trusted public half and a private private half in one C_GenerateKeyPair.
func TestRSAPairWaysThatFail(t *testing.T) {
	f := newFixture(t)
	pubGen := []ckraw.Attr{
		{Type: pkcs11.CKA_MODULUS_BITS, Value: uint(2048)},
		{Type: pkcs11.CKA_PUBLIC_EXPONENT, Value: []byte{1, 0, 1}},
		{Type: pkcs11.CKA_TOKEN, Value: true},
		{Type: pkcs11.CKA_PRIVATE, Value: false},
		{Type: pkcs11.CKA_TRUSTED, Value: true},
		{Type: pkcs11.CKA_WRAP, Value: true},
		{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: wrapPolicy},
	}
	id := []byte("pair-1")

	t.Run("SO, private half private", func(t *testing.T) {
		s := f.session(t)
		f.login(t, s, pkcs11.CKU_SO)
		defer f.logout(t, s)
		_, _, err := f.raw.GenerateKeyPair(uint(s), pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pubGen, rsaPrivateTemplate(id))
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_USER_NOT_LOGGED_IN))
	})
	t.Run("user, public half trusted", func(t *testing.T) {
		s := f.session(t)
		f.login(t, s, pkcs11.CKU_USER)
		defer f.logout(t, s)
		_, _, err := f.raw.GenerateKeyPair(uint(s), pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pubGen, rsaPrivateTemplate(id))
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_ATTRIBUTE_READ_ONLY))
	})
	t.Run("SO copies the user's public half with TRUSTED=true", func(t *testing.T) {
		s := f.session(t)
		f.login(t, s, pkcs11.CKU_USER)
		pub, _, err := f.raw.GenerateKeyPair(uint(s), pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, []ckraw.Attr{
			{Type: pkcs11.CKA_MODULUS_BITS, Value: uint(2048)},
			{Type: pkcs11.CKA_PUBLIC_EXPONENT, Value: []byte{1, 0, 1}},
			{Type: pkcs11.CKA_TOKEN, Value: true},
			{Type: pkcs11.CKA_PRIVATE, Value: false},
			{Type: pkcs11.CKA_WRAP, Value: true},
		}, rsaPrivateTemplate(id))
		require.NoError(t, err)
		f.logout(t, s)

		f.login(t, s, pkcs11.CKU_SO)
		defer f.logout(t, s)
		_, err = f.p.CopyObject(s, pkcs11.ObjectHandle(pub), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true)})
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_ATTRIBUTE_READ_ONLY))
	})
}

// TestRSAPairTemplates makes the design's RSA pair the way SoftHSM allows:
// the user generates the pair (so the private half can be private), the SO
// re-creates the public half from its modulus and exponent as a trusted
// object with the wrap template, and the user's own public half is dropped.
func TestRSAPairTemplates(t *testing.T) {
	f := newFixture(t)
	id := []byte("rsa-kek-1")

	us := f.session(t)
	f.login(t, us, pkcs11.CKU_USER)
	pub, priv, err := f.raw.GenerateKeyPair(uint(us), pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, []ckraw.Attr{
		{Type: pkcs11.CKA_MODULUS_BITS, Value: uint(2048)},
		{Type: pkcs11.CKA_PUBLIC_EXPONENT, Value: []byte{1, 0, 1}},
		{Type: pkcs11.CKA_TOKEN, Value: false}, // only a carrier for the modulus
		{Type: pkcs11.CKA_PRIVATE, Value: false},
		{Type: pkcs11.CKA_WRAP, Value: true},
		{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: wrapPolicy},
	}, rsaPrivateTemplate(id))
	require.NoError(t, err)
	requirePolicies(t, f, us, pub, true, false)
	requirePolicies(t, f, us, priv, false, true)
	ne, err := f.p.GetAttributeValue(us, pkcs11.ObjectHandle(pub), []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
	})
	require.NoError(t, err)
	require.Len(t, ne[0].Value, 256)
	require.NoError(t, f.p.DestroyObject(us, pkcs11.ObjectHandle(pub)))
	f.logout(t, us)

	so := f.session(t)
	f.login(t, so, pkcs11.CKU_SO)
	trusted, err := f.raw.CreateObject(uint(so), rsaPublicTemplate(ne[0].Value, ne[1].Value, id))
	require.NoError(t, err)
	requirePolicies(t, f, so, trusted, true, false)
	f.logout(t, so)

	us2 := f.session(t)
	f.login(t, us2, pkcs11.CKU_USER)
	got, err := f.p.GetAttributeValue(us2, pkcs11.ObjectHandle(trusted), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, nil)})
	require.NoError(t, err)
	require.Equal(t, []byte{1}, got[0].Value)

	// Handles of private objects die with the logout (PKCS#11 v2.40 §5.6,
	// C_Logout), so look the private half up again.
	require.NoError(t, f.p.FindObjectsInit(us2, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}))
	found, _, err := f.p.FindObjects(us2, 2)
	require.NoError(t, err)
	require.NoError(t, f.p.FindObjectsFinal(us2))
	require.Len(t, found, 1)
	_, err = f.p.GetAttributeValue(us2, pkcs11.ObjectHandle(priv), []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
	t.Logf("old private key handle after logout and login: %v", err)
	priv = uint(found[0])
	requirePolicies(t, f, us2, priv, false, true)

	key := sessionKey(t, f, us2, true)
	blob, err := f.p.WrapKey(us2, oaep, pkcs11.ObjectHandle(trusted), key)
	require.NoError(t, err)
	require.Len(t, blob, 256)

	unwrap := func(s pkcs11.SessionHandle, m map[uint]any) (pkcs11.ObjectHandle, error) {
		return f.p.UnwrapKey(s, oaep, pkcs11.ObjectHandle(priv), blob, attrs(m))
	}
	t.Run("unwrap asking SENSITIVE=false", func(t *testing.T) {
		_, err := unwrap(us2, with(unwrapOK, map[uint]any{pkcs11.CKA_SENSITIVE: false}))
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_TEMPLATE_INCONSISTENT))
	})
	t.Run("unwrap asking TOKEN=true", func(t *testing.T) {
		_, err := unwrap(us2, with(unwrapOK, map[uint]any{pkcs11.CKA_TOKEN: true}))
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_TEMPLATE_INCONSISTENT))
	})
	t.Run("unwrap with a compatible template", func(t *testing.T) {
		k, err := unwrap(us2, unwrapOK)
		require.NoError(t, err)
		requireSensitive(t, f, us2, k)
		sameAESKey(t, f, us2, key, k)
		require.NoError(t, f.p.DestroyObject(us2, k))
	})
	t.Run("wrap a key without WRAP_WITH_TRUSTED", func(t *testing.T) {
		_, err := f.p.WrapKey(us2, oaep, pkcs11.ObjectHandle(trusted), sessionKey(t, f, us2, false))
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_KEY_NOT_WRAPPABLE))
	})
	f.logout(t, us2)

	t.Run("no login", func(t *testing.T) {
		anon := f.session(t)
		// The private half is a private object: without a login it does
		// not exist for this session.
		_, err := unwrap(anon, with(unwrapOK, map[uint]any{pkcs11.CKA_PRIVATE: false, pkcs11.CKA_SENSITIVE: false}))
		t.Logf("SoftHSM: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID))
		_, err = unwrap(anon, unwrapOK)
		t.Logf("compatible template: %v", err)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID))
	})
}

// TestGetTemplateEmpty reads the (empty) default template of a key made
// without one.
func TestGetTemplateEmpty(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	k := sessionKey(t, f, s, true)
	got, err := f.raw.GetTemplate(uint(s), uint(k), pkcs11.CKA_UNWRAP_TEMPLATE)
	require.NoError(t, err)
	require.NotNil(t, got)
	require.Empty(t, got)
}

// TestCreateObjectNested creates a session AES key from a value, with a
// wrap template holding each value kind, and reads the template back.
func TestCreateObjectNested(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	h, err := f.raw.CreateObject(uint(s), []ckraw.Attr{
		{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_SECRET_KEY)},
		{Type: pkcs11.CKA_KEY_TYPE, Value: uint(pkcs11.CKK_AES)},
		{Type: pkcs11.CKA_TOKEN, Value: false},
		{Type: pkcs11.CKA_VALUE, Value: bytes.Repeat([]byte{7}, 32)},
		{Type: pkcs11.CKA_WRAP, Value: true},
		{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: []ckraw.Attr{
			{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_SECRET_KEY)},
			{Type: pkcs11.CKA_EXTRACTABLE, Value: true},
			{Type: pkcs11.CKA_LABEL, Value: "only-me"},
			{Type: pkcs11.CKA_ID, Value: []byte{1, 2, 3}},
		}},
	})
	require.NoError(t, err)
	got, err := f.raw.GetTemplate(uint(s), h, pkcs11.CKA_WRAP_TEMPLATE)
	require.NoError(t, err)
	byType := map[uint]ckraw.Attr{}
	for _, a := range got {
		byType[a.Type] = a
	}
	require.Len(t, byType, 4)
	class, ok := byType[pkcs11.CKA_CLASS].Ulong()
	require.True(t, ok)
	require.Equal(t, uint(pkcs11.CKO_SECRET_KEY), class)
	ex, ok := byType[pkcs11.CKA_EXTRACTABLE].Bool()
	require.True(t, ok)
	require.True(t, ex)
	require.Equal(t, []byte("only-me"), byType[pkcs11.CKA_LABEL].Value)
	require.Equal(t, []byte{1, 2, 3}, byType[pkcs11.CKA_ID].Value)

	// The label in the wrap template is enforced too.
	other := sessionKey(t, f, s, true)
	_, err = f.p.WrapKey(s, kwp, pkcs11.ObjectHandle(h), other)
	t.Logf("wrap a key whose label differs from the wrap template: %v", err)
	require.ErrorIs(t, err, ckr(pkcs11.CKR_KEY_NOT_WRAPPABLE))
}

// TestConcurrentGetTemplate exercises the Module from many goroutines, for
// the race detector.
func TestConcurrentGetTemplate(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	k, err := f.raw.GenerateKey(uint(s), pkcs11.CKM_AES_KEY_GEN, []ckraw.Attr{
		{Type: pkcs11.CKA_VALUE_LEN, Value: uint(32)},
		{Type: pkcs11.CKA_UNWRAP, Value: true},
		{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: unwrapPolicy},
	})
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ss, err := f.p.OpenSession(f.slot, pkcs11.CKF_SERIAL_SESSION)
			if err != nil {
				errs <- err
				return
			}
			defer f.p.CloseSession(ss)
			for range 50 {
				got, err := f.raw.GetTemplate(uint(ss), k, pkcs11.CKA_UNWRAP_TEMPLATE)
				if err != nil {
					errs <- err
					return
				}
				if len(got) != len(unwrapPolicy) {
					errs <- fmt.Errorf("got %d attributes", len(got))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

func TestOpenErrors(t *testing.T) {
	for _, path := range []string{"", "/nonexistent/libnothing.so", "libc.so.6"} {
		m, err := ckraw.Open(path, ckraw.Options{})
		require.Error(t, err, "Open(%q)", path)
		require.Nil(t, m)
		t.Logf("Open(%q): %v", path, err)
	}
}

func TestNilAndClosedModule(t *testing.T) {
	var nilModule *ckraw.Module
	require.NoError(t, nilModule.Close())
	_, err := nilModule.CreateObject(1, []ckraw.Attr{{Type: pkcs11.CKA_TOKEN, Value: false}})
	require.ErrorIs(t, err, ckraw.ErrClosed)

	f := newFixture(t)
	m, err := ckraw.Open(modulePath, ckraw.Options{})
	require.NoError(t, err)
	require.NoError(t, m.Close())
	require.NoError(t, m.Close(), "Close is idempotent")
	tmpl := []ckraw.Attr{{Type: pkcs11.CKA_TOKEN, Value: false}}
	_, err = m.CreateObject(1, tmpl)
	require.ErrorIs(t, err, ckraw.ErrClosed)
	_, err = m.GenerateKey(1, pkcs11.CKM_AES_KEY_GEN, tmpl)
	require.ErrorIs(t, err, ckraw.ErrClosed)
	_, _, err = m.GenerateKeyPair(1, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, tmpl, tmpl)
	require.ErrorIs(t, err, ckraw.ErrClosed)
	_, err = m.GetTemplate(1, 1, pkcs11.CKA_UNWRAP_TEMPLATE)
	require.ErrorIs(t, err, ckraw.ErrClosed)

	// Closing the second handle leaves the library loaded for miekg and the
	// fixture's own Module.
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	k, err := f.raw.GenerateKey(uint(s), pkcs11.CKM_AES_KEY_GEN, []ckraw.Attr{{Type: pkcs11.CKA_VALUE_LEN, Value: uint(16)}})
	require.NoError(t, err)
	require.NotZero(t, k)
}

func TestBadInput(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	sess := uint(s)
	ok := []ckraw.Attr{{Type: pkcs11.CKA_VALUE_LEN, Value: uint(32)}}

	bad := []struct {
		name string
		tmpl []ckraw.Attr
	}{
		{"nil", nil},
		{"empty", []ckraw.Attr{}},
		{"nil value", []ckraw.Attr{{Type: pkcs11.CKA_LABEL}}},
		{"int value", []ckraw.Attr{{Type: pkcs11.CKA_VALUE_LEN, Value: 32}}},
		{"float value", []ckraw.Attr{{Type: pkcs11.CKA_VALUE_LEN, Value: 32.0}}},
		{"pointer value", []ckraw.Attr{{Type: pkcs11.CKA_LABEL, Value: new(string)}}},
		{"[]*pkcs11.Attribute value", []ckraw.Attr{{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}}}},
		{"nested in a non-array attribute", []ckraw.Attr{{Type: pkcs11.CKA_LABEL, Value: []ckraw.Attr{{Type: pkcs11.CKA_TOKEN, Value: false}}}}},
		{"empty nested", []ckraw.Attr{{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: []ckraw.Attr{}}}},
		{"bad type in nested", []ckraw.Attr{{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: []ckraw.Attr{{Type: pkcs11.CKA_TOKEN, Value: 1}}}}},
		{"two levels", []ckraw.Attr{{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: []ckraw.Attr{
			{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: []ckraw.Attr{{Type: pkcs11.CKA_TOKEN, Value: false}}},
		}}}},
		{"too long", make([]ckraw.Attr, 1000)},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.raw.CreateObject(sess, tc.tmpl)
			require.ErrorIs(t, err, ckraw.ErrTemplate)
			t.Logf("%v", err)
			_, err = f.raw.GenerateKey(sess, pkcs11.CKM_AES_KEY_GEN, tc.tmpl)
			require.ErrorIs(t, err, ckraw.ErrTemplate)
			_, _, err = f.raw.GenerateKeyPair(sess, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, tc.tmpl, ok)
			require.ErrorIs(t, err, ckraw.ErrTemplate)
			_, _, err = f.raw.GenerateKeyPair(sess, pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, ok, tc.tmpl)
			require.ErrorIs(t, err, ckraw.ErrTemplate)
		})
	}

	t.Run("GetTemplate of a non-array attribute", func(t *testing.T) {
		_, err := f.raw.GetTemplate(sess, 1, pkcs11.CKA_LABEL)
		require.ErrorIs(t, err, ckraw.ErrTemplate)
	})

	// Errors from the token come back as miekg's pkcs11.Error.
	t.Run("token errors", func(t *testing.T) {
		_, err := f.raw.GenerateKey(0xdead, pkcs11.CKM_AES_KEY_GEN, ok)
		var perr pkcs11.Error
		require.True(t, errors.As(err, &perr), "%T", err)
		require.Equal(t, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID), perr)

		_, err = f.raw.GetTemplate(sess, 0xdead, pkcs11.CKA_UNWRAP_TEMPLATE)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_OBJECT_HANDLE_INVALID))

		_, err = f.raw.GenerateKey(sess, pkcs11.CKM_AES_KEY_GEN, []ckraw.Attr{
			{Type: pkcs11.CKA_VALUE_LEN, Value: uint(32)},
			{Type: pkcs11.CKA_SENSITIVE, Value: []byte{1, 1}}, // wrong length for a CK_BBOOL
		})
		require.ErrorIs(t, err, ckr(pkcs11.CKR_ATTRIBUTE_VALUE_INVALID))

		// A mechanism that needs a parameter.
		_, err = f.raw.GenerateKey(sess, pkcs11.CKM_AES_CBC, ok)
		require.Error(t, err)
		t.Logf("GenerateKey(CKM_AES_CBC): %v", err)
	})
}

func TestAttrDecode(t *testing.T) {
	v, ok := ckraw.Attr{Value: []byte{1}}.Bool()
	require.True(t, ok)
	require.True(t, v)
	v, ok = ckraw.Attr{Value: []byte{0}}.Bool()
	require.True(t, ok)
	require.False(t, v)
	v, ok = ckraw.Attr{Value: true}.Bool()
	require.True(t, ok)
	require.True(t, v)
	_, ok = ckraw.Attr{Value: []byte{1, 0}}.Bool()
	require.False(t, ok)
	_, ok = ckraw.Attr{Value: "x"}.Bool()
	require.False(t, ok)

	u, ok := ckraw.Attr{Value: uint(7)}.Ulong()
	require.True(t, ok)
	require.Equal(t, uint(7), u)
	_, ok = ckraw.Attr{Value: []byte{1}}.Ulong()
	require.False(t, ok)
	_, ok = ckraw.Attr{}.Ulong()
	require.False(t, ok)
}
