package p11

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
)

// Object is a PKCS#11 object handle.
type Object uint

// ErrPolicyIgnored means the token created a key but did not apply one of the
// attributes asked for; the key has been destroyed again.
var ErrPolicyIgnored = errors.New("token ignored a key policy attribute")

// ErrInput is bad input caught before any token call (miekg panics on some
// empty slices, TOKEN-FACTS).
var ErrInput = errors.New("invalid input")

// SecretKeySpec is what a generated AES session key must be.
type SecretKeySpec struct {
	Bytes           int  // 16 or 32
	Extractable     bool // may leave the token wrapped
	WrapWithTrusted bool // only under a CKA_TRUSTED key (PKCS#11 v2.40 §4.9)
}

// Attribute names for messages about policy.
var attrNames = map[uint]string{
	pkcs11.CKA_TOKEN:             "CKA_TOKEN",
	pkcs11.CKA_PRIVATE:           "CKA_PRIVATE",
	pkcs11.CKA_SENSITIVE:         "CKA_SENSITIVE",
	pkcs11.CKA_EXTRACTABLE:       "CKA_EXTRACTABLE",
	pkcs11.CKA_WRAP_WITH_TRUSTED: "CKA_WRAP_WITH_TRUSTED",
	pkcs11.CKA_ENCRYPT:           "CKA_ENCRYPT",
	pkcs11.CKA_DECRYPT:           "CKA_DECRYPT",
	pkcs11.CKA_WRAP:              "CKA_WRAP",
	pkcs11.CKA_UNWRAP:            "CKA_UNWRAP",
	pkcs11.CKA_DERIVE:            "CKA_DERIVE",
	pkcs11.CKA_SIGN:              "CKA_SIGN",
	pkcs11.CKA_VERIFY:            "CKA_VERIFY",
	pkcs11.CKA_VALUE_LEN:         "CKA_VALUE_LEN",
	pkcs11.CKA_TRUSTED:           "CKA_TRUSTED",
	pkcs11.CKA_MODIFIABLE:        "CKA_MODIFIABLE",
	pkcs11.CKA_COPYABLE:          "CKA_COPYABLE",
}

// AttrName is the CKA_* name of an attribute type.
func AttrName(t uint) string {
	if n, ok := attrNames[t]; ok {
		return n
	}
	return fmt.Sprintf("attribute 0x%X", t)
}

type boolAttr struct {
	t uint
	v bool
}

// sessionKeyPolicy lists the boolean attributes of a session key (PKCS#11
// v2.40 §4.7 storage, §4.9 secret key objects) in the order they are asked
// for and read back.
func sessionKeyPolicy(spec SecretKeySpec) []boolAttr {
	return []boolAttr{
		{pkcs11.CKA_TOKEN, false},
		{pkcs11.CKA_PRIVATE, true},
		{pkcs11.CKA_SENSITIVE, true},
		{pkcs11.CKA_EXTRACTABLE, spec.Extractable},
		{pkcs11.CKA_WRAP_WITH_TRUSTED, spec.WrapWithTrusted},
		// Not copyable: C_CopyObject is one more way to make a key with
		// other attributes (PKCS#11 v2.40 §4.4, CKA_COPYABLE).
		{pkcs11.CKA_COPYABLE, false},
		{pkcs11.CKA_ENCRYPT, true},
		{pkcs11.CKA_DECRYPT, true},
		{pkcs11.CKA_WRAP, false},
		{pkcs11.CKA_UNWRAP, false},
		{pkcs11.CKA_DERIVE, false},
		{pkcs11.CKA_SIGN, false},
		{pkcs11.CKA_VERIFY, false},
	}
}

// GenerateAES makes an AES session key on the token (CKM_AES_KEY_GEN,
// PKCS#11 v2.40 §2.8 of the mechanisms document) and reads its policy back:
// a token that silently ignored an attribute gets ErrPolicyIgnored and the
// key is destroyed, rather than a weaker key handed out.
func (p *Pool) GenerateAES(s *Session, spec SecretKeySpec) (Object, error) {
	return p.GenerateAESChecked(s, spec, true)
}

// GenerateAESChecked is GenerateAES, reading the policy back only when
// verify is true.
func (p *Pool) GenerateAESChecked(s *Session, spec SecretKeySpec, verify bool) (Object, error) {
	if spec.Bytes != 16 && spec.Bytes != 24 && spec.Bytes != 32 {
		return 0, fmt.Errorf("%w: aes key length %d", ErrInput, spec.Bytes)
	}
	pol := sessionKeyPolicy(spec)
	tmpl := make([]*pkcs11.Attribute, 0, len(pol)+3)
	tmpl = append(tmpl,
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, spec.Bytes),
	)
	for _, a := range pol {
		tmpl = append(tmpl, pkcs11.NewAttribute(a.t, a.v))
	}
	h, err := p.ctx().GenerateKey(s.h, []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl)
	if err != nil {
		return 0, wrapErr("C_GenerateKey", err)
	}
	obj := Object(h)
	if !verify {
		return obj, nil
	}
	if err := p.VerifySessionKey(s, obj, spec); err != nil {
		_ = p.ctx().DestroyObject(s.h, h)
		return 0, err
	}
	return obj, nil
}

// VerifySessionKey checks that obj has every attribute spec asks for.
func (p *Pool) VerifySessionKey(s *Session, obj Object, spec SecretKeySpec) error {
	return p.verifyBools(s, obj, sessionKeyPolicy(spec), uint(spec.Bytes))
}

// verifyBools reads back the attributes in want (and CKA_VALUE_LEN when
// valueLen > 0) and fails on the first that differs.
func (p *Pool) verifyBools(s *Session, obj Object, want []boolAttr, valueLen uint) error {
	return p.verifyAttrs(s, obj, want, valueLen, false)
}

// verifyAttrs is verifyBools; for an unwrapped key a CKA_VALUE_LEN of 0 is
// accepted as "not reported".
func (p *Pool) verifyAttrs(s *Session, obj Object, want []boolAttr, valueLen uint, unwrapped bool) error {
	q := make([]*pkcs11.Attribute, 0, len(want)+1)
	caps := make([]int, 0, len(want)+1)
	for _, a := range want {
		q = append(q, &pkcs11.Attribute{Type: a.t})
		caps = append(caps, 1) // CK_BBOOL
	}
	if valueLen > 0 {
		q = append(q, &pkcs11.Attribute{Type: pkcs11.CKA_VALUE_LEN})
		caps = append(caps, 8) // a CK_ULONG, 8 bytes or fewer
	}
	// One call with buffers of the known sizes, not a size query first.
	got, err := p.ctx().GetAttributeValueCap(s.h, pkcs11.ObjectHandle(obj), q, caps)
	if err != nil {
		return wrapErr("C_GetAttributeValue", err)
	}
	for i, a := range want {
		v := got[i].Value
		if len(v) != 1 || (v[0] != 0) != a.v {
			return fmt.Errorf("%w: %s is not %v", ErrPolicyIgnored, AttrName(a.t), a.v)
		}
	}
	if valueLen > 0 {
		n, ok := ulong(got[len(want)].Value)
		// SoftHSM reports 0 for unwrapped keys (see Unwrap): unknown, not wrong.
		if !ok || (n != uint64(valueLen) && !(n == 0 && unwrapped)) {
			return fmt.Errorf("%w: %w: CKA_VALUE_LEN is %d, not %d", ErrPolicyIgnored, errValueLen, n, valueLen)
		}
	}
	return nil
}

// errValueLen marks a key of the wrong length.
var errValueLen = errors.New("key length differs")

// ulong decodes a CK_ULONG as the token stored it (native byte order).
func ulong(b []byte) (uint64, bool) {
	switch len(b) {
	case 8:
		return binary.NativeEndian.Uint64(b), true
	case 4:
		return uint64(binary.NativeEndian.Uint32(b)), true
	}
	return 0, false
}

// GCM parameters: 96-bit nonce, 128-bit tag (NIST SP 800-38D §5.2.1.1,
// PKCS#11 v2.40 mechanisms §2.12.3 CK_GCM_PARAMS).
const (
	NonceSize = 12
	TagSize   = 16
)

func gcmMech(nonce, aad []byte) ([]*ckraw.Mechanism, *ckraw.GCMParams) {
	params := ckraw.NewGCMParams(nonce, aad, TagSize*8)
	return []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_GCM, params)}, params
}

// SealGCM encrypts plaintext with key under AES-GCM in one C_Encrypt and
// returns ciphertext||tag.
func (p *Pool) SealGCM(s *Session, key Object, nonce, aad, plaintext []byte) ([]byte, error) {
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("%w: nonce of %d bytes", ErrInput, len(nonce))
	}
	mech, params := gcmMech(nonce, aad)
	defer params.Free()
	if err := p.ctx().EncryptInit(s.h, mech, pkcs11.ObjectHandle(key)); err != nil {
		return nil, wrapErr("C_EncryptInit", err)
	}
	// One C_Encrypt with a buffer of the known size, where miekg would
	// make two (size query, then data): a round trip fewer on a network HSM.
	out, err := p.mod.raw.Encrypt(uint(s.h), plaintext, len(plaintext)+TagSize)
	return out, wrapErr("C_Encrypt", err)
}

// OpenGCM decrypts ciphertext||tag. A failed tag check is the token's error,
// returned as is (SoftHSM answers CKR_GENERAL_ERROR); the caller maps it.
func (p *Pool) OpenGCM(s *Session, key Object, nonce, aad, sealed []byte) ([]byte, error) {
	if len(nonce) != NonceSize || len(sealed) < TagSize {
		return nil, fmt.Errorf("%w: nonce of %d bytes, ciphertext of %d", ErrInput, len(nonce), len(sealed))
	}
	mech, params := gcmMech(nonce, aad)
	defer params.Free()
	if err := p.ctx().DecryptInit(s.h, mech, pkcs11.ObjectHandle(key)); err != nil {
		return nil, wrapErr("C_DecryptInit", err)
	}
	// SoftHSM wants room for the whole input, tag included, to answer in
	// one call.
	out, err := p.mod.raw.Decrypt(uint(s.h), sealed, len(sealed))
	return out, wrapErr("C_Decrypt", err)
}

// Destroy destroys obj.
func (p *Pool) Destroy(s *Session, obj Object) error {
	return wrapErr("C_DestroyObject", p.ctx().DestroyObject(s.h, pkcs11.ObjectHandle(obj)))
}

// Find returns the handles of objects matching the attributes in tmpl
// (bool, uint, []byte or string values), at most max of them.
func (p *Pool) Find(s *Session, tmpl map[uint]any, max int) ([]Object, error) {
	attrs := make([]*pkcs11.Attribute, 0, len(tmpl))
	for t, v := range tmpl {
		switch v.(type) {
		case bool, uint, int, []byte, string:
		default:
			return nil, fmt.Errorf("%w: attribute value of type %T", ErrInput, v)
		}
		attrs = append(attrs, pkcs11.NewAttribute(t, v))
	}
	return findObjects(p.ctx(), s.h, attrs, max)
}
