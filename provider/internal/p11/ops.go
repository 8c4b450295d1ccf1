package p11

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

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
	pkcs11.CKA_TOKEN:              "CKA_TOKEN",
	pkcs11.CKA_PRIVATE:            "CKA_PRIVATE",
	pkcs11.CKA_SENSITIVE:          "CKA_SENSITIVE",
	pkcs11.CKA_EXTRACTABLE:        "CKA_EXTRACTABLE",
	pkcs11.CKA_WRAP_WITH_TRUSTED:  "CKA_WRAP_WITH_TRUSTED",
	pkcs11.CKA_ENCRYPT:            "CKA_ENCRYPT",
	pkcs11.CKA_DECRYPT:            "CKA_DECRYPT",
	pkcs11.CKA_WRAP:               "CKA_WRAP",
	pkcs11.CKA_UNWRAP:             "CKA_UNWRAP",
	pkcs11.CKA_DERIVE:             "CKA_DERIVE",
	pkcs11.CKA_SIGN:               "CKA_SIGN",
	pkcs11.CKA_VERIFY:             "CKA_VERIFY",
	pkcs11.CKA_VALUE_LEN:          "CKA_VALUE_LEN",
	pkcs11.CKA_TRUSTED:            "CKA_TRUSTED",
	pkcs11.CKA_MODIFIABLE:         "CKA_MODIFIABLE",
	pkcs11.CKA_COPYABLE:           "CKA_COPYABLE",
	pkcs11.CKA_CLASS:              "CKA_CLASS",
	pkcs11.CKA_KEY_TYPE:           "CKA_KEY_TYPE",
	pkcs11.CKA_ALLOWED_MECHANISMS: "CKA_ALLOWED_MECHANISMS",
	pkcs11.CKA_SIGN_RECOVER:       "CKA_SIGN_RECOVER",
	pkcs11.CKA_VERIFY_RECOVER:     "CKA_VERIFY_RECOVER",
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
	pol := p.keyPolicy(spec)
	tmpl := make([]*pkcs11.Attribute, 0, len(pol)+5)
	tmpl = append(tmpl,
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, spec.Bytes),
	)
	for _, a := range pol {
		tmpl = append(tmpl, pkcs11.NewAttribute(a.t, a.v))
	}
	// Limited to the provider's mechanisms, and frozen: CKA_MODIFIABLE
	// last, as in UnwrapTemplate.
	tmpl = append(tmpl,
		pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, MechList(SessionKeyMechanisms)),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	)
	mech := []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}
	h, err := p.ctx().GenerateKey(s.h, mech, tmpl)
	if err != nil {
		return 0, p.mod.generateSessionKeyErr(s.h, mech, tmpl, err)
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
	return p.verifyBools(s, obj, p.keyPolicy(spec), uint(spec.Bytes))
}

// keyPolicy is sessionKeyPolicy without the attributes the token's
// Cryptoki version does not know (Profile.V240Attrs): CKA_COPYABLE is new
// in v2.40 §4.4, and plain 2.20 tokens refuse it and CKA_WRAP_WITH_TRUSTED
// with CKR_ATTRIBUTE_TYPE_INVALID. CKA_WRAP_WITH_TRUSTED is left out only
// where it is false, its default; a key that must be trusted-only keeps it,
// and such a token refuses to make it rather than make it weaker.
func (p *Pool) keyPolicy(spec SecretKeySpec) []boolAttr {
	pol := sessionKeyPolicy(spec)
	if p.profile().V240Attrs {
		return pol
	}
	return slices.DeleteFunc(pol, func(a boolAttr) bool {
		return a.t == pkcs11.CKA_COPYABLE || (a.t == pkcs11.CKA_WRAP_WITH_TRUSTED && !a.v)
	})
}

// fitTemplate drops from tmpl what the token's profile says it refuses.
func (p *Pool) fitTemplate(tmpl []*pkcs11.Attribute) []*pkcs11.Attribute {
	if p.profile().V240Attrs {
		return tmpl
	}
	return slices.DeleteFunc(tmpl, func(a *pkcs11.Attribute) bool { return a.Type == pkcs11.CKA_COPYABLE })
}

// verifyBools reads back the attributes in want (and CKA_VALUE_LEN when
// valueLen > 0) and fails on the first that differs.
func (p *Pool) verifyBools(s *Session, obj Object, want []boolAttr, valueLen uint) error {
	return p.verifyAttrs(s, obj, want, valueLen, false)
}

// verifyAttrs is verifyBools; for an unwrapped key a CKA_VALUE_LEN of 0 is
// accepted as "not reported".
//
// Every session key also carries CKA_MODIFIABLE=false and exactly
// SessionKeyMechanisms as CKA_ALLOWED_MECHANISMS; both are read back too.
func (p *Pool) verifyAttrs(s *Session, obj Object, want []boolAttr, valueLen uint, unwrapped bool) error {
	want = append(slices.Clip(want), boolAttr{pkcs11.CKA_MODIFIABLE, false})
	q := make([]*pkcs11.Attribute, 0, len(want)+2)
	caps := make([]int, 0, len(want)+2)
	for _, a := range want {
		q = append(q, &pkcs11.Attribute{Type: a.t})
		caps = append(caps, 1) // CK_BBOOL
	}
	q = append(q, &pkcs11.Attribute{Type: pkcs11.CKA_ALLOWED_MECHANISMS})
	caps = append(caps, 8*len(SessionKeyMechanisms)) // CK_MECHANISM_TYPEs; a larger list falls back
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
	if !sameMechs(got[len(want)].Value, SessionKeyMechanisms) {
		return fmt.Errorf("%w: CKA_ALLOWED_MECHANISMS is not gcm, ctr and ecb only", ErrPolicyIgnored)
	}
	if valueLen > 0 {
		n, ok := ulong(got[len(want)+1].Value)
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

// SealGCM encrypts plaintext with key under AES-GCM and returns
// ciphertext||tag. nonce is the IV to use; on a token that makes its own
// (Profile.GCMIV) it is overwritten with the IV the token chose, which the
// caller must then store. One C_Encrypt, or parts of at most
// Profile.MaxCall bytes where the token caps a call and allows multi-part
// GCM.
func (p *Pool) SealGCM(s *Session, key Object, nonce, aad, plaintext []byte) ([]byte, error) {
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("%w: nonce of %d bytes", ErrInput, len(nonce))
	}
	prof := p.profile()
	if prof.GCMIV == IVUnsupported {
		return nil, fmt.Errorf("%w: the token returns its gcm iv in a layout hsmkeys does not take", ErrTokenIV)
	}
	if prof.MaxCall > 0 && len(plaintext) > prof.MaxCall {
		if !prof.StreamsGCM() {
			return nil, fmt.Errorf("%w: %d bytes is more than one call of this token takes (%d) and it has no multi-part gcm", ErrTooLarge, len(plaintext), prof.MaxCall)
		}
		return p.sealParts(s, key, nonce, aad, plaintext, prof.MaxCall)
	}
	mech, params := gcmMech(nonce, aad)
	defer params.Free()
	if err := p.ctx().EncryptInit(s.h, mech, pkcs11.ObjectHandle(key)); err != nil {
		return nil, wrapErr("C_EncryptInit", err)
	}
	// One C_Encrypt with a buffer of the known size, where miekg would
	// make two (size query, then data): a round trip fewer on a network HSM.
	extra := 0
	if prof.GCMIV == IVAppended {
		extra = NonceSize
	}
	out, err := p.mod.raw.Encrypt(uint(s.h), plaintext, len(plaintext)+TagSize+extra)
	if err != nil {
		return nil, wrapErr("C_Encrypt", err)
	}
	return takeIV(prof, params, nonce, out, true)
}

// takeIV copies the IV the token used into nonce: from the parameters
// (IVInParams) or from the end of out (IVAppended, when last is true), and
// returns out without it.
func takeIV(prof *Profile, params *ckraw.GCMParams, nonce, out []byte, last bool) ([]byte, error) {
	switch prof.GCMIV {
	case IVInParams:
		iv := params.IV()
		if len(iv) != NonceSize {
			return nil, fmt.Errorf("%w: the token wrote a %d-byte gcm iv", ErrTokenIV, len(iv))
		}
		copy(nonce, iv)
	case IVAppended:
		if !last {
			return out, nil
		}
		if len(out) < NonceSize+TagSize {
			return nil, fmt.Errorf("%w: %d bytes of output hold no iv", ErrTokenIV, len(out))
		}
		copy(nonce, out[len(out)-NonceSize:])
		out = out[:len(out)-NonceSize]
	}
	return out, nil
}

// ErrTokenIV: a token that makes its own GCM IV did not hand it back as its
// profile says.
var ErrTokenIV = errors.New("token did not return its gcm iv")

// ErrTooLarge: the input is more than the token takes (Profile.MaxCall).
var ErrTooLarge = errors.New("input larger than the token takes")

// sealParts is SealGCM through C_EncryptUpdate in parts of at most max bytes.
func (p *Pool) sealParts(s *Session, key Object, nonce, aad, plaintext []byte, max int) ([]byte, error) {
	e, err := p.GCMEncrypt(s, key, nonce, aad)
	if err != nil {
		return nil, err
	}
	defer e.Abort()
	out := make([]byte, 0, len(plaintext)+TagSize)
	for len(plaintext) > 0 {
		n := min(len(plaintext), max)
		c, err := e.Update(plaintext[:n])
		if err != nil {
			return nil, err
		}
		out = append(out, c...)
		plaintext = plaintext[n:]
	}
	last, err := e.Final()
	if err != nil {
		return nil, err
	}
	return append(out, last...), nil
}

// OpenGCM decrypts ciphertext||tag. A failed tag check wraps ErrBadTag (by
// the codes of the token's profile; SoftHSM answers CKR_GENERAL_ERROR) and
// the token's *Error; any other code is the token's error alone (on most
// tokens CKR_GENERAL_ERROR is a device failure, not a forgery).
func (p *Pool) OpenGCM(s *Session, key Object, nonce, aad, sealed []byte) ([]byte, error) {
	if len(nonce) != NonceSize || len(sealed) < TagSize {
		return nil, fmt.Errorf("%w: nonce of %d bytes, ciphertext of %d", ErrInput, len(nonce), len(sealed))
	}
	prof := p.profile()
	if prof.MaxCall > 0 && len(sealed) > prof.MaxCall {
		return nil, fmt.Errorf("%w: %d bytes is more than one call of this token takes (%d)", ErrTooLarge, len(sealed), prof.MaxCall)
	}
	mech, params := gcmMech(nonce, aad)
	defer params.Free()
	if err := p.ctx().DecryptInit(s.h, mech, pkcs11.ObjectHandle(key)); err != nil {
		return nil, wrapErr("C_DecryptInit", err)
	}
	// SoftHSM wants room for the whole input, tag included, to answer in
	// one call.
	out, err := p.mod.raw.Decrypt(uint(s.h), sealed, len(sealed))
	if err != nil {
		err = wrapErr("C_Decrypt", err)
		if code, _ := CodeOf(err); prof.IsBadTag(code) {
			return nil, fmt.Errorf("%w: %w", ErrBadTag, err)
		}
		return nil, err
	}
	return out, nil
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
