package p11

import (
	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
)

// CheckValue reads the key's CKA_CHECK_VALUE (PKCS#11 v2.40 §4.10: for AES
// the first three bytes of AES-ECB of a zero block, as KCV computes) in one
// C_GetAttributeValue, where KCV makes two calls. It is empty when the
// token did not set it (SoftHSM: unwrapped keys, TOKEN-FACTS).
func (p *Pool) CheckValue(s *Session, key Object) ([]byte, error) {
	got, err := p.ctx().GetAttributeValueCap(s.h, pkcs11.ObjectHandle(key),
		[]*pkcs11.Attribute{{Type: pkcs11.CKA_CHECK_VALUE}}, []int{3})
	if err != nil {
		return nil, wrapErr("C_GetAttributeValue", err)
	}
	return got[0].Value, nil
}

// Calls is the number of PKCS#11 calls this process has made through the
// binding (ckraw.Calls).
func Calls() uint64 { return ckraw.Calls() }
