package p11

import (
	"errors"
	"testing"

	"github.com/miekg/pkcs11"
)

// RFC 5649 has two mechanism numbers; SoftHSM knows only one, so the
// fallback between them is checked here on its own.
func TestPadAlternative(t *testing.T) {
	invalid := &Error{Op: "C_WrapKey", Code: pkcs11.CKR_MECHANISM_INVALID}
	for _, c := range []struct {
		mech WrapMech
		err  error
		want uint
		ok   bool
	}{
		{WrapMech{Mech: pkcs11.CKM_AES_KEY_WRAP_PAD}, invalid, CKMAESKeyWrapKWP, true},
		{WrapMech{Mech: CKMAESKeyWrapKWP}, invalid, pkcs11.CKM_AES_KEY_WRAP_PAD, true},
		{WrapMech{Mech: pkcs11.CKM_AES_KEY_WRAP}, invalid, 0, false},
		{WrapMech{Mech: pkcs11.CKM_AES_KEY_WRAP_PAD}, &Error{Code: pkcs11.CKR_GENERAL_ERROR}, 0, false},
		{WrapMech{Mech: pkcs11.CKM_AES_KEY_WRAP_PAD}, nil, 0, false},
		{WrapMech{Mech: pkcs11.CKM_AES_KEY_WRAP_PAD}, errors.New("not a token error"), 0, false},
	} {
		alt, ok := padAlternative(c.mech, c.err)
		if ok != c.ok || alt.Mech != c.want {
			t.Errorf("padAlternative(0x%X, %v) = 0x%X, %v; want 0x%X, %v", c.mech.Mech, c.err, alt.Mech, ok, c.want, c.ok)
		}
	}
}

// CKA_ALLOWED_MECHANISMS is an array of CK_ULONG; the token may return it
// in another order (SoftHSM sorts it).
func TestMechLists(t *testing.T) {
	enc := MechList([]uint{pkcs11.CKM_AES_GCM, pkcs11.CKM_AES_CTR, pkcs11.CKM_AES_ECB})
	if !sameMechs(enc, []uint{pkcs11.CKM_AES_ECB, pkcs11.CKM_AES_GCM, pkcs11.CKM_AES_CTR}) {
		t.Error("same set in another order")
	}
	if sameMechs(enc, []uint{pkcs11.CKM_AES_GCM}) || sameMechs(enc[:len(enc)-1], SessionKeyMechanisms) {
		t.Error("a subset or a truncated list is not the same")
	}
	if !mechsWithin(MechList([]uint{pkcs11.CKM_RSA_PKCS_OAEP}), RSAKEKMechanisms) {
		t.Error("oaep is within the rsa kek mechanisms")
	}
	for name, got := range map[string][]byte{
		"empty (any mechanism)": nil,
		"pkcs#1 v1.5 too":       MechList([]uint{pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.CKM_RSA_PKCS}),
		"not a ulong array":     {1, 2, 3},
	} {
		if mechsWithin(got, RSAKEKMechanisms) {
			t.Errorf("%s: counted as restricted to oaep", name)
		}
	}
	if !sameValue(pkcs11.CKA_ALLOWED_MECHANISMS, MechList([]uint{2, 1}), MechList([]uint{1, 2})) {
		t.Error("sameValue compares mechanism lists as sets")
	}
	if !sameValue(pkcs11.CKA_SIGN, []byte{1}, true) || sameValue(pkcs11.CKA_SIGN, []byte{0}, true) {
		t.Error("sameValue on CK_BBOOL")
	}
}

// The unwrap template ends with CKA_MODIFIABLE=false: SoftHSM refuses any
// attribute after it (TOKEN-FACTS).
func TestUnwrapTemplateOrder(t *testing.T) {
	tmpl := UnwrapTemplate()
	last := tmpl[len(tmpl)-1]
	if v, _ := last.Value.(bool); last.Type != pkcs11.CKA_MODIFIABLE || v {
		t.Fatalf("last entry is 0x%X %v", last.Type, last.Value)
	}
	want := map[uint]bool{pkcs11.CKA_CLASS: true, pkcs11.CKA_KEY_TYPE: true, pkcs11.CKA_ENCRYPT: true, pkcs11.CKA_DECRYPT: true,
		pkcs11.CKA_WRAP: true, pkcs11.CKA_UNWRAP: true, pkcs11.CKA_SIGN: true, pkcs11.CKA_VERIFY: true, pkcs11.CKA_DERIVE: true,
		pkcs11.CKA_ALLOWED_MECHANISMS: true}
	for _, a := range tmpl {
		delete(want, a.Type)
	}
	if len(want) > 0 {
		t.Errorf("unwrap template does not pin %v", want)
	}
}

func TestProfiles(t *testing.T) {
	if p := ProfileFor("SoftHSM project", "SoftHSM v2"); p.PublicObjectsProtectedAtRest || p.Name != "SoftHSM 2" {
		t.Errorf("softhsm: %+v", p)
	}
	if p := ProfileFor("Some Vendor", "X1"); p.PublicObjectsProtectedAtRest {
		t.Errorf("an unknown token is assumed not to protect public objects: %+v", p)
	}
}
