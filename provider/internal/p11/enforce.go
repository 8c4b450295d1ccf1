package p11

import (
	"fmt"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
)

// Check names, in the order CheckEnforcement runs them.
const (
	CheckTrustedOnly     = "trusted-only wrapping"
	CheckWrapTemplate    = "wrap template"
	CheckUnwrapTemplate  = "unwrap template"
	CheckAESKEKMechs     = "aes kek mechanisms"
	CheckRSAKEKMechs     = "rsa kek mechanisms"
	CheckSessionKeyFixed = "session key attributes"
)

// EnforcementResult is the outcome of one check. A check counts a refusal
// as enforcement only after the same call succeeded where it should (its
// premise); when the premise fails, the check is Unchecked: the token
// cannot do that call at all here (a missing mechanism, a transport that
// drops it), so nothing was shown either way, and Detail says why.
type EnforcementResult struct {
	Name      string
	OK        bool
	Unchecked bool
	Detail    string
}

// CheckEnforcement tries, with throw-away session objects, that the token
// enforces what the "trusted" export policy and the KEK restrictions rely
// on:
//
//  1. a CKA_WRAP_WITH_TRUSTED key cannot be wrapped under an untrusted key
//     (PKCS#11 v2.40 §4.9, CKA_WRAP_WITH_TRUSTED), while a key without it
//     can;
//  2. a key with CKA_WRAP_TEMPLATE wraps only keys matching it;
//  3. a key with CKA_UNWRAP_TEMPLATE grants an unwrap with the template
//     and refuses one asking for a non-sensitive key, another key type
//     (CKK_GENERIC_SECRET, signing) or fewer attributes;
//  4. a key restricted to AES key wrap (CKA_ALLOWED_MECHANISMS, §4.7.2)
//     refuses CBC and ECB wrap and unwrap that an unrestricted key grants;
//  5. an RSA pair restricted to OAEP refuses CKM_RSA_PKCS wrap and unwrap
//     that an unrestricted pair grants;
//  6. a session key made as the provider makes them (CKA_MODIFIABLE=false,
//     §4.4) refuses every attribute change and C_CopyObject that a
//     modifiable twin grants.
//
// The user login is enough: none of these objects is trusted or on the
// token. Every object made is destroyed before it returns.
func (p *Pool) CheckEnforcement(s *Session) []EnforcementResult {
	var made []pkcs11.ObjectHandle
	defer func() {
		for _, o := range made {
			_ = p.ctx().DestroyObject(s.h, o)
		}
	}()
	keep := func(o Object, err error) (Object, error) {
		if err == nil {
			made = append(made, pkcs11.ObjectHandle(o))
		}
		return o, err
	}
	kw := WrapMech{Mech: pkcs11.CKM_AES_KEY_WRAP}
	// Each check is tried on its own, whatever the others found (doctor
	// reports every one). The plain exportable key and a plain session
	// wrapping key are shared; a check that needs one says so when it
	// could not be made.
	free, freeErr := keep(p.GenerateAES(s, SecretKeySpec{Bytes: 32, Extractable: true}))
	var plainKEK Object
	premise := freeErr
	if premise == nil {
		plainKEK, premise = keep(p.sessionWrapKey(s, nil))
		if premise == nil {
			_, premise = p.Wrap(s, kw, plainKEK, free)
		}
	}
	out := []EnforcementResult{
		p.checkTrustedOnly(s, kw, plainKEK, premise, keep),
		p.checkWrapTemplate(s, kw, free, premise, keep),
		p.checkUnwrapTemplate(s, kw, free, premise, keep, &made),
	}
	if freeErr != nil {
		detail := "cannot generate an exportable session key: " + errDetail(freeErr)
		out = append(out, EnforcementResult{CheckAESKEKMechs, false, false, detail}, EnforcementResult{CheckRSAKEKMechs, false, false, detail})
	} else {
		// 4. AES KEK mechanisms; unchecked where AES key wrap does not
		// work at all.
		if premise != nil {
			out = append(out, uncheckedWrap(CheckAESKEKMechs, premise))
		} else {
			out = append(out, p.checkAESMechs(s, free, keep))
		}
		// 5. RSA KEK mechanisms.
		out = append(out, p.checkRSAMechs(s, free, keep))
	}
	// 6. Session keys cannot change.
	out = append(out, p.checkSessionKeyFixed(s, keep))
	return out
}

// uncheckedWrap is the result of a check whose premise, a plain key wrapped
// under a plain session key with CKM_AES_KEY_WRAP, failed.
func uncheckedWrap(name string, err error) EnforcementResult {
	return EnforcementResult{name, false, true, "could not be checked: the token cannot wrap with CKM_AES_KEY_WRAP under an untrusted key at all: " + errDetail(err)}
}

// 1. Trusted-only wrapping. Premise: a key without CKA_WRAP_WITH_TRUSTED
// wraps under the same untrusted key.
func (p *Pool) checkTrustedOnly(s *Session, kw WrapMech, plainKEK Object, premise error, keep func(Object, error) (Object, error)) EnforcementResult {
	if premise != nil {
		return uncheckedWrap(CheckTrustedOnly, premise)
	}
	trustedOnly, err := keep(p.GenerateAES(s, SecretKeySpec{Bytes: 32, Extractable: true, WrapWithTrusted: true}))
	if err != nil {
		return EnforcementResult{CheckTrustedOnly, false, false, "cannot generate a trusted-only exportable session key: " + errDetail(err)}
	}
	if _, err := p.Wrap(s, kw, plainKEK, trustedOnly); err != nil {
		return EnforcementResult{CheckTrustedOnly, true, false, "a plain key wraps under an untrusted key, a trusted-only one is refused: " + errDetail(err)}
	}
	return EnforcementResult{CheckTrustedOnly, false, false, "a CKA_WRAP_WITH_TRUSTED key was wrapped under an untrusted key"}
}

// 2. Wrap template: a key with a template asking for CKA_WRAP_WITH_TRUSTED
// refuses what a plain one wrapped (the premise).
func (p *Pool) checkWrapTemplate(s *Session, kw WrapMech, free Object, premise error, keep func(Object, error) (Object, error)) EnforcementResult {
	if premise != nil {
		return uncheckedWrap(CheckWrapTemplate, premise)
	}
	templKEK, err := keep(p.sessionWrapKey(s, []ckraw.Attr{{Type: pkcs11.CKA_WRAP_TEMPLATE, Value: WrapTemplate()}}))
	if err != nil {
		return EnforcementResult{CheckWrapTemplate, false, false, "cannot make a key with CKA_WRAP_TEMPLATE: " + errDetail(err)}
	}
	if _, err := p.Wrap(s, kw, templKEK, free); err != nil {
		return EnforcementResult{CheckWrapTemplate, true, false, "wrap outside the template refused: " + errDetail(err)}
	}
	return EnforcementResult{CheckWrapTemplate, false, false, "a key outside CKA_WRAP_TEMPLATE was wrapped"}
}

// 3. Unwrap template. Premise: the template's own key comes back.
func (p *Pool) checkUnwrapTemplate(s *Session, kw WrapMech, free Object, premise error, keep func(Object, error) (Object, error), made *[]pkcs11.ObjectHandle) EnforcementResult {
	if premise != nil {
		return uncheckedWrap(CheckUnwrapTemplate, premise)
	}
	unwrapKEK, err := keep(p.sessionWrapKey(s, []ckraw.Attr{{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: UnwrapTemplate()}}))
	if err != nil {
		return EnforcementResult{CheckUnwrapTemplate, false, false, "cannot make a key with CKA_UNWRAP_TEMPLATE: " + errDetail(err)}
	}
	blob, err := p.Wrap(s, kw, unwrapKEK, free)
	if err != nil {
		return EnforcementResult{CheckUnwrapTemplate, false, false, "cannot wrap under the template key: " + errDetail(err)}
	}
	if _, err := keep(p.Unwrap(s, kw, unwrapKEK, blob, 32)); err != nil {
		return EnforcementResult{CheckUnwrapTemplate, false, false, "a key matching the template could not be unwrapped: " + errDetail(err)}
	}
	m, _ := kw.mechanism()
	for _, weak := range weakUnwrapTemplates() {
		if h, err := p.ctx().UnwrapKey(s.h, m, pkcs11.ObjectHandle(unwrapKEK), blob, weak.tmpl); err == nil {
			*made = append(*made, h)
			return EnforcementResult{CheckUnwrapTemplate, false, false, "unwrapped despite CKA_UNWRAP_TEMPLATE: " + weak.name}
		}
	}
	return EnforcementResult{CheckUnwrapTemplate, true, false, "the template's key unwraps; refused: " + weakNames()}
}

type weakTemplate struct {
	name string
	tmpl []*pkcs11.Attribute
}

// weakUnwrapTemplates are unwraps an attacker with the user PIN would ask
// for: each differs from UnwrapTemplate in one way that matters.
func weakUnwrapTemplates() []weakTemplate {
	with := func(t uint, v any) []*pkcs11.Attribute {
		var out []*pkcs11.Attribute
		for _, a := range UnwrapTemplate() {
			if a.Type == t {
				if v == nil {
					continue // left out
				}
				a.Value = v
			}
			out = append(out, pkcs11.NewAttribute(a.Type, a.Value))
		}
		return out
	}
	return []weakTemplate{
		{"non-sensitive", with(pkcs11.CKA_SENSITIVE, false)},
		{"CKK_GENERIC_SECRET", with(pkcs11.CKA_KEY_TYPE, uint(pkcs11.CKK_GENERIC_SECRET))},
		{"signing", with(pkcs11.CKA_SIGN, true)},
		{"derive", with(pkcs11.CKA_DERIVE, true)},
		{"modifiable", with(pkcs11.CKA_MODIFIABLE, true)},
		{"any mechanism", with(pkcs11.CKA_ALLOWED_MECHANISMS, nil)},
		{"class and key type only", []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES)}},
	}
}

func weakNames() string {
	var names []string
	for _, w := range weakUnwrapTemplates() {
		names = append(names, w.name)
	}
	return strings.Join(names, ", ")
}

// refusal is one call that a restricted object must refuse, with the same
// call on an unrestricted twin as its premise.
type refusal struct {
	name       string
	premise    func() error // on the unrestricted twin: must succeed
	restricted func() error // on the restricted object: must fail
}

// judge runs refusals: each whose premise holds must be refused. Those
// whose premise fails are reported as not checked; the check is Unchecked
// only when no refusal could be checked at all.
func judge(name string, rs []refusal) EnforcementResult {
	var refused, unchecked []string
	for _, r := range rs {
		if err := r.premise(); err != nil {
			unchecked = append(unchecked, fmt.Sprintf("%s (not done by the token with any key: %s)", r.name, errDetail(err)))
			continue
		}
		if err := r.restricted(); err == nil {
			return EnforcementResult{Name: name, Detail: r.name + " granted despite CKA_ALLOWED_MECHANISMS or CKA_MODIFIABLE"}
		} else {
			refused = append(refused, r.name+": "+errDetail(err))
		}
	}
	detail := "refused where an unrestricted twin grants it: " + strings.Join(refused, ", ")
	if len(refused) == 0 {
		return EnforcementResult{Name: name, Unchecked: true, Detail: "could not be checked: " + strings.Join(unchecked, ", ")}
	}
	if len(unchecked) > 0 {
		detail += "; not checked: " + strings.Join(unchecked, ", ")
	}
	return EnforcementResult{Name: name, OK: true, Detail: detail}
}

func (p *Pool) checkAESMechs(s *Session, key Object, keep func(Object, error) (Object, error)) EnforcementResult {
	open, err := keep(p.sessionWrapKey(s, nil))
	if err != nil {
		return EnforcementResult{Name: CheckAESKEKMechs, Detail: fmt.Sprintf("cannot generate a session wrapping key: %v", err)}
	}
	restricted, err := keep(p.sessionWrapKey(s, []ckraw.Attr{{Type: pkcs11.CKA_ALLOWED_MECHANISMS, Value: MechList(AESKEKMechanisms)}}))
	if err != nil {
		return EnforcementResult{Name: CheckAESKEKMechs, Detail: fmt.Sprintf("cannot make a key with CKA_ALLOWED_MECHANISMS: %v", err)}
	}
	// The restriction must leave key wrap working.
	if _, err := p.Wrap(s, WrapMech{Mech: pkcs11.CKM_AES_KEY_WRAP}, restricted, key); err != nil {
		return EnforcementResult{Name: CheckAESKEKMechs, Detail: "a key restricted to key wrap cannot wrap with CKM_AES_KEY_WRAP: " + errDetail(err)}
	}
	iv := make([]byte, 16)
	mechs := map[string][]*ckraw.Mechanism{
		"CKM_AES_CBC": {ckraw.NewMechanism(pkcs11.CKM_AES_CBC, iv)},
		"CKM_AES_ECB": {ckraw.NewMechanism(pkcs11.CKM_AES_ECB, nil)},
	}
	tmpl := func() []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		}
	}
	var rs []refusal
	for _, name := range []string{"CKM_AES_CBC", "CKM_AES_ECB"} {
		m := mechs[name]
		var blob []byte
		rs = append(rs, refusal{
			name: "wrap with " + name,
			premise: func() error {
				var err error
				blob, err = p.ctx().WrapKey(s.h, m, pkcs11.ObjectHandle(open), pkcs11.ObjectHandle(key))
				return err
			},
			restricted: func() error {
				_, err := p.ctx().WrapKey(s.h, m, pkcs11.ObjectHandle(restricted), pkcs11.ObjectHandle(key))
				return err
			},
		}, refusal{
			name: "unwrap with " + name,
			premise: func() error {
				if blob == nil {
					blob = make([]byte, 32) // any two blocks: CBC and ECB have no integrity check
				}
				h, err := p.ctx().UnwrapKey(s.h, m, pkcs11.ObjectHandle(open), blob, tmpl())
				if err == nil {
					made(keep, h)
				}
				return err
			},
			restricted: func() error {
				h, err := p.ctx().UnwrapKey(s.h, m, pkcs11.ObjectHandle(restricted), blob, tmpl())
				if err == nil {
					made(keep, h)
				}
				return err
			},
		})
	}
	return judge(CheckAESKEKMechs, rs)
}

func made(keep func(Object, error) (Object, error), h pkcs11.ObjectHandle) {
	_, _ = keep(Object(h), nil)
}

// checkRSAMechs uses RSA-1024 pairs: throw-away keys that wrap only a
// throw-away key, made in a few milliseconds (RSA-2048: a quarter second
// on SoftHSM).
func (p *Pool) checkRSAMechs(s *Session, key Object, keep func(Object, error) (Object, error)) EnforcementResult {
	pair := func(restrict bool) (Object, Object, error) {
		pub := []ckraw.Attr{
			{Type: pkcs11.CKA_TOKEN, Value: false}, {Type: pkcs11.CKA_MODULUS_BITS, Value: uint(1024)},
			{Type: pkcs11.CKA_PUBLIC_EXPONENT, Value: []byte{1, 0, 1}}, {Type: pkcs11.CKA_WRAP, Value: true},
		}
		priv := []ckraw.Attr{
			{Type: pkcs11.CKA_TOKEN, Value: false}, {Type: pkcs11.CKA_PRIVATE, Value: true},
			{Type: pkcs11.CKA_SENSITIVE, Value: true}, {Type: pkcs11.CKA_UNWRAP, Value: true},
		}
		if restrict {
			pub = append(pub, ckraw.Attr{Type: pkcs11.CKA_ALLOWED_MECHANISMS, Value: MechList(RSAKEKMechanisms)})
			priv = append(priv, ckraw.Attr{Type: pkcs11.CKA_ALLOWED_MECHANISMS, Value: MechList(RSAKEKMechanisms)})
		}
		ph, kh, err := p.mod.raw.GenerateKeyPair(uint(s.h), pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, pub, priv)
		if err != nil {
			return 0, 0, wrapErr("C_GenerateKeyPair", err)
		}
		keep(Object(ph), nil)
		keep(Object(kh), nil)
		return Object(ph), Object(kh), nil
	}
	rpub, rpriv, err := pair(true)
	if err != nil {
		return EnforcementResult{Name: CheckRSAKEKMechs, Unchecked: true, Detail: "could not be checked: cannot generate an rsa pair restricted to oaep: " + errDetail(err)}
	}
	oaep := WrapMech{Mech: pkcs11.CKM_RSA_PKCS_OAEP, Hash: pkcs11.CKM_SHA_1}
	// The restriction must leave OAEP working, both ways.
	oblob, err := p.Wrap(s, oaep, rpub, key)
	if err != nil {
		return EnforcementResult{Name: CheckRSAKEKMechs, Detail: "a public key restricted to oaep cannot wrap with oaep: " + errDetail(err)}
	}
	if _, err := keep(p.Unwrap(s, oaep, rpriv, oblob, 32)); err != nil {
		return EnforcementResult{Name: CheckRSAKEKMechs, Detail: "a private key restricted to oaep cannot unwrap with oaep: " + errDetail(err)}
	}
	opub, opriv, err := pair(false)
	if err != nil {
		return EnforcementResult{Name: CheckRSAKEKMechs, Unchecked: true, Detail: "could not be checked: cannot generate an rsa pair: " + errDetail(err)}
	}
	pkcs := []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}
	tmpl := func() []*pkcs11.Attribute {
		return []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		}
	}
	// A PKCS#1 v1.5 blob for the restricted pair, wrapped under an
	// unrestricted copy of its public key: if the restriction were not
	// enforced, it would unwrap.
	var blob, rblob []byte
	return judge(CheckRSAKEKMechs, []refusal{{
		name: "wrap with CKM_RSA_PKCS",
		premise: func() error {
			var err error
			blob, err = p.ctx().WrapKey(s.h, pkcs, pkcs11.ObjectHandle(opub), pkcs11.ObjectHandle(key))
			return err
		},
		restricted: func() error {
			_, err := p.ctx().WrapKey(s.h, pkcs, pkcs11.ObjectHandle(rpub), pkcs11.ObjectHandle(key))
			return err
		},
	}, {
		name: "unwrap with CKM_RSA_PKCS",
		premise: func() error {
			if blob == nil {
				return fmt.Errorf("nothing wrapped with CKM_RSA_PKCS to unwrap")
			}
			h, err := p.ctx().UnwrapKey(s.h, pkcs, pkcs11.ObjectHandle(opriv), blob, tmpl())
			if err != nil {
				return err
			}
			made(keep, h)
			got, err := p.ctx().GetAttributeValue(s.h, pkcs11.ObjectHandle(rpub), []*pkcs11.Attribute{{Type: pkcs11.CKA_MODULUS}, {Type: pkcs11.CKA_PUBLIC_EXPONENT}})
			if err != nil {
				return err
			}
			copyPub, err := p.ctx().CreateObject(s.h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false), pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
				pkcs11.NewAttribute(pkcs11.CKA_MODULUS, got[0].Value), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, got[1].Value),
			})
			if err != nil {
				return err
			}
			made(keep, copyPub)
			rblob, err = p.ctx().WrapKey(s.h, pkcs, copyPub, pkcs11.ObjectHandle(key))
			return err
		},
		restricted: func() error {
			h, err := p.ctx().UnwrapKey(s.h, pkcs, pkcs11.ObjectHandle(rpriv), rblob, tmpl())
			if err == nil {
				made(keep, h)
			}
			return err
		},
	}})
}

// checkSessionKeyFixed: a key as the provider makes it refuses the changes
// and the copy that a modifiable, copyable twin grants.
func (p *Pool) checkSessionKeyFixed(s *Session, keep func(Object, error) (Object, error)) EnforcementResult {
	spec := SecretKeySpec{Bytes: 32, Extractable: true, WrapWithTrusted: true}
	fixed, err := keep(p.GenerateAES(s, spec))
	if err != nil {
		return EnforcementResult{Name: CheckSessionKeyFixed, Detail: fmt.Sprintf("cannot generate a session key: %v", err)}
	}
	twin := func() (Object, error) {
		tmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		}
		for _, a := range sessionKeyPolicy(spec) {
			if a.t == pkcs11.CKA_COPYABLE {
				a.v = true
			}
			tmpl = append(tmpl, pkcs11.NewAttribute(a.t, a.v))
		}
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, MechList(SessionKeyMechanisms)))
		h, err := p.ctx().GenerateKey(s.h, []*ckraw.Mechanism{ckraw.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl)
		return keep(Object(h), wrapErr("C_GenerateKey", err))
	}
	var rs []refusal
	for _, c := range []struct {
		name string
		attr *pkcs11.Attribute
	}{
		{"set CKA_DERIVE", pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true)},
		{"set CKA_WRAP", pkcs11.NewAttribute(pkcs11.CKA_WRAP, true)},
		{"set CKA_UNWRAP", pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true)},
		{"set CKA_SIGN", pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)},
		{"set CKA_VERIFY", pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true)},
		{"clear CKA_ENCRYPT", pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false)},
		{"set CKA_LABEL", pkcs11.NewAttribute(pkcs11.CKA_LABEL, "changed")},
	} {
		rs = append(rs, refusal{
			name: c.name,
			premise: func() error {
				o, err := twin()
				if err != nil {
					return err
				}
				return p.ctx().SetAttributeValue(s.h, pkcs11.ObjectHandle(o), []*pkcs11.Attribute{c.attr})
			},
			restricted: func() error {
				return p.ctx().SetAttributeValue(s.h, pkcs11.ObjectHandle(fixed), []*pkcs11.Attribute{c.attr})
			},
		})
	}
	copyWith := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true)}
	rs = append(rs, refusal{
		name: "C_CopyObject with CKA_DERIVE",
		premise: func() error {
			o, err := twin()
			if err != nil {
				return err
			}
			h, err := p.ctx().CopyObject(s.h, pkcs11.ObjectHandle(o), copyWith)
			if err == nil {
				made(keep, h)
			}
			return err
		},
		restricted: func() error {
			h, err := p.ctx().CopyObject(s.h, pkcs11.ObjectHandle(fixed), copyWith)
			if err == nil {
				made(keep, h)
			}
			return err
		},
	})
	return judge(CheckSessionKeyFixed, rs)
}

func errDetail(err error) string {
	if code, ok := CodeOf(wrapErr("", err)); ok {
		if code == pkcs11.CKR_ACTION_PROHIBITED {
			return "CKR_ACTION_PROHIBITED" // miekg v1.1.2 has no name for 0x1B
		}
		if n := CodeName(code); n != "" {
			return n
		}
		return fmt.Sprintf("CKR 0x%X", code)
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
