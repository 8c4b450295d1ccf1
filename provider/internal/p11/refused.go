package p11

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
	"github.com/miekg/pkcs11"
)

// A token that refuses a template says only that it did, not which
// attribute it refused: CKR_ATTRIBUTE_TYPE_INVALID ("an invalid attribute
// type was specified in a template"), CKR_ATTRIBUTE_VALUE_INVALID ("an
// invalid value was specified for a particular attribute in a template")
// and CKR_TEMPLATE_INCONSISTENT ("the template specified ... has
// conflicting attributes"), PKCS#11 v2.40 base §5.2 (return values) and
// §5.7 (C_CreateObject, C_GenerateKey, C_GenerateKeyPair, C_UnwrapKey).
// When a creation call fails that way, and so created nothing, the same call
// is made again as a *session* object (CKA_TOKEN=false, gone with its
// session and destroyed at once when made), with each attribute left out
// in turn: an attribute whose absence makes the call succeed is the one the
// token refused. This runs only on that failure, never on the hot path;
// it costs one call per attribute of the template.

// maxExplainAttrs bounds the retries; hsmkeys' templates have about 20.
const maxExplainAttrs = 48

// RefusedError is a creation call's template refusal with what the retries
// found. It unwraps to the call's *Error.
type RefusedError struct {
	Err error // the *Error of the first call
	// Attrs are the attributes whose absence alone made the call succeed:
	// one for a refused type or value, several that conflict.
	Attrs []uint
	// SessionOnly: the whole template is accepted for a session object, so
	// the token refuses it for a token object (CKA_TOKEN=true).
	SessionOnly bool
}

func (e *RefusedError) Error() string {
	switch {
	case e.SessionOnly:
		return e.Err.Error() + ": the token accepts this template only for a session object (CKA_TOKEN=false)"
	case len(e.Attrs) == 1:
		return e.Err.Error() + ": the token refuses attribute " + describeAttr(e.Attrs[0])
	case len(e.Attrs) > 1:
		names := make([]string, len(e.Attrs))
		for i, t := range e.Attrs {
			names[i] = describeAttr(t)
		}
		return e.Err.Error() + ": the token refuses " + strings.Join(names, " together with ") + " (it accepts the template without any one of them)"
	}
	return e.Err.Error() + " (leaving out any single attribute does not help: several are refused)"
}

func (e *RefusedError) Unwrap() error { return e.Err }

// refusedCode reports whether err is one of the template refusals above.
func refusedCode(err error) bool {
	code, ok := CodeOf(err)
	return ok && (code == pkcs11.CKR_ATTRIBUTE_TYPE_INVALID || code == pkcs11.CKR_ATTRIBUTE_VALUE_INVALID ||
		code == pkcs11.CKR_TEMPLATE_INCONSISTENT)
}

// explain runs the retries in a session of their own on session's slot
// (sharing its login, PKCS#11 v2.40 §5.6), closed at the end: SoftHSM 2.6.1
// leaves a bare session object behind for each C_GenerateKey and
// C_CreateObject that fails this way, and closing the session destroys
// them (§4.4). try(s, skip) makes the call again on s as a session object
// with attribute skip (an index into types; -1 for none) left out, destroys
// what it made, and reports whether it succeeded.
func (m *Module) explain(session pkcs11.SessionHandle, err error, types []uint, try func(s pkcs11.SessionHandle, skip int) bool) error {
	if !refusedCode(err) || len(types) > maxExplainAttrs {
		return err
	}
	info, ierr := m.ctx.GetSessionInfo(session)
	if ierr != nil {
		return err
	}
	s, oerr := m.ctx.OpenSession(info.SlotID, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if oerr != nil {
		return err
	}
	defer m.ctx.CloseSession(s)
	if try(s, -1) {
		return &RefusedError{Err: err, SessionOnly: true}
	}
	e := &RefusedError{Err: err}
	for i, t := range types {
		if t == pkcs11.CKA_TOKEN {
			continue // forced to false in every retry
		}
		if try(s, i) {
			e.Attrs = append(e.Attrs, t)
		}
	}
	return e
}

// asSession returns tmpl with the attribute at skip left out and CKA_TOKEN
// false.
func asSession(tmpl []ckraw.Attr, skip int) []ckraw.Attr {
	out := make([]ckraw.Attr, 0, len(tmpl)+1)
	out = append(out, ckraw.Attr{Type: pkcs11.CKA_TOKEN, Value: false})
	for i, a := range tmpl {
		if i != skip && a.Type != pkcs11.CKA_TOKEN {
			out = append(out, a)
		}
	}
	return out
}

func rawTypes(tmpl []ckraw.Attr) []uint {
	out := make([]uint, len(tmpl))
	for i, a := range tmpl {
		out[i] = a.Type
	}
	return out
}

// createErr is wrapErr("C_CreateObject", err), naming the refused attribute.
func (m *Module) createErr(session pkcs11.SessionHandle, tmpl []ckraw.Attr, err error) error {
	return m.explain(session, wrapErr("C_CreateObject", err), rawTypes(tmpl), func(session pkcs11.SessionHandle, skip int) bool {
		h, err := m.raw.CreateObject(uint(session), asSession(tmpl, skip))
		return err == nil && m.ctx.DestroyObject(session, pkcs11.ObjectHandle(h)) == nil
	})
}

// generateErr is wrapErr("C_GenerateKey", err), naming the refused
// attribute.
func (m *Module) generateErr(session pkcs11.SessionHandle, mech uint, tmpl []ckraw.Attr, err error) error {
	return m.explain(session, wrapErr("C_GenerateKey", err), rawTypes(tmpl), func(session pkcs11.SessionHandle, skip int) bool {
		h, err := m.raw.GenerateKey(uint(session), mech, asSession(tmpl, skip))
		return err == nil && m.ctx.DestroyObject(session, pkcs11.ObjectHandle(h)) == nil
	})
}

// generatePairErr is wrapErr("C_GenerateKeyPair", err), naming the refused
// attribute of either template. RSA key generation is slow (seconds at
// 4096 bits on SoftHSM) and the retries make one key per attribute, so they
// ask for 2048 bits, after checking that the size is not what the token
// refused (the whole template at 2048 bits is then accepted).
func (m *Module) generatePairErr(session pkcs11.SessionHandle, mech uint, pub, priv []ckraw.Attr, err error) error {
	gen := func(s pkcs11.SessionHandle, pub []ckraw.Attr, skip int) bool {
		ps, vs := skip, -1
		if skip >= len(pub) {
			ps, vs = -1, skip-len(pub)
		}
		hp, hv, err := m.raw.GenerateKeyPair(uint(s), mech, asSession(pub, ps), asSession(priv, vs))
		if err != nil {
			return false
		}
		e1 := m.ctx.DestroyObject(s, pkcs11.ObjectHandle(hp))
		e2 := m.ctx.DestroyObject(s, pkcs11.ObjectHandle(hv))
		return e1 == nil && e2 == nil
	}
	small := pub
	for i, a := range pub {
		if bits, ok := a.Ulong(); ok && a.Type == pkcs11.CKA_MODULUS_BITS && bits > 2048 {
			small = slices.Clone(pub)
			small[i].Value = uint(2048)
		}
	}
	bitsRefused := false
	types := append(rawTypes(pub), rawTypes(priv)...)
	err = m.explain(session, wrapErr("C_GenerateKeyPair", err), types, func(s pkcs11.SessionHandle, skip int) bool {
		switch {
		case bitsRefused:
			return false
		case skip == -1 && len(small) > 0 && &small[0] != &pub[0]:
			if gen(s, pub, -1) {
				return true // session only
			}
			bitsRefused = gen(s, small, -1)
			return false
		}
		return gen(s, small, skip)
	})
	var re *RefusedError
	if bitsRefused && errors.As(err, &re) {
		re.Attrs = []uint{pkcs11.CKA_MODULUS_BITS}
	}
	return err
}

// miekgSession is asSession for miekg attributes.
func miekgSession(tmpl []*pkcs11.Attribute, skip int) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, 0, len(tmpl)+1)
	out = append(out, pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false))
	for i, a := range tmpl {
		if i != skip && a.Type != pkcs11.CKA_TOKEN {
			out = append(out, a)
		}
	}
	return out
}

func miekgTypes(tmpl []*pkcs11.Attribute) []uint {
	out := make([]uint, len(tmpl))
	for i, a := range tmpl {
		out[i] = a.Type
	}
	return out
}

// generateSessionKeyErr is wrapErr("C_GenerateKey", err) for a session key
// made through the miekg view, naming the refused attribute.
func (m *Module) generateSessionKeyErr(session pkcs11.SessionHandle, mech []*ckraw.Mechanism, tmpl []*pkcs11.Attribute, err error) error {
	return m.explain(session, wrapErr("C_GenerateKey", err), miekgTypes(tmpl), func(session pkcs11.SessionHandle, skip int) bool {
		h, err := m.ctx.GenerateKey(session, mech, miekgSession(tmpl, skip))
		return err == nil && m.ctx.DestroyObject(session, h) == nil
	})
}

// unwrapErr is wrapErr("C_UnwrapKey", err), naming the refused attribute.
// Unwrapping the same bytes again changes nothing on the token but the
// session object made and destroyed. The unwrapped value is a real key, so
// the attributes that protect it are never left out (and so never named):
// not even for a moment does the token hold it less protected.
func (m *Module) unwrapErr(session pkcs11.SessionHandle, mech []*ckraw.Mechanism, kek pkcs11.ObjectHandle, wrapped []byte, tmpl []*pkcs11.Attribute, err error) error {
	return m.explain(session, wrapErr("C_UnwrapKey", err), miekgTypes(tmpl), func(session pkcs11.SessionHandle, skip int) bool {
		if skip >= 0 {
			switch tmpl[skip].Type {
			case pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_WRAP_WITH_TRUSTED, pkcs11.CKA_PRIVATE:
				return false
			}
		}
		h, err := m.ctx.UnwrapKey(session, mech, kek, wrapped, miekgSession(tmpl, skip))
		return err == nil && m.ctx.DestroyObject(session, h) == nil
	})
}

// describeAttr is the CKA_* name of an attribute type with its number, e.g.
// "CKA_COPYABLE (0x171)".
func describeAttr(t uint) string {
	if n, ok := ckaNames[t]; ok {
		return fmt.Sprintf("%s (0x%X)", n, t)
	}
	if t&pkcs11.CKA_VENDOR_DEFINED != 0 {
		return fmt.Sprintf("vendor attribute 0x%X", t)
	}
	return fmt.Sprintf("attribute 0x%X", t)
}

// ckaNames covers the attributes hsmkeys puts in templates and their
// neighbours (PKCS#11 v2.40 §4; CKA_COPYABLE, CKA_DESTROYABLE v2.40 §4.4).
var ckaNames = map[uint]string{
	pkcs11.CKA_CLASS: "CKA_CLASS", pkcs11.CKA_TOKEN: "CKA_TOKEN", pkcs11.CKA_PRIVATE: "CKA_PRIVATE",
	pkcs11.CKA_LABEL: "CKA_LABEL", pkcs11.CKA_APPLICATION: "CKA_APPLICATION", pkcs11.CKA_VALUE: "CKA_VALUE",
	pkcs11.CKA_OBJECT_ID: "CKA_OBJECT_ID", pkcs11.CKA_TRUSTED: "CKA_TRUSTED",
	pkcs11.CKA_KEY_TYPE: "CKA_KEY_TYPE", pkcs11.CKA_ID: "CKA_ID", pkcs11.CKA_SENSITIVE: "CKA_SENSITIVE",
	pkcs11.CKA_ENCRYPT: "CKA_ENCRYPT", pkcs11.CKA_DECRYPT: "CKA_DECRYPT", pkcs11.CKA_WRAP: "CKA_WRAP",
	pkcs11.CKA_UNWRAP: "CKA_UNWRAP", pkcs11.CKA_SIGN: "CKA_SIGN", pkcs11.CKA_SIGN_RECOVER: "CKA_SIGN_RECOVER",
	pkcs11.CKA_VERIFY: "CKA_VERIFY", pkcs11.CKA_VERIFY_RECOVER: "CKA_VERIFY_RECOVER", pkcs11.CKA_DERIVE: "CKA_DERIVE",
	pkcs11.CKA_START_DATE: "CKA_START_DATE", pkcs11.CKA_END_DATE: "CKA_END_DATE",
	pkcs11.CKA_MODULUS: "CKA_MODULUS", pkcs11.CKA_MODULUS_BITS: "CKA_MODULUS_BITS",
	pkcs11.CKA_PUBLIC_EXPONENT: "CKA_PUBLIC_EXPONENT", pkcs11.CKA_VALUE_LEN: "CKA_VALUE_LEN",
	pkcs11.CKA_EXTRACTABLE: "CKA_EXTRACTABLE", pkcs11.CKA_LOCAL: "CKA_LOCAL",
	pkcs11.CKA_NEVER_EXTRACTABLE: "CKA_NEVER_EXTRACTABLE", pkcs11.CKA_ALWAYS_SENSITIVE: "CKA_ALWAYS_SENSITIVE",
	pkcs11.CKA_KEY_GEN_MECHANISM: "CKA_KEY_GEN_MECHANISM", pkcs11.CKA_MODIFIABLE: "CKA_MODIFIABLE",
	pkcs11.CKA_COPYABLE: "CKA_COPYABLE", pkcs11.CKA_DESTROYABLE: "CKA_DESTROYABLE",
	pkcs11.CKA_WRAP_WITH_TRUSTED: "CKA_WRAP_WITH_TRUSTED", pkcs11.CKA_WRAP_TEMPLATE: "CKA_WRAP_TEMPLATE",
	pkcs11.CKA_UNWRAP_TEMPLATE: "CKA_UNWRAP_TEMPLATE", pkcs11.CKA_DERIVE_TEMPLATE: "CKA_DERIVE_TEMPLATE",
	pkcs11.CKA_ALLOWED_MECHANISMS: "CKA_ALLOWED_MECHANISMS", pkcs11.CKA_ALWAYS_AUTHENTICATE: "CKA_ALWAYS_AUTHENTICATE",
	pkcs11.CKA_CHECK_VALUE: "CKA_CHECK_VALUE",
}
