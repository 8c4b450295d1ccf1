package p11

import (
	"fmt"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
)

// Check names, in the order CheckEnforcement runs them.
const (
	CheckTrustedOnly    = "trusted-only wrapping"
	CheckWrapTemplate   = "wrap template"
	CheckUnwrapTemplate = "unwrap template"
)

// EnforcementResult is the outcome of one check.
type EnforcementResult struct {
	Name   string
	OK     bool
	Detail string
}

// CheckEnforcement tries, with throw-away session objects, that the token
// enforces what the "trusted" export policy relies on:
//
//  1. a CKA_WRAP_WITH_TRUSTED key cannot be wrapped under an untrusted key
//     (PKCS#11 v2.40 §4.9, CKA_WRAP_WITH_TRUSTED);
//  2. a key with CKA_WRAP_TEMPLATE wraps only keys matching it;
//  3. a key with CKA_UNWRAP_TEMPLATE refuses an unwrap asking for a
//     non-sensitive key, and grants one matching the template.
//
// The user login is enough: none of these objects is trusted or on the
// token. Every object made is destroyed before it returns.
func (p *Pool) CheckEnforcement(s *Session) []EnforcementResult {
	var made []Object
	defer func() {
		for _, o := range made {
			_ = p.ctx().DestroyObject(s.h, pkcs11.ObjectHandle(o))
		}
	}()
	keep := func(o Object, err error) (Object, error) {
		if err == nil {
			made = append(made, o)
		}
		return o, err
	}
	kw := WrapMech{Mech: pkcs11.CKM_AES_KEY_WRAP}
	fail := func(name, format string, a ...any) []EnforcementResult {
		return []EnforcementResult{{Name: name, OK: false, Detail: fmt.Sprintf(format, a...)}}
	}
	var out []EnforcementResult

	// 1. Trusted-only wrapping.
	trustedOnly, err := keep(p.GenerateAES(s, SecretKeySpec{Bytes: 32, Extractable: true, WrapWithTrusted: true}))
	if err != nil {
		return fail(CheckTrustedOnly, "cannot generate an exportable session key: %v", err)
	}
	plainKEK, err := keep(p.sessionWrapKey(s, nil))
	if err != nil {
		return fail(CheckTrustedOnly, "cannot generate a session wrapping key: %v", err)
	}
	if _, err := p.Wrap(s, kw, plainKEK, trustedOnly); err == nil {
		return append(out, EnforcementResult{CheckTrustedOnly, false, "a CKA_WRAP_WITH_TRUSTED key was wrapped under an untrusted key"})
	} else {
		out = append(out, EnforcementResult{CheckTrustedOnly, true, "wrap under an untrusted key refused: " + errDetail(err)})
	}

	// 2. Wrap template. A key without CKA_WRAP_WITH_TRUSTED wraps under a
	// plain key (so wrapping works at all) but not under one whose template
	// asks for it.
	free, err := keep(p.GenerateAES(s, SecretKeySpec{Bytes: 32, Extractable: true}))
	if err != nil {
		return append(out, fail(CheckWrapTemplate, "cannot generate an exportable session key: %v", err)...)
	}
	blob, err := p.Wrap(s, kw, plainKEK, free)
	if err != nil {
		return append(out, fail(CheckWrapTemplate, "the token cannot wrap with CKM_AES_KEY_WRAP at all: %v", err)...)
	}
	templKEK, err := keep(p.sessionWrapKey(s, []ckraw.Attr{{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: WrapTemplate()}}))
	if err != nil {
		return append(out, fail(CheckWrapTemplate, "cannot make a key with CKA_WRAP_TEMPLATE: %v", err)...)
	}
	if _, err := p.Wrap(s, kw, templKEK, free); err == nil {
		return append(out, EnforcementResult{CheckWrapTemplate, false, "a key outside CKA_WRAP_TEMPLATE was wrapped"})
	} else {
		out = append(out, EnforcementResult{CheckWrapTemplate, true, "wrap outside the template refused: " + errDetail(err)})
	}

	// 3. Unwrap template: a KEK with the template, and the blob re-wrapped
	// under it; asking for a non-sensitive key must fail, the template's
	// key must come back.
	unwrapKEK, err := keep(p.sessionWrapKey(s, []ckraw.Attr{{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: UnwrapTemplate()}}))
	if err != nil {
		return append(out, fail(CheckUnwrapTemplate, "cannot make a key with CKA_UNWRAP_TEMPLATE: %v", err)...)
	}
	if blob, err = p.Wrap(s, kw, unwrapKEK, free); err != nil {
		return append(out, fail(CheckUnwrapTemplate, "cannot wrap under the template key: %v", err)...)
	}
	m, _ := kw.mechanism()
	weak := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
	}
	if h, err := p.ctx().UnwrapKey(s.h, m, pkcs11.ObjectHandle(unwrapKEK), blob, weak); err == nil {
		made = append(made, Object(h))
		return append(out, EnforcementResult{CheckUnwrapTemplate, false, "a non-sensitive key was unwrapped despite CKA_UNWRAP_TEMPLATE"})
	}
	if _, err := keep(p.Unwrap(s, kw, unwrapKEK, blob, 32)); err != nil {
		return append(out, EnforcementResult{CheckUnwrapTemplate, false, "a key matching the template could not be unwrapped: " + errDetail(err)})
	}
	return append(out, EnforcementResult{CheckUnwrapTemplate, true, "non-sensitive unwrap refused, sensitive unwrap granted"})
}

func errDetail(err error) string {
	if code, ok := CodeOf(err); ok {
		return CodeName(code)
	}
	return err.Error()
}

// sessionWrapKey makes an untrusted AES-256 wrap/unwrap session key, with
// extra attributes (templates) when given.
func (p *Pool) sessionWrapKey(s *Session, extra []ckraw.Attr) (Object, error) {
	tmpl := append([]ckraw.Attr{
		{Type: pkcs11.CKA_CLASS, Value: uint(pkcs11.CKO_SECRET_KEY)},
		{Type: pkcs11.CKA_KEY_TYPE, Value: uint(pkcs11.CKK_AES)},
		{Type: pkcs11.CKA_VALUE_LEN, Value: uint(32)},
		{Type: pkcs11.CKA_TOKEN, Value: false},
		{Type: pkcs11.CKA_PRIVATE, Value: true},
		{Type: pkcs11.CKA_SENSITIVE, Value: true},
		{Type: pkcs11.CKA_EXTRACTABLE, Value: false},
		{Type: pkcs11.CKA_WRAP, Value: true},
		{Type: pkcs11.CKA_UNWRAP, Value: true},
		{Type: pkcs11.CKA_ENCRYPT, Value: false},
		{Type: pkcs11.CKA_DECRYPT, Value: false},
	}, extra...)
	h, err := p.mod.raw.GenerateKey(uint(s.h), pkcs11.CKM_AES_KEY_GEN, tmpl)
	return Object(h), wrapErr("C_GenerateKey", err)
}
