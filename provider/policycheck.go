package provider

import (
	"bytes"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

// unwrapKind is a kind of unwrapped key for CheckFirstKey: the KEK version
// that unwraps it (its CKA_UNWRAP_TEMPLATE applies), the mechanism and the
// key's algorithm.
type unwrapKind struct {
	kek  string
	mech WrapMechanism
	alg  Algorithm
}

// mustCheck reports whether a new key of this kind (a p11.SecretKeySpec or
// an unwrapKind) has its policy read back: always under CheckEveryKey, and
// under CheckFirstKey until one key of the kind passed.
func (p *Provider) mustCheck(kind any) bool {
	if p.cfg.PolicyCheck == CheckEveryKey {
		return true
	}
	_, done := p.checked.Load(kind)
	return !done
}

// Whether the token's CKA_CHECK_VALUE of a generated key is the key check
// value hsmkeys computes (kcvAttr): not known yet, yes, or no.
const (
	kcvAttrUnknown int32 = iota
	kcvAttrGood
	kcvAttrBad
)

// keyCheckValue returns k's key check value (exported manifests carry it):
// computed once per key. For a generated key it is the token's
// CKA_CHECK_VALUE, one call, once the first key showed that attribute to
// equal AES-ECB of a zero block computed on the token (two calls, which
// is also the answer for a token that sets no check value or another).
func (p *Provider) keyCheckValue(s *p11.Session, k *Key) ([]byte, error) {
	if v := k.kcv.Load(); v != nil {
		return bytes.Clone(*v), nil
	}
	var kcv []byte
	var err error
	switch state := p.kcvAttr.Load(); {
	case !k.generated || state == kcvAttrBad:
		kcv, err = p.pool.KCV(s, k.obj)
	case state == kcvAttrGood:
		kcv, err = p.pool.CheckValue(s, k.obj)
		if err == nil && len(kcv) != 3 {
			kcv, err = p.pool.KCV(s, k.obj)
		}
	default:
		var attr []byte
		if attr, err = p.pool.CheckValue(s, k.obj); err != nil {
			return nil, err
		}
		if kcv, err = p.pool.KCV(s, k.obj); err != nil {
			return nil, err
		}
		if bytes.Equal(attr, kcv) {
			p.kcvAttr.CompareAndSwap(kcvAttrUnknown, kcvAttrGood)
		} else {
			p.kcvAttr.Store(kcvAttrBad)
		}
	}
	if err != nil {
		return nil, err
	}
	k.kcv.Store(&kcv)
	return bytes.Clone(kcv), nil
}

// TokenCalls returns the number of PKCS#11 calls this process has made
// through hsmkeys since it started, on every module and by every provider
// (C_GetFunctionList, C_Initialize and C_Finalize excepted). On a networked
// HSM each call is a round trip: the difference over an operation is what
// it costs there (hsmkeys bench reports it per operation).
func TokenCalls() uint64 { return p11.Calls() }
