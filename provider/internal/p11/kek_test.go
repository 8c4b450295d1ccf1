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
